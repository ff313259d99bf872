"""Shared test helpers: a Keras model that records which batches fit consumed."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import glob

import keras
import numpy as np
import pytest


def make_batch(i, batch_size=4, features=3):
    """Batch `i` carries its own id in every x value; y is zeros."""
    x = np.full((batch_size, features), i, dtype="float32")
    return x, np.zeros((batch_size, 1), dtype="float32")


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
    return sorted(os.path.basename(p) for p in glob.glob("/dev/shm/seqify-*"))


@pytest.fixture(autouse=True)
def no_leaked_shared_memory():
    """Every test must leave /dev/shm as it found it (seqify segments only)."""
    before = set(seqify_shm_segments())
    yield
    import gc

    gc.collect()
    leaked = set(seqify_shm_segments()) - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
