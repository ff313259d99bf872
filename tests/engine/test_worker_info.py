"""worker_info() and the per-batch seeding of the global RNGs in process workers."""

import random

import numpy as np
import pytest

import seqify
from seqify.engine.worker_info import seed_global_rngs
from . import _workfns as wf
from ._support import epoch

SEED = 77
PROCESS_SETTINGS = {
    "fork-2": dict(workers=2, use_multiprocessing=True, start_method="fork"),
    "spawn-2": dict(workers=2, use_multiprocessing=True, start_method="spawn"),
    "fork-3": dict(workers=3, use_multiprocessing=True, start_method="fork"),
}


def _draws(closing, settings, epochs=1):
    ds = closing(seqify.from_batch_fn(wf.global_rng_batch, 16, seed=SEED, max_queue_size=4, **settings))
    rows = [np.stack([b[0] for b in epoch(ds)]) for _ in range(epochs)]
    for got in rows:
        assert list(got[:, 0]) == list(range(16))
    return rows


@pytest.fixture(scope="module")
def fork_two_epochs():
    objects = []
    rows = _draws(lambda ds: objects.append(ds) or ds, PROCESS_SETTINGS["fork-2"], epochs=2)
    for ds in objects:
        ds.close()
    return rows


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", ["spawn-2", "fork-3"])
def test_global_rngs_give_each_batch_the_same_numbers_whatever_the_process_workers(name, fork_two_epochs, closing):
    np.random.seed(0)  # what a Keras script does; forked workers inherit it
    random.seed(0)
    reference = fork_two_epochs[0]
    got = _draws(closing, PROCESS_SETTINGS[name])[0]
    assert np.array_equal(got[:, 1:3], reference[:, 1:3])


def test_global_rngs_differ_for_every_batch_of_an_epoch(fork_two_epochs):
    first = fork_two_epochs[0]
    assert len(set(first[:, 1])) == 16  # np.random.rand()
    assert len(set(first[:, 2])) == 16  # random.random()


def test_global_rngs_differ_between_epochs(fork_two_epochs):
    first, second = fork_two_epochs
    assert not set(first[:, 1]) & set(second[:, 1])
    assert not set(first[:, 2]) & set(second[:, 2])


def test_global_rng_streams_are_not_worker_info_rng_streams(fork_two_epochs):
    first = fork_two_epochs[0]
    assert not set(first[:, 1]) & set(first[:, 3])


@pytest.mark.timeout(60)
def test_inline_batches_leave_the_callers_global_rngs_alone(closing):
    # workers=0 runs on the caller's thread: its global RNGs are the user's.
    np.random.seed(5)
    expected = [np.random.rand() for _ in range(16)]
    np.random.seed(5)
    ds = closing(seqify.from_batch_fn(wf.global_rng_batch, 16, seed=SEED, workers=0))
    got = np.stack([b[0] for b in epoch(ds)])
    assert list(got[:, 1]) == expected


def test_seeding_depends_on_seed_epoch_and_index_only():
    seed_global_rngs(1, 2, 3)
    first = (np.random.rand(), random.random(), np.random.randn())
    random.gauss(0, 1)  # leaves a cached second normal deviate behind
    seed_global_rngs(1, 2, 3)
    assert (np.random.rand(), random.random(), np.random.randn()) == first
    seed_global_rngs(1, 2, 3)
    random.random()
    g = random.gauss(0, 1)
    seed_global_rngs(1, 2, 3)
    random.random()
    assert random.gauss(0, 1) == g  # the cached deviate does not leak across batches
    draws = set()
    for key in [(1, 2, 4), (1, 3, 3), (2, 2, 3)]:
        seed_global_rngs(*key)
        draws.add(np.random.rand())
    assert len(draws | {first[0]}) == 4


def _same_info_twice(i):
    first, second = seqify.worker_info(), seqify.worker_info()
    return (np.array([first is second, isinstance(first, seqify.WorkerInfo), first.index == i]),)


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "threads-2"])
def test_worker_info_is_one_worker_info_per_batch_and_none_outside(workers, closing):
    ds = closing(seqify.from_batch_fn(_same_info_twice, 6, workers=workers))
    assert all(bool(b[0].all()) for b in epoch(ds))
    assert seqify.worker_info() is None
