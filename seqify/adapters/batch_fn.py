"""`from_batch_fn`: an indexable batch function as a random-access Sequence."""

from typing import Callable, Optional

import numpy as np

from seqify._pickling import check_picklable
from seqify._validation import is_int
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.sequence import Sequence
from seqify.source import IndexSource


class BatchFnSequence(Sequence):
    """A Sequence whose batch `i` is `fn(i)`. Build it with `from_batch_fn`."""

    def __init__(self, fn, num_batches, *, shuffle=None, seed=None, workers=1, use_multiprocessing=False,
                 max_queue_size=10, start_method=None, output_signature=None, _shuffles_samples=False):
        if not callable(fn):
            raise TypeError(
                f"`fn` must be a callable `fn(i) -> batch`; got {type(fn).__name__} ({fn!r:.60}). "
                "For a generator use seqify.from_generator; for arrays, seqify.from_arrays."
            )
        if num_batches is not None and (not is_int(num_batches) or num_batches < 1):
            raise ValueError(
                "`num_batches` must be an int >= 1 (the number of batches per epoch), or None for an "
                f"infinite source (then pass fit(steps_per_epoch=...)); got {num_batches!r}."
            )
        super().__init__(workers, use_multiprocessing, max_queue_size, seed=seed, start_method=start_method,
                         shuffle=shuffle, output_signature=output_signature)
        if self.settings.uses_processes:
            check_picklable(fn, "fn")
        self._fn = fn
        self._num = None if num_batches is None else int(num_batches)
        self._shuffles_samples = bool(_shuffles_samples)

    @property
    def num_batches(self) -> Optional[int]:
        return self._num

    def __len__(self):
        if self._num is None:
            raise TypeError("an infinite seqify source (num_batches=None) has no len()")
        return self._num

    def _state_source(self) -> str:
        fn, shard = self._fn, ""
        if isinstance(fn, _ShardFn):
            fn, shard = fn.fn, f"[shard {fn.index}/{fn.num_shards}]"
        describe = getattr(fn, "describe_source", None)
        if describe is not None:
            return describe() + shard
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        return f"fn:{getattr(fn, '__module__', '?')}.{name}{shard}"

    def _make_source(self):
        # Only `fn` travels to workers, not this (Keras) object: spawn and
        # forkserver workers then never import Keras or TensorFlow.
        return IndexSource(self._fn, self._num, self.seed, shuffles_samples=self._shuffles_samples)

    def shard(self, num_shards: int, index: int) -> "BatchFnSequence":
        """Returns shard `index` of `num_shards`: batches index, index+num_shards, ...

        For multi-worker training: give training worker `k` of `n`
        `ds.shard(n, k)`. The shards are disjoint and together hold every
        batch exactly once per epoch (shuffling, if on, is per shard, from
        the same seed). Worker settings and seed are kept.

        Raises:
            ValueError: `num_shards` < 1, more shards than batches, or
                `index` outside `0..num_shards-1`.
            TypeError: the source is infinite.
        """
        if self._num is None:
            raise TypeError("shard() needs a finite source; an infinite one (num_batches=None) cannot be split by index.")
        if not is_int(num_shards) or not 1 <= num_shards <= self._num:
            raise ValueError(f"`num_shards` must be an int in 1..{self._num} (the number of batches); got {num_shards!r}.")
        if not is_int(index) or not 0 <= index < num_shards:
            raise ValueError(f"`index` must be an int in 0..{num_shards - 1}; got {index!r}.")
        s = self.settings
        return BatchFnSequence(
            _ShardFn(self._fn, int(num_shards), int(index)), len(range(index, self._num, num_shards)),
            shuffle=s.shuffle, seed=s.seed, workers=s.workers, use_multiprocessing=s.use_multiprocessing,
            max_queue_size=s.max_queue_size, start_method=s.start_method, output_signature=s.output_signature,
            _shuffles_samples=self._shuffles_samples,
        )

    def __getitem__(self, index):
        index = _check_index(index, self._num)
        return InlinePool(Job(fetch=self._fn, seed=self.seed)).submit(Task(TaskKind.FETCH, 0, index)).result()


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
        if n is None:
            if index >= 0:
                return int(index)
        else:
            i = int(index) + (n if index < 0 else 0)
            if 0 <= i < n:
                return i
    raise IndexError(f"batch index {index!r} out of range for {n} batches")


def from_batch_fn(
    fn: Callable[[int], object],
    num_batches: Optional[int],
    *,
    shuffle: Optional[bool] = None,
    seed: Optional[int] = None,
    workers=1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
    start_method: Optional[str] = None,
    output_signature=None,
) -> BatchFnSequence:
    """Adapts a batch function `fn(i) -> batch` into a Keras-ready Sequence.

    Args:
        fn: returns batch `i`: a tuple `(x,)`, `(x, y)`, `(x, y,
            sample_weight)` or a dict, of (nested) numpy arrays. Lambdas and
            closures work with process workers (cloudpickle).
        num_batches: batches per epoch (>= 1), or None for an infinite
            source (indices 0, 1, 2, ... across epochs; give `fit` a
            `steps_per_epoch`).
        shuffle: None (default) follows `fit(shuffle=...)` like a Keras
            PyDataset: a new batch order each training epoch, drawn from
            (seed, epoch); True/False overrides it. `predict` always runs in
            natural order.
        seed: seed for the order and for `seqify.worker_info().rng()`.
        workers: number of workers; 0 builds batches on the calling thread;
            "auto" measures and picks.
        use_multiprocessing: use worker processes instead of threads.
        max_queue_size: maximum number of batches in flight (tiny, cheap
            batches may run further ahead: docs/design.md, record 23).
        start_method: "fork", "spawn", "forkserver" or None (seqify's default).
        output_signature: `tf.TensorSpec` structure for the TF backend, or
            None to infer it from the first batches.

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
        fn, num_batches, shuffle=shuffle, seed=seed, workers=workers, use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size, start_method=start_method, output_signature=output_signature,
    )
