"""`fit(class_weight=...)` reaches seqify objects, with Keras's PyDataset rules."""

import keras
import numpy as np
import pytest

import seqify


class WeightRecorder(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.weights_seen = []

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        self.weights_seen.append(None if sw is None else np.asarray(sw).tolist())
        return super().train_step(data)


def _labels_batch(i):
    x = np.zeros((4, 2), "float32")
    y = np.array([0, 1, 1, 0], "float32").reshape(4, 1)
    return x, y


def test_class_weight_becomes_per_sample_weights():
    model = WeightRecorder()
    model.compile("sgd", "mse", run_eagerly=True)
    with seqify.from_batch_fn(_labels_batch, 2, workers=2) as ds:
        model.fit(ds, epochs=1, class_weight={0: 1.0, 1: 3.0}, verbose=0, shuffle=False)
    assert model.weights_seen == [[1.0, 3.0, 3.0, 1.0]] * 2


def test_class_weight_with_batches_that_carry_sample_weight_is_an_error():
    model = WeightRecorder()
    model.compile("sgd", "mse", run_eagerly=True)

    def with_weights(i):
        x, y = _labels_batch(i)
        return x, y, np.ones(4, "float32")

    with seqify.from_batch_fn(with_weights, 2) as ds:
        with pytest.raises(ValueError, match="class_weight"):
            model.fit(ds, epochs=1, class_weight={0: 1.0, 1: 3.0}, verbose=0, shuffle=False)


def test_batch_sample_weights_reach_the_model():
    model = WeightRecorder()
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.zeros((4, 2), "float32")
    y = np.zeros((4, 1), "float32")
    sw = np.array([1, 2, 3, 4], "float32")
    with seqify.from_arrays(x, y, sw, batch_size=2) as ds:
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert model.weights_seen == [[1.0, 2.0], [3.0, 4.0]]


def test_y_argument_with_a_seqify_object_is_rejected_clearly():
    model = WeightRecorder()
    model.compile("sgd", "mse")
    with seqify.from_batch_fn(_labels_batch, 2) as ds:
        with pytest.raises(ValueError, match="`y` should not be passed"):
            model.fit(ds, np.zeros(8), verbose=0, shuffle=False)

