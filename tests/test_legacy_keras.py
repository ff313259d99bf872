"""Legacy Keras 2 (tf_keras) trains on seqify objects, exactly once, no warning.

Runs `tests/backends/legacy_check.py` in a fresh interpreter with
TF_USE_LEGACY_KERAS=1, since `tf.keras` is bound at first import.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

CHECK = os.path.join(os.path.dirname(__file__), "backends", "legacy_check.py")


@pytest.mark.timeout(300)
def test_tf_keras_fit_consumes_each_batch_once_with_keras2_and_keras3_worker_styles():
    if importlib.util.find_spec("tf_keras") is None:
        pytest.skip("tf_keras is not installed (pip install '.[legacy]')")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, CHECK], env=env, capture_output=True, text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    summary = json.loads(lines[-1][len("RESULT "):])
    assert summary["keras"].startswith("tf_keras"), summary["keras"]
    failed = [r for r in summary["results"] if not r["ok"]]
    assert not failed, json.dumps(failed, indent=1)
    by_case = {r["case"]: r for r in summary["results"]}
    # Keras-2-style fit(workers=4, use_multiprocessing=True) reached the object.
    assert by_case["batch_fn, workers given to fit (Keras 2 style)"]["settings"] == [4, True]
    assert proc.returncode == 0
