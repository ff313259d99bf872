"""seqify benchmark suite: batches/s through Keras's own epoch iterator.

Run from the repository root:

    python -m benchmarks.run [--quick] [--out benchmarks/RESULTS.md]

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
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402


def _quiet_import():
    """Imports TensorFlow/Keras with native stderr muted (absl start-up lines)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
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
    batches={"tiny": 600, "numpy_gil_free": 64, "python_gil": 64, "large_payload": 24},
    gen_batches=240, gen_transform_batches=64,
    fit_reps=3, fit_epochs=4, fit_batches=64,
    state_mb=200, state_reps=3, state_epochs=4, state_batches=40,
)
QUICK = dict(
    reps=3, epochs=2,
    batches={"tiny": 300, "numpy_gil_free": 32, "python_gil": 32, "large_payload": 12},
    gen_batches=120, gen_transform_batches=32,
    fit_reps=1, fit_epochs=3, fit_batches=32,
    state_mb=200, state_reps=2, state_epochs=3, state_batches=20,
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


class Sampler(threading.Thread):
    """Peak RSS of this process plus its children, and peak /dev/shm use."""

    def __init__(self, interval=0.025):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_shm = 0
        self.me = psutil.Process()

    def sample(self):
        rss = self.me.memory_info().rss
        for c in self.me.children(recursive=True):
            try:
                rss += c.memory_info().rss
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_shm = max(self.peak_shm, my_shm()[1])

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.sample()
            except psutil.Error:
                pass
            self.stop_event.wait(self.interval)

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
        self.error = None

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
    for mp in (False, True):
        kind = "processes" if mp else "threads"
        for w in (1, 2, 4):
            cfgs.append(Config(workload, f"seqify, {w} {kind}", "seqify", kind, w,
                               lambda w=w, mp=mp: EpochIteratorRunner(seqify.from_batch_fn(fn, n, workers=w, use_multiprocessing=mp), n), n))
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
        Config(g, "Keras PyDataset (locked next), 2 threads", "keras", "threads", 2,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(make, n, workers=2), n), n),
        Config(g, "tf.data from_generator", "tf.data", None, 0,
               lambda: EpochIteratorRunner(tf_dataset(_Window(make(), n), sample, n), n), n),
        Config(gc_, "raw generator loop", "plain", None, 0, lambda: RawGeneratorRunner(workloads.cheap_generator, n), n),
        Config(gc_, "seqify.from_generator (no transform)", "seqify", "threads", 1,
               lambda: EpochIteratorRunner(seqify.from_generator(workloads.cheap_generator, steps_per_epoch=n), n), n),
        Config(gt, "raw generator + transform loop", "plain", None, 0, lambda: RawGeneratorRunner(make, nt, tr), nt),
        Config(gt, "seqify.from_generator, transform inline (0 workers)", "seqify", None, 0,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=0), nt), nt),
        Config(gt, "seqify.from_generator, transform on 2 threads", "seqify", "threads", 2,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=2), nt), nt),
        Config(gt, "seqify.from_generator, transform on 2 processes", "seqify", "processes", 2,
               lambda: EpochIteratorRunner(seqify.from_generator(make, steps_per_epoch=nt, transform=tr, workers=2, use_multiprocessing=True), nt), nt),
        Config(gt, "Keras PyDataset (locked next + transform), 2 threads", "keras", "threads", 2,
               lambda: EpochIteratorRunner(KerasGeneratorDataset(make, nt, transform=tr, workers=2), nt), nt),
    ]
    return cfgs


def run_config_rep(cfg, epochs, sample_memory=False):
    gc.collect()
    sampler = None
    if sample_memory:
        base = Sampler()
        base.sample()
        baseline = base.peak_rss
        sampler = Sampler()
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
        return
    cfg.first_epoch.append(times[0][0])
    steady = times[1:]
    cfg.rates.append(sum(t[2] for t in steady) / sum(t[0] for t in steady))
    cfg.start_latency.extend(t[1] for t in steady)
    if sampler is not None:
        cfg.peak_rss.append(sampler.peak_rss)
        cfg.peak_rss_delta.append(sampler.peak_rss - baseline)
        cfg.peak_shm.append(sampler.peak_shm)


def run_group(name, cfgs, reps, epochs, sample_memory=False):
    log(f"\n== {name}: {len(cfgs)} configurations x {reps} repetitions x {epochs} epochs")
    meter = LoadMeter()
    t0 = time.perf_counter()
    for rep in range(reps):
        for cfg in cfgs:
            if cfg.error and not cfg.rates:
                continue
            run_config_rep(cfg, epochs, sample_memory)
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
        for name, make in settings.items():
            out[name].append(fit_once(make, sizes["fit_epochs"], n))
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
    del fn
    return cfgs


# -- report ---------------------------------------------------------------------------


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
        lat = statistics.median(c.start_latency) * 1e3 if c.start_latency else None
        lines.append(
            f"| {wl} | {c.name} | {fmt_rate(c.rate)} | {rng} | {fmt(ratio(c, ref), '.2f', '×')} | "
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
        "| configuration | peak RSS, main + children (MB) | peak increase over idle (MB) | peak /dev/shm seqify bytes (MB) |",
        "|:--|---:|---:|---:|",
    ]
    for c in cfgs:
        if c.workload != "large_payload" or not c.peak_rss:
            continue
        lines.append(
            f"| {c.name} | {max(c.peak_rss) / 2**20:,.0f} | {max(c.peak_rss_delta) / 2**20:,.0f} | {max(c.peak_shm) / 2**20:,.1f} |"
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


def targets(cfgs, fit, state_cfgs):
    rows = []

    def add(name, value, threshold, op, detail):
        if value is None:
            rows.append((name, "—", threshold, "MISS (no measurement)", detail))
            return
        ok = value >= threshold if op == ">=" else value < threshold
        unit = " ms" if op == "<" else "×"
        rows.append((name, f"{value:.2f}{unit}", f"{op} {threshold}{unit}", "PASS" if ok else "MISS", detail))

    def r(wl, fam, kind, w, base):
        return ratio(find(cfgs, wl, fam, kind, w), base)

    ref = lambda wl: reference(cfgs, wl)  # noqa: E731
    add("GIL-holding work (python_gil): seqify 2 processes vs plain loop", r("python_gil", "seqify", "processes", 2, ref("python_gil")), 1.8, ">=", "")
    add("GIL-releasing numpy (numpy_gil_free): seqify 2 threads vs plain loop", r("numpy_gil_free", "seqify", "threads", 2, ref("numpy_gil_free")), 1.8, ">=", "")
    add("Large payload: seqify 2 processes vs plain loop", r("large_payload", "seqify", "processes", 2, ref("large_payload")), 0.5, ">=", "")
    add("Large payload: seqify 4 processes vs plain loop", r("large_payload", "seqify", "processes", 4, ref("large_payload")), 0.5, ">=", "")
    for w in (2, 4):
        add(f"Large payload: seqify {w} processes vs Keras {w} processes",
            r("large_payload", "seqify", "processes", w, find(cfgs, "large_payload", "keras", "processes", w)), 15, ">=", "")
    for kind in ("threads", "processes"):
        for w in (2, 4):
            add(f"Tiny batches: seqify {w} {kind} vs Keras {w} {kind}",
                r("tiny", "seqify", kind, w, find(cfgs, "tiny", "keras", kind, w)), 4, ">=", "")
    add("Legacy generator (~1 ms/batch, generator-bound): from_generator vs raw loop",
        r("legacy_generator", "seqify", None, None, ref("legacy_generator")), 0.95, ">=", "")
    add("Heavy transform: from_generator, 2 processes vs serial generator+transform loop",
        r("legacy_generator + transform", "seqify", "processes", 2, ref("legacy_generator + transform")), 1.8, ">=", "")
    if fit:
        names = list(fit)
        k = statistics.median(x[0] for x in fit[names[0]])
        s = statistics.median(x[0] for x in fit[names[1]])
        add("End-to-end model.fit: seqify 2 processes vs Keras's best PyDataset", s / k, 1.5, ">=", names[0])
    for c in state_cfgs:
        if c.family == "seqify" and c.start_latency:
            add(f"Epoch 2+ start, 200 MB state, 4 processes: {c.name}", statistics.median(c.start_latency) * 1e3, 50, "<", "")
    lines = ["| target | measured | threshold | result |", "|:--|---:|---:|:--|"]
    for name, value, thr, res, _ in rows:
        lines.append(f"| {name} | {value} | {thr} | **{res}** |")
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
    parser.add_argument("--only", default=None, help="comma-separated sections: workloads,generator,state,fit,transport")
    parser.add_argument("--workloads", default=None, help="comma-separated batch-function workloads (default: all)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sections = set((args.only or "workloads,generator,state,fit,transport").split(","))
    command = " ".join(["python -m benchmarks.run"] + (argv if argv is not None else sys.argv[1:]))
    started = datetime.datetime.now()
    t_start = time.perf_counter()
    faulthandler.dump_traceback_later(1800, exit=True)  # never hang forever
    reps, epochs = sizes["reps"], sizes["epochs"]

    log("\n".join(machine_info(command, started)))
    cfgs, loads, serial_ms = [], {}, {}
    if "workloads" in sections:
        for wl, fn in workloads.BATCH_FNS.items():
            if args.workloads and wl not in args.workloads.split(","):
                continue
            group = batch_fn_configs(wl, fn, sizes["batches"][wl])
            loads[wl] = run_group(wl, group, reps, epochs, sample_memory=(wl == "large_payload"))
            cfgs.extend(group)
    if "generator" in sections:
        group = generator_configs(sizes["gen_batches"], sizes["gen_transform_batches"])
        load = run_group("legacy generator", group, reps, epochs)
        for c in group:
            loads.setdefault(c.workload, load)
        cfgs.extend(group)
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
        results, leftover = bench_transport.measure(
            bench_transport.QUICK_SIZES if args.quick else bench_transport.SIZES,
            blocks=3 if args.quick else 5, verbose=True)
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

    md = ["# seqify benchmark results", "", *machine_info(command, started), f"- Run time: {elapsed:.0f} s", ""]
    md += [
        "How: every configuration is iterated as `fit` iterates it — Keras's `EpochIterator` "
        "(data adapter → `get_numpy_iterator()` → `next` per batch) — except the plain loop and the raw generator. "
        "Each batch is consumed by reading one byte per 4 KiB page of arrays ≥ 64 KiB. Each repetition builds a fresh "
        f"object and runs {epochs} epochs; batches/s is over epochs 2+ (median over {reps} repetitions, interleaved across "
        "configurations); '1st epoch' includes pool start-up. '1st batch, epochs 2+' is the time from asking for the "
        "next epoch to its first batch.",
        "",
    ]
    if cfgs:
        md += ["## Throughput", "", main_table(cfgs, loads, sizes, serial_ms), ""]
    target_md, rows = targets(cfgs, fit, state_cfgs)
    md += ["## Targets", "", target_md, ""]
    if any(c.peak_rss for c in cfgs):
        md += ["## Memory, large_payload (19 MB batches)", "",
               "Sampled every 25 ms; RSS summed over this process and its children (shared pages count once per process).", "",
               memory_table(cfgs), ""]
    if fit:
        md += ["## End-to-end `model.fit` (python_gil, Dense 64→64→1, TensorFlow backend, compiled)", "", fit_table(fit), ""]
    if state_cfgs:
        md += [f"## Epoch start with {sizes['state_mb']} MB of dataset state, 4 process workers", "", state_table(state_cfgs), ""]
    if transport_md:
        md += ["## Transport micro-benchmark (worker → main, one array per round trip)", "", transport_md, ""]
    md += ["## Hygiene", "", shm_table(cfgs + state_cfgs), "",
           f"- seqify segments of this run left in /dev/shm at the end: {shm_files} files, {shm_bytes} bytes",
           f"- Child processes alive at the end: {left_desc}", ""]
    body = "\n".join(md)
    log("\n" + body)
    log("\nTargets: " + "; ".join(f"{name}: {res}" for name, _, _, res, _ in rows))
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
