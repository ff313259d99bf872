"""How long consumers waited for batches: a process-wide counter.

The runner adds the time it spends blocked on the next batch; the
`seqify.callbacks.InputMonitor` callback reads the total per epoch. It is one
float behind a lock-free update (the GIL makes `+=` on a list cell safe
enough for a statistic), so the per-batch cost is two clock reads.
"""

import time

clock = time.perf_counter
_total = [0.0]


def add(seconds: float) -> None:
    _total[0] += seconds


def total() -> float:
    """Seconds consumers spent waiting for batches since the process started."""
    return _total[0]
