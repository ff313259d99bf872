"""`Sequence.to_tf_dataset()`: signature, ordering, parallel workers, composition."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import seqify
import seqify.tf_dataset
from conftest import make_batch, model  # noqa: F401  (fixture)


def _identity(batch):
    return batch


def _ids(dataset):
    return [int(x.numpy().reshape(-1)[0]) for x, _ in dataset]


def test_element_spec_has_unknown_batch_dimension_and_exact_feature_shape():
    with seqify.from_batch_fn(make_batch, 5) as ds:
        spec = ds.to_tf_dataset().element_spec
    assert spec[0].shape.as_list() == [None, 3]
    assert spec[0].dtype == tf.float32
    assert spec[1].shape.as_list() == [None, 1]


def test_signature_inference_consumes_no_stream_batch():
    def gen():
        i = 0
        while True:
            yield make_batch(i)
            i += 1

    with seqify.from_generator(gen, steps_per_epoch=4) as ds:
        dataset = ds.to_tf_dataset()
        assert _ids(dataset) == [0, 1, 2, 3]
        assert _ids(dataset) == [4, 5, 6, 7]


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_each_iteration_is_one_ordered_epoch_from_parallel_workers(use_multiprocessing):
    with seqify.from_batch_fn(make_batch, 6, workers=2, use_multiprocessing=use_multiprocessing) as ds:
        dataset = ds.to_tf_dataset()
        assert _ids(dataset) == list(range(6))
        assert _ids(dataset) == list(range(6))


def test_composes_with_map_prefetch_and_unbatch():
    with seqify.from_batch_fn(make_batch, 4, workers=2) as ds:
        dataset = ds.to_tf_dataset().map(lambda x, y: (x * 2.0, y)).unbatch().prefetch(2)
        values = [int(x.numpy()[0]) for x, _ in dataset]
    assert values == [2 * i for i in range(4) for _ in range(4)]


def test_user_signature_is_used_as_given():
    signature = (tf.TensorSpec([4, 3], tf.float32), tf.TensorSpec([4, 1], tf.float32))
    with seqify.from_batch_fn(make_batch, 3) as ds:
        dataset = ds.to_tf_dataset(output_signature=signature)
        assert dataset.element_spec[0].shape.as_list() == [4, 3]
        assert _ids(dataset) == [0, 1, 2]


def test_trains_under_a_tf_distribute_strategy(model):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with seqify.from_batch_fn(make_batch, 5, workers=2) as ds:
        dataset = strategy.experimental_distribute_dataset(ds.to_tf_dataset())
        seen = [int(x.numpy().reshape(-1)[0]) for x, _ in dataset]
    assert seen == list(range(5))


# -- the chunked fit path (seqify/tf_dataset.py) through real model.fit --------------


def _counting_stream(start=0):
    i = start
    while True:
        yield make_batch(i)
        i += 1


class _StopAfter(keras.callbacks.Callback):
    """Stops fit mid-epoch after `steps` training steps (Keras drops the iterator)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 >= self.steps:
            self.model.stop_training = True


def test_fit_with_steps_per_epoch_below_length_trains_each_batch_once_per_pass_in_order(model):
    with seqify.from_batch_fn(make_batch, 8, workers=2) as ds:
        model.fit(ds, epochs=4, steps_per_epoch=4, verbose=0, shuffle=False)
    assert model.trained == [*range(8), *range(8)]


def test_fit_on_a_stream_with_steps_per_epoch_below_length_reads_consecutive_batches(model):
    with seqify.from_generator(_counting_stream, steps_per_epoch=8) as ds:
        model.fit(ds, epochs=5, steps_per_epoch=4, verbose=0)
    assert model.trained == list(range(20))


def test_stream_batches_pulled_ahead_when_fit_stops_mid_epoch_go_to_the_next_fit(model):
    with seqify.from_generator(_counting_stream, steps_per_epoch=6, transform=_identity, workers=2) as ds:
        model.fit(ds, epochs=3, verbose=0, callbacks=[_StopAfter(2)])
        assert model.trained == [0, 1]
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == list(range(14))


def test_fit_with_validation_stream_consumes_each_batch_once_per_epoch_in_order(model):
    with seqify.from_batch_fn(make_batch, 6, workers=2) as train, seqify.from_generator(
        _counting_stream, args=(100,), steps_per_epoch=3
    ) as val:
        model.fit(train, validation_data=val, epochs=3, verbose=0, shuffle=False)
    assert model.trained == [*range(6)] * 3
    assert model.tested == list(range(100, 109))


def _ragged_batch(i):
    # Feature width changes every batch: no two consecutive batches stack.
    x = np.full((4, 2 + i % 3), i, np.float32)
    return x, np.zeros((4, 1), np.float32)


def test_variable_shape_batches_come_out_whole_and_in_order():
    with seqify.from_batch_fn(_ragged_batch, 7, workers=2) as ds:
        dataset = ds.to_tf_dataset()
        shapes = [tuple(x.shape) for x, _ in dataset]
        assert _ids(dataset) == list(range(7))
    assert shapes == [(4, 2 + i % 3) for i in range(7)]


def _bad_shape_at_5(i):
    x, y = make_batch(i)
    return (x[:, :2], y) if i == 5 else (x, y)


def test_a_batch_that_breaks_the_signature_raises_naming_output_signature_after_the_good_ones(model):
    with seqify.from_batch_fn(_bad_shape_at_5, 8) as ds:
        with pytest.raises(Exception, match="output_signature"):
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 3, 4]


def test_tiny_batches_cross_into_tf_data_several_at_a_time():
    crossings = []

    class Counting(seqify.tf_dataset._Chunker):
        def _emit(self, group, *args):
            crossings.append(len(group))
            return super()._emit(group, *args)

    with seqify.from_batch_fn(make_batch, 200) as ds:
        original = seqify.tf_dataset._Chunker
        seqify.tf_dataset._Chunker = Counting
        try:
            assert _ids(ds.to_tf_dataset()) == list(range(200))
        finally:
            seqify.tf_dataset._Chunker = original
    assert sum(crossings) == 200 and len(crossings) < 50


# -- large arrays reach tf.data aligned (no TensorFlow copy), never recycled early --

def _misaligned(shape, value):
    # numpy's large allocations are 16-byte aligned; force "not 64" either way.
    nbytes = int(np.prod(shape)) * 4
    raw = np.empty(nbytes + 128, np.uint8)
    offset = (16 - raw.ctypes.data) % 64
    x = raw[offset:offset + nbytes].view(np.float32).reshape(shape)
    x.fill(value)
    assert x.ctypes.data % seqify.tf_dataset.TF_ALIGN != 0
    return x


def _large_batch(i):  # 256 KiB: crosses one batch at a time
    return _misaligned((64, 1024), i), np.full((64, 1), i, np.float32)


def _mid_batch(i):  # 80 KiB: chunked, stacked into an aligned buffer
    return _misaligned((20, 1024), i), np.full((20, 1), i, np.float32)


@pytest.mark.parametrize("batch_fn", [_large_batch, _mid_batch], ids=["one_per_crossing", "chunked"])
def test_large_batches_held_by_tensorflow_keep_their_values_while_buffers_recycle(batch_fn):
    # Every tensor is kept alive to the end: a buffer reused while a tensor
    # still wrapped it would show a later batch's values here.
    with seqify.from_batch_fn(batch_fn, 12) as ds:
        elements = list(ds.to_tf_dataset())
    assert [int(y.numpy()[0, 0]) for _, y in elements] == list(range(12))
    for i, (x, _) in enumerate(elements):
        assert np.all(x.numpy() == i)


def test_large_batches_from_thread_workers_arrive_whole_and_in_order():
    with seqify.from_batch_fn(_large_batch, 10, workers=2) as ds:
        values = [(int(x.numpy()[0, 0]), float(x.numpy().sum())) for x, _ in ds.to_tf_dataset()]
    assert values == [(i, float(i * 64 * 1024)) for i in range(10)]


def test_thread_workers_align_large_leaves_themselves_and_no_buffer_is_recycled_early(monkeypatch):
    # The copy into an aligned buffer runs on the worker threads (in
    # parallel), not on tf.data's thread; every tensor is kept to the end.
    copied_on = []

    class Recording(seqify.tf_dataset._Aligned):
        def leaf(self, leaf):
            out = super().leaf(leaf)
            if out is not leaf:
                copied_on.append(threading.current_thread().name)
            return out

    monkeypatch.setattr(seqify.tf_dataset, "_Aligned", Recording)
    with seqify.from_batch_fn(_large_batch, 24, workers=2) as ds:
        elements = list(ds.to_tf_dataset())
        worker_prefix = type(ds).__name__ + "_"  # the pool's thread names
    assert [int(y.numpy()[0, 0]) for _, y in elements] == list(range(24))
    for i, (x, _) in enumerate(elements):
        assert np.all(x.numpy() == i)
    assert len(copied_on) == 24 and all(name.startswith(worker_prefix) for name in copied_on)


def test_aligned_buffer_is_reused_only_once_nothing_views_it():
    aligned = seqify.tf_dataset._Aligned()
    first = aligned.empty((128, 1024), np.float32)
    assert first.ctypes.data % seqify.tf_dataset.TF_ALIGN == 0
    second = aligned.empty((128, 1024), np.float32)
    assert second.ctypes.data != first.ctypes.data  # `first` is still held
    address = first.ctypes.data
    del first
    assert aligned.empty((128, 1024), np.float32).ctypes.data == address


def test_aligned_large_leaf_and_small_leaf_pass_through_uncopied():
    aligned = seqify.tf_dataset._Aligned()
    ready = aligned.empty((128, 1024), np.float32)
    small = np.zeros((4, 4), np.float32)
    assert aligned.leaf(ready) is ready and aligned.leaf(small) is small
    copied = aligned.leaf(_misaligned((128, 1024), 3.0))
    assert copied.ctypes.data % seqify.tf_dataset.TF_ALIGN == 0 and np.all(copied == 3.0)
