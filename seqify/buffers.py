"""Recycled, 64-byte-aligned numpy arrays for large batches (`seqify.empty`).

A fresh large array is not free: its pages are faulted in and zeroed by the
kernel when first written, and in a process that runs a tf.data pipeline
glibc maps every fresh 19 MB block anew (docs/design.md, record 27: ~4 ms
of kernel time per batch). TensorFlow also wraps numpy data in a tensor
without copying it only when the data is 64-byte aligned, which numpy's own
large arrays are not. An array from a `BufferPool` is both: aligned, and
carved from a buffer that earlier batches already faulted in.

A buffer is handed out again only once no array views it any more: its
reference count says so (every view of it, every tensor or batch that still
holds one, keeps it referenced). Reuse therefore never changes the values of
an array somebody still holds; it only saves allocating.
"""

import collections
import os
import sys
import threading
from typing import Optional

import numpy as np

#: Alignment of the arrays (TensorFlow's, i.e. Eigen's, for zero-copy tensors).
ALIGN = 64
#: `empty` recycles arrays of at least this many bytes (smaller ones cost little).
MIN_BYTES = 64 * 1024
#: Buffers `empty` keeps per size (more may be in use; the rest are freed when released).
MAX_PER_SIZE = 16
#: Sizes `empty` keeps buffers for; the least recently asked-for size is dropped first.
MAX_SIZES = 8


class BufferPool:
    """Aligned arrays carved from recycled buffers, claimed under a lock.

    Args:
        max_per_size: buffers kept per size (only those in use at once are
            ever kept, so this caps what is retained after a peak).
        max_sizes: sizes kept, least recently used dropped first; None: all.
    """

    def __init__(self, max_per_size: int = MAX_PER_SIZE, max_sizes: Optional[int] = None):
        self.max_per_size = max_per_size
        self.max_sizes = max_sizes
        self._free = collections.OrderedDict()  # nbytes -> [raw uint8 buffers]
        self._lock = threading.Lock()

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous `ALIGN`-aligned array of `shape` and `dtype`."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with self._lock:
            buffers = self._free.get(nbytes)
            if buffers is None:
                buffers = self._free[nbytes] = []
                if self.max_sizes is not None and len(self._free) > self.max_sizes:
                    self._free.popitem(last=False)
            else:
                self._free.move_to_end(nbytes)
            raw = None
            for candidate in buffers:
                # The list's, `candidate`'s and getrefcount's argument's
                # references only: nothing views it.
                if sys.getrefcount(candidate) <= 3:
                    raw = candidate
                    break
            if raw is None:
                raw = np.empty(nbytes + ALIGN, np.uint8)
                if len(buffers) < self.max_per_size:
                    buffers.append(raw)
            offset = (-raw.ctypes.data) % ALIGN
            # Viewed before the lock is released: claimed.
            return raw[offset:offset + nbytes].view(dtype).reshape(shape)

    def clear(self) -> None:
        """Forgets every kept buffer (arrays in use stay valid)."""
        with self._lock:
            self._free.clear()

    def _after_fork(self) -> None:
        # Another thread may have held the lock when the process forked.
        self._lock = threading.Lock()
        self._free = collections.OrderedDict()


_POOL = BufferPool(MAX_PER_SIZE, MAX_SIZES)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._after_fork)


def empty(shape, dtype=float) -> np.ndarray:
    """Like `np.empty`, from recycled 64-byte-aligned memory: for large batches.

    Build a large batch in it instead of a fresh array, in a batch function
    or a generator, on any worker setting. Arrays of `MIN_BYTES` (64 KiB) or
    more come from buffers kept for reuse: no page faults once warm, and on
    the TensorFlow backend tf.data takes them without copying (measured on
    19 MB batches, TF fit path: 3.4x faster with `workers=0`, 2.2x with 2
    threads; no gain on the JAX and torch paths; docs/design.md, record
    28). A buffer is reused only once nothing views
    it, so a batch you or Keras still hold keeps its values; smaller arrays
    are plain `np.empty`. Thread-safe; each process has its own buffers.

    Args:
        shape: int or tuple of ints.
        dtype: numpy dtype (default float64, as `np.empty`). Object dtypes
            get `np.empty` (numpy must initialise them).

    Returns:
        An uninitialised C-contiguous `np.ndarray`.

    Example:

    ```python
    def batch(i):
        x = seqify.empty((32, 224, 224, 3), np.float32)
        x[...] = load_images(i)
        return x, labels(i)

    model.fit(seqify.from_batch_fn(batch, 100, workers=2))
    ```
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        return np.empty(shape, dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < MIN_BYTES:
        return np.empty(shape, dtype)
    return _POOL.empty(shape, dtype)
