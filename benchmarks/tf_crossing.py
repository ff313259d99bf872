"""What one tf.data -> Python crossing costs (the design of seqify/tf_dataset.py).

    python -m benchmarks.tf_crossing [--batches N]

Steps 3 datasets of identical (8, 4) float32 pairs through a `tf.function`
that calls `next(iterator)` (as Keras's TF train step does): built in the
graph (no crossing), `from_generator` yielding one batch per element (one
crossing per batch), and `from_generator` yielding chunks of 64 that
`unbatch` splits (one crossing per 64 batches). Prints µs per batch, best
of 5; the difference between the first two is the crossing.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def per_batch(dataset, n, reps=5):
    @tf.function
    def step(iterator):
        return tf.shape(tf.nest.flatten(next(iterator))[0])[0]

    best = float("inf")
    for _ in range(reps):
        iterator = iter(dataset)
        started = time.perf_counter()
        for _ in range(n):
            step(iterator)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3000)
    n = parser.parse_args(argv).batches
    x = np.zeros((8, 4), np.float32)
    spec = (tf.TensorSpec([None, 4], tf.float32),) * 2
    graph = tf.data.Dataset.from_tensors((x, x)).repeat(n)

    def one():
        for _ in range(n):
            yield x, x

    chunk = np.zeros((64, 8, 4), np.float32)

    def chunks():
        for _ in range(-(-n // 64)):
            yield chunk, chunk

    chunk_spec = (tf.TensorSpec([None, None, 4], tf.float32),) * 2
    per = tf.data.Dataset.from_generator(one, output_signature=spec)
    chunked = tf.data.Dataset.from_generator(chunks, output_signature=chunk_spec).unbatch()
    g, p, c = per_batch(graph, n), per_batch(per, n), per_batch(chunked, n)
    print(f"in-graph dataset:            {g:7.1f} us/batch")
    print(f"from_generator, 1 per call:  {p:7.1f} us/batch  (crossing ~ {p - g:.1f} us)")
    print(f"from_generator, 64 per call: {c:7.1f} us/batch  (crossing per batch ~ {c - g:.1f} us)")


if __name__ == "__main__":
    main()
