"""seqify objects inside a real `model.fit`/`evaluate`/`predict` (TensorFlow backend).

What a user gets when their code raises inside a worker during `fit`: tf.data
(`Dataset.from_generator`) re-raises every Python exception as a
`tf.errors.OpError` subclass chosen from the exception type (ValueError and
TypeError -> InvalidArgumentError, MemoryError -> ResourceExhaustedError,
NotImplementedError -> UnimplementedError, anything else -> UnknownError). The
original type name, message, seqify's batch note and the traceback (for process
workers, the worker-side traceback with the user's function) are all in the
error's message. Iterating the object directly re-raises the original
exception itself (see tests/adapters/test_batch_fn.py).
"""

import os
import threading

import numpy as np
import pytest
import tensorflow as tf

import seqify
from conftest import assert_no_warnings, expected_epochs, make_batch, recording_model, split_epochs, Plain


def load_sample_that_fails(i):
    if i == 3:
        raise KeyError("bad sample 3")
    return make_batch(i)


def load_sample_with_bad_value(i):
    if i == 3:
        raise ValueError("sample 3 has a negative length")
    return make_batch(i)


def raises_stop_iteration_at_3(i):
    if i == 3:
        raise StopIteration("legacy code called next() on an exhausted iterator")
    return make_batch(i)


def raises_index_error_at_3(i):
    if i == 3:
        raise IndexError("list index out of range (in user code)")
    return make_batch(i)


def counting_stream(start=0):
    i = start
    while True:
        yield make_batch(i)
        i += 1


def identity(batch):
    return batch


def _arrays(n=8, **kwargs):
    x = np.repeat(np.arange(n, dtype="float32")[:, None], 3, axis=1)
    return seqify.from_arrays(x, np.zeros((n, 1), "float32"), batch_size=4, **kwargs)


ADAPTERS = {
    "from_batch_fn": lambda **kw: seqify.from_batch_fn(make_batch, 4, **kw),
    "from_arrays": lambda **kw: _arrays(16, **kw),
    "from_generator": lambda **kw: seqify.from_generator(counting_stream, steps_per_epoch=4, transform=identity, **kw),
    "Sequence-subclass": lambda **kw: Plain(4, **kw),
}
THREADS_AND_PROCESSES = [
    pytest.param(False, id="threads"),
    pytest.param(True, id="processes"),
]


# -- no warnings ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_fit_evaluate_predict_emit_no_warning(model, adapter, use_mp):
    with ADAPTERS[adapter](workers=2, use_multiprocessing=use_mp) as ds:
        with assert_no_warnings():
            model.fit(ds, epochs=2, verbose=0, shuffle=False)
            model.evaluate(ds, verbose=0)
            model.predict(ds, verbose=0)
    assert len(model.trained) == 8
    assert len(model.tested) == len(model.predicted) == 4


@pytest.mark.timeout(60)
def test_fit_with_validation_data_emits_no_warning(model):
    with seqify.from_batch_fn(make_batch, 4, workers=2) as train, seqify.from_batch_fn(make_batch, 2, workers=2, use_multiprocessing=True) as val:
        with assert_no_warnings():
            model.fit(train, validation_data=val, epochs=2, verbose=0, shuffle=False)
    assert model.tested == [0, 1] * 2


# -- validation_data, evaluate, predict ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
def test_validation_data_consumes_each_validation_batch_once_per_epoch(model, use_mp):
    with seqify.from_batch_fn(make_batch, 4, workers=2) as train, seqify.from_batch_fn(
        lambda i: make_batch(100 + i), 3, workers=2, use_multiprocessing=use_mp
    ) as val:
        model.fit(train, validation_data=val, epochs=3, verbose=0, shuffle=False)
    assert split_epochs(model.trained, 4) == [[0, 1, 2, 3]] * 3
    assert split_epochs(model.tested, 3) == [[100, 101, 102]] * 3


def test_validation_stream_reads_consecutive_windows_each_epoch(model):
    with seqify.from_batch_fn(make_batch, 2, workers=2) as train, seqify.from_generator(
        counting_stream, args=(100,), steps_per_epoch=3, transform=identity, workers=2
    ) as val:
        model.fit(train, validation_data=val, epochs=3, verbose=0, shuffle=False)
    assert model.tested == list(range(100, 109))


@pytest.mark.timeout(120)
def test_fit_trains_each_cheap_batch_once_in_order_while_the_consumer_builds_them(model, monkeypatch):
    # Batches of a few µs are left to the consuming thread by the thread
    # workers (docs/design.md, record 29): fit's order and counts must not notice.
    # Under fit the eager steps hold the GIL and inflate the workers' measured
    # cost, so "cheap" is forced here; tests/engine/test_window.py checks the
    # real thresholds.
    from seqify.engine import window

    monkeypatch.setattr(window, "INLINE_BATCH_SECONDS", 1.0)
    monkeypatch.setattr(window, "INLINE_LEAVE_SECONDS", 1.0)
    built = []

    def batch(i):
        built.append(threading.current_thread().name)
        return make_batch(i)

    with seqify.from_batch_fn(batch, 300, workers=2, seed=7) as ds:
        model.fit(ds, epochs=2, verbose=0)
        worker_prefix = type(ds).__name__ + "_"  # the pool's thread names
    assert model.trained == sum(expected_epochs(7, 300, 2, {}), [])
    assert sum(not name.startswith(worker_prefix) for name in built) > 300


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
def test_evaluate_consumes_each_batch_once_in_order(model, use_mp):
    with seqify.from_batch_fn(make_batch, 6, workers=4, use_multiprocessing=use_mp) as ds:
        model.evaluate(ds, verbose=0)
        model.evaluate(ds, verbose=0)
    assert model.tested == list(range(6)) * 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
def test_predict_returns_outputs_in_batch_order(model, use_mp):
    with seqify.from_batch_fn(make_batch, 6, workers=4, use_multiprocessing=use_mp) as ds:
        out = model.predict(ds, verbose=0)
    assert model.predicted == list(range(6))
    expected = np.concatenate([np.asarray(model(make_batch(i)[0])) for i in range(6)])
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_predict_on_arrays_returns_one_row_per_sample_in_sample_order_including_the_partial_batch(model):
    n = 10
    x = np.repeat(np.arange(n, dtype="float32")[:, None], 3, axis=1)
    with seqify.from_arrays(x, batch_size=4, workers=2) as ds:
        out = model.predict(ds, verbose=0)
    assert out.shape == (n, 1)
    np.testing.assert_allclose(out, np.asarray(model(x)), rtol=1e-6)


# -- exceptions from user code through fit (TensorFlow backend) ---------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
def test_exception_in_worker_stops_fit_with_type_message_batch_and_user_traceback_in_the_error(model, use_mp):
    with seqify.from_batch_fn(load_sample_that_fails, 6, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(tf.errors.OpError) as info:
            model.fit(ds, epochs=2, verbose=0, shuffle=False)
    message = str(info.value)
    assert "KeyError: 'bad sample 3'" in message
    assert "batch 3 (epoch 0)" in message
    assert ("worker process" if use_mp else "worker thread") in message
    assert "load_sample_that_fails" in message  # the user's frame, from the (remote) traceback
    assert model.trained == [0, 1, 2]  # stopped at the failing batch; nothing skipped before it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
@pytest.mark.parametrize(
    "fn,tf_error,text",
    [
        pytest.param(load_sample_that_fails, tf.errors.UnknownError, "KeyError: 'bad sample 3'", id="KeyError"),
        pytest.param(load_sample_with_bad_value, tf.errors.InvalidArgumentError, "ValueError: sample 3 has a negative length", id="ValueError"),
    ],
)
def test_tf_error_class_that_fit_raises_for_a_user_exception(model, fn, tf_error, text, use_mp):
    with seqify.from_batch_fn(fn, 5, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(tf_error) as info:
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert text in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", THREADS_AND_PROCESSES)
@pytest.mark.parametrize(
    "fn,text",
    [
        pytest.param(raises_stop_iteration_at_3, "StopIteration: legacy code called next() on an exhausted iterator", id="StopIteration"),
        pytest.param(raises_index_error_at_3, "IndexError: list index out of range (in user code)", id="IndexError"),
    ],
)
def test_stop_iteration_or_index_error_in_user_code_fails_fit_instead_of_silently_ending_the_epoch(model, fn, text, use_mp):
    with seqify.from_batch_fn(fn, 6, workers=2, use_multiprocessing=use_mp) as ds:
        with assert_no_warnings():  # no "Your input ran out of data" either
            with pytest.raises(tf.errors.OpError) as info:
                model.fit(ds, epochs=2, verbose=0, shuffle=False)
    message = str(info.value)
    assert text in message
    assert "batch 3" in message
    assert model.trained == [0, 1, 2]


@pytest.mark.timeout(60)
def test_exception_in_transform_process_stops_fit_with_type_message_and_stream_batch(model):
    def transform(batch):
        if int(batch[0][0, 0]) == 4:
            raise ArithmeticError("augmentation diverged on batch 4")
        return batch

    with seqify.from_generator(counting_stream, steps_per_epoch=3, transform=transform, workers=2, use_multiprocessing=True) as ds:
        with pytest.raises(tf.errors.OpError) as info:
            model.fit(ds, epochs=2, verbose=0, shuffle=False)
    message = str(info.value)
    assert "ArithmeticError: augmentation diverged on batch 4" in message
    assert "transforming stream batch 4" in message
    assert model.trained == [0, 1, 2, 3]


def test_a_fresh_fit_after_a_failed_one_trains_normally():
    model = recording_model()

    def fails_in_first_pass(i):
        # Batches 0 and 1 also build the tf.data signature (epoch 0, as
        # Keras does), so the failure is on batch 2.
        if i == 2 and seqify.worker_info().epoch == 0:
            raise RuntimeError("transient")
        return make_batch(i)

    with seqify.from_batch_fn(fails_in_first_pass, 4, workers=2) as ds:
        with pytest.raises(tf.errors.OpError):
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
        model.trained.clear()
        model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 3] * 2


@pytest.mark.timeout(60)
def test_closed_object_is_usable_again_and_fit_still_sees_each_batch_once(model):
    with seqify.from_batch_fn(make_batch, 3, workers=2, use_multiprocessing=True) as ds:
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
        ds.close()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 0, 1, 2]


def test_closing_a_stream_between_fits_loses_no_batch(model):
    with seqify.from_generator(counting_stream, steps_per_epoch=3, transform=identity, workers=2) as ds:
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
        ds.close()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 3, 4, 5]


# -- misc fit arguments -------------------------------------------------------------------------


def test_fit_rejects_y_and_sample_weight_for_a_seqify_object(model):
    with seqify.from_batch_fn(make_batch, 2) as ds:
        with pytest.raises(ValueError, match="y"):
            model.fit(ds, y=np.zeros((8, 1)), verbose=0, shuffle=False)
        with pytest.raises(ValueError, match="sample_weight"):
            model.fit(ds, sample_weight=np.ones(8), verbose=0, shuffle=False)
    assert model.trained == []


def test_objects_other_than_seqify_still_reach_keras_unchanged(model):
    x, y = make_batch(5, batch_size=8)
    with assert_no_warnings():
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert model.trained == [5, 5]


@pytest.mark.timeout(60)
def test_worker_processes_are_reused_across_epochs_and_calls():
    model = recording_model()

    def fn(i):
        return make_batch(i)[0], np.full((4, 1), os.getpid(), "float32")

    with seqify.from_batch_fn(fn, 4, workers=2, use_multiprocessing=True) as ds:
        pids = {int(b[1][0, 0]) for _ in range(3) for b in ds.iter_epoch()}
        model.fit(ds, epochs=2, verbose=0, shuffle=False)
        pids |= {int(b[1][0, 0]) for b in ds.iter_epoch()}
    assert len(pids) == 2  # the same two workers served every epoch and call
    assert os.getpid() not in pids
