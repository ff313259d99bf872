"""Fixtures for the engine tests."""

import gc
import os

import pytest

from ._support import OWNED_PIDS, shm


@pytest.fixture
def closing():
    """`closing(obj)` returns obj and closes it when the test ends, pass or fail."""
    objects = []

    def track(obj):
        objects.append(obj)
        return obj

    yield track
    for obj in reversed(objects):
        obj.close()


def _ours():
    pids = {os.getpid(), *OWNED_PIDS}
    return {name for name in shm() if name.split("-")[1].isdigit() and int(name.split("-")[1]) in pids}


@pytest.fixture(autouse=True)
def no_leaked_shared_memory():
    """Overrides tests/conftest.py's check with one scoped to this test run.

    Same rule (a test must leave /dev/shm as it found it), but counting only
    segments named after this process or a subprocess a test started
    (`OWNED_PIDS`): other programs on the machine (benchmarks, other test
    runs) create and remove seqify segments of their own meanwhile.
    """
    before = _ours()
    yield
    gc.collect()
    leaked = _ours() - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
