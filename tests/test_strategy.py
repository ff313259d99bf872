"""Exactly once under tf.distribute.MirroredStrategy with an unbuilt model.

The strategy's distributed iterator prefetches, and Keras keeps its iterator
across epochs when `fit(steps_per_epoch=...)` is shorter than the object's
epoch, then drops it (with what it pulled ahead) when fit ends. Two logical
CPU devices must be set before TensorFlow starts, so the check runs in its
own interpreter (tests/backends/strategy_check.py).
"""

import json
import os
import subprocess
import sys

import pytest

CHECK = os.path.join(os.path.dirname(__file__), "backends", "strategy_check.py")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, CHECK], env=env, capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return {r["case"]: r for r in json.loads(lines[-1][len("RESULT "):])}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", [
    "stream, 2 threads, 2 epochs of 5",
    "stream, 2 processes, transform",
    "stream, fit steps_per_epoch=3 of 6",
    "stream, fit steps_per_epoch=4 of 6, 1 epoch",
    "infinite batch fn, 2 processes, fit steps_per_epoch=3",
])
def test_mirrored_strategy_trains_on_each_batch_once_and_loses_none(results, case):
    result = results[case]
    assert result["consumed"] == list(range(result["expected"])), result
    assert result["next"] == result["expected"], result
