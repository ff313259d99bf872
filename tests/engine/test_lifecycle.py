"""Persistent workers: started once, reused, and fully gone after close()/GC."""

import functools
import gc
import os
import threading
import time

import numpy as np
import psutil
import pytest

import seqify
from . import _workfns as wf
from ._support import FORK, KINDS, THREADS, alive, children, epoch, ids, pool_of, shm, threads_named, wait_gone

PROCESS_KINDS = ["fork", "spawn", "forkserver"]


def _workers_of(batches, use_multiprocessing):
    """The set of workers (pids, or thread idents) that built `batches`."""
    column = 0 if use_multiprocessing else 1
    return {int(b[0][column]) for b in batches}


# -- reuse --------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_same_worker_processes_build_every_epoch(kind, closing):
    ds = closing(seqify.from_batch_fn(wf.who_batch, 6, **KINDS[kind]))
    first = epoch(ds)
    pids = list(pool_of(ds).pids)
    second = epoch(ds)
    assert len(pids) == 2 and os.getpid() not in pids
    assert _workers_of(first, True) == set(pids)
    assert _workers_of(second, True) == set(pids)
    assert pool_of(ds).pids == pids
    assert [int(b[0][2]) for b in second] == list(range(6))


@pytest.mark.timeout(60)
def test_same_worker_threads_build_every_epoch(closing):
    ds = closing(seqify.from_batch_fn(wf.who_batch, 6, **THREADS))
    first = epoch(ds)
    pool_threads = {t.ident for t in threads_named("BatchFnSequence")}
    second = epoch(ds)
    assert len(pool_threads) == 2
    assert {int(b[0][0]) for b in first + second} == {os.getpid()}
    assert _workers_of(first, False) <= pool_threads
    assert _workers_of(second, False) <= pool_threads
    assert {t.ident for t in threads_named("BatchFnSequence")} == pool_threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_worker_processes_survive_an_idle_pause_between_epochs(kind, closing):
    # Between epochs a real training loop validates, checkpoints, logs: the
    # workers must still be there afterwards.
    ds = closing(seqify.from_batch_fn(wf.who_batch, 4, **KINDS[kind]))
    first = epoch(ds)
    time.sleep(1.6)  # longer than a worker's 1 s orphan poll
    second = epoch(ds)
    assert _workers_of(second, True) == _workers_of(first, True) == set(pool_of(ds).pids)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_fit_evaluate_and_predict_reuse_the_same_workers(kind, closing, model, tmp_path):
    log = tmp_path / "built_by.txt"
    settings = KINDS[kind]
    ds = closing(seqify.from_batch_fn(functools.partial(wf.recording_batch, str(log)), 4, **settings))
    epoch(ds)  # starts the pool
    pool = pool_of(ds)
    if settings["use_multiprocessing"]:
        workers = set(pool.pids)
    else:
        workers = {t.ident for t in threads_named("BatchFnSequence")}

    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    model.evaluate(ds, verbose=0)
    model.predict(ds, verbose=0)

    assert pool_of(ds) is pool
    assert model.trained == [0, 1, 2, 3] * 2
    assert model.tested == [0, 1, 2, 3]
    assert model.predicted == [0, 1, 2, 3]
    # Batches built inline on the calling thread (signature inference) are not
    # worker batches; every other batch must come from the original workers.
    lines = [tuple(int(v) for v in line.split()) for line in log.read_text().splitlines()]
    main = (os.getpid(), threading.get_ident())
    built = [pid if settings["use_multiprocessing"] else ident for pid, ident in lines if (pid, ident) != main]
    assert len(built) == 4 + 8 + 4 + 4  # direct epoch, 2 fit epochs, evaluate, predict
    assert set(built) <= workers
    if settings["use_multiprocessing"]:
        assert all(alive(pid) for pid in workers)


# -- shutdown -----------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_close_ends_every_worker_process(kind, closing):
    ds = closing(seqify.from_batch_fn(wf.who_batch, 4, **KINDS[kind]))
    epoch(ds)
    pids = pool_of(ds).pids
    assert all(alive(pid) for pid in pids)
    ds.close()
    assert wait_gone(pids, timeout=5.0) == []
    assert pool_of(ds) is None
    assert not threads_named("BatchFnSequence")


@pytest.mark.timeout(60)
def test_close_ends_every_worker_thread(closing):
    before = set(threading.enumerate())
    ds = closing(seqify.from_batch_fn(wf.who_batch, 4, **THREADS))
    epoch(ds)
    assert threads_named("BatchFnSequence")
    ds.close()
    assert not threads_named("BatchFnSequence")
    assert set(threading.enumerate()) <= before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_close_is_idempotent(kind, closing):
    ds = closing(seqify.from_batch_fn(wf.index_batch, 3, **KINDS[kind]))
    ds.close()  # before any pool exists
    epoch(ds)
    ds.close()
    ds.close()
    assert pool_of(ds) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threads", "fork", "spawn"])
def test_object_is_usable_again_after_close(kind, closing):
    ds = closing(seqify.from_batch_fn(wf.who_batch, 5, **KINDS[kind]))
    first = epoch(ds)
    old_pool = pool_of(ds)
    ds.close()
    again = epoch(ds)
    assert [int(b[0][2]) for b in again] == list(range(5))
    assert pool_of(ds) is not None and pool_of(ds) is not old_pool
    if KINDS[kind]["use_multiprocessing"]:
        assert _workers_of(again, True) == set(pool_of(ds).pids)
        assert not _workers_of(again, True) & _workers_of(first, True)


@pytest.mark.timeout(60)
def test_garbage_collection_ends_worker_processes():
    ds = seqify.from_batch_fn(wf.who_batch, 4, **FORK)
    epoch(ds)
    pids = pool_of(ds).pids
    del ds
    gc.collect()
    assert wait_gone(pids, timeout=5.0) == []


@pytest.mark.timeout(60)
def test_garbage_collection_ends_worker_threads():
    ds = seqify.from_batch_fn(wf.who_batch, 4, **THREADS)
    epoch(ds)
    assert threads_named("BatchFnSequence")
    del ds
    gc.collect()
    assert not threads_named("BatchFnSequence")


class _Squares(seqify.Sequence):
    """A user subclass of seqify.Sequence (the documented way to subclass)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return (np.full((2, 2), i, dtype=np.float32),)


@pytest.mark.timeout(60)
def test_garbage_collection_ends_worker_threads_of_a_sequence_subclass():
    ds = _Squares(workers=2)
    assert ids(epoch(ds)) == [0, 1, 2, 3]
    assert threads_named("_Squares")
    del ds
    gc.collect()
    assert not threads_named("_Squares")


@pytest.mark.timeout(60)
def test_garbage_collection_ends_worker_processes_of_a_sequence_subclass():
    ds = _Squares(**FORK)
    epoch(ds)
    pids = pool_of(ds).pids
    del ds
    gc.collect()
    assert wait_gone(pids, timeout=5.0) == []


class _Shifting(seqify.Sequence):
    """Changes its state in on_epoch_end, as augmentation schedules do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.offset = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return (np.array([self.offset + i, os.getpid()], dtype=np.int64),)

    def on_epoch_end(self):
        self.offset += 100


@pytest.mark.timeout(60)
def test_state_changed_by_epoch_hooks_reaches_the_persistent_worker_processes(closing):
    ds = closing(_Shifting(**FORK))
    first = epoch(ds)
    ds.on_epoch_end()  # what fit does between epochs
    second = epoch(ds)
    assert [int(b[0][0]) for b in first] == [0, 1, 2, 3]
    assert [int(b[0][0]) for b in second] == [100, 101, 102, 103]
    assert {int(b[0][1]) for b in second} == {int(b[0][1]) for b in first} == set(pool_of(ds).pids)


# -- no growth ------------------------------------------------------------------
def _resources():
    me = psutil.Process()
    return {
        "processes": len(children()),
        "threads": me.num_threads(),
        "python threads": threading.active_count(),
        "fds": me.num_fds(),
        "shm segments": len(shm(f"seqify-{os.getpid()}-")),
    }


def _epoch_ids_dropping_batches(ds):
    """One epoch; each batch is dropped as soon as it is read (as fit does)."""
    seen = []
    for batch in ds.iter_epoch():
        seen.append(ids([batch])[0])
        del batch
    return seen


def _assert_no_growth(before, after):
    grown = {k: (before[k], after[k]) for k in before if after[k] > before[k]}
    assert not grown, f"resources grew over 50 epochs (before, after): {grown}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["threads", "fork", "spawn"])
def test_fifty_epochs_grow_no_processes_threads_fds_or_segments(kind, closing):
    # A first pool of this kind sets up process-wide, one-time state (spawn
    # starts multiprocessing's resource tracker, holding a pipe to it).
    with seqify.from_batch_fn(wf.shm_sized_batch, 3, **KINDS[kind]) as first:
        epoch(first)
    fds_without_pool = psutil.Process().num_fds()
    # shm_sized_batch sends a 64 KiB array, so process workers use shared memory.
    ds = closing(seqify.from_batch_fn(wf.shm_sized_batch, 3, max_queue_size=2, **KINDS[kind]))
    for _ in range(5):  # warm up: the pool and its recycled segments exist from here on
        _epoch_ids_dropping_batches(ds)
    before = _resources()
    for _ in range(50):
        assert _epoch_ids_dropping_batches(ds) == [0, 1, 2]
    gc.collect()
    _assert_no_growth(before, _resources())
    ds.close()
    assert psutil.Process().num_fds() <= fds_without_pool
    assert not shm(f"seqify-{os.getpid()}-")


@pytest.mark.timeout(120)
def test_fifty_stream_epochs_with_process_transform_grow_nothing(closing):
    def gen():
        i = 0
        while True:
            yield (np.full((128, 128), i, dtype=np.float32),)  # 64 KiB: shared memory both ways
            i += 1

    fds_without_pool = psutil.Process().num_fds()
    ds = closing(seqify.from_generator(gen, steps_per_epoch=3, transform=wf.identity, max_queue_size=2, **FORK))
    for _ in range(5):
        _epoch_ids_dropping_batches(ds)
    before = _resources()
    for n in range(5, 55):
        assert _epoch_ids_dropping_batches(ds) == [3 * n, 3 * n + 1, 3 * n + 2]
    gc.collect()
    _assert_no_growth(before, _resources())
    ds.close()
    assert psutil.Process().num_fds() <= fds_without_pool
    assert not shm(f"seqify-{os.getpid()}-")
