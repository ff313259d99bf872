"""`seqify.from_arrays`: every *sample* exactly once per epoch, batching and errors."""

import collections

import numpy as np
import pytest

import seqify
from conftest import WORKER_SETTINGS, FIT_SHUFFLE, RecordingModel, assert_no_warnings

N = 10  # samples; with batch_size=4 -> batches of 4, 4 and 2
FEATURES = 3
Inputs = collections.namedtuple("Inputs", "image mask")


class SampleRecorder(RecordingModel):
    """Records the sample ids (x[:, 0]) of every batch that fit trains on."""

    def __init__(self):
        super().__init__()
        self.train_batches = []

    def train_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(x, dict):
            x = x["x"]
        self.train_batches.append([int(v) for v in np.asarray(x)[:, 0]])
        return super().train_step(data)


@pytest.fixture
def sample_model():
    model = SampleRecorder()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    return model


def samples(n=N):
    """x row k is all k (its sample id); y is zeros."""
    x = np.repeat(np.arange(n, dtype="float32")[:, None], FEATURES, axis=1)
    return x, np.zeros((n, 1), dtype="float32")


def epochs_of(batches, batches_per_epoch):
    assert len(batches) % batches_per_epoch == 0, batches
    return [batches[k : k + batches_per_epoch] for k in range(0, len(batches), batches_per_epoch)]


def flat(batches):
    return [s for b in batches for s in b]


# -- every sample exactly once ---------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fit_kwargs", FIT_SHUFFLE)
@pytest.mark.parametrize("workers,use_mp", WORKER_SETTINGS)
def test_fit_trains_every_sample_once_per_epoch_in_fits_order(sample_model, workers, use_mp, fit_kwargs):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, seed=9, workers=workers, use_multiprocessing=use_mp) as ds:
        sample_model.fit(ds, epochs=2, verbose=0, **fit_kwargs)
    epochs = epochs_of(sample_model.train_batches, 3)
    if fit_kwargs.get("shuffle", True):  # fit's default shuffles samples, as Keras does for arrays
        for epoch, batches in enumerate(epochs):
            perm = np.random.default_rng([9, epoch, 2]).permutation(N)
            assert batches == [perm[0:4].tolist(), perm[4:8].tolist(), perm[8:10].tolist()]
        assert epochs[0] != epochs[1]
    else:
        assert epochs == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]] * 2


def test_last_partial_batch_is_kept(sample_model):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, shuffle=False) as ds:
        assert len(ds) == 3
        sample_model.fit(ds, epochs=1, verbose=0)
    assert [len(b) for b in sample_model.train_batches] == [4, 4, 2]
    assert flat(sample_model.train_batches) == list(range(N))


def test_drop_remainder_drops_the_last_partial_batch(sample_model):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, drop_remainder=True, shuffle=False) as ds:
        assert len(ds) == 2
        sample_model.fit(ds, epochs=2, verbose=0)
    assert sample_model.train_batches == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2


def test_fit_steps_per_epoch_smaller_than_data_walks_through_the_samples(sample_model):
    x, y = samples(12)
    with seqify.from_arrays(x, y, batch_size=4, workers=2) as ds:
        sample_model.fit(ds, epochs=4, steps_per_epoch=1, verbose=0, shuffle=False)
    assert sample_model.train_batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers,use_mp", [(2, False), (2, True)], ids=["threads-2", "processes-2"])
def test_shuffle_is_per_sample_every_sample_once_per_epoch_new_order_each_epoch(sample_model, workers, use_mp):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, shuffle=True, seed=7, workers=workers, use_multiprocessing=use_mp) as ds:
        sample_model.fit(ds, epochs=3, verbose=0)
    epochs = epochs_of(sample_model.train_batches, 3)
    contiguous = [{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}]
    for batches in epochs:
        assert sorted(flat(batches)) == list(range(N))  # every sample exactly once
        assert [len(b) for b in batches] == [4, 4, 2]
        # Per-sample, not per-batch: batches mix samples from different blocks.
        assert [set(b) for b in batches] != contiguous
    assert len({tuple(flat(batches)) for batches in epochs}) == 3


@pytest.mark.timeout(60)
def test_shuffle_with_same_seed_is_identical_across_objects_and_worker_settings():
    x, y = samples()
    orders = {}
    for workers, use_mp in [(1, False), (1, False), (4, False), (2, True), (4, True)]:
        model = SampleRecorder()
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
        with seqify.from_arrays(x, y, batch_size=4, shuffle=True, seed=13, workers=workers, use_multiprocessing=use_mp) as ds:
            model.fit(ds, epochs=2, verbose=0)
        orders.setdefault(repr(model.train_batches), []).append((workers, use_mp))
    assert len(orders) == 1, f"different sample orders for different settings: {orders}"


def test_shuffle_with_drop_remainder_keeps_only_full_batches_of_distinct_samples(sample_model):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, shuffle=True, seed=2, drop_remainder=True, workers=2) as ds:
        sample_model.fit(ds, epochs=3, verbose=0)
    for batches in epochs_of(sample_model.train_batches, 2):
        assert [len(b) for b in batches] == [4, 4]
        assert len(set(flat(batches))) == 8


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_shuffle_keeps_x_y_and_sample_weight_rows_together(use_mp):
    ids = np.arange(N, dtype="float32")
    x = np.repeat(ids[:, None], FEATURES, axis=1)
    y = ids[:, None] * 10
    sw = ids * 100
    with seqify.from_arrays(x, y, sw, batch_size=4, shuffle=True, seed=3, workers=2, use_multiprocessing=use_mp) as ds:
        for _ in range(2):
            seen = []
            for bx, by, bsw in ds.iter_epoch():
                np.testing.assert_array_equal(by[:, 0], bx[:, 0] * 10)
                np.testing.assert_array_equal(bsw, bx[:, 0] * 100)
                seen.extend(int(v) for v in bx[:, 0])
            assert sorted(seen) == list(range(N))


@pytest.mark.timeout(60)
def test_large_batches_from_process_workers_train_every_sample_once(sample_model):
    # 4 x 5000 float32 = 80 KB per x batch: above the inline limit, so the
    # batches travel through shared memory.
    n, features = 12, 5000
    x = np.repeat(np.arange(n, dtype="float32")[:, None], features, axis=1)
    y = np.zeros((n, 1), "float32")
    with seqify.from_arrays(x, y, batch_size=4, shuffle=True, seed=9, workers=2, use_multiprocessing=True) as ds:
        sample_model.fit(ds, epochs=2, verbose=0)
    for batches in epochs_of(sample_model.train_batches, 3):
        assert sorted(flat(batches)) == list(range(n))


def test_dict_inputs_keep_their_structure_through_fit(sample_model):
    x, y = samples()
    with seqify.from_arrays({"x": x}, y, batch_size=4, workers=2, shuffle=False) as ds:
        batch = ds[0]
        assert isinstance(batch[0], dict) and set(batch[0]) == {"x"}
        sample_model.fit(ds, epochs=1, verbose=0)
    assert sample_model.train_batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def _structured_inputs(kind):
    ids = np.arange(N, dtype="float32")
    image, mask = np.repeat(ids[:, None], FEATURES, axis=1), ids[:, None] * 10
    if kind == "namedtuple":
        return Inputs(image=image, mask=mask)
    return collections.OrderedDict([("mask", mask), ("image", image)])


def _fields(inputs):
    """(image, mask) of a namedtuple or an OrderedDict of inputs."""
    if isinstance(inputs, dict):
        return inputs["image"], inputs["mask"]
    return inputs.image, inputs.mask


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["namedtuple", "ordereddict"])
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_namedtuple_and_ordereddict_inputs_are_sliced_into_batches_of_the_same_type(kind, use_mp):
    x = _structured_inputs(kind)
    with seqify.from_arrays(x, batch_size=4, shuffle=False, workers=2, use_multiprocessing=use_mp) as ds:
        batches = list(ds.iter_epoch())
    assert len(batches) == 3
    for (bx,), (start, stop) in zip(batches, [(0, 4), (4, 8), (8, 10)]):
        assert type(bx) is type(x)
        if kind == "ordereddict":
            assert list(bx) == ["mask", "image"]
        image, mask = _fields(bx)
        np.testing.assert_array_equal(image, _fields(x)[0][start:stop])
        np.testing.assert_array_equal(mask, np.arange(start, stop, dtype="float32")[:, None] * 10)


@pytest.mark.parametrize("kind", ["namedtuple", "ordereddict"])
def test_shuffled_namedtuple_and_ordereddict_inputs_keep_each_samples_fields_together(kind):
    x = _structured_inputs(kind)
    with seqify.from_arrays(x, batch_size=4, shuffle=True, seed=5, workers=2) as ds:
        seen = []
        for (bx,) in ds.iter_epoch():
            assert type(bx) is type(x)
            image, mask = _fields(bx)
            np.testing.assert_array_equal(mask[:, 0], image[:, 0] * 10)
            seen.extend(int(v) for v in image[:, 0])
    perm = np.random.default_rng([5, 0, 2]).permutation(N)
    assert seen == perm.tolist()


def test_namedtuple_inputs_of_different_lengths_are_a_value_error_naming_each_field():
    with pytest.raises(ValueError) as info:
        seqify.from_arrays(Inputs(image=np.zeros((10, 3)), mask=np.zeros((7, 1))), batch_size=4)
    assert "x[0]: 10" in str(info.value) and "x[1]: 7" in str(info.value)


def test_no_warning_from_fit_evaluate_predict_with_a_partial_batch(sample_model):
    x, y = samples()
    with seqify.from_arrays(x, y, batch_size=4, workers=2) as ds:
        with assert_no_warnings():
            sample_model.fit(ds, epochs=2, verbose=0)
            sample_model.evaluate(ds, verbose=0)
            out = sample_model.predict(ds, verbose=0)
    assert out.shape == (N, 1)


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        pytest.param(dict(x=np.zeros((10, 3)), y=np.zeros((9, 1))), ["x: 10", "y: 9"], id="x-vs-y"),
        pytest.param(dict(x=np.zeros((10, 3)), y=np.zeros((10, 1)), sample_weight=np.zeros(8)), ["x: 10", "y: 10", "sample_weight: 8"], id="sample_weight"),
        pytest.param(dict(x={"a": np.zeros((10, 3)), "b": np.zeros((7, 2))}), ["x['a']: 10", "x['b']: 7"], id="dict-inputs"),
    ],
)
def test_arrays_of_different_lengths_are_a_value_error_naming_each_length(kwargs, expected):
    with pytest.raises(ValueError) as info:
        seqify.from_arrays(**kwargs, batch_size=4)
    message = str(info.value)
    for part in expected:
        assert part in message
    assert "same number of samples" in message


@pytest.mark.parametrize("batch_size", [0, -2, 2.5, None])
def test_bad_batch_size_is_a_value_error_naming_batch_size(batch_size):
    x, y = samples()
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1"):
        seqify.from_arrays(x, y, batch_size=batch_size)


def test_too_few_samples_for_one_batch_with_drop_remainder_is_a_value_error():
    x, y = samples(3)
    with pytest.raises(ValueError, match=r"batch_size=4 with drop_remainder=True"):
        seqify.from_arrays(x, y, batch_size=4, drop_remainder=True)
