"""Persistent worker processes with shared-memory results (the parent side).

Design (see docs/design.md, "Process pool layout"):
- Workers start once (fork, spawn or forkserver: decided above the engine,
  by `seqify.start_methods`, and passed in) and live until `close()`,
  garbage collection or interpreter exit. The job (dataset, batch function,
  transform) is cloudpickled once and sent to each worker at start, never per
  batch or per epoch. The child's side is `seqify.engine.worker_main`.
- Each worker has its own duplex pipe carrying the typed messages of
  `seqify.engine.messages` (`Work`, `NewJob` down; `Ready`, `Result`,
  `RemoteError` up). Results carry arrays through shared memory
  (`shm_transport`), so the pipe only moves names and shapes.
- Tasks submitted while a worker is still busy with earlier ones wait in its
  outbox and go down together (one `Work` message) when the consumer next
  needs a result; a worker with nothing in hand gets its task at once.
- The parent waits on every pipe *and* every process's death handle (a pidfd,
  else `process.sentinel`) at once, so a
  worker that dies (signal, `os._exit`, OOM killer) is noticed immediately and
  reported with its id, pid, exit code, the batches it held and the likely
  cause (`seqify.engine.diagnostics`), never a hang. A worker that dies
  before it is ready (e.g. an unguarded script under spawn) is reported with
  its own start-up error.
"""

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
import uuid

import cloudpickle

from seqify.engine import diagnostics, errors, shm_transport
from seqify.engine.job import describe
from seqify.engine.messages import NewJob, Ready, RemoteError, Result, Work
from seqify.engine.worker_main import worker_main

_POLL_SECONDS = 1.0
# Most tasks one `Work` message carries.
_MAX_CHUNK = 64


class _Worker:
    __slots__ = ("worker_id", "process", "conn", "death", "_pidfd", "tasks", "outbox", "released", "decoder", "started")

    def __init__(self, worker_id, process, conn):
        self.worker_id = worker_id
        self.process = process
        self.conn = conn
        # What becomes ready when the process ends. `process.sentinel` is a
        # pipe that every process the worker forks inherits, so a worker
        # whose child outlives it would look alive; a pidfd (Linux >= 5.3)
        # is ready as soon as the worker itself exits.
        self._pidfd = None
        try:
            self._pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            pass
        self.death = self._pidfd if self._pidfd is not None else process.sentinel
        self.tasks = {}  # task_id -> Task: assigned and not answered (sent or in the outbox)
        self.outbox = {}  # task_id -> Task (wire form): assigned, not sent yet
        # Slot ids of this worker whose arrays were garbage-collected here;
        # appended from any thread, sent back with the next message.
        self.released = collections.deque()
        self.decoder = shm_transport.Decoder(self.released.append)
        self.started = False  # it said Ready

    def close(self):
        self.conn.close()
        self.process.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def take_released(self) -> tuple:
        out = []
        while True:
            try:
                out.append(self.released.popleft())
            except IndexError:
                return tuple(out)

    def in_hand(self) -> int:
        """Tasks sent to the worker and not answered yet."""
        return len(self.tasks) - len(self.outbox)

    def held(self):
        """The `Task`s the worker has (sent, not answered)."""
        return [task for task_id, task in self.tasks.items() if task_id not in self.outbox]


class _Handle:
    __slots__ = ("_pool", "_task_id")

    def __init__(self, pool, task_id):
        self._pool = pool
        self._task_id = task_id

    def result(self):
        return self._pool._result(self._task_id)

    def discard(self):
        self._pool._discard(self._task_id)


class _Sender:
    """Sends messages that carry payloads on a thread of its own.

    Payload-carrying tasks (stream batches for `transform`) can be large. If
    the consuming thread sent them itself, it could block on a full pipe while
    the worker blocks sending results that only that same thread reads: a
    deadlock. With a sender thread the consumer keeps reading results. Pure
    index tasks are a few bytes and are sent directly until a sender exists;
    after that, everything goes through it to keep per-worker order.
    """

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="seqify-sender", daemon=True)
        self._thread.start()

    def put(self, conn, message):
        self._queue.put((conn, message))

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, message = item
            try:
                conn.send(message)
            except (OSError, ValueError, TypeError):
                pass  # the worker died or the pool closed: the consumer reports it

    def stop(self):
        self._queue.put(None)
        self._thread.join(timeout=2.0)


class ProcessPool:
    """`num_workers` processes running a cloudpickled `Job`.

    Args:
        job: a `seqify.engine.job.Job` (must cloudpickle).
        num_workers: number of processes (>= 1).
        start_method: "fork", "spawn" or "forkserver" (see
            `seqify.start_methods.start_method_for`; the engine does not
            choose).
        name: process name prefix.
        max_slots: recycled shared-memory result slots per worker.

    Example:

    ```python
    pool = ProcessPool(Job(fetch=make_batch), 2, "spawn")
    try:
        batches = list(ordered(pool, (Task(TaskKind.FETCH, 0, i) for i in range(8)), 4))
    finally:
        pool.close()
    ```
    """

    use_multiprocessing = True

    def __init__(self, job, num_workers: int, start_method: str, name: str = "seqify", max_slots: int = shm_transport.MAX_SLOTS):
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"`start_method` must be one of {multiprocessing.get_all_start_methods()}; got {start_method!r} "
                "(seqify.start_methods.start_method_for(None) gives the default)."
            )
        self.num_workers = num_workers
        self.max_slots = max_slots
        self.start_method = start_method
        self._name = name
        self._job_bytes = cloudpickle.dumps(job)
        self._workers = None
        self._task_ids = itertools.count()
        self._results = {}  # task_id -> (reply, worker)
        self._discarded = set()
        self._owner = {}  # task_id -> _Worker
        self._lock = threading.RLock()
        self.shm_prefix = None
        self._sender = None
        self._cost = 0.0  # seconds per batch on a worker, moving average

    @property
    def batch_cost(self) -> float:
        """Measured seconds per batch on a worker (0.0 before any)."""
        return self._cost

    # -- life cycle -------------------------------------------------------
    def _start(self):
        context = multiprocessing.get_context(self.start_method)
        self.shm_prefix = f"seqify-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._encoder = shm_transport.Encoder(f"{self.shm_prefix}m-")
        workers = []
        forking = self.start_method == "fork"
        worker_id = 0
        try:
            for worker_id in range(self.num_workers):
                parent_conn, child_conn = context.Pipe(duplex=True)
                # Only a forked child inherits (and must close) main-side ends.
                inherited = [w.conn for w in workers] + [parent_conn] if forking else []
                process = context.Process(
                    target=worker_main,
                    args=(child_conn, self._job_bytes, worker_id, self.num_workers, self.shm_prefix, os.getpid(), inherited, self.max_slots),
                    name=diagnostics.process_name(self._name, worker_id, self.shm_prefix),
                    daemon=True,
                )
                try:
                    process.start()
                finally:
                    child_conn.close()
                workers.append(_Worker(worker_id, process, parent_conn))
        except BaseException as exc:
            self._workers = workers
            self._teardown()
            # Inside a worker that is re-importing an unguarded main script,
            # this is where it fails: tell the parent why.
            if not diagnostics.report_startup_failure(exc):
                errors.annotate(exc, f"while starting worker process {worker_id} (start_method={self.start_method!r})")
            raise
        self._workers = workers

    def check(self) -> None:
        """Raises WorkerDiedError if a worker died while idle (e.g. between epochs)."""
        with self._lock:
            for worker in self._workers or ():
                if not worker.process.is_alive():
                    self._drain(worker)
                    self._raise_died(worker)

    @property
    def pids(self):
        return [w.process.pid for w in self._workers or ()]

    def update(self, job) -> None:
        """Ships a new version of the job to every worker (ordered before later tasks)."""
        with self._lock:
            self._job_bytes = cloudpickle.dumps(job)
            if self._workers is not None:
                for worker in self._workers:
                    self._flush(worker)
                    self._send(worker, NewJob(self._job_bytes, worker.take_released()))

    def close(self) -> None:
        """Stops the workers and frees every shared-memory segment. Idempotent."""
        with self._lock:
            self._teardown(graceful=True)

    def _teardown(self, graceful=False):
        workers, self._workers = self._workers, None
        sender, self._sender = self._sender, None
        if workers:
            for worker in workers:
                # Only an idle worker with no sender in the way is sure to
                # read a stop message; a busy one may be blocked writing
                # results nobody will read, so it is terminated instead (its
                # segments are swept below).
                idle = not worker.in_hand() and sender is None
                try:
                    if graceful and idle and worker.process.is_alive():
                        worker.conn.send(None)
                    else:
                        worker.process.terminate()
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + 2.0
            for worker in workers:
                if worker.process.is_alive():
                    worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
        if sender is not None:
            sender.stop()  # its peers are gone: a blocked send has failed
        for worker in workers or ():
            worker.close()
        # Results received but never consumed still own shm segments.
        for reply, _ in self._results.values():
            if type(reply) is Result:
                shm_transport.discard(reply.value)
        self._results.clear()
        self._discarded.clear()
        self._owner.clear()
        if self.shm_prefix:
            shm_transport.sweep(self.shm_prefix)

    # -- tasks ------------------------------------------------------------
    def submit(self, task) -> _Handle:
        """Queues one task; `task.worker` pins it to one worker (tasks then run in order)."""
        with self._lock:
            if self._workers is None:
                self._start()
            if task.worker is None:
                worker = min(self._workers, key=lambda w: len(w.tasks))
            else:
                worker = self._workers[task.worker]
            handle = self._assign(worker, task)
            # A worker with nothing in hand must not wait for the consumer.
            if not worker.in_hand() or len(worker.outbox) >= _MAX_CHUNK:
                self._flush(worker)
            return handle

    def submit_many(self, tasks) -> list:
        """Queues unpinned `tasks`; their handles, in order.

        Each worker gets a consecutive run of them (the least loaded first),
        so a burst of cheap tasks costs one `Work` message per worker.
        """
        with self._lock:
            if self._workers is None:
                self._start()
            workers = sorted(self._workers, key=lambda w: len(w.tasks))
            share = -(-len(tasks) // len(workers))
            handles = []
            for start in range(0, len(tasks), share):
                worker = workers[start // share]
                idle = not worker.in_hand()
                handles.extend(self._assign(worker, task) for task in tasks[start:start + share])
                if idle or len(worker.outbox) >= _MAX_CHUNK:
                    self._flush(worker)
            return handles

    def _assign(self, worker, task) -> _Handle:
        task_id = next(self._task_ids)
        worker.tasks[task_id] = task
        self._owner[task_id] = worker
        if task.payload is not None:
            task = dataclasses.replace(task, payload=self._encoder.encode(task.payload))
            if self._sender is None:
                self._sender = _Sender()
        worker.outbox[task_id] = task
        return _Handle(self, task_id)

    def _flush(self, worker):
        if not worker.outbox:
            return
        work = Work(tuple(worker.outbox.items()), worker.take_released())
        worker.outbox.clear()
        try:
            self._send(worker, work)
        except OSError:
            worker.outbox.update(work.tasks)  # it never got them: not "held"
            self._check_alive([worker])
            raise

    def _send(self, worker, message):
        if self._sender is not None:
            self._sender.put(worker.conn, message)
        else:
            worker.conn.send(message)

    def _discard(self, task_id):
        with self._lock:
            done = self._results.pop(task_id, None)
            if done is not None:
                reply, worker = done
                if type(reply) is Result:
                    shm_transport.discard(reply.value, worker.released.append)
                return
            worker = self._owner.get(task_id)
            if worker is None:
                return
            unsent = worker.outbox.pop(task_id, None)
            if unsent is not None:  # never sent: forget it
                del worker.tasks[task_id]
                del self._owner[task_id]
                shm_transport.discard(unsent.payload)
            else:
                self._discarded.add(task_id)

    def _result(self, task_id):
        with self._lock:
            while task_id not in self._results:
                if self._workers is None or task_id not in self._owner:
                    raise RuntimeError("seqify: the worker pool was closed while a batch was pending.")
                for worker in self._workers:
                    self._flush(worker)
                self._pump()
            reply, worker = self._results.pop(task_id)
        if type(reply) is Result:
            return worker.decoder.decode(reply.value) if reply.mapped else reply.value
        task = reply.task
        raise errors.unpack_exception(reply.error, describe(task.kind, task.epoch, task.index, worker.worker_id, True))

    def _pump(self):
        """Receives whatever is ready; raises WorkerDiedError if a worker died."""
        waitables = {}
        for worker in self._workers:
            waitables[worker.conn] = worker
            waitables[worker.death] = worker
        ready = multiprocessing.connection.wait(list(waitables), timeout=_POLL_SECONDS)
        ended = []
        for handle in ready:
            worker = waitables[handle]
            if handle is worker.conn:
                if not self._receive(worker):
                    ended.append(worker)  # its pipe closed: it is exiting
            elif worker not in ended:
                ended.append(worker)  # its pidfd or sentinel: it has exited
        if ended:
            self._check_alive(ended)
        elif not ready:
            # Belt and braces where no pidfd exists: a quiet second also
            # asks every worker whether it still runs.
            self._check_alive([w for w in self._workers if not w.process.is_alive()])

    def _receive(self, worker) -> bool:
        """Takes one message from `worker`; False if its pipe is closed."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False
        for reply in message if type(message) is list else (message,):
            kind = type(reply)
            if kind is Ready:
                worker.started = True
                continue
            if kind is RemoteError and reply.task_id is None:  # the worker failed to start
                self._teardown()
                raise errors.unpack_exception(reply.error, f"while starting worker process {worker.worker_id}")
            if kind is Result:
                self._cost += 0.1 * (reply.seconds - self._cost)
            task_id = reply.task_id
            task = worker.tasks.pop(task_id)
            self._owner.pop(task_id, None)
            if task_id in self._discarded:
                self._discarded.discard(task_id)
                if kind is Result:
                    shm_transport.discard(reply.value, worker.released.append)
                continue
            self._results[task_id] = (reply if kind is Result else _Failed(task, reply.error), worker)
        return True

    def _drain(self, worker):
        """Keeps what a dead worker managed to send before it died."""
        try:
            while worker.conn.poll(0) and self._receive(worker):
                pass
        except (EOFError, OSError):
            pass

    def _check_alive(self, workers):
        """Raises WorkerDiedError for the first of `workers` that has ended."""
        for worker in workers:
            if worker.process.is_alive():
                # Its pipe closed: it is exiting. (Not joined when already
                # gone: join waits on the sentinel, which the worker's own
                # children may hold open.)
                worker.process.join(timeout=0.5)
            if worker.process.is_alive():
                continue
            self._drain(worker)
            self._raise_died(worker)

    def _raise_died(self, worker):
        process = worker.process
        report = None if worker.started else diagnostics.read_startup_report(self.shm_prefix, worker.worker_id)
        message = diagnostics.death_message(
            worker.worker_id, process.pid, process.exitcode, worker.held(), worker.started, self.start_method, report
        )
        self._teardown()
        raise errors.WorkerDiedError(message)


class _Failed:
    """A task's `RemoteError`, kept with the task it answers."""

    __slots__ = ("task", "error")

    def __init__(self, task, error):
        self.task = task
        self.error = error
