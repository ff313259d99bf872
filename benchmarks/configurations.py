"""The rows of the benchmark: every way of feeding batches that is compared.

A `Config` builds one dataset object for a workload's batch function and
`n` batches per epoch; `benchmarks.measure` iterates it the way `fit`
does on each backend's path. Peers (torch `DataLoader`, Grain) are iterated
as their own users would (a plain `for` loop), next to the numpy path, and
fed to a real `model.fit` on the `*-fit` paths, like everyone else there.
"""

import dataclasses
import threading
from typing import Callable, Tuple

from benchmarks import workloads

#: Backend -> the paths `fit` takes there (`numpy`: Keras's generic
#: EpochIterator over `get_numpy_iterator`, which the TF backend also uses
#: for evaluate/predict on numpy-friendly adapters; `tf`: `get_tf_dataset`).
#: `<backend>-fit`: a real `model.fit` (one epoch per call) on that backend.
PATHS = {"tensorflow": ("numpy", "tf", "tf32", "tf-fit"), "jax": ("jax", "jax-fit"), "torch": ("torch", "torch-fit")}
FIT_PATHS = ("tf-fit", "jax-fit", "torch-fit")


@dataclasses.dataclass(frozen=True)
class Config:
    """One row: `make(fn, n)` builds the object; `family` groups rows for ratios."""

    name: str
    family: str  # "plain", "keras", "seqify", "torch", "grain"
    make: Callable
    paths: Tuple[str, ...]
    workers: int = 0
    processes: bool = False


def _keras(workers, processes):
    def make(fn, n):
        from benchmarks.datasets import KerasBatchFnDataset

        return KerasBatchFnDataset(fn, n, workers=workers, use_multiprocessing=processes)

    return make


def _seqify(workers, processes):
    def make(fn, n):
        import seqify

        return seqify.from_batch_fn(fn, n, workers=workers, use_multiprocessing=processes)

    return make


class _MapSource:
    """`source[i] = fn(i)`: the random-access shape torch and Grain ask for."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.fn(int(index))


class TorchLoader:
    """torch `DataLoader(batch_size=None)` over `fn`: batches as built, to tensors."""

    def __init__(self, fn, n, workers):
        import torch.utils.data

        class _Dataset(_MapSource, torch.utils.data.Dataset):
            pass

        self.loader = torch.utils.data.DataLoader(
            _Dataset(fn, n), batch_size=None, shuffle=False, num_workers=workers,
            persistent_workers=workers > 0, prefetch_factor=None if workers == 0 else 2,
        )

    def __iter__(self):
        return iter(self.loader)

    def close(self):
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader = None


_FLAGS_LOCK = threading.Lock()


class GrainLoader:
    """Grain's `DataLoader` over `fn` (sequential sampler, `worker_count` processes)."""

    def __init__(self, fn, n, workers):
        from absl import flags
        import grain.python as grain

        with _FLAGS_LOCK:
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; this script has none
        self.loader = grain.DataLoader(
            data_source=_MapSource(fn, n),
            sampler=grain.IndexSampler(num_records=n, shard_options=grain.NoSharding(), shuffle=False, num_epochs=1),
            worker_count=workers,
        )

    def __iter__(self):
        return iter(self.loader)

    def close(self):
        self.loader = None


def _peer(cls, workers):
    def make(fn, n):
        return cls(fn, n, workers)

    return make


def _prebuilt(fn, n):
    from benchmarks.datasets import BareAdapter

    return BareAdapter(fn, n)


class PlainLoop:
    """The reference: `fn(i)` for each index on the consuming thread, nothing else."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def __iter__(self):
        fn = self.fn
        return (fn(i) for i in range(self.n))


class GraphOnly:
    """The TF path's ceiling: a dataset built in the graph (no Python per batch),
    each element shaped like the workload's batch, stepped like Keras's TF trainer."""

    def __init__(self, fn, n):
        import tensorflow as tf

        sample = tf.nest.map_structure(tf.constant, fn(0))
        self.n = n
        self.dataset = tf.data.Dataset.from_tensors(sample).repeat(n)

    def __iter__(self):
        return iter(self.dataset)


ALL_PATHS = ("numpy", "tf", "tf32", "jax", "torch") + FIT_PATHS
PEER_PATHS = ("numpy",) + FIT_PATHS  # iterated directly, and fed to model.fit as their users would
CONFIGS = [
    Config("plain loop", "plain", PlainLoop, ("numpy",)),
    Config("Keras's EpochIterator alone, bare adapter (floor)", "floor", _prebuilt, ("numpy",)),
    Config("Keras PyDataset, workers=1", "keras", _keras(1, False), ALL_PATHS, 1),
    Config("Keras PyDataset, 2 threads", "keras", _keras(2, False), ALL_PATHS, 2),
    Config("Keras PyDataset, 2 processes", "keras", _keras(2, True), ALL_PATHS, 2, True),
    Config("seqify, workers=0", "seqify", _seqify(0, False), ALL_PATHS, 0),
    Config("seqify, 1 thread (default)", "seqify", _seqify(1, False), ALL_PATHS, 1),
    Config("seqify, 2 threads", "seqify", _seqify(2, False), ALL_PATHS, 2),
    Config("seqify, 2 processes", "seqify", _seqify(2, True), ALL_PATHS, 2, True),
    Config("torch DataLoader, 2 processes", "torch", _peer(TorchLoader, 2), PEER_PATHS, 2, True),
    Config("Grain DataLoader, 2 processes", "grain", _peer(GrainLoader, 2), PEER_PATHS, 2, True),
    Config("tf.data in-graph dataset (ceiling)", "ceiling", GraphOnly, ("tf", "tf32")),
]
QUICK_SKIP = ({(path, "Keras PyDataset, 2 processes") for path in ("jax", "torch", "tf32")} | {("tf32", "seqify, 2 processes")}
              | {(path, "seqify, 1 thread (default)") for path in ("tf32",) + FIT_PATHS})

WORKLOADS = {
    "tiny": workloads.tiny,
    "numpy_gil_free": workloads.numpy_gil_free,
    "python_gil": workloads.python_gil,
    "large_payload": workloads.large_payload,
    "large_recycled": workloads.large_recycled,
}
QUICK_WORKLOADS = ("tiny", "large_payload", "large_recycled")


def configs_for(path, quick=False):
    return [c for c in CONFIGS if path in c.paths and not (quick and (path, c.name) in QUICK_SKIP)]
