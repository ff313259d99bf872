"""What a seqify object is to the runner: a `Source` of batch tasks.

The runner (`seqify.runner.EpochRunner`) knows nothing about batch
functions, arrays or generators. It asks a source for the tasks of a pass,
ships the source's `Job` to the workers once, and hands back the work it
could not deliver (a pass stopped early). Every seqify object has one source:

| source | batches | reorders | state in this process |
| --- | --- | --- | --- |
| `IndexSource` (batch functions, arrays, Sequence subclasses) | `fetch(i)` | yes | none |
| `StreamSource` (`from_generator`) | one producer thread | never | the `Stream` |
| `ShardedStreamSource` (`from_generator(sharded=True)`) | one generator per worker | never | `ShardState` |

Sources are built from the object's (picklable) configuration in each
process and never pickled themselves; their per-process state (a producer
thread, items read ahead) is created by `make_state()` and owned by the
runner.
"""

import dataclasses
from typing import Callable, Iterator, List, Optional, Protocol, runtime_checkable

import numpy as np

from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass over a source, as the runner plans it.

    Attributes:
        epoch: the epoch number (seeds the order and `worker_info().rng()`).
        start: the first position of the epoch's order to serve (> 0 when
            resuming mid-epoch, or continuing an infinite source).
        shuffle: whether this pass visits batches in a shuffled order.
        workers: workers of the pool running the pass (sharded streams pin
            one shard to each).
    """

    epoch: int
    start: int = 0
    shuffle: bool = False
    workers: int = 0


@runtime_checkable
class Source(Protocol):
    """The contract between a seqify object and the runner."""

    #: Whether `shuffle` changes the order (False for streams: never reordered).
    reorders: bool
    #: Whether tasks need a pool; False runs them on the consuming thread.
    parallel: bool
    #: Whether sample tasks must run on the pool (their results are then
    #: real batches the source keeps, see `sampled`).
    samples_on_pool: bool
    #: Whether batches given back must be kept as built (they cannot be
    #: rebuilt from their task: a sharded stream's come from the workers).
    keeps_batches: bool

    def num_batches(self) -> Optional[int]:
        """Batches per epoch, or None for an infinite source."""

    def make_job(self) -> Job:
        """What the workers run (shipped once per pool, or per pass if `reship()`)."""

    def reship(self) -> bool:
        """Whether process workers need a fresh copy of the job every pass."""

    def make_state(self):
        """Per-process runtime state (threads, read-ahead), or None."""

    def tasks(self, plan: Pass, state) -> Iterator:
        """The tasks of one pass, in delivery order (or ready results)."""

    def sample_tasks(self, count: int, state, workers: int) -> List[Task]:
        """Tasks building the first `count` batches without consuming any."""

    def sampled(self, tasks, batches, state) -> None:
        """Receives the batches built for `sample_tasks` (to keep, if real)."""

    def abandon(self, pending, state) -> None:
        """Takes back `(task, handle)` pairs a stopped pass did not deliver."""

    def give_back(self, entries, state) -> None:
        """Takes back `(task, batch)` pairs delivered but never used, in order."""


def batch_order(seed: int, epoch: int, n: int, shuffle: bool):
    """The order of an epoch's batches: natural, or a permutation of (seed, epoch)."""
    if not shuffle:
        return range(n)
    return np.random.default_rng([seed, epoch, 1]).permutation(n)


class IndexSource:
    """Random-access batches: batch `i` is `fetch(i)`.

    Args:
        fetch: `fetch(i) -> batch` (shipped to workers).
        num_batches: batches per epoch (None: infinite) or a callable
            returning it (a Sequence subclass may change its length).
        seed: seeds the shuffled order.
        shuffles_samples: the batch function shuffles samples itself
            (`from_arrays`), so a shuffled pass keeps the batch order and
            only tells the workers (`worker_info().shuffled`).
        reship: process workers need the job re-sent every pass.
    """

    parallel = True
    reorders = True
    samples_on_pool = False
    keeps_batches = False

    def __init__(self, fetch: Callable, num_batches, seed: int, *, shuffles_samples=False, reship=False):
        self._fetch = fetch
        self._num_batches = num_batches
        self._seed = seed
        self._shuffles_samples = shuffles_samples
        self._reship = reship

    def num_batches(self) -> Optional[int]:
        n = self._num_batches() if callable(self._num_batches) else self._num_batches
        return None if n is None else int(n)

    def make_job(self) -> Job:
        return Job(fetch=self._fetch, seed=self._seed)

    def reship(self) -> bool:
        return self._reship

    def make_state(self):
        return None

    def tasks(self, plan: Pass, state) -> Iterator[Task]:
        n = self.num_batches()
        epoch = plan.epoch
        if n is None:  # infinite: indices run on across passes
            index = plan.start
            while True:
                yield Task(TaskKind.FETCH, epoch, index)
                index += 1
        if self._shuffles_samples:
            order, shuffled = range(n), plan.shuffle
        else:
            order, shuffled = batch_order(self._seed, epoch, n, plan.shuffle), False
        for position in range(plan.start, n):
            yield Task(TaskKind.FETCH, epoch, int(order[position]), shuffled=shuffled)

    def sample_tasks(self, count: int, state, workers: int = 0) -> List[Task]:
        n = self.num_batches()
        count = count if n is None else min(count, n)
        return [Task(TaskKind.FETCH, 0, i) for i in range(count)]

    def sampled(self, tasks, batches, state) -> None:
        pass

    def abandon(self, pending, state) -> None:
        discard_all(pending)

    def give_back(self, entries, state) -> None:
        # Finite: the epoch is over whether or not its tail was used (Keras
        # semantics). Infinite: the runner moves its cursor back.
        pass


def discard_all(pending) -> None:
    for _, handle in pending:
        handle.discard()


class _NoHandle:
    """Stands for the handle of a task that was run directly (nothing to discard)."""

    def discard(self):
        pass


NO_HANDLE = _NoHandle()
