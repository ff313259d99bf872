"""The unit of work a worker runs: build one batch, or transform one.

A `Job` is what gets shipped (cloudpickled, once) to every worker process. It
must not import Keras or TensorFlow, so that spawn and forkserver workers
start in a fraction of a second.
"""

from seqify.engine import errors
from seqify.engine.batches import standardize_batch
from seqify.engine.worker_info import WorkerInfo, building

FETCH = "fetch"
TRANSFORM = "transform"


class Job:
    """Builds batches from a batch function and/or transforms stream items.

    Args:
        fetch: `fetch(index) -> batch`, or None for pure streams.
        transform: `transform(batch) -> batch`, or None.
        seed: integer seed for `WorkerInfo.rng()`.
    """

    def __init__(self, fetch=None, transform=None, seed: int = 0):
        self.fetch = fetch
        self.transform = transform
        self.seed = seed

    def run(self, kind, epoch, index, payload, worker_id=-1, num_workers=0, use_multiprocessing=False):
        info = WorkerInfo(worker_id, num_workers, epoch, index, self.seed, use_multiprocessing)
        try:
            with building(info):
                if kind == FETCH:
                    batch = self.fetch(index)
                elif kind == TRANSFORM:
                    batch = self.transform(payload) if self.transform is not None else payload
                else:  # pragma: no cover - programming error
                    raise AssertionError(kind)
            return standardize_batch(batch, index)
        except BaseException as exc:
            errors.annotate(exc, describe(kind, epoch, index, worker_id, use_multiprocessing))
            raise


def describe(kind, epoch, index, worker_id, use_multiprocessing) -> str:
    what = "building batch" if kind == FETCH else "transforming stream batch"
    if worker_id < 0:
        where = "on the calling thread"
    else:
        where = f"on worker {'process' if use_multiprocessing else 'thread'} {worker_id}"
    return f"while {what} {index} (epoch {epoch}) {where}"
