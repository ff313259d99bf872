"""The life of one worker process (the child side of `process_pool`).

A worker unpickles its job once, says `Ready`, then serves `Work` messages
from its pipe until it reads `None`, its pipe closes, or the process that owns
the pool goes away. It ignores SIGINT: Ctrl-C belongs to the main process,
which closes the pool.

Replies to the tasks of one `Work` message are sent together when they are
quick (under 0.5 ms each) and ready within `HOLD_SECONDS` of each other, so
tiny batches cost one pipe message per chunk rather than per batch; a slower
batch is sent as soon as it is built. (A quick batch followed by a slow one
in the same chunk waits for it: the price of guessing.)
"""

import dataclasses
import os
import signal
import time

import cloudpickle

from seqify.engine import errors, shm_transport
from seqify.engine.messages import NewJob, Ready, RemoteError, Result, Work

_POLL_SECONDS = 1.0
# Longest a finished batch waits for the next one of its chunk, so that they
# travel in one message.
HOLD_SECONDS = 0.002
# A batch that took longer than this is sent at once, never held.
_QUICK_SECONDS = HOLD_SECONDS / 4


def worker_main(conn, job_bytes, worker_id, num_workers, shm_prefix, owner_pid, inherited=(), max_slots=shm_transport.MAX_SLOTS):
    """Entry point of a worker process (`multiprocessing.Process` target)."""
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
        encoder = shm_transport.Encoder(f"{shm_prefix}w{worker_id}-", max_slots=max_slots)
    except BaseException as exc:
        errors.annotate(exc, f"while unpickling the dataset in worker process {worker_id}")
        conn.send(RemoteError(None, errors.pack_exception(exc)))
        return
    del job_bytes
    try:
        conn.send(Ready(os.getpid()))
        _serve(conn, job, worker_id, num_workers, encoder, parent_pid, owner_pid)
    except (EOFError, OSError):
        pass  # the main process closed our pipe or died
    if not alive(owner_pid):
        # Orphaned: segments already sent to the dead main process have no
        # reader left to unlink them.
        shm_transport.sweep(shm_prefix)


def _serve(conn, job, worker_id, num_workers, encoder, parent_pid, owner_pid):
    while True:
        while not conn.poll(_POLL_SECONDS):
            if os.getppid() != parent_pid or not alive(owner_pid):
                return
        message = conn.recv()
        if message is None:
            return
        encoder.release(message.released)  # slots whose arrays the main process dropped
        if type(message) is NewJob:
            job = cloudpickle.loads(message.job)
            continue
        _run_work(conn, job, message, worker_id, num_workers, encoder)


def _run_work(conn, job, work: Work, worker_id, num_workers, encoder):
    held = []
    held_since = 0.0
    last = len(work.tasks) - 1
    for position, (task_id, task) in enumerate(work.tasks):
        started = time.monotonic()
        try:
            if task.payload is not None:
                task = dataclasses.replace(task, payload=shm_transport.decode(task.payload))
            batch = job.run(task, worker_id, num_workers, True)
            built = time.monotonic()
            reply = Result(task_id, encoder.encode(batch), built - started, encoder.mapped)
        except BaseException as exc:
            reply = RemoteError(task_id, errors.pack_exception(exc))
        now = time.monotonic()
        if not held:
            held_since = now
        held.append((reply, task.index))
        # Hold a reply only behind batches that look as quick as this one:
        # one slow batch sends at once (and what is held with it).
        if position == last or now - started >= _QUICK_SECONDS or now - held_since >= HOLD_SECONDS:
            _send(conn, held, worker_id, encoder)
            held = []


def _send(conn, held, worker_id, encoder):
    replies = [reply for reply, _ in held]
    try:
        conn.send(replies[0] if len(replies) == 1 else replies)
        return
    except OSError:
        for reply in replies:
            if type(reply) is Result:
                shm_transport.discard(reply.value, encoder.release_one)
        raise
    except Exception:
        pass  # e.g. a batch holding an unpicklable object: find it below
    for reply, index in held:
        try:
            conn.send(reply)
        except OSError:
            if type(reply) is Result:
                shm_transport.discard(reply.value, encoder.release_one)
            raise
        except Exception as exc:
            if type(reply) is Result:
                shm_transport.discard(reply.value, encoder.release_one)
            errors.annotate(exc, f"while sending batch {index} back from worker process {worker_id}")
            conn.send(RemoteError(reply.task_id, errors.pack_exception(exc)))


def alive(pid) -> bool:
    """Whether process `pid` exists (a zombie counts: it is the owner's to reap)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
