"""seqify objects where Keras expects a PyDataset: the adapter protocol in
every call order Keras allows, direct iteration, and the misuse Keras's own
machinery would otherwise turn into silently wrong data."""

import os
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.trainers import data_adapters
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

import seqify
from conftest import assert_no_warnings, batch_ids, make_batch


def stream():
    i = 0
    while True:
        yield make_batch(i)
        i += 1


class Counting(seqify.Sequence):
    """Batch i has id i; counts its epoch hooks."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.begins = 0
        self.ends = 0

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return make_batch(index)

    def on_epoch_begin(self):
        self.begins += 1

    def on_epoch_end(self):
        self.ends += 1


class Infinite(seqify.Sequence):
    """An infinite Sequence, as Keras allows: `num_batches` is None."""

    @property
    def num_batches(self):
        return None

    def __getitem__(self, index):
        return make_batch(index)


def test_epoch_served_wholly_from_batches_pulled_ahead_still_runs_both_hooks():
    # fit(steps_per_epoch=2) over 4 batches: one pass spans two Keras epochs,
    # and a prefetcher may already hold the second epoch's batches.
    with Counting(4, workers=2, shuffle=False) as ds:
        adapter = data_adapters.get_data_adapter(ds, shuffle=False, steps_per_epoch=2)
        adapter.on_epoch_begin()
        iterator = adapter.get_numpy_iterator()
        pulled = [next(iterator) for _ in range(4)]  # all of them, ahead of use
        adapter.on_epoch_end()
        adapter.on_epoch_begin()  # nothing more is fetched in this epoch
        adapter.on_epoch_end()
        assert batch_ids(pulled) == [0, 1, 2, 3]
        assert (ds.begins, ds.ends) == (2, 2)


# -- the adapter protocol, driven as Keras drives it ------------------------------
def _epoch(adapter, order):
    if order == "iterator-first":  # as Keras's py_dataset_adapter_test.py does
        iterator = adapter.get_numpy_iterator()
        adapter.on_epoch_begin()
    else:
        adapter.on_epoch_begin()
        iterator = adapter.get_numpy_iterator()
    ids = batch_ids(iterator)
    adapter.on_epoch_end()
    return ids


@pytest.mark.parametrize("order", ["iterator-first", "epoch-begin-first"])
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_adapter_protocol_serves_each_batch_once_per_epoch_in_either_call_order(order, use_mp):
    with Counting(5, workers=2, use_multiprocessing=use_mp, shuffle=False) as ds:
        adapter = data_adapters.get_data_adapter(ds, shuffle=False)
        assert [_epoch(adapter, order) for _ in range(2)] == [list(range(5))] * 2
        assert (ds.begins, ds.ends) == (2, 2)


@pytest.mark.parametrize("order", ["iterator-first", "epoch-begin-first"])
def test_adapter_protocol_reads_a_stream_in_consecutive_windows_in_either_call_order(order):
    with seqify.from_generator(stream, steps_per_epoch=3, workers=2) as ds:
        adapter = data_adapters.get_data_adapter(ds, shuffle=True)
        assert [_epoch(adapter, order) for _ in range(2)] == [[0, 1, 2], [3, 4, 5]]


def _tensor_batch(i):
    return tf.constant(np.full((2, 3), i, np.float32)), np.full((2, 1), i, np.float32)


@pytest.mark.parametrize("batch_fn", [make_batch, _tensor_batch], ids=["ndarrays", "a_tensor_leaf"])
def test_adapter_jax_iterator_yields_what_keras_jax_conversion_yields_in_order(batch_fn):
    from keras.src.trainers.data_adapters import data_adapter_utils

    with seqify.from_batch_fn(batch_fn, 4) as ds:
        adapter = data_adapters.get_data_adapter(ds, shuffle=False)
        adapter.on_epoch_begin()
        got = list(adapter.get_jax_iterator())
        adapter.on_epoch_end()
    expected = list(data_adapter_utils.get_jax_iterator(batch_fn(i) for i in range(4)))
    assert len(got) == len(expected) == 4
    for mine, keras_own in zip(got, expected):
        assert type(mine) is type(keras_own) and len(mine) == len(keras_own)
        for a, b in zip(mine, keras_own):
            assert type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("order", ["iterator-first", "epoch-begin-first"])
def test_adapter_tf_dataset_serves_each_batch_once_per_epoch_in_either_call_order(order):
    with Counting(4, workers=2, shuffle=False) as ds:
        adapter = data_adapters.get_data_adapter(ds, shuffle=False)
        dataset = adapter.get_tf_dataset()  # Keras's TF trainer asks before any epoch
        epochs = []
        for _ in range(2):
            if order == "iterator-first":
                iterator = iter(dataset)
                adapter.on_epoch_begin()
            else:
                adapter.on_epoch_begin()
                iterator = iter(dataset)
            epochs.append(batch_ids(b for b in iterator))
            adapter.on_epoch_end()
        assert epochs == [list(range(4))] * 2
        assert (ds.begins, ds.ends) == (2, 2)


# -- threadsafe iterators in fit (issue 7.3) -------------------------------------------
def test_threadsafe_generator_passed_to_fit_trains_each_batch_once_in_order_without_warning(model):
    @seqify.threadsafe
    def legacy():
        yield from stream()

    data = legacy()
    with assert_no_warnings():
        model.fit(data, steps_per_epoch=3, epochs=2, verbose=0)
        model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
    assert model.trained == list(range(9))


def test_threadsafe_generator_in_fit_without_steps_per_epoch_is_an_error_naming_it(model):
    @seqify.threadsafe
    def legacy():
        yield from stream()

    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(legacy(), epochs=1, verbose=0)


# -- infinite Sequence subclasses (issue 7.2) ------------------------------------------
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_infinite_sequence_subclass_with_workers_runs_on_across_epochs_exactly_once(model, use_mp):
    with Infinite(workers=2, use_multiprocessing=use_mp) as ds:
        model.fit(ds, steps_per_epoch=4, epochs=3, verbose=0)
        assert model.trained == list(range(12))
        assert batch_ids([next(iter(ds))]) == [12]


# -- direct iteration (issue 7.9) -------------------------------------------------------
def _pid_batch(i):
    return np.full((2, 1), i, "float32"), np.full((2, 1), os.getpid(), "float32")


def _thread_batch(i):
    return np.full((2, 1), i, "float32"), threading.current_thread().name


def test_iterating_an_object_builds_its_batches_on_its_worker_processes_in_order():
    with seqify.from_batch_fn(_pid_batch, 8, workers=2, use_multiprocessing=True) as ds:
        batches = list(ds)
    assert batch_ids(batches) == list(range(8))
    pids = {int(y[0, 0]) for _, y in batches}
    assert os.getpid() not in pids and len(pids) == 2


def test_iterating_an_object_builds_its_batches_on_its_worker_threads():
    with seqify.from_batch_fn(_thread_batch, 6, workers=2) as ds:
        batches = list(ds)
    assert batch_ids(batches) == list(range(6))
    assert threading.current_thread().name not in {name for _, name in batches}


# -- a stream driven by Keras's own PyDataset machinery (issue 7.6) -----------------------
def test_keras_own_adapter_with_thread_workers_and_shuffle_raises_instead_of_reordering_a_stream():
    with seqify.from_generator(stream, steps_per_epoch=8, workers=2) as ds:
        adapter = PyDatasetAdapter(ds, shuffle=True)
        with pytest.raises(RuntimeError, match="no random access"):
            for _ in range(3):  # Keras's shuffle may keep index 0 first once
                adapter.on_epoch_begin()
                list(adapter.get_numpy_iterator())
                adapter.on_epoch_end()


def test_keras_own_adapter_with_process_workers_raises_instead_of_duplicating_a_stream():
    with seqify.from_generator(stream, steps_per_epoch=4, workers=2, use_multiprocessing=True) as ds:
        adapter = PyDatasetAdapter(ds, shuffle=False)
        adapter.on_epoch_begin()
        with pytest.raises(Exception, match="replay its own copy"):
            list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()


# -- tf.data signature from the first batches (issue 7.4) ----------------------------------
def _ragged_stream(lengths):
    for i, length in enumerate(lengths):
        yield np.full((2, length, 3), i, "float32"), np.zeros((2, 1), "float32")


def _sequence_model():
    model = keras.Sequential([keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def test_variable_length_stream_trains_on_the_tf_backend_with_the_varying_dimension_relaxed():
    lengths = [5, 7, 4, 6, 9, 3]
    with seqify.from_generator(_ragged_stream(lengths), steps_per_epoch=6) as ds:
        history = _sequence_model().fit(ds, epochs=1, verbose=0)
        spec = ds.to_tf_dataset().element_spec[0]
    assert len(history.history["loss"]) == 1
    assert spec.shape.as_list() == [None, None, 3]


def test_later_batch_outside_the_inferred_signature_is_an_error_naming_output_signature():
    with seqify.from_generator(_ragged_stream([5, 5, 5, 8]), steps_per_epoch=4) as ds:
        with pytest.raises(Exception, match="output_signature"):
            _sequence_model().fit(ds, epochs=1, verbose=0)


def test_given_output_signature_lets_any_length_through():
    import tensorflow as tf

    signature = (tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((None, 1), tf.float32))
    with seqify.from_generator(_ragged_stream([5, 5, 5, 8]), steps_per_epoch=4, output_signature=signature) as ds:
        history = _sequence_model().fit(ds, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


def test_signature_inference_builds_only_the_first_batches_never_the_last():
    built = []

    def fn(i):
        built.append(i)
        if i == 9:
            raise AssertionError("the last batch was built to infer a signature")
        return make_batch(i)

    with seqify.from_batch_fn(fn, 10) as ds:
        ds.to_tf_dataset()
    assert sorted(set(built)) == [0, 1]
