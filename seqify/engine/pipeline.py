"""Ordered, bounded parallel iteration over a pool.

Keeps at most `window` tasks in flight and yields results in submission
order, so output order never depends on which worker finished first. If the
consumer stops early (generator closed, exception, Ctrl-C), every task still
in flight is discarded and the unconsumed inputs are handed to `on_abandon`
in order, so a stream can put them back: no batch is lost.
"""

import collections


def ordered(pool, tasks, window, on_abandon=None):
    """Yields `pool` results for `tasks` in order.

    Args:
        pool: a thread, process or inline pool.
        tasks: iterable of `(kind, epoch, index, payload)`.
        window: maximum number of tasks in flight (>= 1).
        on_abandon: called with the list of unconsumed `(index, payload)`
            pairs, in order, if the iteration ends early.
    """
    pending = collections.deque()
    tasks = iter(tasks)
    exhausted = False
    finished = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                try:
                    task = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(((task[2], task[3]), pool.submit(*task)))
            if not pending:
                finished = True
                return
            payload, handle = pending.popleft()
            try:
                result = handle.result()
            except BaseException:
                pending.appendleft((payload, handle))
                raise
            yield result
    finally:
        if not finished:
            for _, handle in pending:
                handle.discard()
            if on_abandon is not None:
                on_abandon([payload for payload, _ in pending])
