"""The ordered, bounded window of batches in flight.

Keeps at most `size` tasks submitted ahead of the consumer and yields their
results in submission order, so the output order never depends on which
worker finished first. If the consumer stops early (generator closed, an
exception, Ctrl-C), the `(task, handle)` pairs still in flight go to
`on_abandon` in order; by default they are discarded. Streams use the hook
to put unconsumed items back, so no batch is lost.

An item may also be a ready handle (anything with `result()`/`discard()`
and a `task`), e.g. a batch a sharded stream read ahead in an earlier pass.
"""

import collections

from seqify import input_wait
from seqify.engine.messages import Task


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
    pending = collections.deque()
    items = iter(items)
    exhausted = False
    finished = False
    deferred = None  # an error from `items` (e.g. a stream that ran dry)
    clock = input_wait.clock
    try:
        while True:
            while not exhausted and len(pending) < size:
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
                if type(item) is Task:
                    pending.append((item, pool.submit(item)))
                else:
                    pending.append((item.task, item))
            if not pending:
                finished = True
                if deferred is not None:
                    raise deferred
                return
            started = clock()
            result = pending[0][1].result()
            input_wait.add(clock() - started)
            pending.popleft()
            yield result
    finally:
        if not finished:
            (on_abandon or discard_all)(list(pending))
