"""seqify benchmark suite: batches/s through Keras's own epoch iterator.

Run from the repository root:

    python -m benchmarks.extras [--quick] [--out FILE.md]

Everything runs in this one process (worker processes aside). Every dataset
object, Keras's and seqify's, is iterated the way `fit` does it: a Keras
`EpochIterator` over the object, whose data adapter hands out a numpy
iterator per epoch (`get_numpy_iterator`), each batch pulled with `next` and
then consumed (one byte read per 4 KiB page of large arrays).

Each repetition builds a fresh object (fresh pool) and runs several epochs:
epoch 1 includes pool start-up and is reported separately; batches/s is over
epochs 2+ (steady state). Repetitions are interleaved across configurations
(rep 1 of every configuration, then rep 2, ...) so that drift in machine load
hits every configuration alike; the table shows medians and the range.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# numpy's OpenBLAS would otherwise start one thread per core inside every
# matmul; with 2 cores and several workers they oversubscribe the machine
# (measured: 3 matmuls take 65 ms instead of 5 ms). One thread per kernel
# makes the pipeline's workers the only source of parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import glob  # noqa: E402
import multiprocessing  # noqa: E402
import multiprocessing.pool  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.measure import quiet_keras_import  # noqa: E402


def _quiet_import():
    """Imports TensorFlow/Keras (the TF backend here) with native stderr muted."""
    quiet_keras_import()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


tf = _quiet_import()
import keras  # noqa: E402
from keras.src.trainers.data_adapters import py_dataset_adapter  # noqa: E402
from keras.src.trainers.epoch_iterator import EpochIterator  # noqa: E402

import seqify  # noqa: E402
from benchmarks import bench_transport, workloads  # noqa: E402
from benchmarks.datasets import (  # noqa: E402
    HookedStateSequence,
    KerasBatchFnDataset,
    KerasGeneratorDataset,
    PlainStateSequence,
)
from benchmarks.workloads import consume  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning, module="keras")

ANALYSIS_MARKER = "<!-- Everything below this line is hand-written analysis; benchmarks/run.py keeps it when it rewrites this file. -->"
MY_SHM_PREFIX = f"seqify-{os.getpid()}-"

# -- sizes --------------------------------------------------------------------
FULL = dict(
    reps=5, epochs=3,
    batches={"tiny": 400, "numpy_gil_free": 48, "python_gil": 48, "large_payload": 48},
    gen_batches=240, gen_transform_batches=48, mem_batches=32, mem_epochs=2,
    fit_reps=3, fit_epochs=4, fit_batches=48,
    state_mb=200, state_reps=3, state_epochs=4, state_batches=40,
    quiet_budget=45, retry_budget=75,
)
QUICK = dict(
    reps=3, epochs=2,
    batches={"tiny": 300, "numpy_gil_free": 32, "python_gil": 32, "large_payload": 24},
    gen_batches=120, gen_transform_batches=32, mem_batches=16, mem_epochs=2,
    fit_reps=1, fit_epochs=3, fit_batches=32,
    state_mb=200, state_reps=2, state_epochs=3, state_batches=20,
    quiet_budget=20, retry_budget=25,
)


def log(*args):
    print(*args, flush=True)


# -- process hygiene ------------------------------------------------------------


def reap_keras_pools():
    """Terminates whatever Keras's enqueuers left behind and reaps children."""
    for pool in list(py_dataset_adapter._DATA_POOLS):
        try:
            pool.terminate()
            pool.join()
        except Exception:
            pass
    multiprocessing.active_children()  # joins finished children


def my_shm():
    """(files, bytes) of this process's seqify segments in /dev/shm."""
    files = glob.glob(os.path.join("/dev/shm", glob.escape(MY_SHM_PREFIX) + "*"))
    size = 0
    for f in files:
        try:
            size += os.path.getsize(f)
        except OSError:
            pass
    return len(files), size


def children():
    return psutil.Process().children(recursive=True)


def pss(pid):
    """Proportional set size of `pid` in bytes (shared pages split between sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak memory of this process and its children, and peak /dev/shm use.

    Memory is PSS (proportional set size, from /proc/PID/smaps_rollup) summed
    over the process tree: forked workers share the parent's pages, which
    plain RSS would count once per process. Segments in /dev/shm that nobody
    maps yet are not in any PSS, so they are added. Reading smaps_rollup
    costs ~3 ms per process, so memory is measured in a pass of its own,
    never while throughput is timed.
    """

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_total = 0
        self.peak_shm = 0
        self.peak_rss = 0
        self.me = psutil.Process()

    def sample(self):
        total = pss(self.me.pid)
        rss = self.me.memory_info().rss
        for c in self.me.children(recursive=True):
            total += pss(c.pid)
            try:
                rss += c.memory_info().rss
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)
        shm = my_shm()[1]
        self.peak_total = max(self.peak_total, total + shm)
        self.peak_shm = max(self.peak_shm, shm)

    def run(self):
        while not self.stop_event.wait(self.interval):
            try:
                self.sample()
            except psutil.Error:
                pass

    def stop(self):
        self.stop_event.set()
        self.join()
        self.sample()


class LoadMeter:
    """CPU used by processes other than this benchmark (cores), approximately."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.own0 = self._own()

    @staticmethod
    def _busy():
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    @staticmethod
    def _own():
        multiprocessing.active_children()
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        for c in children():
            try:
                ct = c.cpu_times()
                own += ct.user + ct.system
            except psutil.Error:
                pass
        return own

    def cores(self):
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other / wall) if wall > 0 else 0.0


class QuietGate:
    """Waits, before each repetition, for other tenants' CPU load to drop.

    This machine is shared: other processes can take a whole core for
    minutes, and then no configuration can show a parallel speed-up. Before
    each repetition the gate samples the CPU used by other processes over
    0.5 s and waits (up to a total budget for the whole run) until it is
    under `threshold` cores. Waiting is logged and reported.
    """

    def __init__(self, budget_s, threshold=0.25):
        self.budget = budget_s
        self.threshold = threshold
        self.waited = 0.0
        self.gave_up = 0
        self.passed = 0

    def wait(self):
        start = time.perf_counter()
        while True:
            meter = LoadMeter()
            time.sleep(0.5)
            load = meter.cores()
            if load < self.threshold:
                self.passed += 1
                break
            if self.waited + (time.perf_counter() - start) >= self.budget:
                self.gave_up += 1
                break
        self.waited += time.perf_counter() - start

    def summary(self):
        return (f"quiet gate (other load < {self.threshold} cores before each repetition): passed {self.passed} times, "
                f"gave up {self.gave_up} times (budget spent), waited {self.waited:.0f} s of a {self.budget:.0f} s budget")


GATE = QuietGate(0)


# -- runners: one object, several epochs ------------------------------------------


class PlainRunner:
    """`for i in range(n): fn(i)`: the serial limit."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        for i in range(self.n):
            consume(self.fn(i))
            if first is None:
                first = time.perf_counter() - t0
        return time.perf_counter() - t0, first, self.n

    def close(self):
        pass


class RawGeneratorRunner:
    """Pulls a generator directly (one continuous stream, like fit_generator)."""

    def __init__(self, make_generator, n, transform=None):
        self.gen = make_generator()
        self.n, self.transform = n, transform

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        for _ in range(self.n):
            batch = next(self.gen)
            if self.transform is not None:
                batch = self.transform(batch)
            consume(batch)
            if first is None:
                first = time.perf_counter() - t0
        return time.perf_counter() - t0, first, self.n

    def close(self):
        self.gen.close()


class EpochIteratorRunner:
    """Iterates `x` exactly as `fit` does, through Keras's EpochIterator."""

    def __init__(self, x, expected):
        self.x = x
        self.expected = expected
        self.it = EpochIterator(x=x, steps_per_epoch=None, shuffle=False)
        self.it.reset()  # fit calls this once before the first epoch

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        count = 0
        for _begin, _end, buffer in self.it:  # __next__ pulls the batch(es)
            for batch in buffer:
                consume(batch)
                count += 1
            if first is None:
                first = time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if count != self.expected:
            raise RuntimeError(f"epoch yielded {count} batches, expected {self.expected}")
        return elapsed, first, count

    def close(self):
        adapter = getattr(self.it, "data_adapter", None)
        enqueuer = getattr(adapter, "enqueuer", None)
        if enqueuer is not None:
            enqueuer.stop()
        close = getattr(self.x, "close", None)
        if close is not None:
            close()
        self.it = None
        reap_keras_pools()


class CeilingRunner:
    """The ideal: the epoch's batches split evenly over bare workers.

    No ordering, no transport of batches, no Keras: each worker builds and
    consumes its share locally. Run interleaved with the other
    configurations, it shows the speed-up the machine allows at that moment
    (other tenants' load included).
    """

    def __init__(self, chunk_fn, chunks, use_processes):
        self.chunk_fn, self.chunks = chunk_fn, chunks
        if use_processes:
            self.pool = multiprocessing.get_context("fork").Pool(len(chunks))
        else:
            self.pool = multiprocessing.pool.ThreadPool(len(chunks))
        self.pool.map(_noop, range(len(chunks)))  # workers up before epoch 1 ends

    def epoch(self):
        t0 = time.perf_counter()
        n = sum(self.pool.map(self.chunk_fn, self.chunks, chunksize=1))
        return time.perf_counter() - t0, None, n

    def close(self):
        self.pool.terminate()
        self.pool.join()


def _noop(_):
    return None


def split(n, parts):
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def tf_dataset(make_iterable, sample, n):
    signature = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in sample)
    ds = tf.data.Dataset.from_generator(make_iterable, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    return ds.prefetch(tf.data.AUTOTUNE)


class _Range:
    """Picklable-free callable for tf.data: fn(0..n-1)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def __call__(self):
        return (self.fn(i) for i in range(self.n))


class _Window:
    """tf.data over one continuous stream: n items per pass."""

    def __init__(self, gen, n, transform=None):
        self.gen, self.n, self.transform = gen, n, transform

    def __call__(self):
        for _ in range(self.n):
            batch = next(self.gen)
            yield self.transform(batch) if self.transform is not None else batch


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


def run_config_rep(cfg, epochs, sample_memory=False):
    """One repetition of one configuration; returns the commit function, or None."""
    gc.collect()
    sampler = None
    if sample_memory:
        time.sleep(0.1)  # let the previous configuration's memory go
        base = Sampler()
        base.sample()
        baseline = base.peak_total
        sampler = Sampler(interval=0.05)
        sampler.start()
    runner = None
    try:
        runner = cfg.make()
        times = [runner.epoch() for _ in range(epochs)]
    except Exception as exc:  # report, keep going
        cfg.error = f"{type(exc).__name__}: {exc}"[:200]
        log(f"    ERROR in {cfg.workload} / {cfg.name}: {cfg.error}")
        times = None
    finally:
        if runner is not None:
            try:
                runner.close()
            except Exception as exc:
                cfg.error = cfg.error or f"close: {type(exc).__name__}: {exc}"[:200]
        if sampler is not None:
            sampler.stop()
    if cfg.family == "seqify":
        cfg.shm_after_close.append(my_shm())
    if times is None:
        return None

    def commit(noisy=False):
        cfg.first_epoch.append(times[0][0])
        steady = times[1:]
        cfg.rates.append(sum(t[2] for t in steady) / sum(t[0] for t in steady))
        cfg.start_latency.extend(t[1] for t in steady if t[1] is not None)
        cfg.noisy += int(noisy)
        if sampler is not None:
            cfg.peak_rss.append(sampler.peak_total)
            cfg.peak_rss_sum.append(sampler.peak_rss)
            cfg.peak_rss_delta.append(sampler.peak_total - baseline)
            cfg.peak_shm.append(sampler.peak_shm)

    return commit


class Retries:
    """Re-runs a configuration's repetition if other tenants loaded the machine.

    The CPU other processes used is measured during every repetition of every
    configuration; above `threshold` cores the repetition is thrown away, the
    quiet gate is awaited and it is run again (at most `attempts` times, and
    within a time budget for the whole run). Repetitions kept despite load
    are counted and flagged in the table.
    """

    def __init__(self, budget_s, threshold=0.3, attempts=3):
        self.budget, self.threshold, self.attempts = budget_s, threshold, attempts
        self.spent = 0.0
        self.retried = 0
        self.kept_noisy = 0

    def run(self, cfg, epochs, sample_memory=False):
        for attempt in range(self.attempts):
            meter = LoadMeter()
            t0 = time.perf_counter()
            commit = run_config_rep(cfg, epochs, sample_memory)
            load = meter.cores()
            if commit is None:
                return
            last = attempt == self.attempts - 1 or self.spent >= self.budget
            if load < self.threshold or last:
                commit(noisy=load >= self.threshold)
                self.kept_noisy += int(load >= self.threshold)
                return
            self.retried += 1
            self.spent += time.perf_counter() - t0
            GATE.wait()

    def summary(self):
        return (f"repetitions re-run because other processes used ≥ {self.threshold} cores during them: {self.retried} "
                f"({self.spent:.0f} s of a {self.budget:.0f} s budget); kept despite load (flagged *): {self.kept_noisy}")


RETRIES = Retries(0)


def run_group(name, cfgs, reps, epochs, sample_memory=False):
    log(f"\n== {name}: {len(cfgs)} configurations x {reps} repetitions x {epochs} epochs")
    meter = LoadMeter()
    t0 = time.perf_counter()
    for rep in range(reps):
        GATE.wait()
        for cfg in cfgs:
            if cfg.error and not cfg.rates:
                continue
            if cfg.max_reps is not None and rep >= cfg.max_reps:
                continue
            if sample_memory:
                commit = run_config_rep(cfg, epochs, sample_memory)
                if commit is not None:
                    commit()
            else:
                RETRIES.run(cfg, epochs)
        log(f"   rep {rep + 1}/{reps} done ({time.perf_counter() - t0:.0f} s)")
    load = meter.cores()
    for cfg in cfgs:
        if cfg.rate is not None:
            log(f"   {cfg.workload:28s} {cfg.name:55s} {cfg.rate:10.1f} batches/s  first epoch {statistics.median(cfg.first_epoch):.3f} s")
    return load


# -- derived numbers -------------------------------------------------------------


def reference(cfgs, workload):
    for c in cfgs:
        if c.workload == workload and c.family == "plain":
            return c
    return None


def keras_peer(cfgs, cfg):
    if cfg.family != "seqify":
        return None
    for c in cfgs:
        if c.workload == cfg.workload and c.family == "keras" and c.kind == cfg.kind and c.workers == cfg.workers:
            return c
    return None


def ratio(a, b):
    if a is None or b is None or not b.rate or a.rate is None:
        return None
    return a.rate / b.rate


def find(cfgs, workload, family, kind=None, workers=None):
    for c in cfgs:
        if c.workload == workload and c.family == family and (kind is None or c.kind == kind) and (workers is None or c.workers == workers):
            return c
    return None


def fmt(x, spec=".2f", suffix=""):
    return "—" if x is None else f"{x:{spec}}{suffix}"


def fmt_rate(r):
    if r is None:
        return "—"
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}"


# -- end-to-end fit -----------------------------------------------------------------


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.durations = []
        self._t = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._t)


def fit_once(make_ds, epochs, n):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    ds = make_ds()
    timer = EpochTimer()
    t0 = time.perf_counter()
    try:
        model.fit(ds, epochs=epochs, verbose=0, callbacks=[timer])
    finally:
        total = time.perf_counter() - t0
        close = getattr(ds, "close", None)
        if close is not None:
            close()
        reap_keras_pools()
    steady = timer.durations[1:]
    return n * len(steady) / sum(steady), total, timer.durations[0]


def run_fit(sizes, keras_setting):
    n = sizes["fit_batches"]
    fn = workloads.python_gil
    kind, w = keras_setting
    settings = {
        f"Keras PyDataset, {w} {kind} (Keras's best on python_gil)":
            lambda: KerasBatchFnDataset(fn, n, workers=w, use_multiprocessing=(kind == "processes")),
        "seqify.from_batch_fn, 2 processes":
            lambda: seqify.from_batch_fn(fn, n, workers=2, use_multiprocessing=True),
    }
    out = {name: [] for name in settings}
    log(f"\n== end-to-end model.fit (python_gil, {n} batches x {sizes['fit_epochs']} epochs, {sizes['fit_reps']} reps)")
    for rep in range(sizes["fit_reps"]):
        GATE.wait()
        for name, make in settings.items():
            for attempt in range(RETRIES.attempts):
                meter, t0 = LoadMeter(), time.perf_counter()
                result = fit_once(make, sizes["fit_epochs"], n)
                load = meter.cores()
                if load < RETRIES.threshold or attempt == RETRIES.attempts - 1 or RETRIES.spent >= RETRIES.budget:
                    RETRIES.kept_noisy += int(load >= RETRIES.threshold)
                    break
                RETRIES.retried += 1
                RETRIES.spent += time.perf_counter() - t0
                GATE.wait()
            out[name].append(result)
            log(f"   {name}: {out[name][-1][0]:.1f} batches/s (epochs 2+), fit total {out[name][-1][1]:.2f} s")
    return out


# -- epoch start with big state -------------------------------------------------------


def run_state(sizes):
    n, mb = sizes["state_batches"], sizes["state_mb"]
    log(f"\n== epoch start with {mb} MB of dataset state, 4 process workers")
    fn = workloads.StatefulFn(mb)
    cfgs = [
        Config("state", "Keras PyDataset, 4 processes", "keras", "processes", 4,
               lambda: EpochIteratorRunner(KerasBatchFnDataset(fn, n, workers=4, use_multiprocessing=True), n), n),
        Config("state", "seqify.from_batch_fn, 4 processes", "seqify", "processes", 4,
               lambda: EpochIteratorRunner(seqify.from_batch_fn(fn, n, workers=4, use_multiprocessing=True), n), n),
        Config("state", "seqify.Sequence subclass, 4 processes", "seqify", "processes", 4,
               lambda: EpochIteratorRunner(PlainStateSequence(fn, n, workers=4, use_multiprocessing=True), n), n),
        Config("state", "seqify.Sequence subclass with on_epoch_end, 4 processes", "seqify", "processes", 4,
               lambda: EpochIteratorRunner(HookedStateSequence(fn, n, workers=4, use_multiprocessing=True), n), n),
    ]
    run_group(f"{mb} MB state", cfgs, sizes["state_reps"], sizes["state_epochs"])
    for c in cfgs:
        c.make = None  # drop the 200 MB before the next sections fork workers
    del fn
    gc.collect()
    return cfgs


# -- report ---------------------------------------------------------------------------


def git_state():
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "seqify"], cwd=root, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = [line[3:] for line in dirty if line.strip()]
    if not dirty:
        return f"commit {head}, clean"
    import hashlib

    diff = subprocess.run(["git", "diff", "HEAD", "--", "seqify"], cwd=root, capture_output=True, timeout=10).stdout
    return f"commit {head} with uncommitted changes in {', '.join(dirty)} (diff sha1 {hashlib.sha1(diff).hexdigest()[:10]})"


SOURCE_AT_START = None


def machine_info(command, started):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"- Date: {started:%Y-%m-%d %H:%M:%S} (local)",
        f"- seqify source (as imported at start): {SOURCE_AT_START}",
        f"- Command: `{command}`",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        f"- Python {platform.python_version()}, numpy {np.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}, seqify {seqify.__version__}",
        f"- Start method: {multiprocessing.get_start_method()}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; sys.getswitchinterval()={sys.getswitchinterval() * 1e3:.0f} ms",
    ]


def main_table(cfgs, loads, sizes, serial_ms):
    lines = [
        "| workload | configuration | batches/s | range (reps) | × plain loop | × Keras same setting | 1st epoch (s) | 1st batch, epochs 2+ (ms) |",
        "|:--|:--|---:|---:|---:|---:|---:|---:|",
    ]
    last = None
    for c in cfgs:
        ref = reference(cfgs, c.workload)
        peer = keras_peer(cfgs, c)
        if c.error and not c.rates:
            lines.append(f"| {c.workload} | {c.name} | error: {c.error} | | | | | |")
            continue
        wl = c.workload if c.workload != last else ""
        last = c.workload
        rng = f"{fmt_rate(min(c.rates))}–{fmt_rate(max(c.rates))}" if c.rates else "—"
        if c.noisy:
            rng += f" ({c.noisy}*)"
        lat = statistics.median(c.start_latency) * 1e3 if c.start_latency else None
        name = c.name + (f" ({len(c.rates)} reps)" if c.max_reps else "")
        lines.append(
            f"| {wl} | {name} | {fmt_rate(c.rate)} | {rng} | {fmt(ratio(c, ref), '.2f', '×')} | "
            f"{fmt(ratio(c, peer), '.2f', '×')} | {fmt(statistics.median(c.first_epoch) if c.first_epoch else None, '.3f')} | {fmt(lat, '.2f')} |"
        )
    lines.append("")
    lines.append("Per workload: serial cost per batch (plain loop), batches per epoch, and CPU used by *other* processes on the machine while it ran (cores; this machine is shared):")
    lines.append("")
    for wl, ms in serial_ms.items():
        n = next(c.n for c in cfgs if c.workload == wl)
        lines.append(f"- `{wl}`: {ms:.3f} ms/batch serial, {n} batches/epoch, other load ≈ {loads.get(wl, 0):.2f} cores")
    return "\n".join(lines)


def memory_table(cfgs):
    lines = [
        "| configuration | peak memory, PSS main + children + /dev/shm (MB) | peak increase over idle (MB) | peak /dev/shm seqify bytes (MB) | peak RSS summed (MB; double-counts fork-shared pages) |",
        "|:--|---:|---:|---:|---:|",
    ]
    for c in cfgs:
        if not c.peak_rss:
            continue
        lines.append(
            f"| {c.name} | {max(c.peak_rss) / 2**20:,.0f} | {max(c.peak_rss_delta) / 2**20:,.0f} | {max(c.peak_shm) / 2**20:,.1f} | {max(c.peak_rss_sum) / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def shm_table(cfgs):
    lines = ["| configuration | /dev/shm seqify-* files after close() (max over reps) | bytes |", "|:--|---:|---:|"]
    for c in cfgs:
        if c.family == "seqify" and c.kind == "processes" and c.shm_after_close:
            files = max(f for f, _ in c.shm_after_close)
            size = max(b for _, b in c.shm_after_close)
            lines.append(f"| {c.workload} / {c.name} | {files} | {size} |")
    return "\n".join(lines)


def state_table(cfgs):
    lines = [
        "| configuration | first batch of epoch 2+ (ms, median) | max (ms) | 1st epoch (s) | batches/s epochs 2+ |",
        "|:--|---:|---:|---:|---:|",
    ]
    for c in cfgs:
        if c.error and not c.rates:
            lines.append(f"| {c.name} | error: {c.error} | | | |")
            continue
        lines.append(
            f"| {c.name} | {statistics.median(c.start_latency) * 1e3:.1f} | {max(c.start_latency) * 1e3:.1f} | "
            f"{statistics.median(c.first_epoch):.3f} | {fmt_rate(c.rate)} |"
        )
    return "\n".join(lines)


def fit_table(fit):
    lines = ["| input pipeline | fit batches/s, epochs 2+ (median) | range | whole fit call (s) | first epoch (s) |", "|:--|---:|---:|---:|---:|"]
    for name, runs in fit.items():
        rates = [r[0] for r in runs]
        lines.append(
            f"| {name} | {statistics.median(rates):.1f} | {min(rates):.1f}–{max(rates):.1f} | "
            f"{statistics.median(r[1] for r in runs):.2f} | {statistics.median(r[2] for r in runs):.2f} |"
        )
    return "\n".join(lines)


def best_ratio(a, b):
    if a is None or b is None or not a.rates or not b.rates:
        return None
    return max(a.rates) / max(b.rates)


def targets(cfgs, fit, state_cfgs, loads):
    """PASS/MISS per target, on medians; with the best repetition and context."""
    rows = []

    def add(name, value, threshold, op, best=None, context=""):
        unit = " ms" if op == "<" else "×"
        if value is None:
            rows.append((name, "—", "—", f"{op} {threshold}{unit}", "not measured", context))
            return
        ok = value >= threshold if op == ">=" else value < threshold
        rows.append((name, f"{value:.2f}{unit}", fmt(best, ".2f", unit), f"{op} {threshold}{unit}", "PASS" if ok else "MISS", context))

    def pair(wl, fam, kind, w, base):
        c = find(cfgs, wl, fam, kind, w)
        return ratio(c, base), best_ratio(c, base)

    def ceiling_note(wl):
        ceil, ref = find(cfgs, wl, "ceiling"), reference(cfgs, wl)
        if ceil is None or ref is None or ceil.rate is None:
            return f"other load {loads.get(wl, 0):.1f} cores"
        return (f"ideal 2-worker ceiling measured alongside: {ratio(ceil, ref):.2f}× "
                f"(other load {loads.get(wl, 0):.1f} cores)")

    ref = lambda wl: reference(cfgs, wl)  # noqa: E731
    v, b = pair("python_gil", "seqify", "processes", 2, ref("python_gil"))
    add("GIL-holding work (python_gil): seqify 2 processes vs plain loop", v, 1.8, ">=", b, ceiling_note("python_gil"))
    v, b = pair("numpy_gil_free", "seqify", "threads", 2, ref("numpy_gil_free"))
    add("GIL-releasing numpy (numpy_gil_free): seqify 2 threads vs plain loop", v, 1.8, ">=", b, ceiling_note("numpy_gil_free"))
    for w in (2, 4):
        v, b = pair("large_payload", "seqify", "processes", w, ref("large_payload"))
        add(f"Large payload: seqify {w} processes vs plain loop", v, 0.5, ">=", b, f"other load {loads.get('large_payload', 0):.1f} cores")
    for w in (2, 4):
        v, b = pair("large_payload", "seqify", "processes", w, find(cfgs, "large_payload", "keras", "processes", w))
        add(f"Large payload: seqify {w} processes vs Keras {w} processes", v, 15, ">=", b)
    for kind in ("threads", "processes"):
        for w in (2, 4):
            v, b = pair("tiny", "seqify", kind, w, find(cfgs, "tiny", "keras", kind, w))
            add(f"Tiny batches: seqify {w} {kind} vs Keras {w} {kind}", v, 4, ">=", b)
    v, b = pair("legacy_generator", "seqify", None, None, ref("legacy_generator"))
    add("Legacy generator (~1 ms/batch, generator-bound), no transform: from_generator vs raw loop", v, 0.95, ">=", b,
        f"other load {loads.get('legacy_generator', 0):.1f} cores")
    v, b = pair("legacy_generator + transform", "seqify", "processes", 2, ref("legacy_generator + transform"))
    add("Heavy transform: from_generator, 2 processes vs serial generator+transform loop", v, 1.8, ">=", b,
        ceiling_note("legacy_generator + transform"))
    if fit:
        names = list(fit)
        k = [x[0] for x in fit[names[0]]]
        s_ = [x[0] for x in fit[names[1]]]
        add("End-to-end model.fit: seqify 2 processes vs Keras's best PyDataset", statistics.median(s_) / statistics.median(k), 1.5, ">=",
            max(s_) / max(k), f"vs {names[0]}")
    for c in state_cfgs:
        if c.family == "seqify" and c.start_latency:
            add(f"Epoch 2+ start, {c.name}", statistics.median(c.start_latency) * 1e3, 50, "<", min(c.start_latency) * 1e3,
                "best column: fastest epoch start")
    lines = ["| target | measured (median) | best repetition | threshold | result | context |", "|:--|---:|---:|---:|:--|:--|"]
    for name, value, best, thr, res, ctx in rows:
        lines.append(f"| {name} | {value} | {best} | {thr} | **{res}** | {ctx} |")
    return "\n".join(lines), rows


def write_report(path, body):
    tail = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if ANALYSIS_MARKER in text:
            tail = text[text.index(ANALYSIS_MARKER) + len(ANALYSIS_MARKER):]
    with open(path, "w") as f:
        f.write(body.rstrip() + "\n\n" + ANALYSIS_MARKER + (tail if tail else "\n"))


# -- main -------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller epochs (~3 min)")
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    parser.add_argument("--only", default=None, help="comma-separated sections: workloads,generator,memory,state,fit,transport")
    parser.add_argument("--workloads", default=None, help="comma-separated batch-function workloads (default: all)")
    parser.add_argument("--no-wait", action="store_true", help="never wait for, or re-run because of, other processes' CPU load")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sections = set((args.only or "workloads,generator,memory,state,fit,transport").split(","))
    command = " ".join(["python -m benchmarks.extras"] + (argv if argv is not None else sys.argv[1:]))
    started = datetime.datetime.now()
    t_start = time.perf_counter()
    faulthandler.dump_traceback_later(1800, exit=True)  # never hang forever
    reps, epochs = sizes["reps"], sizes["epochs"]
    global GATE, RETRIES, SOURCE_AT_START
    SOURCE_AT_START = git_state()
    GATE = QuietGate(sizes["quiet_budget"] if not args.no_wait else 0)
    RETRIES = Retries(sizes["retry_budget"] if not args.no_wait else 0)

    log("\n".join(machine_info(command, started)))
    cfgs, loads, serial_ms = [], {}, {}
    if "workloads" in sections:
        for wl, fn in workloads.BATCH_FNS.items():
            if args.workloads and wl not in args.workloads.split(","):
                continue
            group = batch_fn_configs(wl, fn, sizes["batches"][wl])
            loads[wl] = run_group(wl, group, reps, epochs)
            cfgs.extend(group)
    if "generator" in sections:
        group = generator_configs(sizes["gen_batches"], sizes["gen_transform_batches"])
        load = run_group("legacy generator", group, reps, epochs)
        for c in group:
            loads.setdefault(c.workload, load)
        cfgs.extend(group)
    mem_cfgs = []
    if "memory" in sections:
        mem_cfgs = batch_fn_configs("large_payload (memory pass)", workloads.large_payload, sizes["mem_batches"])
        mem_cfgs = [c for c in mem_cfgs if c.family != "ceiling"]
        run_group(f"memory pass, large_payload ({sizes['mem_batches']} batches x {sizes['mem_epochs']} epochs, sampled every 50 ms)",
                  mem_cfgs, 1, sizes["mem_epochs"], sample_memory=True)
    for wl in dict.fromkeys(c.workload for c in cfgs):
        ref = reference(cfgs, wl)
        if ref is not None and ref.rate:
            serial_ms[wl] = 1e3 / ref.rate

    state_cfgs = run_state(sizes) if "state" in sections else []

    fit = None
    if "fit" in sections:
        keras_gil = [c for c in cfgs if c.workload == "python_gil" and c.family == "keras" and c.rate]
        best = max(keras_gil, key=lambda c: c.rate) if keras_gil else None
        fit = run_fit(sizes, (best.kind, best.workers) if best else ("processes", 2))

    transport_md = None
    if "transport" in sections:
        log("\n== transport micro-benchmark")
        GATE.wait()
        results, leftover = bench_transport.measure(
            bench_transport.QUICK_SIZES if args.quick else bench_transport.SIZES,
            blocks=4 if args.quick else 7, verbose=True)
        transport_md = bench_transport.markdown(results, leftover)

    # final hygiene: every seqify object was closed; no child may survive
    reap_keras_pools()
    gc.collect()
    time.sleep(0.2)
    multiprocessing.active_children()
    left = children()
    left_desc = ", ".join(f"{p.pid} ({p.name()}, {p.status()}, parent {p.ppid()}, started {p.create_time() - psutil.Process().create_time():.1f} s into the run)" for p in left) or "none"
    shm_files, shm_bytes = my_shm()
    elapsed = time.perf_counter() - t_start

    source_now = git_state()
    changed = [] if source_now == SOURCE_AT_START else [
        f"- Note: the seqify source changed on disk during the run (now: {source_now}); the run used the code imported at start."]
    md = ["# seqify benchmark results", "", *machine_info(command, started), *changed, f"- Run time: {elapsed:.0f} s",
          f"- Machine sharing: {GATE.summary()}; {RETRIES.summary()}", ""]
    md += [
        "How: every configuration is iterated as `fit` iterates it — Keras's `EpochIterator` "
        "(data adapter → `get_numpy_iterator()` → `next` per batch) — except the plain loop and the raw generator. "
        "Each batch is consumed by reading one byte per 4 KiB page of arrays ≥ 64 KiB. Each repetition builds a fresh "
        f"object and runs {epochs} epochs; batches/s is over epochs 2+ (median over {reps} repetitions, interleaved across "
        "configurations); '1st epoch' includes pool start-up. '1st batch, epochs 2+' is the time from asking for the "
        "next epoch to its first batch. The machine is shared with other sessions: a repetition during which other "
        "processes used ≥ 0.3 cores is thrown away and run again (within a time budget); the 'ideal ceiling' rows "
        "(the work split over bare workers, no pipeline) show what speed-up the machine allowed meanwhile.",
        "",
    ]
    if cfgs:
        md += ["## Throughput", "", main_table(cfgs, loads, sizes, serial_ms), ""]
    target_md, rows = targets(cfgs, fit, state_cfgs, loads)
    md += ["## Targets", "", target_md, ""]
    if any(c.peak_rss for c in mem_cfgs):
        md += ["## Memory, large_payload (19 MB batches)", "",
               f"A separate pass ({sizes['mem_batches']} batches x {sizes['mem_epochs']} epochs per configuration, not timed), sampled every 50 ms: "
               "PSS summed over this process and its children (pages shared after fork are split between the sharers, "
               "not counted once per process as summed RSS does), plus seqify segments waiting in /dev/shm. "
               "The increase is over the same measure taken just before the configuration started. max_queue_size is "
               "Keras's and seqify's default, 10.", "",
               memory_table(mem_cfgs), ""]
    if fit:
        md += ["## End-to-end `model.fit` (python_gil, Dense 64→64→1, TensorFlow backend, compiled)", "", fit_table(fit), ""]
    if state_cfgs:
        md += [f"## Epoch start with {sizes['state_mb']} MB of dataset state, 4 process workers", "", state_table(state_cfgs), ""]
    if transport_md:
        md += ["## Transport micro-benchmark (worker → main, one array per round trip)", "", transport_md, ""]
    md += ["## Hygiene", "", shm_table(cfgs + mem_cfgs + state_cfgs), "",
           f"- seqify segments of this run left in /dev/shm at the end: {shm_files} files, {shm_bytes} bytes",
           f"- Child processes alive at the end: {left_desc}", ""]
    body = "\n".join(md)
    log("\n" + body)
    log("\nTargets: " + "; ".join(f"{row[0]}: {row[4]}" for row in rows))
    if args.out:
        write_report(args.out, body)
        log(f"\nwrote {args.out}")
    log(f"\nTotal run time: {elapsed:.0f} s")
    for p in left:  # do not leave anything behind, even if reported
        try:
            p.terminate()
        except psutil.Error:
            pass
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
