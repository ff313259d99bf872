"""Ordered, bounded parallel iteration over a pool.

Keeps at most `window` tasks in flight and yields results in submission
order, so output order never depends on which worker finished first. If the
consumer stops early (generator closed, exception, Ctrl-C), the tasks still
in flight are handed to `on_abandon` in order; by default they are
discarded. Streams use the hook to put unconsumed batches back, so no batch
is lost.
"""

import collections


def discard_all(pending) -> None:
    for _, _, handle in pending:
        handle.discard()


def ordered(pool, tasks, window, on_abandon=None):
    """Yields `pool` results for `tasks` in order.

    Args:
        pool: a thread, process or inline pool.
        tasks: iterable of `seqify.engine.messages.Task`.
        window: maximum number of tasks in flight (>= 1).
        on_abandon: called with the unconsumed `(index, payload, handle)`
            triples, in order, if the iteration ends early; it owns the
            handles (must discard or resolve them). Default: discard.
    """
    pending = collections.deque()
    tasks = iter(tasks)
    exhausted = False
    finished = False
    deferred = None  # an error from `tasks` (e.g. a stream that ran dry)
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    task = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                except Exception as exc:
                    # Raised only after every batch before it is handed out:
                    # read-ahead must not make an error overtake good batches.
                    deferred = exc
                    exhausted = True
                    break
                pending.append((task.index, task.payload, pool.submit(task)))
            if not pending:
                finished = True
                if deferred is not None:
                    raise deferred
                return
            index, payload, handle = pending[0]
            result = handle.result()
            pending.popleft()
            yield result
    finally:
        if not finished:
            (on_abandon or discard_all)(list(pending))
