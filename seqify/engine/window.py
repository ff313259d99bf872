"""The ordered, bounded window of batches in flight.

Keeps at most `size` tasks submitted ahead of the consumer and yields their
results in submission order, so the output order never depends on which
worker finished first. If the consumer stops early (generator closed, an
exception, Ctrl-C), the `(task, handle)` pairs still in flight go to
`on_abandon` in order; by default they are discarded. Streams use the hook
to put unconsumed items back, so no batch is lost.

An item may also be a ready handle (anything with `result()`/`discard()`
and a `task`), e.g. a batch a sharded stream read ahead in an earlier pass.

Refills come in bursts when batches are cheap: a pool that measures its cost
per batch (`batch_cost`) gets new tasks only once the window has drained by
a burst worth about `BURST_SECONDS` of work, so that sleeping workers are
woken once per burst, not once per batch. Slow batches keep the window full
(a burst of one). The inline pool (`workers=0`) skips the window: each batch
is built when it is asked for.

An elastic window (`elastic=`, for random-access sources, whose read-ahead
costs nothing but memory) may grow beyond `size` while batches are measured
to be both tiny and cheap (`ELASTIC_BATCH_BYTES`, `ELASTIC_BATCH_SECONDS`
each): to at most `elastic` batches, `ELASTIC_BYTES` of batches and
`ELASTIC_SECONDS` of work. A window of 10 tiny batches split
over the workers wakes them every few batches and sends process workers a
message per batch or two; a grown one sends chunks (see docs/design.md,
"The elastic window"). Large or slow batches keep the window at `size`.

Batches cheaper than a hand-off are built by the consumer. Handing a batch
to a worker thread and back costs ~10 µs of the consumer's time; a batch
measured to take less than `INLINE_BATCH_SECONDS` on the workers of a pool
that allows it (`pool.run_inline`: threads) and of a random-access source is
built on the consuming thread instead, as with `workers=0`, until such
batches are measured to take `INLINE_LEAVE_SECONDS` or more there (record 29).
Batches already in flight are delivered first, so the order never changes.
"""

import collections
import functools
import itertools

from seqify import input_wait
from seqify.engine import tree
from seqify.engine.messages import Task


#: A refill burst is worth about this much work (see module docstring).
BURST_SECONDS = 200e-6
#: An elastic window holds at most this many bytes of batches...
ELASTIC_BYTES = 4 << 20
#: ... of batches no larger than this each...
ELASTIC_BATCH_BYTES = 16 << 10
#: ... that each take at most this long to build...
ELASTIC_BATCH_SECONDS = 100e-6
#: ... and at most this much work ahead of the consumer.
ELASTIC_SECONDS = 0.02
#: Batch sizes are sampled once every this many results.
_SAMPLE_EVERY = 64
#: Batches measured cheaper than this on worker threads are built by the
#: consumer (random-access sources only; see module docstring)...
INLINE_BATCH_SECONDS = 20e-6
#: ... until they take this long on the consumer, when the workers take over
#: again for at least `_INLINE_HOLD_OFF` batches (their cost is re-measured).
INLINE_LEAVE_SECONDS = 2 * INLINE_BATCH_SECONDS
_INLINE_HOLD_OFF = 256


def _nbytes(batch) -> int:
    return sum(getattr(leaf, "nbytes", 0) for leaf in tree.leaves(batch))


def elastic_size(size: int, elastic: int, cost: float, nbytes) -> int:
    """The window for batches of measured `cost` (s) and `nbytes` (None: unknown)."""
    if not 0.0 < cost <= ELASTIC_BATCH_SECONDS or nbytes is None or nbytes > ELASTIC_BATCH_BYTES:
        return size
    return max(size, min(elastic, int(ELASTIC_SECONDS / cost), ELASTIC_BYTES // max(nbytes, 1)))


def discard_all(pending) -> None:
    for _, handle in pending:
        handle.discard()


def ordered(pool, items, size, on_abandon=None, elastic=None, prepare=None, track=None):
    """Yields `pool` results for `items` (tasks or ready handles) in order.

    Args:
        pool: a thread, process or inline pool (`submit(task) -> handle`).
        items: iterable of `seqify.engine.messages.Task` or ready handles.
        size: maximum number of tasks in flight (>= 1), unless `elastic`.
        on_abandon: called with the undelivered `(task, handle)` pairs, in
            order, if the iteration ends early; it owns the handles (must
            discard or resolve them). Default: discard.
        elastic: None, or the most tasks in flight while batches are tiny
            and cheap (see module docstring); needs a pool that measures
            `batch_cost`.
        prepare: `prepare(batch) -> batch`, run by the workers of a pool
            that can (`pool.prepares`: threads) right after each batch they
            build; other pools ignore it (the consumer's own finishing
            step must accept both).
        track: None, or `track(task)` called with the task of each item as
            it is taken from `items`, which is then timed as input wait
            (saves the caller a generator level per batch).
    """
    if getattr(pool, "inline", False):
        return _inline(pool, items, on_abandon, track)  # one generator level less per batch
    return _windowed(pool, items, size, on_abandon, elastic, prepare, track)


def _windowed(pool, items, base, on_abandon, elastic=None, prepare=None, track=None):
    pending = collections.deque()
    items = iter(items)
    costed = hasattr(pool, "batch_cost")
    if not costed:
        elastic = None
    # Batches cheaper than a hand-off are built here: random-access sources
    # (elastic) on pools that allow it (see module docstring).
    run_inline = getattr(pool, "run_inline", None) if elastic is not None else None
    inline = False
    hold_off = 0  # results the workers deliver before the consumer may build again
    size = base
    nbytes = None  # sampled size of a batch (elastic windows only)
    delivered = 0
    low = size - 1  # refill once at most `low` tasks are in flight
    exhausted = False
    finished = False
    deferred = None  # an error from `items` (e.g. a stream that ran dry)
    clock = input_wait.clock
    add_wait = input_wait.add
    submit = pool.submit
    submit_many = getattr(pool, "submit_many", None)
    if prepare is not None and getattr(pool, "prepares", False):
        submit = functools.partial(submit, prepare=prepare)
        submit_many = functools.partial(submit_many, prepare=prepare)
    try:
        while True:
            if inline and not pending:
                # What the workers had in flight is delivered: build here,
                # one batch at a time, until batches stop being cheap.
                cost = pool.batch_cost
                while True:
                    started = clock()
                    try:
                        item = next(items)
                    except StopIteration:
                        add_wait(clock() - started, 0)
                        finished = True
                        return
                    if type(item) is not Task or item.worker is not None:
                        items = itertools.chain((item,), items)  # not ours to build: to the workers
                        inline = False
                        hold_off = _INLINE_HOLD_OFF
                        low = size - 1
                        break
                    if track is not None:
                        track(item)
                    try:
                        result = run_inline(item)
                    except BaseException:
                        finished = True
                        (on_abandon or discard_all)([(item, _RAN)])
                        raise
                    took = clock() - started
                    add_wait(took)
                    cost += 0.1 * (took - cost)
                    if cost >= INLINE_LEAVE_SECONDS:
                        inline = False
                        hold_off = _INLINE_HOLD_OFF
                        low = size - 1
                        yield result
                        break
                    yield result
            if not exhausted and len(pending) <= low:
                if costed:
                    cost = pool.batch_cost
                    if run_inline is not None and hold_off <= 0 and 0.0 < cost < INLINE_BATCH_SECONDS:
                        inline = True
                        if not pending:
                            continue
                        low = -1  # no refills: deliver what is in flight first
                    else:
                        if elastic is not None:
                            size = elastic_size(base, elastic, cost, nbytes)
                        burst = size // 2 if cost <= 0.0 else int(BURST_SECONDS / cost)
                        low = size - max(1, min(size // 2, burst))
                burst = []  # unpinned tasks, submitted together (one wake-up)
                while not inline and len(pending) + len(burst) < size:
                    started = clock()
                    try:
                        item = next(items)
                    except StopIteration:
                        exhausted = True
                        break
                    except Exception as exc:
                        # Raised only after every batch before it is handed out:
                        # read-ahead must not make an error overtake good batches.
                        deferred = exc
                        exhausted = True
                        break
                    finally:
                        if track is not None:
                            add_wait(clock() - started, 0)
                    if type(item) is Task:
                        if track is not None:
                            track(item)
                        if item.worker is None and submit_many is not None:
                            burst.append(item)
                            continue
                    elif track is not None:
                        track(item.task)
                    if burst:
                        pending.extend(zip(burst, submit_many(burst)))
                        burst = []
                    if type(item) is Task:
                        pending.append((item, submit(item)))
                    else:
                        pending.append((item.task, item))
                if burst:
                    pending.extend(zip(burst, submit_many(burst)))
            if not pending:
                finished = True
                if deferred is not None:
                    raise deferred
                return
            started = clock()
            result = pending[0][1].result()
            add_wait(clock() - started)
            pending.popleft()
            if elastic is not None:
                if delivered % _SAMPLE_EVERY == 0:
                    nbytes = _nbytes(result)
                    if nbytes > ELASTIC_BATCH_BYTES:
                        size = base  # large batches: no more bursts beyond the queue size
                delivered += 1
                hold_off -= 1
            yield result
    finally:
        if not finished:
            (on_abandon or discard_all)(list(pending))


def _inline(pool, items, on_abandon, track=None):
    # workers=0: nothing runs ahead, so there is no window to keep; a task
    # whose batch function raised is handed back like any undelivered one.
    # Getting the item and building the batch are both input wait.
    run = pool.run
    clock = input_wait.clock
    add_wait = input_wait.add
    items = iter(items)
    while True:
        started = clock()
        try:
            item = next(items)
        except StopIteration:
            add_wait(clock() - started, 0)
            return
        if type(item) is Task:
            if track is not None:
                track(item)
            try:
                result = run(item)
            except BaseException:
                (on_abandon or discard_all)([(item, _RAN)])  # a stream keeps the item
                raise
        else:  # a ready handle (e.g. a batch read ahead in an earlier pass)
            if track is not None:
                track(item.task)
            try:
                result = item.result()
            except BaseException:
                (on_abandon or discard_all)([(item.task, item)])
                raise
        add_wait(clock() - started)
        yield result


class _Ran:
    """The handle of an inline task that already ran (nothing to discard)."""

    def result(self):  # pragma: no cover - abandon hooks only discard inline tasks
        raise RuntimeError("This batch raised when it was built.")

    def discard(self):
        pass


_RAN = _Ran()
