"""predict() with seqify objects: batch order, and shuffled objects refused."""

import numpy as np
import pytest

import seqify
from conftest import make_batch, recording_model


def test_predict_returns_outputs_in_batch_order():
    model = recording_model()
    with seqify.from_batch_fn(make_batch, 5, workers=2, use_multiprocessing=True) as ds:
        model.predict(ds, verbose=0)
    assert model.predicted == [0, 1, 2, 3, 4]


def test_predict_on_a_shuffled_object_is_an_error_but_evaluate_is_fine():
    model = recording_model()
    x = np.arange(8, dtype="float32").reshape(8, 1).repeat(3, axis=1)
    with seqify.from_arrays(x, np.zeros((8, 1), "float32"), batch_size=4, shuffle=True, seed=0) as ds:
        model.evaluate(ds, verbose=0)
        assert len(model.tested) == 2
        with pytest.raises(ValueError, match="shuffle=False"):
            model.predict(ds, verbose=0)
