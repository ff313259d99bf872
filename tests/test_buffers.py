"""`seqify.empty`: recycled aligned arrays for large batches, never reused while held."""

import os
import threading
import time

import numpy as np
import pytest

import seqify
from seqify import buffers

LARGE = (64, 1024)  # 256 KiB of float32: recycled, and one batch per tf.data crossing


def _large_batch(i):
    x = seqify.empty(LARGE, np.float32)
    x.fill(i)
    return x, np.full((LARGE[0], 1), i, np.float32)


def test_large_array_is_aligned_c_contiguous_and_of_the_asked_shape_and_dtype():
    x = seqify.empty((3, 256, 128), np.float32)
    assert x.shape == (3, 256, 128) and x.dtype == np.float32
    assert x.flags.c_contiguous and x.flags.writeable
    assert x.ctypes.data % buffers.ALIGN == 0


def test_int_shape_and_numpy_default_dtype_like_np_empty():
    x = seqify.empty(20_000)
    assert x.shape == (20_000,) and x.dtype == np.float64


def test_buffer_is_reused_only_once_every_view_of_it_is_released():
    pool = buffers.BufferPool()
    first = pool.empty(LARGE, np.float32)
    address = first.ctypes.data
    row = first[3]  # a view keeps the buffer claimed
    del first
    assert pool.empty(LARGE, np.float32).ctypes.data != address
    del row
    assert pool.empty(LARGE, np.float32).ctypes.data == address


def test_small_and_object_arrays_are_plain_numpy_arrays():
    small = seqify.empty((4, 4), np.float32)
    objects = seqify.empty(100_000, object)
    assert small.shape == (4, 4) and small.base is None
    assert objects.dtype == object and objects[0] is None


def test_threads_claiming_at_once_never_get_the_same_memory():
    held, errors = [], []
    lock = threading.Lock()

    def claim():
        try:
            for _ in range(50):
                x = seqify.empty(LARGE, np.float32)
                with lock:
                    held.append(x)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({x.ctypes.data for x in held}) == len(held) == 200


def test_pool_keeps_at_most_max_per_size_buffers_after_a_peak():
    pool = buffers.BufferPool(max_per_size=2)
    peak = [pool.empty(LARGE, np.float32) for _ in range(5)]
    kept = {x.ctypes.data for x in peak[:2]}
    del peak
    again = [pool.empty(LARGE, np.float32) for _ in range(2)]
    assert {x.ctypes.data for x in again} == kept
    assert len(pool._free[LARGE[0] * LARGE[1] * 4]) == 2


def test_pool_drops_the_least_recently_used_size_beyond_max_sizes():
    pool = buffers.BufferPool(max_sizes=2)
    for rows in (10, 20, 10, 30):  # 20 is the least recently asked for when 30 comes
        pool.empty((rows, 1024), np.float32)
    assert sorted(pool._free) == [10 * 4096, 30 * 4096]


def test_a_forked_child_claims_even_if_another_thread_held_the_lock_at_fork():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    with buffers._POOL._lock:
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock would be held forever
            try:
                x = seqify.empty(LARGE, np.float32)
                x.fill(1)
                os._exit(0 if x.ctypes.data % buffers.ALIGN == 0 else 1)
            finally:
                os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung claiming a buffer")


# -- on the TF path: zero-copy, and no buffer reused while a tensor holds it --

@pytest.mark.parametrize("workers", [0, 2], ids=["workers-0", "threads-2"])
def test_tensors_of_batches_built_in_empty_keep_their_values_to_the_end(workers):
    with seqify.from_batch_fn(_large_batch, 24, workers=workers) as ds:
        elements = list(ds.to_tf_dataset())  # every tensor held at once
    assert [int(y.numpy()[0, 0]) for _, y in elements] == list(range(24))
    for i, (x, _) in enumerate(elements):
        assert np.all(x.numpy() == i)


def test_tensorflow_wraps_arrays_from_empty_without_a_copy():
    built = {}

    def batch(i):
        x, y = _large_batch(i)
        built[i] = x
        return x, y

    with seqify.from_batch_fn(batch, 6) as ds:
        elements = list(ds.to_tf_dataset())
    # A tensor that wraps the batch's own memory sees a later write to it;
    # a copy (TensorFlow's, or seqify's aligning one) would not.
    for i in range(6):
        built[i][0, 0] = -1.0
    assert [float(x.numpy()[0, 0]) for x, _ in elements] == [-1.0] * 6
    assert [float(x.numpy()[1, 0]) for x, _ in elements] == [float(i) for i in range(6)]


def test_process_workers_build_batches_in_empty_and_deliver_them_in_order():
    with seqify.from_batch_fn(_large_batch, 12, workers=2, use_multiprocessing=True) as ds:
        values = [(int(y.numpy()[0, 0]), float(x.numpy().sum())) for x, y in ds.to_tf_dataset()]
    assert values == [(i, float(i * LARGE[0] * LARGE[1])) for i in range(12)]


def test_fit_trains_on_each_batch_built_in_empty_once_in_order(model):
    with seqify.from_batch_fn(_large_batch, 6, workers=2) as ds:
        model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert model.trained == list(range(6)) * 2
