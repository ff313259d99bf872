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


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """One batch to build.

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
