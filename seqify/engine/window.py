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
"""

import collections

from seqify import input_wait
from seqify.engine.messages import Task


#: A refill burst is worth about this much work (see module docstring).
BURST_SECONDS = 200e-6


def discard_all(pending) -> None:
    for _, handle in pending:
        handle.discard()


def ordered(pool, items, size, on_abandon=None):
    """Yields `pool` results for `items` (tasks or ready handles) in order.

    Args:
        pool: a thread, process or inline pool (`submit(task) -> handle`).
        items: iterable of `seqify.engine.messages.Task` or ready handles.
        size: maximum number of tasks in flight (>= 1).
        on_abandon: called with the undelivered `(task, handle)` pairs, in
            order, if the iteration ends early; it owns the handles (must
            discard or resolve them). Default: discard.
    """
    if getattr(pool, "inline", False):
        return _inline(pool, items, on_abandon)  # one generator level less per batch
    return _windowed(pool, items, size, on_abandon)


def _windowed(pool, items, size, on_abandon):
    pending = collections.deque()
    items = iter(items)
    costed = hasattr(pool, "batch_cost")
    low = size - 1  # refill once at most `low` tasks are in flight
    exhausted = False
    finished = False
    deferred = None  # an error from `items` (e.g. a stream that ran dry)
    clock = input_wait.clock
    add_wait = input_wait.add
    submit = pool.submit
    submit_many = getattr(pool, "submit_many", None)
    try:
        while True:
            if not exhausted and len(pending) <= low:
                if costed:
                    cost = pool.batch_cost
                    burst = size // 2 if cost <= 0.0 else int(BURST_SECONDS / cost)
                    low = size - max(1, min(size // 2, burst))
                burst = []  # unpinned tasks, submitted together (one wake-up)
                while len(pending) + len(burst) < size:
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
                    if type(item) is Task and item.worker is None and submit_many is not None:
                        burst.append(item)
                        continue
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
            yield result
    finally:
        if not finished:
            (on_abandon or discard_all)(list(pending))


def _inline(pool, items, on_abandon):
    # workers=0: nothing runs ahead, so there is no window to keep; a task
    # whose batch function raised is handed back like any undelivered one.
    run = pool.run
    clock = input_wait.clock
    add_wait = input_wait.add
    for item in items:
        started = clock()
        try:
            result = run(item) if type(item) is Task else item.result()
        except BaseException:
            (on_abandon or discard_all)([(item, _RAN) if type(item) is Task else (item.task, item)])
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
