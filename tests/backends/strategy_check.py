"""Exactly-once under tf.distribute.MirroredStrategy (run in a subprocess).

Two logical CPU devices must be configured before TensorFlow starts, hence a
script of its own. An unbuilt model compiled in the strategy's scope makes
Keras pull a batch to build it (`_maybe_symbolic_build`) through a
distributed iterator that prefetches. Prints one JSON line: for each case,
the id of the next stream batch after training (== batches consumed when
none was lost) and the expected value.
"""

import json
import os

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


def unbuilt_model(strategy):
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    return model


def next_id(ds):
    return int(next(iter(ds))[0][0, 0])


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = []
    for name, kwargs, fit_kwargs, expected in [
        ("stream, 2 threads, 2 epochs of 5", dict(workers=2), dict(epochs=2), 10),
        ("stream, 2 processes, transform", dict(workers=2, use_multiprocessing=True, transform=lambda b: b), dict(epochs=2), 10),
        ("stream, fit steps_per_epoch=3 of 6", dict(workers=2), dict(epochs=3, steps_per_epoch=3), 9),
    ]:
        steps = 6 if "steps_per_epoch" in fit_kwargs else 5
        with seqify.from_generator(stream, steps_per_epoch=steps, **kwargs) as ds:
            unbuilt_model(strategy).fit(ds, verbose=0, **fit_kwargs)
            results.append({"case": name, "next": next_id(ds), "expected": expected})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
