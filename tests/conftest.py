"""Shared test helpers: a Keras model that records which batches fit consumed."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import glob

import keras
import numpy as np
import pytest

import seqify


# Worker settings and fit() shuffle settings every adapter is trained under.
WORKER_SETTINGS = [
    pytest.param(workers, use_mp, id=f"{'processes' if use_mp else 'threads'}-{workers}")
    for use_mp in (False, True)
    for workers in (1, 2, 4)
]
FIT_SHUFFLE = [
    pytest.param({}, id="fit-defaults"),  # fit's shuffle=True default
    pytest.param({"shuffle": False}, id="fit-shuffle-False"),
]


def make_batch(i, batch_size=4, features=3):
    """Batch `i` carries its own id in every x value; y is zeros."""
    x = np.full((batch_size, features), i, dtype="float32")
    return x, np.zeros((batch_size, 1), dtype="float32")


class Plain(seqify.Sequence):
    """A user's seqify.Sequence subclass with no hooks: batch i has id i."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return make_batch(index)


def expected_epochs(seed, n, epochs, fit_kwargs):
    """The batch order of each epoch under `fit(**fit_kwargs)` for an object
    that leaves shuffling to fit: Keras shuffles under fit's default
    shuffle=True, drawn here from (seed, epoch)."""
    from seqify.source import batch_order

    shuffled = fit_kwargs.get("shuffle", True)
    return [[int(i) for i in batch_order(seed, epoch, n, shuffled)] for epoch in range(epochs)]


def batch_ids(batches):
    return [int(np.asarray(b[0] if not isinstance(b, dict) else b["x"]).reshape(-1)[0]) for b in batches]


class RecordingModel(keras.Model):
    """Tiny model whose train/test/predict steps record the id of each batch.

    Compiled with run_eagerly=True so the steps see concrete values.
    """

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.trained = []
        self.tested = []
        self.predicted = []

    def call(self, x):
        if isinstance(x, dict):
            x = x["x"]
        return self.dense(x)

    @staticmethod
    def _id(data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(x, dict):
            x = x["x"]
        return int(np.asarray(x).reshape(-1)[0])

    def train_step(self, data):
        self.trained.append(self._id(data))
        return super().train_step(data)

    def test_step(self, data):
        self.tested.append(self._id(data))
        return super().test_step(data)

    def predict_step(self, data):
        self.predicted.append(self._id(data))
        return super().predict_step(data)


def recording_model():
    model = RecordingModel()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    return model


@pytest.fixture
def model():
    return recording_model()


def seqify_shm_segments():
    """seqify segments owned by this process or by a process that is gone.

    Segments of other live processes (a concurrent test run, say) are
    in flight, not leaked, and are ignored.
    """
    import psutil

    names = []
    for path in glob.glob("/dev/shm/seqify-*"):
        name = os.path.basename(path)
        try:
            owner = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue  # not a pool's segment (e.g. a transport unit test's own prefix)
        if owner == os.getpid() or not psutil.pid_exists(owner):
            names.append(name)
    return sorted(names)


@pytest.fixture(autouse=True)
def no_leaked_shared_memory():
    """Every test must leave /dev/shm as it found it (seqify segments only)."""
    before = set(seqify_shm_segments())
    yield
    import gc

    gc.collect()
    leaked = set(seqify_shm_segments()) - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


# -- helpers for the behaviour tests (adapters, pickling, keras integration) --

import contextlib
import re
import warnings


def split_epochs(ids, per_epoch):
    """Splits a flat list of recorded ids into consecutive epochs."""
    assert len(ids) % per_epoch == 0, f"{len(ids)} ids do not split into epochs of {per_epoch}: {ids}"
    return [list(ids[k : k + per_epoch]) for k in range(0, len(ids), per_epoch)]


def _is_framework_deprecation(w):
    return issubclass(w.category, DeprecationWarning) and re.search(r"[/\\](tensorflow|keras|tf_keras)[/\\]", w.filename or "")


@contextlib.contextmanager
def assert_no_warnings():
    """Fails if anything but a tensorflow/keras-internal DeprecationWarning is warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    relevant = [w for w in caught if not _is_framework_deprecation(w)]
    assert not relevant, "unexpected warnings:\n" + "\n".join(
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in relevant
    )
