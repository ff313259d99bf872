"""The configurations compared on each workload (Keras, seqify, peers, ceilings).
"""

import statistics

import seqify
from benchmarks import workloads
from benchmarks.datasets import KerasBatchFnDataset, KerasGeneratorDataset
from benchmarks.extras.runners import (
    CeilingRunner,
    EpochIteratorRunner,
    PlainRunner,
    RawGeneratorRunner,
    _Range,
    _Window,
    split,
    tf_dataset,
)


# -- configurations ----------------------------------------------------------------


class Config:
    def __init__(self, workload, name, family, kind, workers, make, n):
        self.workload, self.name, self.family = workload, name, family
        self.kind, self.workers, self.make, self.n = kind, workers, make, n
        self.rates, self.first_epoch, self.start_latency = [], [], []
        self.peak_rss, self.peak_rss_delta, self.peak_shm, self.shm_after_close = [], [], [], []
        self.peak_rss_sum = []
        self.error = None
        self.max_reps = None  # fewer repetitions for very slow, very stable configurations
        self.noisy = 0  # repetitions kept although other processes loaded the machine

    @property
    def rate(self):
        return statistics.median(self.rates) if self.rates else None


def batch_fn_configs(workload, fn, n):
    cfgs = [Config(workload, "plain loop", "plain", None, 0, lambda: PlainRunner(fn, n), n)]
    for mp in (False, True):
        kind = "processes" if mp else "threads"
        for w in (2, 4):
            cfgs.append(Config(workload, f"Keras PyDataset, {w} {kind}", "keras", kind, w,
                               lambda w=w, mp=mp: EpochIteratorRunner(KerasBatchFnDataset(fn, n, workers=w, use_multiprocessing=mp), n), n))
            if mp and workload.startswith("large_payload"):
                # ~10 batches/s and steady: 2 repetitions are enough and
                # keep the run short (same batches per epoch as the others).
                cfgs[-1].max_reps = 2
    for mp in (False, True):
        kind = "processes" if mp else "threads"
        for w in (1, 2, 4):
            cfgs.append(Config(workload, f"seqify, {w} {kind}", "seqify", kind, w,
                               lambda w=w, mp=mp: EpochIteratorRunner(seqify.from_batch_fn(fn, n, workers=w, use_multiprocessing=mp), n), n))
    ceiling = {"python_gil": True, "numpy_gil_free": False}.get(workload)
    if ceiling is not None:
        kind = "processes" if ceiling else "threads"
        chunks = [(fn, a, b) for a, b in split(n, 2)]
        cfgs.append(Config(workload, f"ideal: 2 bare {kind}, no pipeline (ceiling)", "ceiling", kind, 2,
                           lambda: CeilingRunner(workloads.run_chunk, chunks, ceiling), n))
    sample = fn(0)
    cfgs.append(Config(workload, "tf.data from_generator", "tf.data", None, 0,
                       lambda: EpochIteratorRunner(tf_dataset(_Range(fn, n), sample, n), n), n))
    return cfgs


def generator_configs(n, nt):
    g = "legacy_generator"
    gt = "legacy_generator + transform"
    gc_ = "cheap_generator"
    make = workloads.legacy_generator
    tr = workloads.heavy_transform
    sample = next(make())
    cfgs = [
        Config(g, "raw generator loop", "plain", None, 0, lambda: RawGeneratorRunner(make, n), n),
        Config(g, "seqify.from_generator (no transform)", "seqify", "threads", 1,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=n), n), n),
        Config(g, "Keras PyDataset (next on the main thread), 0 workers", "keras", None, 0,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(make, n, workers=0), n), n),
        Config(g, "Keras PyDataset (locked next), 2 threads", "keras", "threads", 2,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(make, n, workers=2), n), n),
        Config(g, "tf.data from_generator", "tf.data", None, 0,
               lambda: EpochIteratorRunner(tf_dataset(_Window(make(), n), sample, n), n), n),
        Config(gc_, "raw generator loop", "plain", None, 0, lambda: RawGeneratorRunner(workloads.cheap_generator, n), n),
        Config(gc_, "seqify.from_generator (no transform)", "seqify", "threads", 1,
               lambda: EpochIteratorRunner(seqify.from_generator(workloads.cheap_generator, steps_per_epoch=n), n), n),
        Config(gc_, "Keras PyDataset (next on the main thread), 0 workers", "keras", None, 0,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(workloads.cheap_generator, n, workers=0), n), n),
        Config(gt, "raw generator + transform loop", "plain", None, 0, lambda: RawGeneratorRunner(make, nt, tr), nt),
        Config(gt, "seqify.from_generator, transform inline (0 workers)", "seqify", None, 0,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=0), nt), nt),
        Config(gt, "seqify.from_generator, transform on 2 threads", "seqify", "threads", 2,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=2), nt), nt),
        Config(gt, "seqify.from_generator, transform on 2 processes", "seqify", "processes", 2,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=2, use_multiprocessing=True), nt), nt),
        Config(gt, "Keras PyDataset (locked next + transform), 2 threads", "keras", "threads", 2,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(make, nt, transform=tr, workers=2), nt), nt),
        Config(gt, "ideal: 2 bare processes, no pipeline (ceiling)", "ceiling", "processes", 2,
               lambda: CeilingRunner(workloads.run_transform_chunk, [(b - a,) for a, b in split(nt, 2)], True), nt),
    ]
    return cfgs

