"""Fixtures for the engine tests."""

import pytest


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
