"""Memory bound: never more than max(max_queue_size, workers) batches in flight,
except the elastic window of tiny, cheap random-access batches (design record 23)."""

import functools
import threading
import time

import numpy as np
import pytest

import seqify
from . import _workfns as wf
from ._support import KINDS, pool_of


def _max_in_flight(ds, consume_seconds):
    """Runs one epoch with a slow consumer; returns the peak of started-but-not-received batches.

    Each batch reports when it started (CLOCK_MONOTONIC, shared by all
    processes); the consumer notes when it received it.
    """
    started, received = {}, {}
    for (row,) in ds.iter_epoch():
        received[int(row[0])] = time.monotonic()
        started[int(row[0])] = float(row[1])
        time.sleep(consume_seconds)
    assert sorted(received) == list(range(len(received)))
    return max(
        sum(1 for j in started if started[j] <= started[i] < received[j]) for i in started
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind, workers, max_queue_size",
    [("threads", 2, 2), ("fork", 2, 2), ("threads", 3, 1), ("fork", 3, 1), ("threads", 2, 5), ("fork", 1, 4)],
)
def test_batches_in_flight_never_exceed_max_of_queue_size_and_workers(kind, workers, max_queue_size, closing):
    bound = max(max_queue_size, workers)
    settings = dict(KINDS[kind], workers=workers)
    fn = functools.partial(wf.timed_batch, 0.002)
    ds = closing(seqify.from_batch_fn(fn, 16, max_queue_size=max_queue_size, **settings))
    peak = _max_in_flight(ds, consume_seconds=0.05)
    assert peak <= bound
    # ... and it does run ahead of a slow consumer: the batches after the one
    # being handed out were all started a consumer-step earlier.
    assert peak >= bound - 1


@pytest.mark.timeout(60)
def test_process_pool_holds_at_most_the_window_of_results(closing):
    ds = closing(seqify.from_batch_fn(wf.shm_sized_batch, 12, max_queue_size=2, **KINDS["fork"]))
    for _ in ds.iter_epoch():
        time.sleep(0.02)
        pool = pool_of(ds)
        # tasks still at a worker + results received but not yet handed out
        assert len(pool._owner) + len(pool._results) <= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_producer_runs_ahead_by_at_most_buffer_size(workers, closing):
    lock = threading.Lock()
    count = {"generated": 0}

    def gen():
        i = 0
        while True:
            with lock:
                count["generated"] += 1
            yield (np.array([i]),)
            i += 1

    buffer_size, max_queue_size = 3, 2
    ds = closing(
        seqify.from_generator(
            gen, steps_per_epoch=20, buffer_size=buffer_size, max_queue_size=max_queue_size,
            workers=workers, transform=wf.slow_stream_transform if workers else None,
        )
    )
    window = max(max_queue_size, workers) if workers else 1
    consumed = 0
    peak = 0
    for _ in ds.iter_epoch():
        consumed += 1
        time.sleep(0.02)
        with lock:
            peak = max(peak, count["generated"] - consumed)
    # the buffer, the one item the producer holds, and the tasks in flight
    assert peak <= buffer_size + 1 + window


def _tiny_started(i):
    return (np.array([i, time.monotonic()], dtype=np.float64),)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_tiny_cheap_batches_of_a_random_access_source_run_ahead_beyond_the_queue_size(kind, closing, monkeypatch):
    # "Cheap" is a measured cost; a loaded machine must not make this test flaky.
    from seqify.engine import window
    monkeypatch.setattr(window, "ELASTIC_BATCH_SECONDS", 1.0)
    # Thread workers hand batches cheaper than INLINE_BATCH_SECONDS to the
    # consumer (built on demand, nothing ahead): this test is about the rest.
    monkeypatch.setattr(window, "INLINE_BATCH_SECONDS", 0.0)
    ds = closing(seqify.from_batch_fn(_tiny_started, 300, max_queue_size=2, **dict(KINDS[kind], workers=2)))
    peak = _max_in_flight(ds, consume_seconds=0.001)
    assert 2 < peak <= 256


@pytest.mark.timeout(60)
def test_large_cheap_batches_keep_the_queue_size_bound(closing, monkeypatch):
    from seqify.engine import window
    monkeypatch.setattr(window, "ELASTIC_BATCH_SECONDS", 1.0)

    def large(i):
        row = np.zeros(8192)  # 64 KiB: beyond ELASTIC_BATCH_BYTES
        row[0], row[1] = i, time.monotonic()
        return (row,)

    ds = closing(seqify.from_batch_fn(large, 60, max_queue_size=2, workers=2))
    assert _max_in_flight(ds, consume_seconds=0.002) <= 2


@pytest.mark.timeout(60)
def test_a_stream_of_tiny_cheap_batches_keeps_the_queue_size_bound(closing, monkeypatch):
    # A stream's read-ahead is batches taken from the generator: never elastic.
    from seqify.engine import window
    monkeypatch.setattr(window, "ELASTIC_BATCH_SECONDS", 1.0)

    def gen():
        i = 0
        while True:
            yield (np.array([i, 0.0]),)
            i += 1

    def stamp(batch):
        row = batch[0].copy()
        row[1] = time.monotonic()
        return (row,)

    ds = closing(seqify.from_generator(gen, steps_per_epoch=120, max_queue_size=2, workers=2, transform=stamp))
    assert _max_in_flight(ds, consume_seconds=0.002) <= 2
