"""Shared-memory transport for numpy arrays crossing a process boundary.

The sender writes each large array into its own POSIX shared-memory segment
(a file in /dev/shm) and sends only (name, dtype, shape) through the pipe. The
receiver maps the segment copy-on-write, unlinks its name at once and wraps
the mapping in an ndarray: no pickling of array bytes and no copy on receipt.
The memory is freed when the last array viewing it is garbage-collected, and
because the name is gone the moment it is received, nothing can leak into
/dev/shm past that point.

Recycled slots (worker -> main results): a worker keeps its segments mapped
and reuses them. The main process maps each slot once, and hands out arrays
backed by it; when the last array (or view) of a batch is garbage-collected,
the slot id is returned to the worker with its next task. Reusing
already-faulted pages is what makes large batches cheap: writing 19 MB into
fresh tmpfs pages costs several times a memcpy, and faulting them in again on
the reader costs as much again. A worker that has no free slot (its batches
are all still held) falls back to one-off segments.

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

import ctypes
import dataclasses
import glob
import itertools
import mmap
import os
import sys
import weakref

import numpy as np

SHM_DIR = "/dev/shm"
AVAILABLE = sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)

# Arrays smaller than this are pickled inline: below it, creating, mapping and
# unlinking a segment (~3 syscalls each side) costs more than copying bytes
# through the pipe. Chosen by measurement (benchmarks/bench_transport.py).
INLINE_BYTES = 64 * 1024


# Most recycled slots one worker keeps; beyond that, one-off segments.
MAX_SLOTS = 8
_SLOT_ROUNDING = 1 << 20


@dataclasses.dataclass(frozen=True)
class ShmArray:
    """Placeholder for an array that travels through shared memory."""

    name: str
    dtype: np.dtype  # the dtype object: keeps structured fields, datetime units
    shape: tuple
    nbytes: int
    slot: int = -1  # >= 0: a recycled slot of the sender, to be released


class _Slot:
    __slots__ = ("name", "capacity", "mm", "free")

    def __init__(self, name, capacity, mm):
        self.name = name
        self.capacity = capacity
        self.mm = mm
        self.free = True


class Encoder:
    """Writes large arrays of a batch into shared memory; one per sender."""

    def __init__(self, prefix: str, inline_bytes: int = INLINE_BYTES, max_slots: int = 0):
        self.prefix = prefix
        self.inline_bytes = inline_bytes
        self.max_slots = max_slots
        self._counter = itertools.count()
        self._slots = []

    def release(self, slot_ids) -> None:
        """Marks recycled slots free again (their arrays are gone)."""
        for slot_id in slot_ids:
            self.release_one(slot_id)

    def release_one(self, slot_id) -> None:
        if 0 <= slot_id < len(self._slots):
            self._slots[slot_id].free = True

    def encode(self, obj):
        """Returns `obj` with every large ndarray replaced by a ShmArray."""
        if not AVAILABLE:
            return obj
        return self._walk(obj)

    def _walk(self, obj):
        # Plain arrays (and memmaps, whose buffer is all there is) go through
        # shared memory; other subclasses (masked arrays, matrices) carry more
        # than their buffer and travel pickled, intact.
        if type(obj) is np.ndarray or type(obj) is np.memmap:
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
        if self.max_slots:
            slot_id = self._take_slot(array.nbytes)
            if slot_id is not None:
                slot = self._slots[slot_id]
                target = np.frombuffer(slot.mm, dtype=np.uint8, count=array.nbytes)
                # One memcpy into pages that are already there.
                target[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
                return ShmArray(slot.name, array.dtype, array.shape, array.nbytes, slot_id)
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

    def _take_slot(self, nbytes):
        best = None
        for slot_id, slot in enumerate(self._slots):
            if slot.free and slot.capacity >= nbytes and (best is None or slot.capacity < self._slots[best].capacity):
                best = slot_id
        if best is None and len(self._slots) < self.max_slots:
            capacity = -(-nbytes // _SLOT_ROUNDING) * _SLOT_ROUNDING
            name = f"{self.prefix}s{len(self._slots)}"
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, capacity)
                mm = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
            self._slots.append(_Slot(name, capacity, mm))
            best = len(self._slots) - 1
        if best is not None:
            self._slots[best].free = False
        return best


class Decoder:
    """Receiver side: maps recycled slots once and reports their release.

    Args:
        on_release: called with a slot id when the last array using that
            slot is gone (from whichever thread drops it; must be cheap and
            thread-safe, e.g. `list.append`).
    """

    def __init__(self, on_release):
        self._on_release = on_release
        self._maps = {}

    def decode(self, obj):
        if isinstance(obj, ShmArray):
            if obj.slot < 0:
                return _read(obj)
            return self._view(obj)
        if type(obj) is tuple:
            return tuple(self.decode(o) for o in obj)
        if type(obj) is list:
            return [self.decode(o) for o in obj]
        if type(obj) is dict:
            return {k: self.decode(v) for k, v in obj.items()}
        return obj

    def _view(self, ref: ShmArray) -> np.ndarray:
        mm = self._maps.get(ref.name)
        if mm is None:
            fd = os.open(os.path.join(SHM_DIR, ref.name), os.O_RDWR)
            try:
                mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
            self._maps[ref.name] = mm
        # The ctypes object is the bottom of every view's base chain, so its
        # finalizer runs only when no array can see the slot any more.
        holder = (ctypes.c_char * ref.nbytes).from_buffer(mm)
        weakref.finalize(holder, self._on_release, ref.slot)
        return np.frombuffer(holder, dtype=ref.dtype).reshape(ref.shape)

    def close(self) -> None:
        # Arrays still alive keep their mapping through their holder.
        self._maps.clear()


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


def discard(obj, on_release=None) -> None:
    """Frees every segment referenced by an encoded batch without reading it.

    Recycled slots are not unlinked but handed to `on_release`.
    """
    if isinstance(obj, ShmArray):
        if obj.slot >= 0:
            if on_release is not None:
                on_release(obj.slot)
        else:
            _unlink(obj.name)
    elif type(obj) in (tuple, list):
        for o in obj:
            discard(o, on_release)
    elif type(obj) is dict:
        for o in obj.values():
            discard(o, on_release)


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
