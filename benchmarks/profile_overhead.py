"""Where does seqify's per-batch time go? cProfile of one steady-state epoch.

    python -m benchmarks.profile_overhead [CASE ...] [--batches N] [--top K]

Cases: tiny-threads, tiny-processes, cheap-generator, legacy-generator,
large-processes, python-processes, python-threads, numpy-threads,
transform-processes
(default: all).
Each case builds the seqify object, runs one warm-up epoch through Keras's
EpochIterator (pool start-up), then reports for one more epoch: wall time and
main-process CPU time per batch (the consuming side), and the functions with
the most self time under cProfile (profiling the main thread only; worker
threads and processes are not profiled, so their cost shows up as waiting).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

from benchmarks.extras import EpochIterator, seqify  # noqa: E402  (quiet TF import)
from benchmarks import workloads  # noqa: E402
from benchmarks.workloads import consume  # noqa: E402

CASES = {
    "tiny-threads": (lambda n: seqify.from_batch_fn(workloads.tiny, n, workers=2), 4000),
    "tiny-processes": (lambda n: seqify.from_batch_fn(workloads.tiny, n, workers=2, use_multiprocessing=True), 4000),
    "cheap-generator": (lambda n: seqify.from_generator(workloads.cheap_generator, steps_per_epoch=n), 4000),
    "legacy-generator": (lambda n: seqify.from_generator(workloads.legacy_generator, steps_per_epoch=n), 400),
    "large-processes": (lambda n: seqify.from_batch_fn(workloads.large_payload, n, workers=2, use_multiprocessing=True), 100),
    "python-processes": (lambda n: seqify.from_batch_fn(workloads.python_gil, n, workers=2, use_multiprocessing=True), 100),
    "python-threads": (lambda n: seqify.from_batch_fn(workloads.python_gil, n, workers=2), 100),
    "numpy-threads": (lambda n: seqify.from_batch_fn(workloads.numpy_gil_free, n, workers=2), 200),
    "transform-processes": (lambda n: seqify.from_generator(workloads.legacy_generator, steps_per_epoch=n, transform=workloads.heavy_transform,
                                                            workers=2, use_multiprocessing=True), 200),
}


def epoch(it):
    count = 0
    for _begin, _end, buffer in it:
        for batch in buffer:
            consume(batch)
            count += 1
    return count


def profile(case, n=None, top=15):
    make, default_n = CASES[case]
    n = n or default_n
    ds = make(n)
    try:
        it = EpochIterator(x=ds, steps_per_epoch=None, shuffle=False)
        it.reset()
        epoch(it)  # warm-up: pool start
        t0, c0 = time.perf_counter(), time.process_time()
        epoch(it)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        prof = cProfile.Profile()
        prof.enable()
        epoch(it)
        prof.disable()
    finally:
        ds.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    body = text[text.index("ncalls"):] if "ncalls" in text else text
    print(f"\n### {case}: {n / wall:,.0f} batches/s; per batch {wall / n * 1e6:,.1f} us wall, "
          f"{cpu / n * 1e6:,.1f} us main-process CPU (unprofiled epoch)\n")
    print(body.rstrip())


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for case in args.cases:
        profile(case, args.batches, args.top)


if __name__ == "__main__":
    main()
