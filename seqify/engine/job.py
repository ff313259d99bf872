"""The unit of work a worker runs: build one batch, or transform one.

A `Job` is what gets shipped (cloudpickled, once) to every worker process. It
must not import Keras or TensorFlow, so that spawn and forkserver workers
start in a fraction of a second.
"""

from seqify.engine import errors
from seqify.engine.batches import standardize_batch
from seqify.engine.worker_info import _state, seed_global_rngs

from seqify.engine.messages import Task, TaskKind

FETCH = TaskKind.FETCH
TRANSFORM = TaskKind.TRANSFORM
SHARD = TaskKind.SHARD


class Job:
    """Builds batches from a batch function and/or transforms stream items.

    Args:
        fetch: `fetch(index) -> batch`, or None for pure streams.
        transform: `transform(batch) -> batch`, or None.
        seed: integer seed for `WorkerInfo.rng()`.
    """

    def __init__(self, fetch=None, transform=None, seed: int = 0, shard_source=None, training_shard=(0, 1),
                 shard_skip: int = 0, shard_seek=None):
        self.fetch = fetch
        self.transform = transform
        self.seed = seed
        self.shard_source = shard_source  # (generator function, args, kwargs)
        self.training_shard = training_shard  # (index, count) from Sequence.shard()
        # Stream items the shards produced before this job (a resumed state):
        # a new shard generator first moves past its share of them.
        self.shard_skip = shard_skip
        self.shard_seek = shard_seek  # seek(n, *args, **kwargs) -> iterator, or None (replay)
        self._shards = {}  # worker id -> that worker's running shard generator

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_shards"] = {}  # running generators stay where they run
        return state

    def _next_from_shard(self, worker_id, num_workers):
        iterator = self._shards.get(worker_id)
        if iterator is None:
            function, args, kwargs = self.shard_source
            skip = len(range(max(worker_id, 0), self.shard_skip, max(num_workers, 1)))
            if self.shard_seek is not None:
                iterator = iter(self.shard_seek(skip, *args, **kwargs))
            else:
                iterator = iter(function(*args, **kwargs))
                for skipped in range(skip):  # replay, without the transform
                    try:
                        next(iterator)
                    except StopIteration:
                        raise errors.StreamExhaustedError(
                            f"Resuming the shard generator of worker {worker_id}: it ended after {skipped} of "
                            f"the {skip} items it produced before. Resuming by replay needs generators that "
                            "yield the same items each time they are called, or a `seek=` function."
                        ) from None
            self._shards[worker_id] = iterator
        try:
            return next(iterator)
        except StopIteration:
            raise errors.StreamExhaustedError(
                f"The shard generator of worker {worker_id} (of {num_workers}) ran dry. With "
                "sharded=True each worker runs its own generator; each must yield at least its "
                "share of `steps_per_epoch` every epoch (loop with `while True:`)."
            ) from None

    def run(self, task: Task, worker_id=-1, num_workers=0, use_multiprocessing=False):
        kind, epoch, index, payload = task.kind, task.epoch, task.index, task.payload
        if self.shard_source is not None:
            # Global stream shard: local worker within this training worker.
            local = max(num_workers, 1)
            shard_index = self.training_shard[0] * local + max(worker_id, 0)
            num_shards = self.training_shard[1] * local
        else:
            shard_index, num_shards = 0, 1
        # WorkerInfo's fields; `worker_info()` builds the object on demand.
        # (`set_current`, inlined: this runs once per batch.)
        state = _state
        previous = getattr(state, "info", None)
        state.info = (worker_id, num_workers, epoch, index, self.seed, use_multiprocessing, shard_index, num_shards, task.shuffled)
        if use_multiprocessing:
            # A worker process's global RNGs are seqify's to set (nothing
            # else runs there); a thread's or the caller's are the user's.
            seed_global_rngs(self.seed, epoch, index)
        try:
            if kind == FETCH:
                batch = self.fetch(index)
            elif kind == TRANSFORM:
                batch = self.transform(payload) if self.transform is not None else payload
            elif kind == SHARD:
                batch = self._next_from_shard(worker_id, num_workers)
                if self.transform is not None:
                    batch = self.transform(batch)
            else:  # pragma: no cover - programming error
                raise AssertionError(kind)
            return standardize_batch(batch, index)
        except BaseException as exc:
            errors.annotate(exc, describe(kind, epoch, index, worker_id, use_multiprocessing))
            raise
        finally:
            state.info = previous


def describe(kind, epoch, index, worker_id, use_multiprocessing) -> str:
    what = kind.describe()
    if worker_id < 0:
        where = "on the calling thread"
    else:
        where = f"on worker {'process' if use_multiprocessing else 'thread'} {worker_id}"
    return f"while {what} {index} (epoch {epoch}) {where}"
