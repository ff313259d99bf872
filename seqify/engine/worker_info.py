"""What a batch function knows about the batch it is building.

`worker_info()` is set around every call into user code (on a worker thread,
a worker process, or the main thread), so augmentations can draw from a
random generator seeded by (seed, epoch, batch index) alone. The same epoch is
therefore bit-for-bit identical whatever `workers` and `use_multiprocessing`
are, and different batches still get different randomness.

Process workers also seed the global `random` and `np.random` state per
batch (`seed_global_rngs`), for legacy code that draws from them; threads and
the calling thread leave the global state alone (it is shared, and the
user's), so there only `rng()` is per batch.
"""

import _random
import dataclasses
import hashlib
import random
import threading
from typing import Optional

import numpy as np

__all__ = ["WorkerInfo", "worker_info"]

_state = threading.local()


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Facts about the batch being built and the worker building it.

    Attributes:
        worker_id: index of the worker in its pool, `0..num_workers-1`
            (`-1` when the batch is built on the caller's thread: with
            `workers=0`, or a batch cheaper than a hand-off to a thread).
        num_workers: number of workers in the pool (`0` when inline).
        epoch: pass number over the data, starting at 0.
        index: batch index (for streams: position in the stream).
        seed: the object's seed (drawn at random at construction if the
            user gave none).
        use_multiprocessing: whether the worker is a process.
        shard_index: for sharded streams (`from_generator(sharded=True)`),
            the shard this worker's generator must read: unique across the
            workers of every training worker (`obj.shard(n, k)`).
        num_shards: total number of stream shards (all training workers).
        shuffled: whether this pass visits batches (or samples) in a
            shuffled order.
    """

    worker_id: int
    num_workers: int
    epoch: int
    index: int
    seed: int
    use_multiprocessing: bool = False
    shard_index: int = 0
    num_shards: int = 1
    shuffled: bool = False

    def rng(self) -> np.random.Generator:
        """A generator seeded by (seed, epoch, index) only.

        Returns:
            A fresh `numpy.random.Generator`; calling it twice for the same
            batch gives the same stream.

        Example:

        ```python
        def make_batch(i):
            rng = seqify.worker_info().rng()
            return (rng.normal(size=(32, 8)),)
        ```
        """
        return np.random.default_rng([self.seed, self.epoch, self.index])


# The C-level seed of the `random` module's shared instance, without the
# Python wrapper's type dispatch (an int seeds the same state either way;
# the wrapper's other job, clearing `gauss_next`, is done below).
_seed_random = _random.Random.seed
# Personalises the hash, so these seeds are no other stream's.
_GLOBAL_RNG_PERSON = b"seqify.globals"


def seed_global_rngs(seed: int, epoch: int, index: int) -> None:
    """Seeds the global `random` and `np.random` state for one batch.

    Process workers call this before user code runs for each batch, so that
    legacy augmentation written with `np.random.*` / `random.*` draws numbers
    that depend on (seed, epoch, index) only: reproducible, and different
    for every batch, whatever the worker count or start method (forked
    workers would otherwise all inherit the parent's state and repeat each
    other). The numbers are independent of `WorkerInfo.rng()`'s.

    Args:
        seed: the object's seed.
        epoch: the batch's epoch.
        index: the batch's index.
    """
    # A keyed hash rather than numpy's SeedSequence: the same (seed, epoch,
    # index) -> seed mapping at ~1 us instead of ~16 us per batch.
    digest = hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=16, person=_GLOBAL_RNG_PERSON).digest()
    # One 32-bit word for numpy (its legacy seeding from an array costs
    # ~20 us more per batch); `random` takes the other 96 bits.
    np.random.seed(int.from_bytes(digest[:4], "little"))
    _seed_random(random._inst, int.from_bytes(digest[4:], "little"))
    random._inst.gauss_next = None


def worker_info() -> Optional[WorkerInfo]:
    """Returns the `WorkerInfo` of the batch being built, or None outside one.

    Returns:
        The current `WorkerInfo`, or `None` when not called from inside a
        seqify batch function, transform or sharded generator.
    """
    current = getattr(_state, "info", None)
    if type(current) is tuple:
        # Built on first request: most batch functions never ask.
        current = _state.info = WorkerInfo(*current)
    return current


def set_current(info) -> object:
    """Sets `worker_info()` for this thread; returns the previous value.

    Args:
        info: a `WorkerInfo`, the tuple of its fields (built into one only
            if user code asks), or None.

    A plain function rather than a context manager: it runs once per batch.
    """
    previous = getattr(_state, "info", None)
    _state.info = info
    return previous
