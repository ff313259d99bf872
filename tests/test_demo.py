"""The README's main job: `python -m seqify.demo` trains and audits its batches."""

import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
def test_demo_trains_from_a_legacy_generator_and_sees_each_batch_once():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "seqify.demo", "--epochs", "2", "--steps", "6", "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "each batch seen exactly once: 12 batches, in stream order" in proc.stdout
    assert "batches/s" in proc.stdout
