"""Exactly-once under tf.distribute.MirroredStrategy (run in a subprocess).

Two logical CPU devices must be configured before TensorFlow starts, hence a
script of its own. An unbuilt model compiled in the strategy's scope makes
Keras pull a batch to build it (`_maybe_symbolic_build`) through a
distributed iterator that prefetches. Prints one `RESULT` JSON line: for
each case, the ids the model trained on and the id the object serves next
(== batches consumed when none was lost or repeated).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import seqify  # noqa: E402


def stream():
    i = 0
    while True:
        yield np.full((4, 3), i, "float32"), np.zeros((4, 1), "float32")
        i += 1


def batch(i):
    return np.full((4, 3), i, "float32"), np.zeros((4, 1), "float32")


class Recorder(keras.layers.Layer):
    """Records the batch id each replica sees (run eagerly: concrete values)."""

    def __init__(self, log):
        super().__init__()
        self._record = log.append  # a closure: Keras would wrap a list attribute

    def call(self, x):
        try:
            self._record(int(np.asarray(keras.ops.convert_to_numpy(x)).reshape(-1)[0]))
        except Exception:
            pass  # the symbolic build: no values
        return x


def unbuilt_model(strategy, log):
    with strategy.scope():
        model = keras.Sequential([Recorder(log), keras.layers.Dense(1)])
        model.compile("sgd", "mse", run_eagerly=True)
    return model


def steps(log):
    """One id per step: every replica of a step records the same id."""
    out = []
    for value in log:
        if not out or out[-1] != value:
            out.append(value)
    return out


def next_id(ds):
    return int(next(iter(ds.iter_epoch()))[0][0, 0])


CASES = [
    # name, make, fit kwargs, (consumed, next id)
    ("stream, 2 threads, 2 epochs of 5",
     lambda: seqify.from_generator(stream, steps_per_epoch=5, workers=2), dict(epochs=2), 10),
    ("stream, 2 processes, transform",
     lambda: seqify.from_generator(stream, steps_per_epoch=5, workers=2, use_multiprocessing=True, transform=lambda b: b),
     dict(epochs=2), 10),
    ("stream, fit steps_per_epoch=3 of 6",
     lambda: seqify.from_generator(stream, steps_per_epoch=6, workers=2), dict(epochs=3, steps_per_epoch=3), 9),
    ("stream, fit steps_per_epoch=4 of 6, 1 epoch",
     lambda: seqify.from_generator(stream, steps_per_epoch=6, workers=2), dict(epochs=1, steps_per_epoch=4), 4),
    ("infinite batch fn, 2 processes, fit steps_per_epoch=3",
     lambda: seqify.from_batch_fn(batch, None, workers=2, use_multiprocessing=True), dict(epochs=3, steps_per_epoch=3), 9),
]


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = []
    for name, make, fit_kwargs, expected in CASES:
        log = []
        with make() as ds:
            unbuilt_model(strategy, log).fit(ds, verbose=0, shuffle=False, **fit_kwargs)
            consumed = steps(log)
            after = next_id(ds)
        ok = consumed == list(range(expected)) and after == expected
        results.append({"case": name, "ok": ok, "consumed": consumed, "next": after, "expected": expected})
    print("RESULT " + json.dumps(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
