"""Where a large batch's time goes on the TF fit path (docs/design.md, record 27).

    python -m benchmarks.tf_large_arrays [--batches N] [--reps R]

One 19 MB float32 batch `(32, 224, 224, 3)` at a time, in six settings:
building a fresh array on the main thread and on a Python thread (no tf.data
at all); building it on tf.data's generator thread (`from_generator` yields
only a small label, so nothing crosses but the label); and three ways of
handing one to tf.data: recycled aligned buffers (the crossing alone), fresh
arrays as they are (TensorFlow copies them: not aligned), fresh arrays
copied by seqify into recycled aligned buffers (`_Aligned`, what seqify's
TF path does). Prints, per batch, the median over `--reps` passes of wall
ms, process CPU ms, kernel (sys) ms and minor page faults: a fresh 19 MB
block that is new memory costs ~4,700 faults (every 4 KiB page; fewer
where transparent huge pages back it).
"""

import argparse
import os
import resource
import statistics
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from seqify.tf_dataset import _Aligned  # noqa: E402

SHAPE = (32, 224, 224, 3)
LABEL = tf.TensorSpec((32, 1), tf.float32)
BATCH = tf.TensorSpec(SHAPE, tf.float32)


def fresh(i):
    x = np.empty(SHAPE, np.float32)
    x.fill(i)
    return x


def label(i):
    return np.full((32, 1), i, np.float32)


def sample(body, n):
    """(wall ms, CPU ms, sys ms, faults) per batch of one call of `body(n)`."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    body(n)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return (wall / n * 1e3, cpu / n * 1e3, (after.ru_stime - before.ru_stime) / n * 1e3,
            (after.ru_minflt - before.ru_minflt) / n)


def loop(n):
    keep = None
    for i in range(n):
        keep = fresh(i)  # the previous one is freed as the next exists, as in a pipeline
    return keep


def on_thread(n):
    thread = threading.Thread(target=loop, args=(n,))
    thread.start()
    thread.join()


def through_tf(generator, signature):
    @tf.function
    def step(iterator):
        return tf.shape(tf.nest.flatten(next(iterator))[0])[0]

    def body(n):
        iterator = iter(tf.data.Dataset.from_generator(lambda: generator(n), output_signature=signature))
        for _ in range(n):
            step(iterator)

    return body


def built_on_tf_thread(n):
    held = None
    for i in range(n):
        held = fresh(i)  # built where tf.data calls the generator; freed once the next exists
        yield label(i)
    del held


_RECYCLED = _Aligned()


def recycled(n):
    buffers = [_RECYCLED.empty(SHAPE, np.float32) for _ in range(8)]
    for i in range(n):
        yield buffers[i % len(buffers)], label(i)


def fresh_as_is(n):
    for i in range(n):
        yield fresh(i), label(i)


def fresh_aligned(n):
    aligned = _Aligned()
    for i in range(n):
        yield aligned.leaf(fresh(i)), label(i)


ROWS = [
    ("fresh array, main thread (no tf.data)", loop),
    ("fresh array, Python thread (no tf.data)", on_thread),
    ("fresh array, tf.data's generator thread", through_tf(built_on_tf_thread, LABEL)),
    ("recycled aligned buffers into tf.data", through_tf(recycled, (BATCH, LABEL))),
    ("fresh arrays into tf.data (TF copies)", through_tf(fresh_as_is, (BATCH, LABEL))),
    ("fresh arrays + seqify's aligned copy", through_tf(fresh_aligned, (BATCH, LABEL))),
]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{args.batches} batches of {np.prod(SHAPE) * 4 / 1e6:.1f} MB per pass, median of {args.reps} "
          "passes after one warm-up pass; per batch:")
    print(f"| {'setting':42s} | wall ms | CPU ms | sys ms | faults |")
    print(f"|{'-' * 44}|--------:|-------:|-------:|-------:|")
    for name, body in ROWS:
        body(min(args.batches, 20))  # warm-up: tracing, first allocations
        samples = [sample(body, args.batches) for _ in range(args.reps)]
        wall, cpu, sys_ms, faults = (statistics.median(column) for column in zip(*samples))
        print(f"| {name:42s} | {wall:7.2f} | {cpu:6.2f} | {sys_ms:6.2f} | {faults:6.0f} |", flush=True)


if __name__ == "__main__":
    main()
