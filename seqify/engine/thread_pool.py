"""Persistent worker threads.

Threads suit GIL-releasing work (numpy, I/O, TF ops): they share the dataset
object, so nothing is copied. The pool is started on first use and reused
across epochs and across fit/evaluate/predict until closed.

Per-batch cost is what limits tiny batches, so the hand-off is lock-free in
the common case (see docs/design.md, "Per-batch overhead"):
- a submitted task is a `_Slot` appended to a deque; the submitter touches
  the lane's condition only when a worker sleeps on it;
- a worker claims a *run* of consecutive slots at a time, as long as the
  measured cost per batch allows (slow batches: one at a time, so both
  workers share them), and marks each slot done as soon as it is built;
- `result()` of a done slot is an attribute read; the consumer sleeps (on a
  condition, with a bound) only when the batch is not built yet.

Worker threads are daemon threads. `close()` waits for them for at most
`CLOSE_TIMEOUT` seconds in all: a thread stuck in user code (a batch
function that never returns) is left running, logged once as a warning, and
ends with the process; nothing (close, garbage collection, interpreter exit)
waits for it beyond that bound.
"""

import collections
import logging
import threading
import time

logger = logging.getLogger("seqify")

#: Seconds `close()` waits, all threads together, for workers to finish.
CLOSE_TIMEOUT = 1.0
#: A worker claims consecutive tasks worth about this much work at once.
RUN_SECONDS = 200e-6
#: At most this many tasks per claim.
MAX_RUN = 16
#: Bound on every sleep, so that closing and Ctrl-C are always noticed.
_POLL = 0.1

_PENDING, _RUNNING, _DONE, _CANCELLED = 0, 1, 2, 3


class PoolClosedError(RuntimeError):
    """A task's pool was closed before the task ran."""


class _Slot:
    """One submitted task and, once built, its batch (or error)."""

    __slots__ = ("task", "state", "value", "error", "waiter", "lane", "prepare")

    def __init__(self, task, lane, prepare=None):
        self.task = task
        self.lane = lane
        self.prepare = prepare
        self.state = _PENDING
        self.value = None
        self.error = None
        self.waiter = None  # a held lock the consumer sleeps on, released when done

    def result(self):
        if self.state != _DONE:
            self.lane.wait(self)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        value, self.value = self.value, None
        return value

    def discard(self):
        if self.state == _PENDING:
            self.state = _CANCELLED
        self.value = None
        self.error = None


def _wake(lock):
    try:
        lock.release()
    except RuntimeError:  # already released by a racing waker: already awake
        pass


class _Lane:
    """A deque of slots served by one or more threads, in claim order.

    Sleeping and waking use bare locks, not conditions: a waker only
    releases a lock (never blocks on one a just-woken thread holds while it
    waits for the GIL), and only when someone sleeps.
    """

    def __init__(self, pool, name, worker_ids):
        self.pool = pool
        self.queue = collections.deque()
        self.sleepers = collections.deque()  # wake locks of idle workers
        self.closed = False
        self.cost = 0.0  # seconds per task, moving average
        self.run_length = 1
        self.threads = [
            threading.Thread(target=self._serve, args=(worker_id,), name=f"{name}_{i}", daemon=True)
            for i, worker_id in enumerate(worker_ids)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, slot):
        self.queue.append(slot)
        self.notify()

    def extend(self, slots):
        self.queue.extend(slots)
        self.notify()

    def notify(self):
        # Paired with `_claim`: a worker registers as a sleeper before it
        # looks at the queue, the submitter appends before it looks for
        # sleepers, so one of the two always sees the other.
        sleepers = self.sleepers
        if sleepers:
            try:
                lock = sleepers.popleft()
            except IndexError:
                return
            _wake(lock)

    def _claim(self, wake):
        queue = self.queue
        while not queue:
            if self.closed:
                return None
            self.sleepers.append(wake)
            if queue or self.closed:
                try:
                    self.sleepers.remove(wake)
                except ValueError:
                    pass  # a submitter took it and releases it: harmless extra wake
                continue
            wake.acquire(True, _POLL)
            try:
                self.sleepers.remove(wake)  # timed out, or woken spuriously
            except ValueError:
                pass
        run = []
        popleft = queue.popleft
        for _ in range(self.run_length):
            try:
                slot = popleft()
            except IndexError:
                break
            if slot.state == _PENDING:
                slot.state = _RUNNING
                run.append(slot)
        return run

    def _serve(self, worker_id):
        pool = self.pool
        clock = time.perf_counter
        wake = threading.Lock()
        wake.acquire()  # held while awake; a waker releases it
        while True:
            run = self._claim(wake)
            if run is None:
                return
            for slot in run:
                if self.closed:
                    return
                started = clock()
                try:
                    value = pool.job.run(slot.task, worker_id, pool.num_workers, False)
                    if slot.prepare is not None:
                        value = slot.prepare(value)
                    slot.value = value
                except BaseException as exc:  # delivered to the consumer
                    slot.error = exc
                cost = clock() - started
                slot.state = _DONE
                waiter = slot.waiter
                if waiter is not None:
                    _wake(waiter)
                self.cost += 0.1 * (cost - self.cost)
            cost = self.cost
            self.run_length = max(1, min(MAX_RUN, int(RUN_SECONDS / cost))) if cost > 0 else MAX_RUN

    def wait(self, slot):
        waiter = threading.Lock()
        waiter.acquire()
        slot.waiter = waiter
        while slot.state != _DONE:
            if self.closed or slot.state == _CANCELLED:
                raise PoolClosedError("The thread pool was closed before this batch was built.")
            waiter.acquire(True, _POLL)

    def close(self, deadline):
        self.closed = True
        while self.sleepers:
            self.notify()
        for slot in list(self.queue):
            slot.discard()
        self.queue.clear()
        stuck = []
        for thread in self.threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                stuck.append(thread.name)
        return stuck


class ThreadPool:
    """`num_workers` threads running `job.run`; results as handles.

    Args:
        job: a `seqify.engine.job.Job`.
        num_workers: number of threads (>= 1).
        name: prefix for thread names.
    """

    use_multiprocessing = False
    #: `submit` takes `prepare`, run on the worker thread after the task.
    prepares = True

    def __init__(self, job, num_workers: int, name: str = "seqify"):
        self.job = job
        self.num_workers = num_workers
        self._name = name
        self._lane = None
        self._pinned = {}
        self._lock = threading.Lock()

    def submit(self, task, prepare=None) -> _Slot:
        """Runs one task; `task.worker` pins it to one worker (tasks then run in order).

        `prepare(batch) -> batch`, if given, runs on the worker thread right
        after the task (the consumer's finishing work, done in parallel).
        """
        lane = self._lane if task.worker is None else self._pinned.get(task.worker)
        if lane is None:
            lane = self._start_lane(task.worker)
        slot = _Slot(task, lane, prepare)
        lane.submit(slot)
        return slot

    def run_inline(self, task):
        """Builds the batch of unpinned `task` on the calling thread, as `workers=0` would.

        The window calls it for batches cheaper than a hand-off to a worker
        (`seqify.engine.window.INLINE_BATCH_SECONDS`).
        """
        return self.job.run(task)

    def submit_many(self, tasks, prepare=None) -> list:
        """Submits unpinned `tasks` at once (one wake-up); their handles, in order."""
        lane = self._lane or self._start_lane(None)
        slots = [_Slot(task, lane, prepare) for task in tasks]
        lane.extend(slots)
        return slots

    @property
    def batch_cost(self) -> float:
        """Measured seconds per batch on a worker (0.0 before any)."""
        lane = self._lane
        return lane.cost if lane is not None else 0.0

    def _start_lane(self, worker):
        with self._lock:
            if worker is None:
                if self._lane is None:
                    self._lane = _Lane(self, self._name, range(self.num_workers))
                return self._lane
            # One single-thread lane per pinned worker: its tasks (e.g. the
            # next items of one shard generator) run one at a time, in order.
            lane = self._pinned.get(worker)
            if lane is None:
                lane = self._pinned[worker] = _Lane(self, f"{self._name}-w{worker}", [worker])
            return lane

    def update(self, job) -> None:
        # Threads share the object: nothing to ship.
        self.job = job

    def close(self) -> None:
        """Stops the workers, waiting at most `CLOSE_TIMEOUT` s for them in all.

        A worker still running user code after that (a batch function that
        never returns) is left behind: it is a daemon thread, so it does not
        keep the process alive, and it exits as soon as that call returns.
        """
        with self._lock:
            lanes = [self._lane, *self._pinned.values()]
            self._lane = None
            self._pinned = {}
        deadline = time.monotonic() + CLOSE_TIMEOUT
        stuck = []
        for lane in lanes:
            if lane is not None:
                stuck += lane.close(deadline)
        if stuck:
            logger.warning(
                "seqify: %d worker thread(s) (%s) still running user code %.1f s after close(); "
                "left running as daemon threads (they end when that call returns, or with the "
                "process). A batch function or transform that never returns is the usual cause.",
                len(stuck), ", ".join(stuck), CLOSE_TIMEOUT,
            )
