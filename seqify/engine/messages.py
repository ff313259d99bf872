"""Typed messages between an epoch's runner and the workers.

A `Task` asks a worker for one batch; everything a worker needs to build it
travels in the task (or in the `Job` shipped once at pool start). Tasks are
frozen so that a pool may hand the same object to a worker thread, a pipe or
a retry without anyone changing it underneath.
"""

import dataclasses
import enum
from typing import Any, Optional


class TaskKind(enum.Enum):
    """What a worker does for a task."""

    FETCH = "fetch"  # build batch `index` with the job's batch function
    TRANSFORM = "transform"  # run the job's transform on `payload` (a stream item)
    SHARD = "shard"  # read the next item of this worker's shard generator

    def describe(self) -> str:
        return {
            TaskKind.FETCH: "building batch",
            TaskKind.TRANSFORM: "transforming stream batch",
            TaskKind.SHARD: "reading stream batch",
        }[self]


@dataclasses.dataclass(unsafe_hash=True, slots=True)
class Task:
    """One batch to build. Treat it as immutable (`dataclasses.replace`).

    Not `frozen`: one is built per batch, and a frozen dataclass's
    `__init__` costs three times as much (0.84 vs 0.28 µs).

    Attributes:
        kind: what to do.
        epoch: the pass this batch belongs to (seeds `worker_info().rng()`).
        index: the batch index (for streams: the position in the stream).
        payload: the stream item to transform (TRANSFORM only).
        worker: pin the task to this worker (tasks pinned to one worker run
            in submission order), or None for any worker.
        shuffled: whether this pass reorders batches or samples (read by
            sources that shuffle inside the batch function, e.g. arrays).
    """

    kind: TaskKind
    epoch: int
    index: int
    payload: Any = None
    worker: Optional[int] = None
    shuffled: bool = False

    def __reduce__(self):
        # Tasks cross a pipe per batch: pickling the enum by value and the
        # fields positionally costs ~5 us a round trip instead of ~17.
        return _task, (self.kind.value, self.epoch, self.index, self.payload, self.worker, self.shuffled)


_KINDS = {kind.value: kind for kind in TaskKind}


def _task(kind, epoch, index, payload, worker, shuffled):
    return Task(_KINDS[kind], epoch, index, payload, worker, shuffled)


# -- the process-pool wire ------------------------------------------------------
# What travels through a worker process's pipe, besides `None` (stop). Task ids
# are the pool's own numbering: a `Result` names the task it answers, so the
# parent can match it whatever order a worker's replies arrive in.


@dataclasses.dataclass(frozen=True, slots=True)
class Work:
    """Parent -> worker: tasks to run, in this order.

    Attributes:
        tasks: `(task_id, Task)` pairs (several when the parent had more than
            one queued for this worker: one message instead of several).
        released: ids of this worker's result slots that the parent no
            longer maps (the worker may overwrite them).
    """

    tasks: tuple
    released: tuple = ()

    def __reduce__(self):
        return Work, (self.tasks, self.released)


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """Parent -> worker: replace the job (cloudpickled) before later tasks."""

    job: bytes
    released: tuple = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> parent: the job is unpickled; the worker serves tasks now.

    A worker that dies before sending it died while starting (see
    `seqify.engine.diagnostics`).
    """

    pid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """Worker -> parent: the batch of task `task_id`, encoded for the pipe.

    Attributes:
        task_id: the task answered.
        value: the batch, as `shm_transport.Encoder.encode` left it.
        seconds: how long the worker took to build it (the parent's measure
            of the cost per batch, which sizes its bursts of tasks).
        mapped: whether `value` refers to shared memory (else it is the
            batch itself and needs no decoding).
    """

    task_id: int
    value: Any
    seconds: float = 0.0
    mapped: bool = True

    def __reduce__(self):
        # One per batch: positional, not the dataclass's field-by-field state.
        return Result, (self.task_id, self.value, self.seconds, self.mapped)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteError:
    """Worker -> parent: task `task_id` raised (None: the worker failed to start).

    Attributes:
        task_id: the failed task, or None for an error outside any task.
        error: the exception as `seqify.engine.errors.pack_exception` packs it.
    """

    task_id: Optional[int]
    error: tuple

    def __reduce__(self):
        return RemoteError, (self.task_id, self.error)
