"""`from_generator`: a streaming generator as a buffered, lock-guarded Sequence."""

import collections
import collections.abc
import functools
import inspect
import logging
import os
import time
from typing import Callable, Optional

import numpy as np

from seqify._pickling import check_picklable
from seqify._validation import is_int
from seqify.engine.errors import StreamExhaustedError
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.stream import Stream, StreamEnd
from seqify.sequence import Sequence
from seqify.source import NO_HANDLE, Pass, discard_all

logger = logging.getLogger("seqify")


class StreamSource:
    """One producer thread reads the stream; workers only run `transform`.

    Its per-process state is the `Stream` (the producer, the read-ahead
    buffer and the items pushed back). Batches taken from the stream but not
    delivered go back to its front, so the next pass starts with them.
    """

    reorders = False
    samples_on_pool = False
    keeps_batches = False

    def __init__(self, make_iterator, restartable, num_batches, transform, seed, buffer_size, name, seek=None):
        self._make_iterator = make_iterator
        self._restartable = restartable
        self._seek = seek  # seek(n) -> iterator from item n of a run, or None
        self._num = num_batches
        self._transform = transform
        self._seed = seed
        self._buffer_size = buffer_size
        self._name = name
        # Without a transform there is nothing for workers to do.
        self.parallel = transform is not None

    def num_batches(self):
        return self._num

    def make_job(self) -> Job:
        # Only the transform travels to workers; the stream stays here.
        return Job(transform=self._transform, seed=self._seed)

    def reship(self) -> bool:
        return False

    def make_state(self) -> Stream:
        return Stream(self._make_iterator, self._restartable, self._buffer_size, name=self._name)

    def next_item(self, stream: Stream, position: int, epoch: int):
        """`(index, item)` for `position` of the epoch; restarts a finished finite source."""
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

    def tasks(self, plan: Pass, stream: Stream):
        for position in range(plan.start, self._num):
            index, item = self.next_item(stream, position, plan.epoch)
            yield Task(TaskKind.TRANSFORM, plan.epoch, index, item)

    def get_state(self, stream: Stream, items: int, workers: int) -> dict:
        # Items reach consumers in stream order, so the next one to serve is
        # item `items` (the count served); read-ahead does not count.
        return {"items": items, "run_start": stream.run_start(items)}

    def set_state(self, stream: Stream, saved: dict, workers: int, current=None) -> None:
        items, run_start = int(saved["items"]), int(saved.get("run_start", 0))
        if items == current:
            return False  # already there (a round trip in this process): nothing to replay
        offset = items - run_start
        if not 0 <= offset:
            raise ValueError(f"bad stream state: item {items} before its run's start {run_start}.")
        if self._seek is not None:
            stream.reposition(iter(self._seek(offset)), items, offset)
            return True
        if not self._restartable:
            raise TypeError(
                "This stream was made from a generator *object*, which cannot be replayed to a saved "
                f"position (item {items}). Pass the generator function instead "
                "(seqify.from_generator(my_generator, args=(...), steps_per_epoch=N)), which seqify "
                "replays, or give `seek=` (a function returning an iterator positioned at item n)."
            )
        started = time.perf_counter()
        iterator = self._make_iterator()
        for skipped in range(offset):
            try:
                next(iterator)
            except StopIteration:
                raise ValueError(
                    f"Replaying the stream to resume it: the generator ended after {skipped} items, but the "
                    f"saved position is {offset} items into it. Resuming by replay needs a generator that "
                    "yields the same items every time it is called (seed its randomness from its arguments), "
                    "or a `seek=` function."
                ) from None
        elapsed = time.perf_counter() - started
        self.last_replay = (offset, elapsed)
        if offset:
            logger.info("seqify: resumed %s by replaying %d items (transform not run) in %.3f s", self._name, offset, elapsed)
        stream.reposition(iterator, items, offset)
        return True

    def sample_tasks(self, count: int, stream: Stream, workers: int = 0):
        items = []
        try:
            for position in range(min(count, self._num)):
                items.append(self.next_item(stream, position, 0))
        except StreamExhaustedError:
            if not items:
                raise
        finally:
            stream.push_front(items)
        return [Task(TaskKind.TRANSFORM, 0, index, item) for index, item in items]

    def sampled(self, tasks, batches, stream) -> list:
        return batches

    def abandon(self, pending, stream: Stream) -> None:
        discard_all(pending)
        stream.push_front([(task.index, task.payload) for task, _ in pending])

    def give_back(self, entries, stream: Stream) -> None:
        # The raw items: `transform` runs again on them, like on any item.
        stream.push_front([(task.index, task.payload) for task, _ in entries])


class _Ready:
    """A batch a sharded stream already read, served like a finished task."""

    __slots__ = ("task", "_batch")

    def __init__(self, task, batch):
        self.task = task
        self._batch = batch

    def result(self):
        return self._batch

    def discard(self):
        self._batch = None


class ShardState:
    """Main-side bookkeeping of a sharded stream."""

    def __init__(self):
        self.next_index = 0
        self.head = collections.deque()  # _Ready batches pulled but not yet served

    def take_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index


class ShardedStreamSource:
    """One generator per worker; stream item `g` comes from shard `g % workers`.

    Items already pulled from the shard generators when a pass stops (or
    built to infer a signature) are kept for the next pass, never lost.
    """

    parallel = True
    reorders = False
    samples_on_pool = True
    keeps_batches = True

    def __init__(self, source, args, kwargs, num_batches, transform, seed, training_shard, seek=None):
        self._seek = seek
        self._state = None
        self._source = source
        self._args = args
        self._kwargs = kwargs
        self._num = num_batches
        self._transform = transform
        self._seed = seed
        self._training_shard = training_shard

    def num_batches(self):
        return self._num

    def make_job(self) -> Job:
        # A new pool runs new shard generators: each first skips what its
        # shard already produced (a restored state, or a pool restarted).
        produced = self._state.next_index if self._state is not None else 0
        return Job(
            transform=self._transform, seed=self._seed,
            shard_source=(self._source, self._args, self._kwargs), training_shard=self._training_shard,
            shard_skip=produced, shard_seek=self._seek,
        )

    def reship(self) -> bool:
        return False

    def make_state(self) -> ShardState:
        self._state = ShardState()
        return self._state

    def get_state(self, state: ShardState, items: int, workers: int) -> dict:
        # Item g is shard g % workers's: each shard's position follows.
        return {"items": items, "shards": workers, "per_shard": [len(range(s, items, workers)) for s in range(workers)]}

    def set_state(self, state: ShardState, saved: dict, workers: int, current=None) -> None:
        shards = int(saved.get("shards", 0))
        if shards != workers:
            raise ValueError(
                f"This sharded stream's state was saved with {shards} worker shard(s), but this object runs "
                f"{workers}: stream item g comes from shard g % workers, so another worker count is another "
                f"stream. Restore it with workers={shards} (each worker's generator resumes at its own position)."
            )
        if int(saved["items"]) == current:
            return False
        state.next_index = int(saved["items"])
        state.head.clear()
        return True  # the shard generators must restart (a new pool) to get there

    def _new_tasks(self, epoch, count, state, workers):
        shards = max(workers, 1)
        for _ in range(count):
            index = state.take_index()
            # Stream item g always comes from shard g % shards: the
            # interleaving is fixed by construction, not by timing.
            yield Task(TaskKind.SHARD, epoch, index, worker=index % shards)

    def tasks(self, plan: Pass, state: ShardState):
        served = 0
        wanted = self._num - plan.start
        while state.head and served < wanted:
            yield state.head.popleft()
            served += 1
        yield from self._new_tasks(plan.epoch, wanted - served, state, plan.workers)

    def sample_tasks(self, count: int, state: ShardState, workers: int = 0):
        # Samples are real stream items: built on the pool, kept in `head`.
        missing = max(0, min(count, self._num) - len(state.head))
        return list(self._new_tasks(0, missing, state, workers))

    def sampled(self, tasks, batches, state: ShardState) -> list:
        state.head.extend(_Ready(task, batch) for task, batch in zip(tasks, batches))
        return [ready.result() for ready in list(state.head)[: len(tasks) or len(state.head)]]

    def abandon(self, pending, state: ShardState) -> None:
        kept = []
        try:
            for task, handle in pending:
                kept.append(_Ready(task, handle.result()))
        except BaseException:
            discard_all(pending[len(kept):])
        # In stream order, ahead of anything read later.
        state.head.extendleft(reversed(kept))

    def give_back(self, entries, state: ShardState) -> None:
        state.head.extendleft(reversed([_Ready(task, batch) for task, batch in entries]))


class GeneratorSequence(Sequence):
    """A stream with one producer, handed out exactly once, in stream order.

    Build it with `seqify.from_generator`. A stream has no random access:
    `seq[i]` serves the next batch of the stream and must be asked for in
    order (0, 1, 2, ... within an epoch) from the process that owns the
    object; anything else raises instead of reordering or duplicating data.
    """

    def __init__(self, source, *, steps_per_epoch=None, args=(), kwargs=None, transform=None, buffer_size=None,
                 workers=1, use_multiprocessing=False, max_queue_size=10, seed=None, start_method=None, sharded=False,
                 output_signature=None, seek=None, _training_shard=(0, 1)):
        super().__init__(workers, use_multiprocessing, max_queue_size, seed=seed, start_method=start_method,
                         output_signature=output_signature)
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
        if seek is not None and not callable(seek):
            raise TypeError(f"`seek` must be a callable `seek(n, *args, **kwargs) -> iterator` or None; got {type(seek).__name__}.")
        if seek is not None and sharded and self.settings.uses_processes:
            check_picklable(seek, "seek")
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable `transform(batch) -> batch` or None; got {type(transform).__name__}.")
        if buffer_size is None:
            buffer_size = self.max_queue_size
        if not is_int(buffer_size) or buffer_size < 1:
            raise ValueError(f"`buffer_size` must be an int >= 1 (batches the producer may run ahead); got {buffer_size!r}.")
        if transform is not None and self.settings.uses_processes:
            check_picklable(transform, "transform")
        if sharded and self.settings.uses_processes:
            check_picklable(source, "source")
            check_picklable((tuple(args), kwargs), "args/kwargs")
        self._source = source
        self._source_kind = kind
        self._args = tuple(args)
        self._kwargs = kwargs
        self._transform = transform
        self._buffer_size = int(buffer_size)
        self._num = num
        self._sharded = bool(sharded)
        self._seek = seek
        self._training_shard = tuple(_training_shard)
        self._owner_pid = os.getpid()

    @property
    def num_batches(self) -> int:
        return self._num

    def __len__(self):
        return self._num

    def _make_source(self):
        if self._sharded:
            return ShardedStreamSource(
                self._source, self._args, self._kwargs, self._num, self._transform, self.seed, self._training_shard,
                seek=self._seek,
            )
        factory = functools.partial(_make_iterator, self._source_kind, self._source, self._args, self._kwargs)
        seek = None
        if self._seek is not None:
            seek = functools.partial(_call_seek, self._seek, self._args if self._source_kind == "function" else (), self._kwargs)
        return StreamSource(
            factory, self._source_kind != "iterator", self._num, self._transform, self.seed, self._buffer_size,
            name=f"{type(self).__name__}-producer", seek=seek,
        )

    def _state_source(self) -> str:
        source = self._source
        if self._source_kind == "function":
            name = f"{getattr(source, '__module__', '?')}.{getattr(source, '__qualname__', type(source).__qualname__)}"
        else:
            name = type(source).__qualname__
        shard = f"[shard {self._training_shard[0]}/{self._training_shard[1]}]" if self._sharded else ""
        return f"{'sharded-' if self._sharded else ''}stream:{self._source_kind}:{name}{shard}"

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
        s = self.settings
        return GeneratorSequence(
            self._source, steps_per_epoch=self._num // num_shards, args=self._args, kwargs=self._kwargs,
            transform=self._transform, buffer_size=self._buffer_size, workers=s.workers,
            use_multiprocessing=s.use_multiprocessing, max_queue_size=s.max_queue_size,
            seed=s.seed, start_method=s.start_method, sharded=True, output_signature=s.output_signature,
            seek=self._seek, _training_shard=(int(index), int(num_shards)),
        )

    def __reduce_ex__(self, protocol):
        if self._source_kind == "iterator":
            raise TypeError(
                "This seqify object was made from a generator *object*, which cannot be pickled "
                "(a running generator has no portable state). Pass the generator function instead: "
                "seqify.from_generator(my_generator, args=(...), steps_per_epoch=N)."
            )
        return super().__reduce_ex__(protocol)

    def __getitem__(self, index):
        if self._sharded:
            raise TypeError(
                "A sharded stream (sharded=True) has no random access: pass it to model.fit, "
                "or iterate it, and its shards are interleaved round-robin."
            )
        if not isinstance(index, (int, np.integer)) or not -self._num <= index < self._num:
            raise IndexError(f"batch index {index!r} out of range for {self._num} batches")
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                f"A seqify stream ({type(self).__name__}) was indexed in process {os.getpid()}, but its "
                f"generator runs in process {self._owner_pid}: every process would replay its own copy of "
                "the stream and train on duplicated batches. This happens when Keras's own PyDataset "
                "workers drive a seqify object (its `get_data_adapter` was imported before seqify "
                "loaded). Import seqify before building the model, or iterate the object itself "
                "(`for batch in ds:`), which runs seqify's workers."
            )
        runner = self._runner
        source = runner.source
        with runner.lock:
            expected = runner.cursor.position
            position = int(index) % self._num
            if position != expected:
                raise RuntimeError(
                    f"A seqify stream ({type(self).__name__}) was asked for batch {position} when its next "
                    f"batch is {expected}: a stream has no random access, so serving it would reorder the "
                    "data silently. Something is indexing it in a shuffled or concurrent order, such as "
                    "Keras's own PyDataset machinery with fit(shuffle=True) or several workers (its "
                    "`get_data_adapter` was imported before seqify loaded). Pass the object to "
                    "model.fit after importing seqify, or iterate it (`for batch in ds:`)."
                )
            epoch = runner.cursor.epoch
            item_index, raw = source.next_item(runner.state, position, epoch)
            runner.cursor = type(runner.cursor)(epoch + (position + 1) // self._num, (position + 1) % self._num)
            runner.delivered += 1
            runner._last = None  # the cursor itself says what comes next
        task = Task(TaskKind.TRANSFORM, epoch, item_index, raw)
        try:
            return InlinePool(source.make_job()).submit(task).result()
        except BaseException:
            source.abandon([(task, NO_HANDLE)], runner.state)
            raise


def _call_seek(seek, args, kwargs, n):
    return seek(n, *args, **kwargs)


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
    output_signature=None,
    seek: Optional[Callable] = None,
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
        output_signature: `tf.TensorSpec` structure for the TF backend, or
            None to infer it from the first batches (read through the
            push-back buffer: nothing is consumed). Give it when batch shapes
            vary beyond what the first batches show.

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
        output_signature=output_signature, seek=seek,
    )
