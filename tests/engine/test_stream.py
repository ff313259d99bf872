"""Streams (from_generator): one producer, every batch exactly once, in order."""

import gc
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

import seqify
from seqify.engine import shm_transport
from seqify.engine.stream import Stream, StreamEnd

from . import _workfns as wf
from ._support import epoch, ids, pool_of, threads_named
from ._support import shm as shm_names

SETTINGS = {
    "inline": dict(workers=0),
    "threads": dict(workers=2, transform=wf.tag_transform),
    "processes": dict(workers=2, use_multiprocessing=True, start_method="fork", transform=wf.tag_transform),
}


class Source:
    """A generator function that records its calls and the threads running it."""

    def __init__(self, length=None, fail_after=None):
        self.length = length
        self.fail_after = fail_after
        self.calls = 0
        self.threads = []  # thread ident per yielded item
        self.running = 0  # threads inside the generator body right now
        self.overlaps = 0  # times two threads ran it at once

    def __call__(self):
        self.calls += 1
        i = 0
        while self.length is None or i < self.length:
            self.running += 1
            if self.running > 1:
                self.overlaps += 1
            time.sleep(0.001)  # widen the window in which an overlap would show
            self.running -= 1
            if self.fail_after is not None and i == self.fail_after:
                raise wf.UserBoom("generator broke")
            self.threads.append(threading.get_ident())
            yield (np.full((2, 2), i, dtype=np.float32),)
            i += 1


# -- one producer ------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_endless_generator_is_called_once_and_never_run_by_two_threads_at_once(kind, closing):
    source = Source()
    ds = closing(seqify.from_generator(source, steps_per_epoch=4, max_queue_size=3, **SETTINGS[kind]))
    seen = [ids(epoch(ds)) for _ in range(3)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # consecutive windows of one stream
    assert source.calls == 1
    assert source.overlaps == 0


@pytest.mark.timeout(60)
def test_concurrent_consumers_share_one_generator_and_get_every_item_once():
    source = Source(length=300)
    stream = Stream(source, restartable=False, buffer_size=4)
    got, lock = [], threading.Lock()

    def consume():
        while True:
            try:
                index, (x,) = stream.next()
            except StreamEnd:
                return
            with lock:
                got.append((index, int(x[0, 0])))

    consumers = [threading.Thread(target=consume) for _ in range(4)]
    for t in consumers:
        t.start()
    for t in consumers:
        t.join(timeout=30)
    stream.close()
    assert sorted(got) == [(i, i) for i in range(300)]
    assert source.calls == 1 and source.overlaps == 0


# -- order and no loss ------------------------------------------------------------------------
def test_push_front_puts_items_back_in_their_order():
    stream = Stream(lambda: iter(range(10)), restartable=True, buffer_size=2)
    taken = [stream.next() for _ in range(6)]
    assert taken == [(i, i) for i in range(6)]
    stream.push_front(taken[4:])
    stream.push_front(taken[2:4])  # pushed later, so served first
    assert [stream.next() for _ in range(6)] == [(i, i) for i in range(2, 8)]
    stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_abandoned_epoch_resumes_with_the_first_unconsumed_batch(kind, closing):
    ds = closing(seqify.from_generator(Source(), steps_per_epoch=5, max_queue_size=3, **SETTINGS[kind]))
    taken = []
    for batch in ds.iter_epoch():
        taken.append(batch)
        if len(taken) == 2:
            break  # the consumer stops early (like an interrupted fit)
    assert ids(taken) == [0, 1]
    assert ids(epoch(ds)) == [2, 3, 4, 5, 6]
    assert ids(epoch(ds)) == [7, 8, 9, 10, 11]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_explicitly_closed_epoch_iterator_loses_no_batch(kind, closing):
    ds = closing(seqify.from_generator(Source(), steps_per_epoch=6, max_queue_size=4, **SETTINGS[kind]))
    it = ds.iter_epoch()
    first = [next(it) for _ in range(3)]
    time.sleep(0.1)  # let the producer and workers run ahead
    it.close()
    assert ids(first) == [0, 1, 2]
    assert ids(epoch(ds)) == [3, 4, 5, 6, 7, 8]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source_kind", ["generator object", "generator function"])
def test_close_between_epochs_loses_no_batch(source_kind, closing):
    source = Source()
    ds = closing(seqify.from_generator(source() if source_kind == "generator object" else source, steps_per_epoch=3))
    assert ids(epoch(ds)) == [0, 1, 2]
    time.sleep(0.1)  # the producer buffers batches 3, 4, ... meanwhile
    ds.close()
    assert ids(epoch(ds)) == [3, 4, 5]
    assert ids(epoch(ds)) == [6, 7, 8]


# -- ends and errors ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_finite_generator_ending_at_an_epoch_boundary_restarts_for_the_next_epoch(kind, closing):
    source = Source(length=4)
    ds = closing(seqify.from_generator(source, steps_per_epoch=4, **SETTINGS[kind]))
    for n in range(3):
        assert ids(epoch(ds)) == [0, 1, 2, 3]
        assert source.calls == n + 1  # called exactly once per pass


@pytest.mark.timeout(60)
def test_finite_generator_ending_mid_epoch_raises_stream_exhausted(closing):
    ds = closing(seqify.from_generator(Source(length=5), steps_per_epoch=3))
    assert ids(epoch(ds)) == [0, 1, 2]
    taken = []
    with pytest.raises(seqify.StreamExhaustedError, match="steps_per_epoch"):
        for batch in ds.iter_epoch():
            taken.append(batch)
    assert ids(taken) == [3, 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_generator_exception_propagates_with_its_type(kind, closing):
    ds = closing(seqify.from_generator(Source(fail_after=2), steps_per_epoch=5, **SETTINGS[kind]))
    with pytest.raises(wf.UserBoom) as info:
        epoch(ds)
    assert type(info.value) is wf.UserBoom
    assert info.value.args == ("generator broke",)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(SETTINGS))
def test_batches_yielded_before_a_generator_error_are_delivered_first(kind, closing):
    ds = closing(seqify.from_generator(Source(fail_after=2), steps_per_epoch=5, **SETTINGS[kind]))
    taken = []
    with pytest.raises(wf.UserBoom):
        for batch in ds.iter_epoch():
            taken.append(batch)
    assert ids(taken) == [0, 1]


@pytest.mark.timeout(60)
def test_transform_runs_in_worker_processes_in_stream_order(closing):
    ds = closing(seqify.from_generator(Source(), steps_per_epoch=8, **SETTINGS["processes"]))
    batches = epoch(ds)
    assert ids(batches) == list(range(8))
    pids = {int(b[1][0]) for b in batches}
    assert len(pids) == 2 and os.getpid() not in pids


# -- producer thread lifecycle ----------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_close_ends_the_producer_thread(closing):
    ds = closing(seqify.from_generator(Source(), steps_per_epoch=3))
    epoch(ds)
    assert threads_named("GeneratorSequence-producer")
    ds.close()
    assert not threads_named("GeneratorSequence-producer")


@pytest.mark.timeout(60)
def test_garbage_collection_ends_the_producer_and_worker_threads():
    ds = seqify.from_generator(Source(), steps_per_epoch=3, workers=2, transform=wf.tag_transform)
    epoch(ds)
    assert threads_named("GeneratorSequence")
    del ds
    gc.collect()
    deadline = time.monotonic() + 5
    while threads_named("GeneratorSequence") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not threads_named("GeneratorSequence")


@pytest.mark.timeout(90)
def test_process_transform_of_pipe_sized_stream_items_does_not_deadlock(closing):
    ds = closing(
        seqify.from_generator(
            _pipe_sized_stream, steps_per_epoch=30, transform=wf.identity, workers=1, use_multiprocessing=True,
            start_method="fork", max_queue_size=10,
        )
    )
    finished = threading.Event()
    stuck = []

    def watchdog():
        # A deadlock cannot be interrupted from the test: end it by killing the
        # worker (the main side then fails with WorkerDiedError, not a hang).
        if not finished.wait(10):
            stuck.append(True)
            for pid in pool_of(ds).pids:
                os.kill(pid, signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        got = ids(epoch(ds))
    finally:
        finished.set()
    assert not stuck
    assert got == list(range(30))


@pytest.mark.timeout(60)
def test_large_items_of_an_abandoned_epoch_leave_no_shared_memory_behind(closing):
    def gen():
        i = 0
        while True:
            yield (np.full((256, 256), i, dtype=np.float32),)  # 256 KiB: shared memory both ways
            i += 1

    ds = closing(seqify.from_generator(gen, steps_per_epoch=6, max_queue_size=4, **SETTINGS["processes"]))
    it = ds.iter_epoch()
    assert ids([next(it), next(it)]) == [0, 1]
    it.close()
    assert ids(epoch(ds)) == [2, 3, 4, 5, 6, 7]
    # Before close(): nothing waits for a sweep; only the workers' bounded,
    # recycled result slots ("...-w<id>-s<k>") stay until the pool closes.
    prefix = pool_of(ds).shm_prefix
    names = shm_names(prefix)
    assert all(re.fullmatch(re.escape(prefix) + r"w\d+-s\d+", name) for name in names), names
    assert len(names) <= shm_transport.MAX_SLOTS * 2


def _pipe_sized_stream():
    i = 0
    while True:  # two 64,000-byte arrays: each under INLINE_BYTES, so both travel in the pipe
        yield np.full((32, 500), i, dtype=np.float32), np.full((32, 500), i, dtype=np.float32)
        i += 1


@pytest.mark.timeout(90)
def test_close_after_an_abandoned_epoch_of_pipe_sized_items_does_not_hang(closing):
    ds = closing(
        seqify.from_generator(
            _pipe_sized_stream, steps_per_epoch=30, transform=wf.identity, workers=1,
            use_multiprocessing=True, start_method="fork", max_queue_size=10,
        )
    )
    it = ds.iter_epoch()
    assert ids([next(it)]) == [0]
    time.sleep(1.0)  # the worker and the sender fill both directions of the pipe
    it.close()
    pids = pool_of(ds).pids
    finished = threading.Event()
    stuck = []

    def watchdog():
        if not finished.wait(10):  # end a hang by killing the worker: then close() returns
            stuck.append(True)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        ds.close()
    finally:
        finished.set()
    assert not stuck, "close() hung"
    assert ids(epoch(ds))[:3] == [1, 2, 3]  # and the stream lost nothing
