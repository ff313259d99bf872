"""How long consumers waited for batches: a process-wide counter.

Who adds to it: the ordered window (`seqify.engine.window`) adds the time
the consumer is blocked on the result of the next batch; the runner adds the
time spent getting the next task from the source (for a stream: reading the
next item, which blocks when the generator is the bottleneck) and, for
passes without workers, building the batch on the consuming thread. The
`seqify.callbacks.InputMonitor` callback reads the totals around each epoch.

It is two numbers updated without a lock (under the GIL a lost update can
only skew a statistic, never a batch), so the per-batch cost is two clock
reads and two additions.
"""

import time
import weakref
from typing import Optional, Tuple

clock = time.perf_counter
_total = [0.0, 0]  # seconds waited, batches delivered
_last_runner = [None]  # weak reference to the runner that last started a pass


def add(seconds: float, batches: int = 1) -> None:
    """Records `seconds` spent waiting for `batches` batches (0: part of a wait)."""
    total = _total
    total[0] += seconds
    total[1] += batches


def total() -> float:
    """Seconds consumers spent waiting for batches since the process started."""
    return _total[0]


def snapshot() -> Tuple[float, int]:
    """`(seconds waited, batches delivered)` since the process started."""
    total = _total
    return total[0], total[1]


def note_runner(runner) -> None:
    """Remembers (weakly) the runner whose pass is starting, for `last_runner()`."""
    _last_runner[0] = weakref.ref(runner)


def last_runner():
    """The `EpochRunner` that last started a pass, or None."""
    ref: Optional[weakref.ref] = _last_runner[0]
    return None if ref is None else ref()
