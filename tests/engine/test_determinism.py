"""Reproducibility: same seed, same epochs, whatever the workers; worker_info()."""

import numpy as np
import pytest

import seqify
from seqify.engine import window
from . import _workfns as wf
from ._support import epoch, ids

SEED = 1234
# workers x {threads, processes}; workers=0 builds on the calling thread.
CONFIGS = {
    "0-threads": dict(workers=0, use_multiprocessing=False),
    "0-processes": dict(workers=0, use_multiprocessing=True),
    "1-threads": dict(workers=1, use_multiprocessing=False),
    "2-threads": dict(workers=2, use_multiprocessing=False),
    "1-processes": dict(workers=1, use_multiprocessing=True, start_method="fork"),
    "2-processes": dict(workers=2, use_multiprocessing=True, start_method="fork"),
}


def _two_epochs(fn, n, closing, **settings):
    ds = closing(seqify.from_batch_fn(fn, n, **settings))
    return epoch(ds), epoch(ds)


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_seeded_epochs_are_bit_identical_whatever_the_workers(config, closing):
    reference = _two_epochs(wf.rng_batch, 6, closing, seed=SEED, workers=0)
    got = _two_epochs(wf.rng_batch, 6, closing, seed=SEED, max_queue_size=3, **CONFIGS[config])
    for ref_epoch, got_epoch in zip(reference, got):
        assert len(got_epoch) == len(ref_epoch) == 6
        for ref_batch, got_batch in zip(ref_epoch, got_epoch):
            assert all(_same_bits(r, g) for r, g in zip(ref_batch, got_batch))


@pytest.mark.timeout(60)
def test_different_batches_get_different_randomness(closing):
    first, _ = _two_epochs(wf.rng_batch, 6, closing, seed=SEED, workers=2)
    xs = [batch[0].tobytes() for batch in first]
    assert len(set(xs)) == len(xs)


@pytest.mark.timeout(60)
def test_second_epoch_draws_different_randomness_than_the_first(closing):
    first, second = _two_epochs(wf.rng_batch, 6, closing, seed=SEED, workers=2)
    for a, b in zip(first, second):
        assert not np.array_equal(a[0], b[0])


@pytest.mark.timeout(60)
def test_different_seeds_give_different_batches(closing):
    a, _ = _two_epochs(wf.rng_batch, 3, closing, seed=1, workers=0)
    b, _ = _two_epochs(wf.rng_batch, 3, closing, seed=2, workers=0)
    assert not any(np.array_equal(x[0], y[0]) for x, y in zip(a, b))


@pytest.mark.timeout(60)
def test_rng_gives_the_same_stream_when_called_twice_for_one_batch(closing):
    def twice(i):
        info = seqify.worker_info()
        return info.rng().normal(size=5), info.rng().normal(size=5)

    for x, y in epoch(closing(seqify.from_batch_fn(twice, 3, seed=SEED, workers=2))):
        np.testing.assert_array_equal(x, y)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_shuffled_order_is_the_same_across_runs_and_worker_settings(config, closing):
    reference = [ids(e) for e in _two_epochs(wf.index_batch, 20, closing, shuffle=True, seed=7, workers=0)]
    got = [ids(e) for e in _two_epochs(wf.index_batch, 20, closing, shuffle=True, seed=7, **CONFIGS[config])]
    assert got == reference
    assert sorted(got[0]) == sorted(got[1]) == list(range(20))  # each batch once per epoch
    assert got[0] != list(range(20)) and got[0] != got[1]  # shuffled, and anew each epoch


@pytest.mark.timeout(60)
def test_shuffled_order_depends_on_the_seed(closing):
    a = ids(epoch(closing(seqify.from_batch_fn(wf.index_batch, 20, shuffle=True, seed=7, workers=0))))
    b = ids(epoch(closing(seqify.from_batch_fn(wf.index_batch, 20, shuffle=True, seed=8, workers=0))))
    assert a != b


@pytest.mark.timeout(60)
def test_seeded_stream_transform_is_bit_identical_whatever_the_workers(closing):
    def gen():
        i = 0
        while True:
            yield np.full((16, 8), i, dtype=np.float32), np.array([i])
            i += 1

    runs = []
    for settings in (CONFIGS["0-threads"], CONFIGS["2-threads"], CONFIGS["2-processes"]):
        ds = closing(seqify.from_generator(gen, steps_per_epoch=5, transform=wf.rng_transform, seed=SEED, **settings))
        runs.append([b[0].tobytes() for b in epoch(ds) + epoch(ds)])
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) == 10


# -- worker_info() ----------------------------------------------------------------------
def test_worker_info_is_none_outside_a_batch_function(closing):
    assert seqify.worker_info() is None
    epoch(closing(seqify.from_batch_fn(wf.info_batch, 3, workers=0)))  # built on this very thread
    assert seqify.worker_info() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", ["0-threads", "2-threads", "2-processes", "spawn"])
def test_worker_info_describes_the_batch_and_the_worker(config, closing, monkeypatch):
    settings = CONFIGS.get(config) or dict(workers=2, use_multiprocessing=True, start_method="spawn")
    # Keep these cheap batches on the thread workers (see the next test).
    monkeypatch.setattr(window, "INLINE_BATCH_SECONDS", 0.0)
    ds = closing(seqify.from_batch_fn(wf.info_batch, 6, seed=SEED, **settings))
    for epoch_number in range(2):
        for i, (row,) in enumerate(epoch(ds)):
            worker_id, num_workers, epoch_seen, index, seed, use_mp, built = row.tolist()
            assert (epoch_seen, index, built, seed) == (epoch_number, i, i, SEED)
            if settings["workers"] == 0:
                assert (worker_id, num_workers, use_mp) == (-1, 0, 0)
            else:
                assert num_workers == 2 and worker_id in range(num_workers)
                assert use_mp == int(settings["use_multiprocessing"])


@pytest.mark.timeout(60)
def test_worker_info_of_a_cheap_batch_built_by_the_consumer_names_the_calling_thread(closing, monkeypatch):
    # Thread workers leave batches cheaper than a hand-off to the consumer,
    # which builds them as workers=0 would (docs/design.md, record 29).
    monkeypatch.setattr(window, "INLINE_BATCH_SECONDS", 1.0)
    ds = closing(seqify.from_batch_fn(wf.info_batch, 6, seed=SEED, workers=2))
    epoch(ds)  # measured on the workers
    rows = [row.tolist() for (row,) in epoch(ds)]
    assert [(epoch_seen, index, built) for _, _, epoch_seen, index, _, _, built in rows] == [(1, i, i) for i in range(6)]
    assert {(worker_id, num_workers, use_mp) for worker_id, num_workers, _, _, _, use_mp, _ in rows} == {(-1, 0, 0)}
