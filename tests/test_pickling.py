"""pickle/cloudpickle round trips of every seqify object, and process workers under every start method."""

import pickle

import cloudpickle
import numpy as np
import pytest

import seqify
from conftest import make_batch

PICKLERS = [
    pytest.param(pickle.dumps, pickle.loads, id="pickle"),
    pytest.param(cloudpickle.dumps, cloudpickle.loads, id="cloudpickle"),
]


class ScaledSequence(seqify.Sequence):
    """A user subclass with state of its own."""

    def __init__(self, n, scale, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.scale = scale

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return make_batch(index * self.scale)


def counting_stream(start, step=1):
    i = start
    while True:
        yield make_batch(i)
        i += step


def make_batch_fn_lambda():
    return seqify.from_batch_fn(lambda i: (np.full((4, 3), i * 2, "float32"), np.zeros((4, 1), "float32")), 4, workers=2)


def make_batch_fn_closure():
    scale = 3

    def fn(i):
        return make_batch(i * scale)

    return seqify.from_batch_fn(fn, 5, shuffle=True, seed=11, workers=2)


def make_batch_fn_unseeded_shuffle():
    # seed=None draws a seed once; the copy must keep it (same order).
    return seqify.from_batch_fn(make_batch, 6, shuffle=True, workers=2)


def make_arrays():
    x = np.repeat(np.arange(10, dtype="float32")[:, None], 3, axis=1)
    return seqify.from_arrays(x, x[:, :1] * 2, batch_size=3, shuffle=True, seed=5, workers=2)


def make_generator_function_with_args():
    return seqify.from_generator(
        counting_stream, args=(50,), kwargs={"step": 2}, steps_per_epoch=3,
        transform=lambda batch: (batch[0] + 0.5, batch[1]), workers=2,
    )


def make_sequence_subclass():
    return ScaledSequence(4, scale=10, workers=2)


OBJECTS = [
    pytest.param(make_batch_fn_lambda, id="from_batch_fn-lambda"),
    pytest.param(make_batch_fn_closure, id="from_batch_fn-closure"),
    pytest.param(make_batch_fn_unseeded_shuffle, id="from_batch_fn-unseeded-shuffle"),
    pytest.param(make_arrays, id="from_arrays"),
    pytest.param(make_generator_function_with_args, id="from_generator-function-args"),
    pytest.param(make_sequence_subclass, id="Sequence-subclass"),
]


def two_epochs(ds):
    return [list(ds.iter_epoch()) for _ in range(2)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b)
        for batch_a, batch_b in zip(epoch_a, epoch_b):
            assert len(batch_a) == len(batch_b)
            for part_a, part_b in zip(batch_a, batch_b):
                np.testing.assert_array_equal(part_a, part_b)


@pytest.mark.parametrize("dumps,loads", PICKLERS)
@pytest.mark.parametrize("make", OBJECTS)
def test_round_trip_gives_an_object_that_yields_the_same_batches(make, dumps, loads):
    with make() as original:
        with loads(dumps(original)) as copy:
            assert type(copy) is type(original)
            assert len(copy) == len(original)
            assert copy.seed == original.seed
            assert copy.workers == original.workers
            assert_same_batches(two_epochs(copy), two_epochs(original))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dumps,loads", PICKLERS)
def test_a_running_object_pickles_without_its_workers_and_the_copy_starts_at_epoch_zero(dumps, loads):
    off = 7
    with seqify.from_batch_fn(lambda i: make_batch(i + off), 5, shuffle=True, seed=1, workers=2, use_multiprocessing=True) as original:
        first = two_epochs(original)  # its process pool is running now
        with loads(dumps(original)) as copy:
            assert_same_batches(two_epochs(copy), first)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_generator_object_source_cannot_be_pickled_and_the_error_says_to_pass_the_function(dumps):
    with seqify.from_generator(counting_stream(0), steps_per_epoch=3) as ds:
        with pytest.raises(TypeError) as info:
            dumps(ds)
    message = str(info.value)
    assert "generator *object*" in message
    assert "generator function" in message
    assert "seqify.from_generator(my_generator, args=" in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_process_workers_run_a_lambda_closure_through_fit_under_every_start_method(model, start_method):
    offset = 1000  # captured: the lambda is a closure
    fn = lambda i: (np.full((4, 3), i + offset, "float32"), np.zeros((4, 1), "float32"))  # noqa: E731
    with seqify.from_batch_fn(fn, 4, workers=2, use_multiprocessing=True, start_method=start_method) as ds:
        model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert model.trained == [1000, 1001, 1002, 1003] * 2


@pytest.mark.timeout(60)
def test_process_workers_run_a_transform_lambda_under_forkserver(model):
    def stream():
        i = 0
        while True:
            yield np.full((4, 3), i, "float32"), np.zeros((4, 1), "float32")
            i += 1

    shift = 100
    with seqify.from_generator(
        stream, steps_per_epoch=3, transform=lambda batch: (batch[0] + shift, batch[1]),
        workers=2, use_multiprocessing=True, start_method="forkserver",
    ) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == [100, 101, 102, 103, 104, 105]
