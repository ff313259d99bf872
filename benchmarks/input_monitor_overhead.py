"""Per-step cost of `seqify.callbacks.InputMonitor` under a real `model.fit`.

Trains the same tiny model on the same tiny batches with and without the
monitor, alternating, and reports the median time per step of each and
their difference. `verbose=0` in both (the progress bar would turn off
Keras's async batch-end dispatch in both runs alike).

    python -m benchmarks.input_monitor_overhead [--steps 3000] [--rounds 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import seqify  # noqa: E402
from seqify.callbacks import InputMonitor  # noqa: E402

_X = np.zeros((32, 4), "float32")
_Y = np.zeros((32, 1), "float32")


def _batch(i):
    return _X, _Y


def _per_step(steps, callbacks):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with seqify.from_batch_fn(_batch, steps, workers=0) as ds:
        model.fit(ds, epochs=1, steps_per_epoch=50, verbose=0, callbacks=callbacks)  # trace, warm
        started = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0, callbacks=callbacks)
        return (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plain, monitored = [], []
    for _ in range(args.rounds):
        plain.append(_per_step(args.steps, []))
        monitored.append(_per_step(args.steps, [InputMonitor(verbose=0, suggest=False)]))
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"backend {keras.backend.backend()}, {args.steps} steps per epoch, medians of {args.rounds} rounds")
    print(f"without monitor: {p * 1e6:8.1f} us/step  (spread {min(plain) * 1e6:.1f}-{max(plain) * 1e6:.1f})")
    print(f"with monitor:    {m * 1e6:8.1f} us/step  (spread {min(monitored) * 1e6:.1f}-{max(monitored) * 1e6:.1f})")
    print(f"overhead:        {(m - p) * 1e6:8.1f} us/step ({(m / p - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
