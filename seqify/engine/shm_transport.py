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

Room in /dev/shm (Docker gives 64 MB) is checked before anything is written:
a slot's pages are reserved with posix_fallocate and one-off segments are
written with write(), so a full tmpfs is an ENOSPC, never a SIGBUS in a
mapping. What does not fit goes through the pipe pickled (`PipedArray`),
and the receiver logs one warning (logger "seqify") with the fix.

Segment creation: before Python 3.13 we use plain files in /dev/shm rather
than `multiprocessing.shared_memory`, because every `SharedMemory` object
registers with the resource tracker even when it only attaches, which
produces spurious "leaked shared_memory" warnings and double unlinks when the
receiver frees a segment the sender created. From 3.13, slots are created
with `SharedMemory(create=True, track=False)` (`select_segments`); the rest
(write() of one-off segments, copy-on-write mapping on the receiver, mapping
lifetimes tied to numpy views, the prefix sweep) has no stdlib equivalent
and stays hand-written. The mechanism is the same either way (shm_open is a
file in /dev/shm on Linux). See docs/design.md, "Shared memory that does not
fit".
"""

import ctypes
import dataclasses
import errno
import glob
import itertools
import logging
import mmap
import os
import sys
import weakref

import numpy as np

from seqify.engine import tree

SHM_DIR = "/dev/shm"
AVAILABLE = sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)

# Arrays smaller than this are pickled inline: below it, creating, mapping and
# unlinking a segment (~3 syscalls each side) costs more than copying bytes
# through the pipe. Chosen by measurement (benchmarks/bench_transport.py).
INLINE_BYTES = 64 * 1024


# Most recycled slots one worker keeps; beyond that, one-off segments.
MAX_SLOTS = 8
_SLOT_ROUNDING = 1 << 20

# Share of /dev/shm a new segment must leave free. Filling a tmpfs to the last
# page would make the next writer into a mapping there (another worker, or
# another program using shared memory) die of SIGBUS.
_RESERVE_FRACTION = 16

_NO_SPACE = frozenset(e for e in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)

logger = logging.getLogger("seqify")


@dataclasses.dataclass(frozen=True)
class ShmArray:
    """Placeholder for an array that travels through shared memory."""

    name: str
    dtype: np.dtype  # the dtype object: keeps structured fields, datetime units
    shape: tuple
    nbytes: int
    slot: int = -1  # >= 0: a recycled slot of the sender, to be released


@dataclasses.dataclass(frozen=True)
class ShmFull:
    """What the sender saw when an array did not fit in /dev/shm (bytes)."""

    directory: str
    size: int
    free: int
    needed: int


@dataclasses.dataclass(frozen=True)
class PipedArray:
    """A large array pickled through the pipe because /dev/shm had no room.

    It carries the sender's `ShmFull` so that the receiver (the process whose
    log the user reads) can warn about it.
    """

    array: np.ndarray
    notice: ShmFull


class NoSpace(OSError):
    """/dev/shm cannot hold a segment of the requested size."""


def space(directory: str = SHM_DIR):
    """Returns `(size, free)` of the filesystem at `directory`, in bytes."""
    st = os.statvfs(directory)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _fits(nbytes, directory=SHM_DIR):
    size, free = space(directory)
    return free - nbytes >= size // _RESERVE_FRACTION, size, free


def allocate(fd: int, size: int) -> None:
    """Reserves `size` bytes of real pages for the file `fd`.

    A segment that is only ftruncate()d is sparse: a full tmpfs is noticed
    when a write into its mapping faults, as SIGBUS, killing the process.
    posix_fallocate makes the same shortage an error code now.

    Raises:
        NoSpace: the filesystem cannot hold `size` more bytes.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise NoSpace(exc.errno, f"no room for {size} bytes in {SHM_DIR}") from exc
        raise


class FileSegments:
    """Named segments as files in /dev/shm, created with os.open (every Python).

    Before Python 3.13 `multiprocessing.shared_memory.SharedMemory` registers
    every segment with the resource tracker (see the module docstring).
    """

    def create(self, name: str, size: int):
        """Creates, allocates and maps segment `name`; returns an object with `.buf`."""
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            allocate(fd, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            _unlink(name)
            raise
        finally:
            os.close(fd)
        return _MappedFile(mm)


class _MappedFile:
    __slots__ = ("buf",)

    def __init__(self, mm):
        self.buf = mm


class StdlibSegments:
    """Named segments through `SharedMemory(create=True, track=False)` (Python 3.13+).

    The same shm_open'd file in /dev/shm as `FileSegments` makes, so
    receivers, `discard` and `sweep` see no difference. `track=False`
    (new in 3.13) keeps the resource tracker out of it: the receiver or the
    prefix sweep unlinks the segment.
    """

    def __init__(self):
        from multiprocessing import shared_memory

        self._shared_memory = shared_memory.SharedMemory

    def create(self, name: str, size: int):
        segment = self._shared_memory(name=name, create=True, size=size, track=False)
        try:
            # SharedMemory only ftruncate()s; its fd is kept open for us.
            allocate(segment._fd, size)
        except BaseException:
            segment.close()
            segment.unlink()
            raise
        return segment


def select_segments(version=None):
    """The segment implementation for a Python version (default: this one).

    Args:
        version: a `sys.version_info`-like tuple.

    Returns:
        `StdlibSegments` from Python 3.13 (where `SharedMemory` takes
        `track=False`), `FileSegments` before.
    """
    version = tuple(sys.version_info if version is None else version)
    return StdlibSegments if version[:2] >= (3, 13) else FileSegments


SEGMENTS = select_segments()()


class _Slot:
    __slots__ = ("name", "capacity", "segment", "free")

    def __init__(self, name, capacity, segment):
        self.name = name
        self.capacity = capacity
        self.segment = segment  # keeps the mapping (and, on 3.13+, the SharedMemory) alive
        self.free = True


class Encoder:
    """Writes large arrays of a batch into shared memory; one per sender.

    An array that does not fit in /dev/shm (it would leave less than
    1/16 of it free, or allocating its pages fails) is never written into a
    mapping, which would be a SIGBUS: the encoder keeps the slots it has
    (fewer slots), tries a one-off segment, and otherwise sends the array
    pickled through the pipe as a `PipedArray`, whose receiver logs one
    warning per process.
    """

    def __init__(self, prefix: str, inline_bytes: int = INLINE_BYTES, max_slots: int = 0):
        self.prefix = prefix
        self.inline_bytes = inline_bytes
        self.max_slots = max_slots
        self._counter = itertools.count()
        self._slots = []
        self.full = None  # the first ShmFull this encoder met
        self.mapped = False  # whether the last `encode` replaced an array

    def release(self, slot_ids) -> None:
        """Marks recycled slots free again (their arrays are gone)."""
        for slot_id in slot_ids:
            self.release_one(slot_id)

    def release_one(self, slot_id) -> None:
        if 0 <= slot_id < len(self._slots):
            self._slots[slot_id].free = True

    def encode(self, obj):
        """Returns `obj` with every large ndarray replaced by a ShmArray (or a PipedArray).

        Afterwards `mapped` tells whether anything was replaced (if not, the
        receiver can skip decoding).
        """
        self.mapped = False
        if not AVAILABLE:
            return obj
        if type(obj) is tuple:
            # The common case, tiny batches: a tuple of small arrays goes as is.
            inline_bytes = self.inline_bytes
            for leaf in obj:
                if type(leaf) is not np.ndarray or leaf.nbytes >= inline_bytes:
                    break
            else:
                return obj
        return tree.map_structure(self._leaf, obj)

    def _leaf(self, obj):
        # Plain arrays (and memmaps, whose buffer is all there is) go through
        # shared memory; other subclasses (masked arrays, matrices) carry more
        # than their buffer and travel pickled, intact.
        if type(obj) is np.ndarray or type(obj) is np.memmap:
            if obj.nbytes >= self.inline_bytes and not obj.dtype.hasobject:
                self.mapped = True
                return self._write(obj)
        return obj

    def _write(self, array: np.ndarray):
        if self.max_slots:
            slot_id = self._take_slot(array.nbytes)
            if slot_id is not None:
                slot = self._slots[slot_id]
                target = np.frombuffer(slot.segment.buf, dtype=np.uint8, count=array.nbytes)
                # One memcpy into pages that are already there.
                target[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
                return ShmArray(slot.name, array.dtype, array.shape, array.nbytes, slot_id)
        ref = self._write_segment(array)
        if ref is None:
            return PipedArray(array, self.full)
        return ref

    def _no_room(self, nbytes, size=None, free=None):
        if size is None:
            size, free = space()
        if self.full is None:
            self.full = ShmFull(SHM_DIR, size, free, nbytes)

    def _write_segment(self, array):
        nbytes = array.nbytes
        fits, size, free = _fits(nbytes)
        if not fits:
            self._no_room(nbytes, size, free)
            return None
        name = f"{self.prefix}{next(self._counter)}"
        data = np.ascontiguousarray(array)
        # Raw bytes: memoryview() refuses some dtypes (datetime64, ...).
        view = memoryview(data.reshape(-1).view(np.uint8))
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # write() into a file (not a mapping) reports a full tmpfs as
            # ENOSPC, so racing another writer costs a retry through the pipe.
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        except OSError as exc:
            os.close(fd)
            _unlink(name)
            if exc.errno not in _NO_SPACE:
                raise
            self._no_room(nbytes)
            return None
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
            best = self._new_slot(nbytes)
        if best is not None:
            self._slots[best].free = False
        return best

    def _new_slot(self, nbytes):
        capacity = -(-nbytes // _SLOT_ROUNDING) * _SLOT_ROUNDING
        fits, size, free = _fits(capacity)
        segment = None
        name = f"{self.prefix}s{len(self._slots)}"
        if fits:
            try:
                segment = SEGMENTS.create(name, capacity)
            except NoSpace:
                size, free = space()
        if segment is None:
            # Fewer slots: keep those that fit, never try to grow again.
            self.max_slots = len(self._slots)
            self._no_room(capacity, size, free)
            return None
        self._slots.append(_Slot(name, capacity, segment))
        return len(self._slots) - 1


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
        return tree.map_structure(self._leaf, obj)

    def _leaf(self, obj):
        kind = type(obj)
        if kind is ShmArray:
            if obj.slot < 0:
                return _read(obj)
            return self._view(obj)
        if kind is PipedArray:
            return _unpipe(obj)
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


def _leaf(obj):
    kind = type(obj)
    if kind is ShmArray:
        return _read(obj)
    if kind is PipedArray:
        return _unpipe(obj)
    return obj


def decode(obj):
    """Returns `obj` with every ShmArray replaced by a zero-copy ndarray."""
    return tree.map_structure(_leaf, obj)


def discard(obj, on_release=None) -> None:
    """Frees every segment referenced by an encoded batch without reading it.

    Recycled slots are not unlinked but handed to `on_release`.
    """
    for leaf in tree.leaves(obj):
        if type(leaf) is ShmArray:
            if leaf.slot >= 0:
                if on_release is not None:
                    on_release(leaf.slot)
            else:
                _unlink(leaf.name)


_warned = False


def _unpipe(piped: PipedArray) -> np.ndarray:
    global _warned
    if not _warned:
        _warned = True  # once per process: the size of /dev/shm does not change under us
        logger.warning(full_message(piped.notice))
    return piped.array


def full_message(notice: ShmFull) -> str:
    """The warning for a batch array that did not fit in shared memory."""
    mib = lambda n: f"{n / (1 << 20):.1f} MiB"  # noqa: E731
    return (
        f"Shared memory ({notice.directory}) is too small for these batches: it is "
        f"{mib(notice.size)} with {mib(notice.free)} free, and an array of {mib(notice.needed)} "
        "did not fit. Arrays that do not fit now go through the pipe, pickled (slower; "
        "training goes on, every batch intact). To give shared memory room, start the container "
        "with `docker run --shm-size=1g ...` (or `--ipc=host`), or mount a larger tmpfs on "
        f"{notice.directory} (`mount -o remount,size=1g {notice.directory}`)."
    )


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
