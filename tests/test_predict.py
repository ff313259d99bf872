"""predict() with seqify objects: always the natural batch order."""

import numpy as np
import pytest

import seqify
from conftest import make_batch, recording_model


def test_predict_returns_outputs_in_batch_order():
    model = recording_model()
    with seqify.from_batch_fn(make_batch, 5, workers=2, use_multiprocessing=True) as ds:
        model.predict(ds, verbose=0)
    assert model.predicted == [0, 1, 2, 3, 4]


def test_predict_on_an_explicitly_shuffled_object_runs_in_natural_order():
    model = recording_model()
    x = np.arange(8, dtype="float32").reshape(8, 1).repeat(3, axis=1)
    with seqify.from_arrays(x, np.zeros((8, 1), "float32"), batch_size=4, shuffle=True, seed=0) as ds:
        model.evaluate(ds, verbose=0)
        assert len(model.tested) == 2
        predictions = model.predict(ds, verbose=0)
    # Outputs line up with the inputs: sample k's prediction is row k.
    expected = model.dense(x).numpy() if hasattr(model.dense(x), "numpy") else np.asarray(model.dense(x))
    np.testing.assert_allclose(predictions, expected, rtol=1e-5)
