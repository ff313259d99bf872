"""The degenerate pool: batches are built on the consuming thread.

Used for `workers=0`, for peeking at a batch (to infer a tf.data signature),
and for direct `sequence[i]` access.
"""


class _Lazy:
    __slots__ = ("_call",)

    def __init__(self, call):
        self._call = call

    def result(self):
        return self._call()

    def discard(self):
        self._call = None


class InlinePool:
    """Runs each task when its result is asked for, on the asking thread.

    `inline` tells the window (`seqify.engine.window.ordered`) to call `run`
    directly: no handle, no read-ahead, no per-batch allocation.
    """

    use_multiprocessing = False
    num_workers = 0
    inline = True

    def __init__(self, job):
        self.job = job

    def run(self, task):
        """Builds the batch of `task` now."""
        if task.worker is None:
            return self.job.run(task)
        return self.job.run(task, task.worker, 1)

    def submit(self, task) -> _Lazy:
        if task.worker is None:
            return _Lazy(lambda: self.job.run(task))
        return _Lazy(lambda: self.job.run(task, task.worker, 1))

    def update(self, job) -> None:
        self.job = job

    def close(self) -> None:
        pass
