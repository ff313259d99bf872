"""`from_batch_fn`: an indexable batch function as a random-access Sequence."""

from typing import Callable, Optional

import numpy as np

from seqify._pickling import check_picklable
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import FETCH, Job
from seqify.engine.messages import Task
from seqify.sequence import Sequence, validate_worker_args
from seqify._validation import is_int


class BatchFnSequence(Sequence):
    """A Sequence whose batch `i` is `fn(i)`. Build it with `from_batch_fn`."""

    def __init__(self, fn, num_batches, *, shuffle=False, seed=None, workers=1, use_multiprocessing=False, max_queue_size=10, start_method=None):
        if not callable(fn):
            raise TypeError(
                f"`fn` must be a callable `fn(i) -> batch`; got {type(fn).__name__} ({fn!r:.60}). "
                "For a generator use seqify.from_generator; for arrays, seqify.from_arrays."
            )
        if not is_int(num_batches) or num_batches < 1:
            raise ValueError(f"`num_batches` must be an int >= 1 (the number of batches per epoch); got {num_batches!r}.")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"`shuffle` must be True or False; got {shuffle!r}.")
        validate_worker_args(workers, use_multiprocessing, max_queue_size, start_method)
        if use_multiprocessing and workers > 0:
            check_picklable(fn, "fn")
        super().__init__(workers, use_multiprocessing, max_queue_size, seed=seed, start_method=start_method)
        self._fn = fn
        self._num = int(num_batches)
        self._shuffle = bool(shuffle)
        self._samples_shuffled = False  # set by from_arrays(shuffle=True)

    @property
    def is_shuffled(self) -> bool:
        """Whether batches (or, for from_arrays, samples) are reordered each epoch."""
        return self._shuffle or self._samples_shuffled

    def __len__(self):
        return self._num

    def _seqify_make_job(self) -> Job:
        # Only `fn` travels to workers, not this (Keras) object: spawn and
        # forkserver workers then never import Keras or TensorFlow.
        return Job(fetch=self._fn, seed=self.seed)

    def _seqify_order(self, epoch, n):
        if not self._shuffle:
            return range(n)
        return np.random.default_rng([self.seed, epoch, 1]).permutation(n)

    def shard(self, num_shards: int, index: int) -> "BatchFnSequence":
        """Returns shard `index` of `num_shards`: batches index, index+num_shards, ...

        For multi-worker training: give training worker `k` of `n`
        `ds.shard(n, k)`. The shards are disjoint and together hold every
        batch exactly once per epoch (shuffling, if on, is per shard, from
        the same seed). Worker settings and seed are kept.

        Raises:
            ValueError: `num_shards` < 1, more shards than batches, or
                `index` outside `0..num_shards-1`.
        """
        if not is_int(num_shards) or not 1 <= num_shards <= self._num:
            raise ValueError(f"`num_shards` must be an int in 1..{self._num} (the number of batches); got {num_shards!r}.")
        if not is_int(index) or not 0 <= index < num_shards:
            raise ValueError(f"`index` must be an int in 0..{num_shards - 1}; got {index!r}.")
        shard = BatchFnSequence(
            _ShardFn(self._fn, int(num_shards), int(index)), len(range(index, self._num, num_shards)),
            shuffle=self._shuffle, seed=self.seed, workers=self.workers,
            use_multiprocessing=self.use_multiprocessing, max_queue_size=self.max_queue_size,
            start_method=self._seqify_start_method,
        )
        shard._samples_shuffled = self._samples_shuffled
        return shard

    def __getitem__(self, index):
        index = _check_index(index, self._num)
        return InlinePool(self._seqify_make_job()).submit(Task(FETCH, 0, index)).result()


class _ShardFn:
    """Batch `i` of a shard is batch `index + i * num_shards` of the whole."""

    def __init__(self, fn, num_shards, index):
        self.fn = fn
        self.num_shards = num_shards
        self.index = index

    def __call__(self, i):
        return self.fn(self.index + i * self.num_shards)


def _check_index(index, n):
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        i = int(index) + (n if index < 0 else 0)
        if 0 <= i < n:
            return i
    raise IndexError(f"batch index {index!r} out of range for {n} batches")


def from_batch_fn(
    fn: Callable[[int], object],
    num_batches: int,
    *,
    shuffle: bool = False,
    seed: Optional[int] = None,
    workers: int = 1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
    start_method: Optional[str] = None,
) -> BatchFnSequence:
    """Adapts a batch function `fn(i) -> batch` into a Keras-ready Sequence.

    Args:
        fn: returns batch `i`: a tuple `(x,)`, `(x, y)`, `(x, y,
            sample_weight)` or a dict, of (nested) numpy arrays. Lambdas and
            closures work with process workers (cloudpickle).
        num_batches: batches per epoch (>= 1).
        shuffle: visit batches in a new seeded order each epoch.
        seed: seed for the order and for `seqify.worker_info().rng()`.
        workers: number of workers; 0 builds batches on the calling thread.
        use_multiprocessing: use worker processes instead of threads.
        max_queue_size: maximum number of batches in flight.
        start_method: "fork", "spawn", "forkserver" or None (Python's default).

    Returns:
        A `seqify.Sequence` (a `keras.utils.PyDataset`) for `model.fit`.

    Raises:
        TypeError: `fn` is not callable, or cannot be pickled for process workers.
        ValueError: `num_batches` < 1, or a bad worker setting.

    Example:

    ```python
    def batch(i):
        x = np.random.default_rng(i).normal(size=(32, 8)).astype("float32")
        return x, x.sum(axis=1, keepdims=True)

    ds = seqify.from_batch_fn(batch, 100, workers=4, use_multiprocessing=True)
    model.fit(ds, epochs=3)
    ```
    """
    return BatchFnSequence(
        fn, num_batches, shuffle=shuffle, seed=seed, workers=workers,
        use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size, start_method=start_method,
    )
