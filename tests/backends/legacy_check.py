"""Runs with TF_USE_LEGACY_KERAS=1 (see tests/test_legacy_keras.py).

Trains tf_keras (Keras 2) models on seqify objects, with worker settings given
Keras-2 style to fit() and Keras-3 style to the seqify constructor, and prints
one JSON line with which batches each run consumed and any warnings.
"""

import json
import os
import sys
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

import seqify  # noqa: E402
from _batches import identity, make_batch, stream  # noqa: E402  (this folder)


class Recording(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)
        self.seen = []

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        self.seen.append(int(data[0].numpy().reshape(-1)[0]))
        return super().train_step(data)


def run(name, make, fit_kwargs, expected):
    model = Recording()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make() as data:
            model.fit(data, epochs=2, verbose=0, **fit_kwargs, shuffle=False)
            settings = [data.workers, data.use_multiprocessing]
    own = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    return {"case": name, "ok": model.seen == expected and not own, "seen": model.seen, "warnings": own, "settings": settings}


def main():
    keras_module = tf.keras.Model.__module__
    results = [
        run("batch_fn, workers given to fit (Keras 2 style)",
            lambda: seqify.from_batch_fn(make_batch, 5),
            {"workers": 4, "use_multiprocessing": True}, list(range(5)) * 2),
        run("batch_fn, workers given to seqify (Keras 3 style)",
            lambda: seqify.from_batch_fn(make_batch, 5, workers=2, use_multiprocessing=True),
            {}, list(range(5)) * 2),
        run("from_generator replaces fit_generator, workers to fit",
            lambda: seqify.from_generator(stream, steps_per_epoch=4, transform=identity),
            {"workers": 2, "use_multiprocessing": True}, list(range(8))),
        run("from_generator, threads to seqify",
            lambda: seqify.from_generator(stream, steps_per_epoch=3, transform=identity, workers=2),
            {}, list(range(6))),
    ]
    print("RESULT " + json.dumps({"keras": keras_module, "results": results}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
