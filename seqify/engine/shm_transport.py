"""Shared-memory transport for numpy arrays crossing a process boundary.

The sender writes each large array into its own POSIX shared-memory segment
(a file in /dev/shm) and sends only (name, dtype, shape) through the pipe. The
receiver maps the segment copy-on-write, unlinks its name at once and wraps
the mapping in an ndarray: no pickling of array bytes and no copy on receipt.
The memory is freed when the last array viewing it is garbage-collected, and
because the name is gone the moment it is received, nothing can leak into
/dev/shm past that point.

Segments that were written but never received (a worker killed mid-flight, a
pass abandoned, Ctrl-C) are removed by `sweep(prefix)`, which every pool runs
when it shuts down. All names of one pool share the prefix
`seqify-<owner pid>-<pool tag>-`.

We use plain files in /dev/shm rather than `multiprocessing.shared_memory`
because, before Python 3.13, every `SharedMemory` object registers with the
resource tracker even when it only attaches, which produces spurious "leaked
shared_memory" warnings and double unlinks when the receiver frees a segment
the sender created. The mechanism is the same (shm_open is a file in
/dev/shm on Linux).
"""

import dataclasses
import glob
import itertools
import mmap
import os
import sys

import numpy as np

SHM_DIR = "/dev/shm"
AVAILABLE = sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)

# Arrays smaller than this are pickled inline: below it, creating, mapping and
# unlinking a segment (~3 syscalls each side) costs more than copying bytes
# through the pipe. Chosen by measurement (benchmarks/bench_transport.py).
INLINE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class ShmArray:
    """Placeholder for an array that travels through shared memory."""

    name: str
    dtype: np.dtype  # the dtype object: keeps structured fields, datetime units
    shape: tuple
    nbytes: int


class Encoder:
    """Writes large arrays of a batch into shared memory; one per sender."""

    def __init__(self, prefix: str, inline_bytes: int = INLINE_BYTES):
        self.prefix = prefix
        self.inline_bytes = inline_bytes
        self._counter = itertools.count()

    def encode(self, obj):
        """Returns `obj` with every large ndarray replaced by a ShmArray."""
        if not AVAILABLE:
            return obj
        return self._walk(obj)

    def _walk(self, obj):
        # Exactly ndarray: subclasses (masked arrays, matrices) carry more than
        # their buffer and travel pickled, intact.
        if type(obj) is np.ndarray:
            if obj.nbytes >= self.inline_bytes and not obj.dtype.hasobject:
                return self._write(obj)
            return obj
        if type(obj) is tuple:
            return tuple(self._walk(o) for o in obj)
        if type(obj) is list:
            return [self._walk(o) for o in obj]
        if type(obj) is dict:
            return {k: self._walk(v) for k, v in obj.items()}
        return obj

    def _write(self, array: np.ndarray) -> ShmArray:
        name = f"{self.prefix}{next(self._counter)}"
        data = np.ascontiguousarray(array)
        # Raw bytes: memoryview() refuses some dtypes (datetime64, ...).
        view = memoryview(data.reshape(-1).view(np.uint8))
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        except BaseException:
            os.close(fd)
            _unlink(name)
            raise
        os.close(fd)
        return ShmArray(name, data.dtype, data.shape, data.nbytes)


def decode(obj):
    """Returns `obj` with every ShmArray replaced by a zero-copy ndarray."""
    if isinstance(obj, ShmArray):
        return _read(obj)
    if type(obj) is tuple:
        return tuple(decode(o) for o in obj)
    if type(obj) is list:
        return [decode(o) for o in obj]
    if type(obj) is dict:
        return {k: decode(v) for k, v in obj.items()}
    return obj


def discard(obj) -> None:
    """Frees every segment referenced by an encoded batch without reading it."""
    if isinstance(obj, ShmArray):
        _unlink(obj.name)
    elif type(obj) in (tuple, list):
        for o in obj:
            discard(o)
    elif type(obj) is dict:
        for o in obj.values():
            discard(o)


def sweep(prefix: str) -> int:
    """Unlinks every segment whose name starts with `prefix`; returns how many."""
    if not AVAILABLE:
        return 0
    count = 0
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
            count += 1
        except FileNotFoundError:
            pass
    return count


def _read(ref: ShmArray) -> np.ndarray:
    path = os.path.join(SHM_DIR, ref.name)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Copy-on-write: the batch is writable for the caller without the
        # writes reaching (already unlinked) shared memory.
        mm = mmap.mmap(fd, ref.nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        _unlink(ref.name)
    return np.frombuffer(mm, dtype=ref.dtype).reshape(ref.shape)


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass
