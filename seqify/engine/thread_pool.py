"""Persistent worker threads.

Threads suit GIL-releasing work (numpy, I/O, TF ops): they share the dataset
object, so nothing is copied. The pool is started on first use and reused
across epochs and across fit/evaluate/predict until closed.
"""

import concurrent.futures
import itertools
import threading

from seqify.engine import errors


class _Handle:
    __slots__ = ("_future",)

    def __init__(self, future):
        self._future = future

    def result(self):
        return self._future.result()

    def discard(self):
        self._future.cancel()


class ThreadPool:
    """`num_workers` threads running `job.run`; results as futures.

    Args:
        job: a `seqify.engine.job.Job`.
        num_workers: number of threads (>= 1).
        name: prefix for thread names.
    """

    use_multiprocessing = False

    def __init__(self, job, num_workers: int, name: str = "seqify"):
        self.job = job
        self.num_workers = num_workers
        self._name = name
        self._executor = None
        self._ids = itertools.count()
        self._local = threading.local()
        self._pinned = {}

    def _init_thread(self, worker_id=None):
        self._local.worker_id = next(self._ids) if worker_id is None else worker_id

    def _run(self, task):
        return self.job.run(task, self._local.worker_id, self.num_workers, False)

    def submit(self, task) -> _Handle:
        """Runs one task; `task.worker` pins it to one worker (tasks then run in order)."""
        if task.worker is not None:
            return _Handle(self._pinned_executor(task.worker).submit(self._run, task))
        if self._executor is None:
            self._ids = itertools.count()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.num_workers, thread_name_prefix=self._name, initializer=self._init_thread
            )
        return _Handle(self._executor.submit(self._run, task))

    def _pinned_executor(self, worker):
        # One single-thread executor per pinned worker: its tasks (e.g. the
        # next items of one shard generator) run one at a time, in order.
        executor = self._pinned.get(worker)
        if executor is None:
            executor = self._pinned[worker] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{self._name}-w{worker}", initializer=self._init_thread, initargs=(worker,)
            )
        return executor

    def update(self, job) -> None:
        # Threads share the object: nothing to ship.
        self.job = job

    def close(self) -> None:
        executors = [self._executor, *self._pinned.values()]
        self._executor = None
        self._pinned = {}
        for executor in executors:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
