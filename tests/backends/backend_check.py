"""Runs in its own process with KERAS_BACKEND set (see tests/test_backends.py).

Trains, evaluates and predicts with seqify objects on thread and process
workers, recording which batches the model consumed, and prints one JSON line
with the findings. Exit status 0 means every check held.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import seqify  # noqa: E402
from _batches import identity, make_batch, stream  # noqa: E402  (this folder)


class Recorder(keras.layers.Layer):
    """Records the id of each concrete batch that flows through the model."""

    def __init__(self, log):
        super().__init__()
        # A closure, not an attribute: Keras would wrap a list attribute.
        self._record = log.append

    def call(self, x):
        try:
            self._record(int(np.asarray(keras.ops.convert_to_numpy(x)).reshape(-1)[0]))
        except Exception:
            pass  # symbolic build pass: no concrete values
        return x


def build_model(log):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(Recorder(log)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    return model


def check(name, make, expected_fit, expected_eval, expected_predict):
    log = []
    model = build_model(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make() as data:
            log.clear()
            model.fit(data, epochs=2, verbose=0, shuffle=False)
            fitted = list(log)
            log.clear()
            model.evaluate(data, verbose=0)
            evaluated = list(log)
            log.clear()
            predictions = model.predict(data, verbose=0)
            predicted = list(log)
    own = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    ok = fitted == expected_fit and evaluated == expected_eval and predicted == expected_predict and not own
    ok = ok and predictions.shape[0] == 4 * len(expected_predict)
    return {"case": name, "ok": ok, "fit": fitted, "evaluate": evaluated, "predict": predicted, "warnings": own}


def check_spanning_stream(name, **kwargs):
    """An unbuilt model (Keras pulls a batch to build it) and fit steps that
    span the object's epochs: Keras keeps its iterator across epochs and
    drops it, with whatever it pulled ahead, when fit ends."""
    log = []
    model = keras.Sequential([Recorder(log), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    with seqify.from_generator(stream, steps_per_epoch=6, **kwargs) as data:
        model.fit(data, epochs=3, steps_per_epoch=4, verbose=0)
        fitted = [v for i, v in enumerate(log) if i == 0 or log[i - 1] != v]  # one id per step
        after = int(next(iter(data.iter_epoch()))[0][0, 0])
    # Keras: epoch 1 takes 4, epoch 2 the remaining 2 of the object's epoch
    # (and warns it ran out), epoch 3 takes 4 of a fresh iterator.
    expected = list(range(10))
    return {"case": name, "ok": fitted == expected and after == 10, "fit": fitted, "next": after}


def main():
    backend = keras.backend.backend()
    results = []
    for mp in (False, True):
        results.append(check(
            f"from_batch_fn workers=2 mp={mp}",
            lambda: seqify.from_batch_fn(make_batch, 5, workers=2, use_multiprocessing=mp),
            list(range(5)) * 2, list(range(5)), list(range(5)),
        ))
        results.append(check(
            f"from_generator transform workers=2 mp={mp}",
            lambda: seqify.from_generator(stream, steps_per_epoch=4, transform=identity, workers=2, use_multiprocessing=mp),
            list(range(8)), list(range(8, 12)), list(range(12, 16)),
        ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras's own "ran out of data"
        results.append(check_spanning_stream("stream across fit epochs, unbuilt model, processes",
                                              workers=2, use_multiprocessing=True, transform=identity))
    if backend == "jax" and len(keras.distribution.list_devices("cpu")) >= 2:
        # Keras 3's own distribution API: data parallel over two CPU devices
        # (XLA_FLAGS=--xla_force_host_platform_device_count=2).
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu")[:2]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append(check_spanning_stream("jax DataParallel, stream across fit epochs, unbuilt model", workers=2))
            results.append(check(
                "jax DataParallel over 2 devices, processes",
                lambda: seqify.from_batch_fn(make_batch, 5, workers=2, use_multiprocessing=True),
                list(range(5)) * 2, list(range(5)), list(range(5)),
            ))
        finally:
            keras.distribution.set_distribution(None)
    from seqify.start_methods import default_start_method

    summary = {"backend": backend, "start_method": default_start_method(), "results": results}
    print("RESULT " + json.dumps(summary))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
