"""Persistent worker processes with shared-memory results.

Design (see docs/design.md):
- Workers start once (fork, spawn or forkserver) and live until `close()`,
  garbage collection or interpreter exit. The job (dataset, batch function,
  transform) is cloudpickled once and sent to each worker at start, never per
  batch or per epoch.
- Each worker has its own duplex pipe. Tasks are tiny (kind, epoch, index);
  results carry arrays through shared memory (`shm_transport`), so the pipe
  only moves names and shapes.
- The main side waits on every pipe *and* every process sentinel at once, so a
  worker that dies (signal, `os._exit`, OOM killer) is noticed immediately and
  reported with its id, pid, exit code and the batches it held, never a hang.
- Workers ignore SIGINT (Ctrl-C is the main process's to handle) and exit on
  their own when the main process goes away.
"""

import collections
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
import uuid

import cloudpickle

from seqify.engine import errors, shm_transport
from seqify.engine.job import describe

_POLL_SECONDS = 1.0


# Keras backends whose runtimes are not fork-safe: a forked child may
# deadlock on locks that their threads held at fork time.
_FORK_UNSAFE_BACKENDS = ("jax", "torch")


def _fork_unsafe_backend() -> bool:
    keras = sys.modules.get("keras")  # never import Keras from here
    if keras is None:
        return False
    try:
        return keras.backend.backend() in _FORK_UNSAFE_BACKENDS
    except Exception:
        return False


def default_start_method() -> str:
    """Python's default start method, unless the Keras backend is fork-unsafe.

    With the JAX or PyTorch backend, forking is unsafe, so seqify uses
    "forkserver" (or "spawn" where forkserver does not exist). TensorFlow
    tolerates fork as long as children do not call into it, which seqify's
    workers do not unless user code does.
    """
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    if method == "fork" and _fork_unsafe_backend():
        available = multiprocessing.get_all_start_methods()
        return "forkserver" if "forkserver" in available else "spawn"
    return method


def _worker_main(conn, job_bytes, worker_id, num_workers, shm_prefix, owner_pid, inherited=(), max_slots=shm_transport.MAX_SLOTS):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Under fork we inherit the main side of our own pipe (and of earlier
    # workers' pipes). Holding them would keep those pipes open after the
    # main process dies, so a blocked send would never fail: drop them.
    for other_end in inherited:
        other_end.close()
    # Our parent is the owner (fork, spawn) or the forkserver; either way, if
    # it goes away we are re-parented and must not linger as an orphan.
    parent_pid = os.getppid()
    try:
        job = cloudpickle.loads(job_bytes)
    except BaseException as exc:
        errors.annotate(exc, f"while unpickling the dataset in worker process {worker_id}")
        conn.send((None, False, errors.pack_exception(exc)))
        return
    del job_bytes
    encoder = shm_transport.Encoder(f"{shm_prefix}w{worker_id}-", max_slots=max_slots)
    try:
        _serve(conn, job, worker_id, num_workers, encoder, parent_pid, owner_pid)
    except (EOFError, OSError):
        pass  # the main process closed our pipe or died
    if not _alive(owner_pid):
        # Orphaned: segments already sent to the dead main process have no
        # reader left to unlink them.
        shm_transport.sweep(shm_prefix)


def _serve(conn, job, worker_id, num_workers, encoder, parent_pid, owner_pid):
    while True:
        while not conn.poll(_POLL_SECONDS):
            if os.getppid() != parent_pid or not _alive(owner_pid):
                return
        message = conn.recv()
        if message is None:
            return
        task_id, task, released = message
        encoder.release(released)  # slots whose arrays the main process dropped
        if task_id is None:  # a new version of the job
            job = cloudpickle.loads(task)
            continue
        index = task.index
        try:
            if task.payload is not None:
                task = dataclasses.replace(task, payload=shm_transport.decode(task.payload))
            reply = (task_id, True, encoder.encode(job.run(task, worker_id, num_workers, True)))
        except BaseException as exc:
            reply = (task_id, False, errors.pack_exception(exc))
        try:
            conn.send(reply)
        except OSError:
            if reply[1]:
                shm_transport.discard(reply[2], encoder.release_one)
            raise
        except Exception as exc:  # e.g. a batch holding an unpicklable object
            if reply[1]:
                shm_transport.discard(reply[2], encoder.release_one)
            errors.annotate(exc, f"while sending batch {index} back from worker process {worker_id}")
            conn.send((task_id, False, errors.pack_exception(exc)))


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class _Worker:
    __slots__ = ("worker_id", "process", "conn", "tasks", "released", "decoder")

    def __init__(self, worker_id, process, conn):
        self.worker_id = worker_id
        self.process = process
        self.conn = conn
        self.tasks = {}  # task_id -> (kind, epoch, index)
        # Slot ids of this worker whose arrays were garbage-collected here;
        # appended from any thread, sent back with the next task.
        self.released = collections.deque()
        self.decoder = shm_transport.Decoder(self.released.append)

    def take_released(self):
        out = []
        while True:
            try:
                out.append(self.released.popleft())
            except IndexError:
                return out


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
    """Sends tasks that carry payloads on a thread of its own.

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
        start_method: "fork", "spawn", "forkserver" or None for the
            platform default.
        name: process name prefix.
        max_slots: recycled shared-memory result slots per worker.
    """

    use_multiprocessing = True

    def __init__(self, job, num_workers: int, start_method=None, name: str = "seqify", max_slots=shm_transport.MAX_SLOTS):
        self.num_workers = num_workers
        self.max_slots = max_slots
        self.start_method = start_method
        self._name = name
        self._job_bytes = cloudpickle.dumps(job)
        self._workers = None
        self._task_ids = itertools.count()
        self._results = {}  # task_id -> (ok, payload, worker)
        self._discarded = set()
        self._owner = {}  # task_id -> _Worker
        self._lock = threading.RLock()
        self.shm_prefix = None
        self._sender = None

    # -- life cycle -------------------------------------------------------
    def _start(self):
        context = multiprocessing.get_context(self.start_method or default_start_method())
        self.shm_prefix = f"seqify-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._encoder = shm_transport.Encoder(f"{self.shm_prefix}m-")
        workers = []
        forking = context.get_start_method() == "fork"
        try:
            for worker_id in range(self.num_workers):
                parent_conn, child_conn = context.Pipe(duplex=True)
                # Only a forked child inherits (and must close) main-side ends.
                inherited = [w.conn for w in workers] + [parent_conn] if forking else []
                process = context.Process(
                    target=_worker_main,
                    args=(child_conn, self._job_bytes, worker_id, self.num_workers, self.shm_prefix, os.getpid(), inherited, self.max_slots),
                    name=f"{self._name}-worker-{worker_id}",
                    daemon=True,
                )
                process.start()
                child_conn.close()
                workers.append(_Worker(worker_id, process, parent_conn))
        except BaseException:
            self._workers = workers
            self._teardown()
            raise
        self._workers = workers

    def check(self) -> None:
        """Raises WorkerDiedError if a worker died while idle (e.g. between epochs)."""
        with self._lock:
            for worker in self._workers or ():
                if not worker.process.is_alive():
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
                    self._send(worker, (None, self._job_bytes, worker.take_released()))

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
                idle = not worker.tasks and sender is None
                try:
                    if graceful and idle and worker.process.is_alive():
                        worker.conn.send(None)
                    else:
                        worker.process.terminate()
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + 2.0
            for worker in workers:
                worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
        if sender is not None:
            sender.stop()  # its peers are gone: a blocked send has failed
        for worker in workers or ():
            worker.conn.close()
            worker.process.close()
        # Results received but never consumed still own shm segments.
        for ok, payload, _ in self._results.values():
            if ok:
                shm_transport.discard(payload)
        self._results.clear()
        self._discarded.clear()
        self._owner.clear()
        if self.shm_prefix:
            shm_transport.sweep(self.shm_prefix)

    # -- tasks ------------------------------------------------------------
    def submit(self, task) -> _Handle:
        """Sends one task; `task.worker` pins it to one worker (tasks then run in order)."""
        kind, epoch, index, payload, worker = task.kind, task.epoch, task.index, task.payload, task.worker
        with self._lock:
            if self._workers is None:
                self._start()
            if worker is None:
                worker = min(self._workers, key=lambda w: len(w.tasks))
            else:
                worker = self._workers[worker]
            task_id = next(self._task_ids)
            worker.tasks[task_id] = (kind, epoch, index)
            self._owner[task_id] = worker
            if payload is not None:
                payload = self._encoder.encode(payload)
                if self._sender is None:
                    self._sender = _Sender()
            try:
                self._send(worker, (task_id, task if payload is None else dataclasses.replace(task, payload=payload), worker.take_released()))
            except OSError:
                self._check_alive()
                raise
            return _Handle(self, task_id)

    def _send(self, worker, message):
        if self._sender is not None:
            self._sender.put(worker.conn, message)
        else:
            worker.conn.send(message)

    def _discard(self, task_id):
        with self._lock:
            done = self._results.pop(task_id, None)
            if done is not None:
                if done[0]:
                    shm_transport.discard(done[1], done[2].released.append)
            elif task_id in self._owner:
                self._discarded.add(task_id)

    def _result(self, task_id):
        with self._lock:
            while task_id not in self._results:
                if self._workers is None or task_id not in self._owner:
                    raise RuntimeError("seqify: the worker pool was closed while a batch was pending.")
                self._pump()
            ok, payload, worker = self._results.pop(task_id)
        if ok:
            return worker.decoder.decode(payload)
        kind, epoch, index = payload[1]
        raise errors.unpack_exception(payload[0], describe(kind, epoch, index, payload[2], True))

    def _pump(self):
        """Receives whatever is ready; raises WorkerDiedError if a worker died."""
        by_conn = {w.conn: w for w in self._workers}
        ready = multiprocessing.connection.wait(list(by_conn), timeout=_POLL_SECONDS)
        closed = False
        for conn in ready:
            if not self._receive(by_conn[conn]):
                closed = True
        if closed or not ready:
            self._check_alive(closed)

    def _receive(self, worker) -> bool:
        try:
            task_id, ok, payload = worker.conn.recv()
        except (EOFError, OSError):
            return False
        if task_id is None:  # the worker failed to start
            self._teardown()
            raise errors.unpack_exception(payload, f"while starting worker process {worker.worker_id}")
        kind, epoch, index = worker.tasks.pop(task_id)
        self._owner.pop(task_id, None)
        if task_id in self._discarded:
            self._discarded.discard(task_id)
            if ok:
                shm_transport.discard(payload, worker.released.append)
            return True
        if not ok:
            payload = (payload, (kind, epoch, index), worker.worker_id)
        self._results[task_id] = (ok, payload, worker)
        return True

    def _check_alive(self, pipe_closed=False):
        for worker in self._workers or ():
            if pipe_closed:
                worker.process.join(timeout=0.5)  # its pipe closed: it is exiting
            if worker.process.is_alive():
                continue
            # Keep what it managed to send before it died.
            try:
                while worker.conn.poll(0) and self._receive(worker):
                    pass
            except (EOFError, OSError):
                pass
            self._raise_died(worker)

    def _raise_died(self, worker):
        code = worker.process.exitcode
        pid = worker.process.pid
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        pending = sorted(worker.tasks.values(), key=lambda t: (t[1], t[2]))
        if pending:
            held = ", ".join(f"batch {index} (epoch {epoch})" for _, epoch, index in pending)
            what = f" while building {held}"
        else:
            what = " while idle"
        if code == -signal.SIGKILL:
            hint = "A SIGKILL is usually the out-of-memory killer: lower `max_queue_size`, the batch size or `workers`."
        elif code is not None and code < 0:
            hint = "A crash in native code (or a signal sent to the worker) ended it."
        else:
            hint = "User code in the worker called os._exit()/sys.exit(), or a native library exited."
        self._teardown()
        raise errors.WorkerDiedError(
            f"seqify worker process {worker.worker_id} (pid {pid}) {how}{what}. {hint} "
            "The pool was shut down; the next epoch starts a fresh one."
        )
