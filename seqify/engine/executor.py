"""Owns an object's worker pool: lazy start, reuse, and shutdown.

One `Executor` per seqify object. The pool starts on first use and is reused
across epochs and across fit/evaluate/predict. It is shut down by `close()`
(which the owning Sequence also runs when garbage-collected and at
interpreter exit) or right after a worker dies (the next use starts a fresh
one).
"""

import threading

from seqify.engine import errors
from seqify.engine.inline_pool import InlinePool
from seqify.engine.process_pool import ProcessPool
from seqify.engine.shm_transport import MAX_SLOTS
from seqify.engine.thread_pool import ThreadPool


class Executor:
    """Creates and owns the pool for `workers`/`use_multiprocessing`."""

    def __init__(self, workers: int, use_multiprocessing: bool, start_method=None, name="seqify", max_queue_size=10):
        self.workers = workers
        self.max_queue_size = max_queue_size
        self.use_multiprocessing = use_multiprocessing and workers > 0
        self.start_method = start_method
        self.name = name
        self._box = {}
        self._lock = threading.Lock()

    def pool(self, make_job):
        """Returns the running pool, starting it with `make_job()` if needed."""
        with self._lock:
            pool = self._box.get("pool")
            if pool is None:
                job = make_job()
                if self.workers == 0:
                    pool = InlinePool(job)
                elif self.use_multiprocessing:
                    # Recycled result slots per worker: what can be in flight to
                    # it, plus the batch being consumed and one spare.
                    slots = min(MAX_SLOTS, -(-max(self.max_queue_size, self.workers) // self.workers) + 2)
                    pool = ProcessPool(job, self.workers, self.start_method, self.name, max_slots=slots)
                else:
                    pool = ThreadPool(job, self.workers, self.name)
                self._box["pool"] = pool
            return pool

    @property
    def running_pool(self):
        return self._box.get("pool")

    def run(self, make_job, tasks, window, on_abandon=None):
        """Ordered results of `tasks` on the pool; the pool is reset on worker death."""
        from seqify.engine.pipeline import ordered

        pool = self.pool(make_job)
        try:
            check = getattr(pool, "check", None)
            if check is not None:
                check()  # a worker that died between epochs is reported as such
            yield from ordered(pool, tasks, window, on_abandon)
        except errors.WorkerDiedError:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            pool = self._box.pop("pool", None)
        if pool is not None:
            pool.close()
