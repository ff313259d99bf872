"""InputMonitor: the share of fit's step time spent waiting for data.

Both pipelines are far from the thresholds: a 40 ms sleep per batch under a
model step of a few ms (input-bound), and instantly built batches under a
step that takes 30 ms (compute-bound).
"""

import re
import time

import keras
import pytest

import seqify
from seqify.callbacks import InputMonitor
from tests.conftest import make_batch


def slow_batch(i):
    time.sleep(0.04)
    return make_batch(i)


class SlowStepModel(keras.Model):
    """A tiny model whose training step takes 30 ms (stands for real compute)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        time.sleep(0.03)
        return super().train_step(data)


def tiny_model(step_cls=keras.Model):
    if step_cls is SlowStepModel:
        model = SlowStepModel()
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
        return model
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_sleeping_pipeline_is_reported_input_bound():
    monitor = InputMonitor(verbose=0)
    ds = seqify.from_batch_fn(slow_batch, 8, workers=0)
    history = tiny_model().fit(ds, epochs=2, callbacks=[monitor], verbose=0)
    fractions = history.history["input_wait_fraction"]
    assert len(fractions) == 2
    assert all(f > 0.5 for f in fractions), fractions
    assert monitor.fractions == fractions
    ds.close()


def test_input_bound_hint_names_the_measured_setting_once_per_fit():
    monitor = InputMonitor(verbose=0)
    ds = seqify.from_batch_fn(slow_batch, 6, workers=0)
    tiny_model().fit(ds, epochs=2, callbacks=[monitor], verbose=0)
    assert len(monitor.hints) == 2
    for hint in monitor.hints:
        # The sleep releases the GIL: threads, however many cores.
        assert re.match(r"input-bound: \d+% of step time waiting for data; seqify\.check\(ds\) suggests "
                        r"workers=\d+, use_multiprocessing=False", hint), hint
    ds.close()


def test_compute_bound_pipeline_reports_little_wait():
    monitor = InputMonitor(verbose=0)
    ds = seqify.from_batch_fn(make_batch, 8, workers=1)
    history = tiny_model(SlowStepModel).fit(ds, epochs=2, callbacks=[monitor], verbose=0)
    fractions = history.history["input_wait_fraction"]
    assert all(f < 0.3 for f in fractions), fractions
    assert monitor.hints == []
    ds.close()


def test_validation_time_is_not_counted():
    monitor = InputMonitor(verbose=0)
    train = seqify.from_batch_fn(make_batch, 4, workers=0)
    val = seqify.from_batch_fn(slow_batch, 4, workers=0)  # slow, but only validation
    history = tiny_model(SlowStepModel).fit(train, validation_data=val, epochs=1, callbacks=[monitor], verbose=0)
    assert history.history["input_wait_fraction"][0] < 0.3
    train.close()
    val.close()


def test_other_inputs_count_the_time_between_steps():
    # Keras's JAX and PyTorch loops fetch the next batch between steps; here
    # the loop is driven by hand: 20 ms outside each step, 5 ms inside.
    monitor = InputMonitor(verbose=0)
    monitor.on_train_begin()
    monitor.on_epoch_begin(0)
    for step in range(5):
        time.sleep(0.02)
        monitor.on_train_batch_begin(step)
        time.sleep(0.005)
        monitor.on_train_batch_end(step)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert 0.6 < logs["input_wait_fraction"] <= 1.0
    assert monitor.hints and "wrap the input with seqify" in monitor.hints[0]


@pytest.mark.parametrize("threshold", [0, 1.5, "0.5", True])
def test_bad_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match="`threshold`"):
        InputMonitor(threshold=threshold)
