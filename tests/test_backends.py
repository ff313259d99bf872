"""seqify under every Keras 3 backend, each in its own process.

A Keras process has exactly one backend, chosen by KERAS_BACKEND before
`import keras`, so each backend runs `tests/backends/backend_check.py` in a
fresh interpreter: fit/evaluate/predict with thread and process workers,
recording which batches the model consumed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

CHECK = os.path.join(os.path.dirname(__file__), "backends", "backend_check.py")


def _run_backend(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        # Two CPU devices, for Keras's DataParallel distribution.
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    proc = subprocess.run(
        [sys.executable, CHECK], env=env, capture_output=True, text=True, timeout=240,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result from the {backend} run (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1][len("RESULT "):])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend,module", [("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")])
def test_every_batch_exactly_once_under_backend(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install '.[{backend}]')")
    returncode, summary = _run_backend(backend)
    assert summary["backend"] == backend
    failed = [r for r in summary["results"] if not r["ok"]]
    assert not failed, json.dumps(failed, indent=1)
    assert returncode == 0
    # JAX and torch runtimes are not fork-safe: seqify must not fork under them.
    expected = "forkserver" if backend in ("jax", "torch") else "fork"
    assert summary["start_method"] == expected
    if backend == "jax":
        assert any("DataParallel" in r["case"] for r in summary["results"])
