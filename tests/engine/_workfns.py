"""Batch functions and transforms that run inside seqify workers.

Kept apart from the test modules (and free of Keras, TensorFlow and pytest) so
that spawn and forkserver workers, which import this module to unpickle a
job, start in a fraction of a second.
"""

import faulthandler
import os
import random
import signal
import threading
import time

import numpy as np

from seqify.engine.worker_info import worker_info

LARGE_SHAPE = (1024, 1024)  # float32: 4 MiB, far above INLINE_BYTES


def index_batch(i):
    """Batch `i`: x filled with i (conftest's batch_ids reads it back)."""
    return np.full((2, 3), i, dtype="float32"), np.zeros((2, 1), dtype="float32")


def who_batch(i):
    """Which process and thread built batch `i` (slow enough to keep every worker busy)."""
    time.sleep(0.005)
    return (np.array([os.getpid(), threading.get_ident(), i], dtype=np.uint64),)


def recording_batch(path, i):
    """A Keras-ready batch `i`; appends 'pid thread-ident' to `path` first."""
    time.sleep(0.005)
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {threading.get_ident()}\n")
    return np.full((4, 3), i, dtype="float32"), np.zeros((4, 1), dtype="float32")


def large_value(i):
    return (np.arange(LARGE_SHAPE[0] * LARGE_SHAPE[1], dtype=np.float32) + i).reshape(LARGE_SHAPE)


def large_batch(i):
    """A 4 MiB float32 x and a tiny y."""
    return large_value(i), np.array([i], dtype=np.int64)


def shm_sized_batch(i):
    """Exactly INLINE_BYTES of float32 (goes through shared memory) plus the index."""
    return np.full((128, 128), i, dtype=np.float32), np.array([i], dtype=np.int64)


def small_batch(i):
    """Arrays well below INLINE_BYTES."""
    return np.full((8, 8), i, dtype=np.float32), np.array([i], dtype=np.int64)


def rng_batch(i):
    """Augmentation-style randomness from worker_info().rng() (76.8 KB: via shm)."""
    rng = worker_info().rng()
    x = rng.normal(size=(64, 300)).astype(np.float32)
    y = rng.integers(0, 1_000_000, size=(64, 1))
    return x, y


def info_batch(i):
    """worker_info() as seen inside the batch function."""
    info = worker_info()
    return (
        np.array(
            [info.worker_id, info.num_workers, info.epoch, info.index, info.seed, int(info.use_multiprocessing), i],
            dtype=np.int64,
        ),
    )


def timed_batch(delay, i):
    """Records when batch `i` started (CLOCK_MONOTONIC is system-wide on Linux)."""
    started = time.monotonic()
    time.sleep(delay)
    return (np.array([i, started], dtype=np.float64),)


def die_once(flag_path, die_index, how, i):
    """Dies building batch `die_index` if `flag_path` exists (and removes it: one shot)."""
    time.sleep(0.01)
    if i == die_index and os.path.exists(flag_path):
        os.remove(flag_path)
        if how in ("sigkill", "sigbus"):
            faulthandler.disable()  # pytest's, inherited by fork: no "Fatal Python error" dump
            os.kill(os.getpid(), signal.SIGKILL if how == "sigkill" else signal.SIGBUS)
            time.sleep(10)  # never reached
        else:
            os._exit(3)
    # 64 KiB: goes through shared memory, so a death leaves segments in flight.
    return np.full((128, 128), i, dtype=np.float32), np.zeros((128, 1), dtype=np.float32)


class UserBoom(ValueError):
    """A user's own exception type (picklable)."""


class LockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled (args do not match __init__)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def explode_on_index(bad_index, i):
    if i == bad_index:
        raise UserBoom(f"user code rejected batch {i}")
    return np.full((2, 3), i, dtype=np.float32), np.zeros((2, 1), dtype=np.float32)


def explode_unpicklably(kind, bad_index, i):
    if i == bad_index:
        if kind == "locked":
            raise LockedError(f"locked failure in batch {i}")
        raise TwoArgError("left", "right")
    return np.full((2, 3), i, dtype=np.float32), np.zeros((2, 1), dtype=np.float32)


def unsendable_batch(bad_index, i):
    """Batch `bad_index` holds a lock, which cannot travel back from a worker process."""
    if i == bad_index:
        return {"x": np.zeros((2, 3), dtype=np.float32), "lock": threading.Lock()}
    return {"x": np.full((2, 3), i, dtype=np.float32)}


class RefusesToUnpickle:
    """A batch function that pickles fine but raises when a worker unpickles it."""

    def __getstate__(self):
        return {"payload": 1}

    def __setstate__(self, state):
        raise RuntimeError("RefusesToUnpickle cannot be restored in this process")

    def __call__(self, i):
        return (np.full((2, 3), i, dtype=np.float32),)


def slow_stream_transform(batch):
    time.sleep(0.002)
    return batch


def tag_transform(batch):
    """Transform that records the process and keeps the stream value."""
    x = batch[0]
    return x, np.array([os.getpid()], dtype=np.int64)


def rng_transform(batch):
    rng = worker_info().rng()
    return batch[0] + rng.normal(size=batch[0].shape).astype(np.float32), batch[1]


def explode_once(flag_path, bad_index, i):
    """Raises UserBoom building batch `bad_index` while `flag_path` exists (one shot)."""
    if i == bad_index and os.path.exists(flag_path):
        os.remove(flag_path)
        raise UserBoom(f"user code rejected batch {i}")
    return np.full((2, 3), i, dtype=np.float32), np.zeros((2, 1), dtype=np.float32)


def identity(batch):
    return batch


def memmap_slice_batch(path, i):
    """Batch `i` sliced from a read-only np.memmap (np.load(mmap_mode='r')), as datasets do."""
    data = np.load(path, mmap_mode="r")
    return data[i * 256:(i + 1) * 256], np.array([i], dtype=np.int64)


def large_epoch_value(epoch, i):
    return np.full((512, 512), epoch * 1000 + i, dtype=np.float32)


def large_epoch_batch(i):
    """1 MiB, filled with epoch * 1000 + i: every batch of every epoch differs."""
    return (large_epoch_value(worker_info().epoch, i),)


def large_keras_batch(i):
    """A Keras-ready batch of 256 KiB (x filled with its id, so fit can audit it)."""
    return np.full((512, 128), i, dtype=np.float32), np.zeros((512, 1), dtype=np.float32)


def global_rng_batch(i):
    """What legacy augmentation draws: the global numpy and random RNGs, and worker_info().rng()."""
    time.sleep(0.002)  # spread the batches over the workers
    return (np.array([i, np.random.rand(), random.random(), worker_info().rng().random()], dtype=np.float64),)


def pid_batch(i):
    """Batch `i` and the pid of the process that built it."""
    return (np.array([i, os.getpid()], dtype=np.int64),)


def uneven_batch(i):
    """Batch `i`, finishing out of order (even indices are slower)."""
    time.sleep(0.03 if i % 2 == 0 else 0.001)
    return (np.array([i, os.getpid()], dtype=np.int64),)


def touch_then_sleep(flag_dir, i):
    """Writes `<flag_dir>/<i>` once it runs, then sleeps long: a worker busy with batch `i`."""
    with open(os.path.join(flag_dir, str(i)), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
    return (np.array([i], dtype=np.int64),)


def die_holding_pipe(pid_path, i):
    """Batch 0 is plain; batch 1 forks a grandchild that keeps every inherited fd
    (the pipe too), then dies of SIGKILL.

    The worker's pipe stays open, so only its process sentinel says it died.
    """
    if i == 0:
        return (np.array([i], dtype=np.int64),)
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    time.sleep(0.05)
    with open(pid_path, "w") as f:
        f.write(f"{child} {time.monotonic()}")  # CLOCK_MONOTONIC: system-wide
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached


def ident_batch(i):
    """Batch `i` and the identity of the thread that built it (a few µs of work)."""
    return np.full((2, 3), i, dtype="float32"), np.array([threading.get_ident()], dtype=np.uint64)


def ident_batch_slow_from(start, i):
    """`ident_batch`, but batches from `start` on take about a millisecond."""
    if i >= start:
        time.sleep(0.001)
    return ident_batch(i)
