"""`seqify.from_generator`: stream order, epochs as windows, transforms on workers, errors."""

import os

import numpy as np
import pytest

import seqify
from conftest import WORKER_SETTINGS, FIT_SHUFFLE, assert_no_warnings, make_batch


def counting_stream(start=0, step=1):
    """A legacy `while True` generator: batch ids start, start+step, ..."""
    i = start
    while True:
        yield make_batch(i)
        i += step


def finite_stream(n):
    for i in range(n):
        yield make_batch(i)


def identity(batch):
    return batch


def tag_with_pid(batch):
    x, _ = batch
    return x, np.full((len(x), 1), os.getpid(), dtype="int64")


def transform_that_fails(batch):
    if int(batch[0].reshape(-1)[0]) == 2:
        raise ValueError("cannot augment stream batch 2")
    return batch


def first_ids(batches):
    return [int(np.asarray(b[0]).reshape(-1)[0]) for b in batches]


# -- stream order ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fit_kwargs", FIT_SHUFFLE)
@pytest.mark.parametrize("workers,use_mp", WORKER_SETTINGS)
def test_fit_reads_the_stream_in_order_epochs_are_consecutive_windows(model, workers, use_mp, fit_kwargs):
    with seqify.from_generator(counting_stream, steps_per_epoch=5, transform=identity, workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0, **fit_kwargs)
    assert model.trained == list(range(15))  # epoch 1: 0-4, epoch 2: 5-9, epoch 3: 10-14


@pytest.mark.parametrize("fit_kwargs", FIT_SHUFFLE)
def test_fit_without_transform_reads_the_stream_in_order(model, fit_kwargs):
    with seqify.from_generator(counting_stream, steps_per_epoch=4, workers=4) as ds:
        model.fit(ds, epochs=3, verbose=0, **fit_kwargs)
    assert model.trained == list(range(12))


def test_generator_function_gets_args_and_kwargs(model):
    with seqify.from_generator(counting_stream, args=(100,), kwargs={"step": 10}, steps_per_epoch=3) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == [100, 110, 120, 130, 140, 150]


def test_generator_object_is_read_in_order_across_epochs(model):
    with seqify.from_generator(counting_stream(7), steps_per_epoch=3, transform=identity, workers=2) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == [7, 8, 9, 10, 11, 12]


def test_fit_steps_per_epoch_smaller_than_stream_epoch_keeps_reading_consecutive_batches(model):
    with seqify.from_generator(counting_stream, steps_per_epoch=6, transform=identity, workers=2) as ds:
        with assert_no_warnings():
            model.fit(ds, epochs=6, steps_per_epoch=2, verbose=0)
    assert model.trained == list(range(12))


def test_finite_generator_function_ending_at_an_epoch_boundary_restarts_each_epoch(model):
    with seqify.from_generator(finite_stream, args=(4,), steps_per_epoch=4) as ds:
        model.fit(ds, epochs=3, verbose=0)
    assert model.trained == [0, 1, 2, 3] * 3


def test_source_with_len_needs_no_steps_per_epoch_and_each_epoch_is_one_pass(model):
    batches = [make_batch(i) for i in range(4)]
    with seqify.from_generator(batches, transform=identity, workers=2) as ds:
        assert len(ds) == 4
        model.fit(ds, epochs=3, verbose=0)
    assert model.trained == [0, 1, 2, 3] * 3


def test_evaluate_and_predict_continue_the_stream_where_fit_stopped(model):
    with seqify.from_generator(counting_stream, steps_per_epoch=3, transform=identity, workers=2) as ds:
        model.fit(ds, epochs=2, verbose=0)
        model.evaluate(ds, verbose=0)
        model.predict(ds, verbose=0)
    assert model.trained == [0, 1, 2, 3, 4, 5]
    assert model.tested == [6, 7, 8]
    assert model.predicted == [9, 10, 11]


def test_iterating_directly_hands_out_consecutive_windows():
    with seqify.from_generator(counting_stream, steps_per_epoch=4, transform=identity, workers=2) as ds:
        assert first_ids(ds.iter_epoch()) == [0, 1, 2, 3]
        assert first_ids(ds.iter_epoch()) == [4, 5, 6, 7]


def test_a_pass_abandoned_midway_loses_no_batch():
    with seqify.from_generator(counting_stream, steps_per_epoch=4, transform=identity, workers=2) as ds:
        it = ds.iter_epoch()
        assert first_ids([next(it), next(it)]) == [0, 1]
        it.close()  # e.g. the consumer broke out of its loop
        assert first_ids(ds.iter_epoch()) == [2, 3, 4, 5]


# -- transform on process workers (stream stays in the main process) ---------------------


@pytest.mark.timeout(60)
def test_transform_runs_on_two_worker_processes_and_output_keeps_stream_order():
    with seqify.from_generator(counting_stream, steps_per_epoch=6, transform=tag_with_pid, workers=2, use_multiprocessing=True) as ds:
        batches = list(ds.iter_epoch()) + list(ds.iter_epoch())
    assert first_ids(batches) == list(range(12))
    pids = {int(b[1][0, 0]) for b in batches}
    assert os.getpid() not in pids
    assert len(pids) == 2


@pytest.mark.timeout(60)
def test_generator_object_with_spawned_process_workers_trains_each_batch_once_in_order(model):
    # Design decision: the stream runs in the main process and only the
    # transform is shipped, so a generator *object* works under spawn.
    def stream():
        i = 0
        while True:
            yield np.full((4, 3), i, "float32"), np.zeros((4, 1), "float32")
            i += 1

    with seqify.from_generator(
        stream(), steps_per_epoch=4, transform=lambda batch: batch,
        workers=2, use_multiprocessing=True, start_method="spawn",
    ) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == list(range(8))


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [counting_stream, counting_stream()], ids=["generator-function", "generator-object"])
def test_infinite_generator_without_steps_per_epoch_is_a_value_error_naming_steps_per_epoch(source):
    with pytest.raises(ValueError) as info:
        seqify.from_generator(source)
    message = str(info.value)
    assert "steps_per_epoch" in message
    assert "steps_per_epoch=N" in message  # says how to fix it


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps_per_epoch_is_a_value_error(steps):
    with pytest.raises(ValueError, match=r"`steps_per_epoch` must be an int >= 1"):
        seqify.from_generator(counting_stream, steps_per_epoch=steps)


def test_generator_running_dry_inside_an_epoch_raises_stream_exhausted_naming_steps_and_count():
    got = []
    with seqify.from_generator(finite_stream, args=(7,), steps_per_epoch=5) as ds:
        got.append(first_ids(ds.iter_epoch()))
        second = []
        with pytest.raises(seqify.StreamExhaustedError) as info:
            for batch in ds.iter_epoch():
                second.append(first_ids([batch])[0])
        got.append(second)
    assert got == [[0, 1, 2, 3, 4], [5, 6]]
    message = str(info.value)
    assert "steps_per_epoch" in message
    assert "after 2 of the 5 batches" in message
    assert "7 batches" in message


STREAM_PIPELINES = [
    pytest.param({}, id="no-transform"),
    pytest.param({"transform": identity, "workers": 2}, id="transform-on-threads"),
]


@pytest.mark.parametrize("pipeline", STREAM_PIPELINES)
def test_generator_running_dry_stops_fit_after_training_every_produced_batch_once(model, pipeline):
    with seqify.from_generator(finite_stream, args=(7,), steps_per_epoch=5, **pipeline) as ds:
        with pytest.raises(Exception) as info:
            model.fit(ds, epochs=2, verbose=0)
    message = str(info.value)
    assert "StreamExhaustedError" in message
    assert "steps_per_epoch" in message
    assert "after 2 of the 5 batches" in message
    assert model.trained == [0, 1, 2, 3, 4, 5, 6]


def _broken_stream():
    yield make_batch(0)
    yield make_batch(1)
    raise OSError("the data disk went away")


@pytest.mark.parametrize("pipeline", STREAM_PIPELINES)
def test_exception_raised_by_the_generator_itself_reaches_the_caller_after_the_batches_it_produced(pipeline):
    got = []
    with seqify.from_generator(_broken_stream, steps_per_epoch=4, **pipeline) as ds:
        with pytest.raises(OSError, match="the data disk went away"):
            for batch in ds.iter_epoch():
                got.append(first_ids([batch])[0])
    assert got == [0, 1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_exception_in_transform_reaches_caller_as_itself_with_batch_index(use_mp):
    got = []
    with seqify.from_generator(counting_stream, steps_per_epoch=5, transform=transform_that_fails, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(ValueError) as info:
            for batch in ds.iter_epoch():
                got.append(first_ids([batch])[0])
    exc = info.value
    assert type(exc) is ValueError
    assert str(exc) == "cannot augment stream batch 2"
    assert any("batch 2" in note for note in exc.__notes__)
    if use_mp:
        assert "transform_that_fails" in str(exc.__cause__)
    assert got == [0, 1]


def test_unpicklable_transform_with_process_workers_fails_at_construction_naming_transform():
    import threading

    guard = threading.Lock()

    def transform(batch):
        with guard:
            return batch

    with pytest.raises(TypeError) as info:
        seqify.from_generator(counting_stream, steps_per_epoch=3, transform=transform, workers=2, use_multiprocessing=True)
    message = str(info.value)
    assert "`transform`" in message
    assert "closure variable `guard`" in message


def test_no_warning_from_fit_evaluate_predict(model):
    with seqify.from_generator(counting_stream, steps_per_epoch=3, transform=identity, workers=2) as ds:
        with assert_no_warnings():
            model.fit(ds, epochs=2, verbose=0)
            model.evaluate(ds, verbose=0)
            model.predict(ds, verbose=0)
    assert model.trained + model.tested + model.predicted == list(range(12))
