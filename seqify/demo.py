"""Demo: train a Keras model from a legacy `while True` generator, in parallel.

Run with `python -m seqify.demo` (options: `--help`). A generator written for
`fit_generator` yields batches; seqify runs it once (one producer) and spreads
a CPU-heavy per-batch augmentation over 4 worker processes. The model records
the id of every batch it trains on, so the demo can check that each batch was
seen exactly once, in stream order, across all epochs.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def legacy_generator(batch_size=32, features=16):
    """What years of Keras code look like: an endless generator of batches."""
    import numpy as np

    batch_id = 0
    rng = np.random.default_rng(0)
    while True:
        x = rng.normal(size=(batch_size, features)).astype("float32")
        x[:, 0] = batch_id  # the batch carries its id, so we can audit fit
        y = (x[:, 1:].sum(axis=1, keepdims=True) > 0).astype("float32")
        yield x, y
        batch_id += 1


def augment(batch, rounds=300):
    """CPU-heavy pure-Python augmentation: the reason to use processes."""
    import numpy as np

    import seqify

    x, y = batch
    rng = seqify.worker_info().rng()  # reproducible per (seed, epoch, batch)
    noise = rng.normal(scale=0.01, size=x[:, 1:].shape).astype("float32")
    acc = 0.0
    for i in range(rounds * len(x)):  # stands in for decoding/cropping images
        acc += (i % 7) * 0.5
    x = x.copy()
    x[:, 1:] += noise + np.float32(acc * 0.0)
    return x, y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="steps_per_epoch")
    args = parser.parse_args(argv)

    import keras

    import seqify

    seen = []

    class Audit(keras.layers.Layer):
        """Records the id of each batch the model trains on (any backend)."""

        def __init__(self):
            super().__init__()
            self._record = seen.append  # a closure: Keras would wrap a list attribute

        def call(self, x, training=None):
            if training:
                self._record(int(keras.ops.convert_to_numpy(x)[0, 0]))
            return x

    model = keras.Sequential([
        keras.Input((16,)), Audit(), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy", run_eagerly=True)

    with seqify.from_generator(
        legacy_generator, steps_per_epoch=args.steps, transform=augment, workers=args.workers,
        use_multiprocessing=True, seed=0,
    ) as data:
        start = time.perf_counter()
        history = model.fit(data, epochs=args.epochs, verbose=0)
        elapsed = time.perf_counter() - start

    total = args.epochs * args.steps
    print(f"trained {args.epochs} epochs x {args.steps} steps from a legacy generator "
          f"with {args.workers} process workers (Keras {keras.__version__}, {keras.backend.backend()} backend)")
    print(f"loss: {history.history['loss'][0]:.4f} -> {history.history['loss'][-1]:.4f}")
    print(f"throughput: {total / elapsed:.1f} batches/s ({elapsed:.2f} s for {total} batches)")
    if seen == list(range(total)):
        print(f"each batch seen exactly once: {total} batches, in stream order")
        return 0
    print(f"ERROR: batches were not seen exactly once: {seen}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
