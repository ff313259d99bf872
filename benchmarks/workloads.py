"""Batch functions, generators and dataset classes the benchmarks run.

Everything here is module-level so that it pickles by reference (seqify's
process workers, Keras's process pools). Importing this module does not
import TensorFlow or Keras; the Keras classes live in `benchmarks.run`.

Work sizes are fixed constants (not auto-calibrated) so that numbers are
comparable between runs; `run.py` prints the measured serial cost per batch
next to every workload.
"""

import numpy as np

from seqify.buffers import empty

# -- tiny: per-batch overhead ------------------------------------------------


def tiny(i):
    """Two (8, 4) float32 arrays, next to no work."""
    x = np.full((8, 4), i, np.float32)
    return x, x


# -- numpy_gil_free: numpy kernels that release the GIL -----------------------
# Three float32 512x512 matmuls (~0.8 GFLOP). BLAS is pinned to one thread by
# run.py (OPENBLAS_NUM_THREADS=1) so the kernel is single-threaded and
# parallelism comes only from the pipeline's workers.
_MAT = np.random.default_rng(0).random((512, 512), dtype=np.float32) / 256.0
MATMULS = 3


def numpy_gil_free(i):
    x = _MAT
    for _ in range(MATMULS):
        x = _MAT @ x
    return np.ascontiguousarray(x[:32, :64]), np.full((32, 1), i, np.float32)


# -- python_gil: pure-Python work that holds the GIL --------------------------
PY_LOOP = 110_000


def burn_python(n):
    s = 0
    for k in range(n):
        s += k * k % 7
    return s


def python_gil(i):
    s = burn_python(PY_LOOP)
    x = np.full((32, 64), (i + s) % 97, np.float32)
    return x, np.full((32, 1), i, np.float32)


# -- large_payload: one 19 MB image batch, built cheaply -----------------------
LARGE_SHAPE = (32, 224, 224, 3)


def large_payload(i):
    x = np.empty(LARGE_SHAPE, np.float32)
    x.fill(i)
    return x, np.full((32, 1), i, np.float32)


def large_recycled(i):
    """`large_payload` built in `seqify.empty`: recycled, 64-byte-aligned memory."""
    x = empty(LARGE_SHAPE, np.float32)
    x.fill(i)
    return x, np.full((32, 1), i, np.float32)


BATCH_FNS = {
    "tiny": tiny,
    "numpy_gil_free": numpy_gil_free,
    "python_gil": python_gil,
    "large_payload": large_payload,
    "large_recycled": large_recycled,
}

# -- legacy_generator: a `while True` fit_generator-style generator ------------
GEN_LOOP = 18_000  # ~1 ms of pure Python per batch: the generator is the bottleneck
TRANSFORM_LOOP = PY_LOOP  # heavy transform, same cost as python_gil


def legacy_generator(work=GEN_LOOP):
    """Infinite stream of (32, 16) batches; `work` Python iterations each."""
    i = 0
    while True:
        s = burn_python(work) if work else 0
        x = np.full((32, 16), (i + s) % 97, np.float32)
        yield x, np.full((32, 1), i, np.float32)
        i += 1


def cheap_generator():
    """The same stream with no work at all: measures pure per-batch overhead."""
    return legacy_generator(0)


def heavy_transform(batch):
    """Pure-Python transform holding the GIL, ~python_gil's cost."""
    x, y = batch
    s = burn_python(TRANSFORM_LOOP)
    return x + np.float32(s % 3), y


# -- ~200 MB of dataset state ---------------------------------------------------


class StatefulFn:
    """A batch function whose object holds a large numpy array (real pages)."""

    def __init__(self, megabytes):
        self.state = np.ones(int(megabytes * (1 << 20)) // 4, np.float32)

    def __call__(self, i):
        x = self.state[i * 32:(i + 1) * 32].reshape(8, 4).copy()
        return x, x


# -- consumer -------------------------------------------------------------------
PAGE = 4096


def consume(batch):
    """What a training step minimally does with a batch: read every page.

    Arrays under 64 KiB are left alone (already resident wherever they came
    from). For larger ones one byte per 4 KiB page is read, which faults in
    lazily mapped memory (shared-memory batches) the way copying into a
    tensor would, without adding the copy itself to every configuration.
    """
    if isinstance(batch, dict):
        batch = tuple(batch.values())
    total = 0
    for leaf in batch:
        if isinstance(leaf, (tuple, list, dict)):
            total += consume(leaf)
            continue
        a = np.asarray(leaf)
        if a.nbytes >= 65536 and a.flags.c_contiguous:
            total += int(a.reshape(-1).view(np.uint8)[::PAGE].sum())
    return total


# -- ideal ceiling: the work split over bare workers, no pipeline at all ----------


def run_chunk(args):
    """Builds and consumes batches start..stop-1 of `fn` (for the ceiling runs)."""
    fn, start, stop = args
    for i in range(start, stop):
        consume(fn(i))
    return stop - start


def run_transform_chunk(args):
    """Generates and transforms `count` stream batches (for the ceiling runs)."""
    count, = args
    gen = legacy_generator()
    for _ in range(count):
        consume(heavy_transform(next(gen)))
    return count
