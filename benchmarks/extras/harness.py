"""Shared set-up of the extras suite (`python -m benchmarks.extras`).

Imported first by every module of the suite: it sets the environment
(TensorFlow logging, one BLAS thread) and imports TensorFlow and Keras
quietly before anything else does. Also here: the run sizes, process
hygiene (children, shared-memory segments, memory sampling) and the gate
that waits for other sessions' CPU load to drop.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# numpy's OpenBLAS would otherwise start one thread per core inside every
# matmul; with 2 cores and several workers they oversubscribe the machine
# (measured: 3 matmuls take 65 ms instead of 5 ms). One thread per kernel
# makes the pipeline's workers the only source of parallelism.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import glob  # noqa: E402
import multiprocessing  # noqa: E402
import multiprocessing.pool  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import psutil  # noqa: E402

from benchmarks.measure import quiet_keras_import  # noqa: E402


def _quiet_import():
    """Imports TensorFlow/Keras (the TF backend here) with native stderr muted."""
    quiet_keras_import()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


tf = _quiet_import()
import keras  # noqa: E402,F401  (imported here, after the environment is set)
from keras.src.trainers.data_adapters import py_dataset_adapter  # noqa: E402
from keras.src.trainers.epoch_iterator import EpochIterator  # noqa: E402,F401  (re-exported)

import seqify  # noqa: E402,F401  (re-exported)

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

