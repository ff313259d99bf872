"""`from_generator`: a streaming generator as a buffered, lock-guarded Sequence."""

import collections
import collections.abc
import functools
import inspect
from typing import Callable, Optional

import numpy as np

from seqify._pickling import check_picklable
from seqify.engine.batches import standardize_batch
from seqify.engine.errors import StreamExhaustedError
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import SHARD, TRANSFORM, Job
from seqify.engine.messages import Task
from seqify.engine.pipeline import discard_all, ordered
from seqify.engine.stream import Stream, StreamEnd
from seqify.sequence import Sequence, validate_worker_args
from seqify._validation import is_int


class GeneratorSequence(Sequence):
    """A stream with one producer, handed out exactly once, in stream order.

    Build it with `seqify.from_generator`. Indexing (`seq[i]`) returns the
    *next* batch of the stream whatever `i` is: a stream has no random access,
    so a shuffled index order (Keras's `fit(shuffle=True)`, legacy enqueuers)
    can neither reorder nor duplicate it.
    """

    def __init__(self, source, *, steps_per_epoch=None, args=(), kwargs=None, transform=None, buffer_size=None, workers=1, use_multiprocessing=False, max_queue_size=10, seed=None, start_method=None, sharded=False):
        validate_worker_args(workers, use_multiprocessing, max_queue_size, start_method)
        kwargs = dict(kwargs or {})
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"`args` must be a tuple of positional arguments for `source`; got {type(args).__name__}.")
        if isinstance(source, collections.abc.Iterator):
            kind = "iterator"
            if args or kwargs:
                raise TypeError("`args`/`kwargs` are only for a generator *function*; `source` is already a generator/iterator object.")
        elif callable(source):
            kind = "function"
        elif isinstance(source, collections.abc.Iterable):
            kind = "iterable"
        else:
            raise TypeError(
                f"`source` must be a generator function, a generator/iterator, or an iterable of batches; "
                f"got {type(source).__name__}."
            )
        if sharded and kind != "function":
            raise TypeError(
                "sharded=True runs one generator per worker, so `source` must be a generator "
                f"*function* (each worker calls it); got a {kind}."
            )
        if sharded and steps_per_epoch is None:
            raise ValueError("sharded=True needs `steps_per_epoch` (batches per epoch, all shards together).")
        if steps_per_epoch is not None:
            if not is_int(steps_per_epoch) or steps_per_epoch < 1:
                raise ValueError(f"`steps_per_epoch` must be an int >= 1 (batches per epoch); got {steps_per_epoch!r}.")
            num = int(steps_per_epoch)
        else:
            try:
                num = len(source)
            except TypeError:
                what = "an infinite `while True` generator never ends" if inspect.isgeneratorfunction(source) or kind == "iterator" else "it has no len()"
                raise ValueError(
                    f"from_generator needs `steps_per_epoch` for this source: {what}, so seqify cannot know "
                    "where an epoch ends. Pass steps_per_epoch=N (batches per epoch, as with fit_generator); "
                    "consecutive epochs then read consecutive windows of the stream."
                ) from None
            if num < 1:
                raise ValueError("`source` has len() 0: it yields no batch.")
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable `transform(batch) -> batch` or None; got {type(transform).__name__}.")
        if buffer_size is None:
            buffer_size = max_queue_size
        if not is_int(buffer_size) or buffer_size < 1:
            raise ValueError(f"`buffer_size` must be an int >= 1 (batches the producer may run ahead); got {buffer_size!r}.")
        if transform is not None and use_multiprocessing and workers > 0:
            check_picklable(transform, "transform")
        if sharded and use_multiprocessing and workers > 0:
            check_picklable(source, "source")
            check_picklable((tuple(args), kwargs), "args/kwargs")
        super().__init__(workers, use_multiprocessing, max_queue_size, seed=seed, start_method=start_method)
        self._source = source
        self._source_kind = kind
        self._args = tuple(args)
        self._kwargs = kwargs
        self._transform = transform
        self._buffer_size = int(buffer_size)
        self._num = num
        self._sharded = bool(sharded)

    def __len__(self):
        return self._num

    def shard(self, num_shards: int, index: int) -> "GeneratorSequence":
        """Training worker `index` of `num_shards`'s part of a sharded stream.

        Only for `sharded=True`: every local worker's generator then sees a
        globally unique `worker_info().shard_index` out of
        `worker_info().num_shards` (= num_shards x workers), so training
        workers read disjoint shards. Each gets `steps_per_epoch //
        num_shards` batches per epoch.

        Raises:
            TypeError: the stream is not sharded (one producer cannot be
                split without reading everything).
            ValueError: bad `num_shards`/`index`, or `steps_per_epoch` not
                divisible by `num_shards` (workers must step in lockstep).
        """
        if not self._sharded:
            raise TypeError(
                "shard() needs a sharded stream: a single generator cannot be split between "
                "training workers without each reading all of it. Use "
                "from_generator(gen, sharded=True, ...) with a generator that reads "
                "seqify.worker_info().shard_index / .num_shards."
            )
        if not is_int(num_shards) or num_shards < 1:
            raise ValueError(f"`num_shards` must be an int >= 1; got {num_shards!r}.")
        if not is_int(index) or not 0 <= index < num_shards:
            raise ValueError(f"`index` must be an int in 0..{num_shards - 1}; got {index!r}.")
        if self._num % num_shards:
            raise ValueError(
                f"steps_per_epoch={self._num} is not divisible by num_shards={num_shards}; "
                "training workers must take the same number of steps per epoch."
            )
        part = GeneratorSequence(
            self._source, steps_per_epoch=self._num // num_shards, args=self._args, kwargs=self._kwargs,
            transform=self._transform, buffer_size=self._buffer_size, workers=self.workers,
            use_multiprocessing=self.use_multiprocessing, max_queue_size=self.max_queue_size,
            seed=self.seed, start_method=self._seqify_start_method, sharded=True,
        )
        part._training_shard = (int(index), int(num_shards))
        return part

    def __reduce_ex__(self, protocol):
        if self._source_kind == "iterator":
            raise TypeError(
                "This seqify object was made from a generator *object*, which cannot be pickled "
                "(a running generator has no portable state). Pass the generator function instead: "
                "seqify.from_generator(my_generator, args=(...), steps_per_epoch=N)."
            )
        return super().__reduce_ex__(protocol)

    # -- stream ---------------------------------------------------------------
    def _stream(self) -> Stream:
        runtime = self._seqify_runtime()
        with runtime.lock:
            stream = runtime.extra.get("stream")
            if stream is None:
                factory = functools.partial(_make_iterator, self._source_kind, self._source, self._args, self._kwargs)
                stream = runtime.extra["stream"] = Stream(
                    factory, self._source_kind != "iterator", self._buffer_size,
                    name=f"{type(self).__name__}-producer",
                )
            return stream

    def _next_raw(self, stream, position, epoch):
        try:
            return stream.next()
        except StreamEnd:
            if position == 0 and stream.restartable and stream.produced > 0:
                stream.restart()  # a finite source ended at an epoch boundary: new pass
                try:
                    return stream.next()
                except StreamEnd:
                    pass
            raise StreamExhaustedError(
                f"The generator ran dry after {position} of the {self._num} batches of epoch {epoch} "
                f"({stream.produced} batches since it last started). seqify never cuts an epoch "
                f"short: lower `steps_per_epoch` (now {self._num}) to what one epoch can produce, "
                "or make the generator loop forever (`while True:`)."
            ) from None

    def _seqify_make_job(self) -> Job:
        if self._sharded:
            return Job(
                transform=self._transform, seed=self.seed,
                shard_source=(self._source, self._args, self._kwargs),
                training_shard=getattr(self, "_training_shard", (0, 1)),
            )
        # Only the transform travels to workers; the stream stays here.
        return Job(transform=self._transform, seed=self.seed)

    # -- sharded streams: one generator per worker, interleaved round-robin ----
    def _shard_state(self):
        runtime = self._seqify_runtime()
        with runtime.lock:
            state = runtime.extra.get("shards")
            if state is None:
                state = runtime.extra["shards"] = _ShardState()
            return state

    def _sharded_tasks(self, epoch, count, state, shards):
        for _ in range(count):
            index = state.take_index()
            # Stream item g always comes from shard g % shards: the
            # interleaving is fixed by construction, not by timing.
            yield Task(SHARD, epoch, index, worker=index % shards)

    def _iter_sharded_pass(self):
        runtime = self._seqify_runtime()
        epoch = runtime.next_epoch()
        executor = self._seqify_executor()
        state = self._shard_state()
        shards = max(executor.workers, 1)
        window = max(int(self.max_queue_size), shards, 1)

        def keep(pending):
            # Items already pulled from shard generators are kept for the
            # next pass rather than lost.
            try:
                for index, _, handle in pending:
                    state.head.append((index, handle.result()))
            except BaseException:
                discard_all(pending)

        served = 0
        while state.head and served < self._num:
            yield state.head.popleft()[1]
            served += 1
        tasks = self._sharded_tasks(epoch, self._num - served, state, shards)
        yield from executor.run(self._seqify_make_job, tasks, window, keep)

    def _seqify_iter_pass(self):
        if self._sharded:
            return self._iter_sharded_pass()
        runtime = self._seqify_runtime()
        epoch = runtime.next_epoch()
        stream = self._stream()

        def put_back(pending):
            # Batches already taken from the stream but not consumed go back
            # to its front, so the next pass starts with them.
            discard_all(pending)
            stream.push_front([(index, raw) for index, raw, _ in pending])

        def tasks():
            for position in range(self._num):
                index, raw = self._next_raw(stream, position, epoch)
                yield Task(TRANSFORM, epoch, index, raw)

        if self._transform is None:
            return self._iter_untransformed(stream, epoch)
        if self.workers == 0:
            return ordered(InlinePool(self._seqify_make_job()), tasks(), 1, put_back)
        executor = self._seqify_executor()
        window = max(int(self.max_queue_size), executor.workers, 1)
        return executor.run(self._seqify_make_job, tasks(), window, put_back)

    def _iter_untransformed(self, stream, epoch):
        # Nothing to parallelize: hand each batch out as it arrives, with no
        # per-batch machinery beyond the shape check.
        for position in range(self._num):
            index, raw = self._next_raw(stream, position, epoch)
            try:
                batch = standardize_batch(raw, index)
            except TypeError:
                stream.push_front([(index, raw)])
                raise
            yield batch

    def _seqify_peek(self):
        if self._sharded:
            state = self._shard_state()
            if not state.head:
                executor = self._seqify_executor()
                shards = max(executor.workers, 1)
                task = next(self._sharded_tasks(0, 1, state, shards))
                state.head.append((task.index, executor.pool(self._seqify_make_job).submit(task).result()))
            return [state.head[0][1]]
        stream = self._stream()
        first = self._next_raw(stream, 0, 0)
        try:
            return [InlinePool(self._seqify_make_job()).submit(Task(TRANSFORM, 0, first[0], first[1])).result()]
        finally:
            stream.push_front([first])

    def __getitem__(self, index):
        if self._sharded:
            raise TypeError(
                "A sharded stream (sharded=True) has no random access: pass it to model.fit, "
                "or iterate it, and its shards are interleaved round-robin."
            )
        if not isinstance(index, (int, np.integer)) or not -self._num <= index < self._num:
            raise IndexError(f"batch index {index!r} out of range for {self._num} batches")
        position = int(index) % self._num
        stream = self._stream()
        item_index, raw = self._next_raw(stream, position, self._seqify_runtime().epoch + 1)
        return InlinePool(self._seqify_make_job()).submit(Task(TRANSFORM, 0, item_index, raw)).result()


def _make_iterator(kind, source, args, kwargs):
    # Module-level (not a method): the producer thread must not keep the
    # Sequence alive, or it could never be garbage-collected and closed.
    if kind == "iterator":
        return source
    if kind == "iterable":
        return iter(source)
    produced = source(*args, **kwargs)
    try:
        return iter(produced)
    except TypeError:
        raise TypeError(
            f"`source` was called as a generator function but returned {type(produced).__name__}, "
            "not an iterator. Pass a generator function (one that uses `yield`)."
        ) from None


class _ShardState:
    """Main-side bookkeeping of a sharded stream."""

    def __init__(self):
        self.next_index = 0
        self.head = collections.deque()  # (index, batch) pulled but not yet served

    def take_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index


def from_generator(
    source,
    *,
    steps_per_epoch: Optional[int] = None,
    args: tuple = (),
    kwargs: Optional[dict] = None,
    transform: Optional[Callable] = None,
    buffer_size: Optional[int] = None,
    workers: int = 1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
    seed: Optional[int] = None,
    start_method: Optional[str] = None,
    sharded: bool = False,
) -> GeneratorSequence:
    """Adapts a legacy `fit_generator` generator into a Keras-ready Sequence.

    One producer thread runs the stream, whatever `workers` is, so no batch is
    generated twice; batches reach `fit` exactly once, in the generator's
    order, even with `fit(shuffle=True)`. Workers run `transform` in parallel
    (threads, or processes with `use_multiprocessing=True`) and results still
    come out in stream order.

    Epochs: with `steps_per_epoch`, epochs are consecutive windows of one
    continuous stream (the `fit_generator` meaning); if a generator
    *function*'s stream ends exactly at an epoch boundary, the next epoch
    starts a fresh generator. Without `steps_per_epoch`, `source` must have
    `len()` (e.g. a list of batches), and each epoch is one full pass.

    Args:
        source: a generator function (called with `args`/`kwargs`), a
            generator/iterator object, or a re-iterable of batches.
        steps_per_epoch: batches per epoch; required unless `source` has len().
        args, kwargs: arguments for a generator function.
        transform: optional `transform(batch) -> batch`, run on the workers.
        buffer_size: how many batches the producer may run ahead (default
            `max_queue_size`).
        workers: workers for `transform`.
        use_multiprocessing: run `transform` in processes.
        max_queue_size: maximum number of batches in flight in the workers.
        seed: seed for `seqify.worker_info().rng()` inside `transform`.
        start_method: "fork", "spawn", "forkserver" or None.
        sharded: run one generator per worker instead of one producer. Each
            worker calls `source(*args, **kwargs)` itself; inside, use
            `seqify.worker_info().worker_id` / `.num_workers` to pick its
            shard. Stream item `g` always comes from shard `g % workers`, so
            the interleaving is deterministic. `transform` runs on the same
            worker. Needs `steps_per_epoch`.

    Returns:
        A `seqify.Sequence` (a `keras.utils.PyDataset`).

    Raises:
        ValueError: no `steps_per_epoch` for a source without len(), or bad sizes.
        TypeError: a bad `source`/`transform`, or a `transform` that cannot be
            pickled for process workers.

    Example:

    ```python
    def legacy():  # written for fit_generator
        while True:
            x = np.random.rand(32, 8).astype("float32")
            yield x, x.sum(axis=1)

    ds = seqify.from_generator(legacy, steps_per_epoch=100)
    model.fit(ds, epochs=3)
    ```
    """
    return GeneratorSequence(
        source, steps_per_epoch=steps_per_epoch, args=args, kwargs=kwargs, transform=transform,
        buffer_size=buffer_size, workers=workers, use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size, seed=seed, start_method=start_method, sharded=sharded,
    )
