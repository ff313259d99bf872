"""ThreadPool on its own: real threads running tiny jobs; a worker stuck in
user code never blocks close, GC or exit."""

import functools
import gc
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

import seqify
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.thread_pool import CLOSE_TIMEOUT, PoolClosedError, ThreadPool
from seqify.engine.window import ordered

from . import _workfns as wf
from ._support import threads_named


def _tasks(n, **kwargs):
    return [Task(TaskKind.FETCH, 0, i, **kwargs) for i in range(n)]


@pytest.mark.timeout(60)
def test_results_come_back_in_submission_order_though_threads_finish_out_of_order(closing):
    pool = closing(ThreadPool(Job(fetch=wf.uneven_batch), 3, name="seqify-tp-order"))
    got = list(ordered(pool, _tasks(18), 6))
    assert [int(b[0][0]) for b in got] == list(range(18))


@pytest.mark.timeout(60)
def test_each_task_is_built_exactly_once(tmp_path, closing):
    log = tmp_path / "built"
    pool = closing(ThreadPool(Job(fetch=functools.partial(wf.recording_batch, str(log))), 3))
    got = list(ordered(pool, _tasks(30), 5))
    assert [int(b[0][0, 0]) for b in got] == list(range(30))
    assert len(log.read_text().splitlines()) == 30


@pytest.mark.timeout(60)
def test_worker_ids_are_distinct_and_within_the_pool(closing):
    pool = closing(ThreadPool(Job(fetch=wf.info_batch), 2))
    rows = [b[0] for b in ordered(pool, _tasks(40), 4)]
    assert {int(row[0]) for row in rows} <= {0, 1}
    assert all(int(row[1]) == 2 and int(row[5]) == 0 for row in rows)  # num_workers, use_multiprocessing


@pytest.mark.timeout(60)
def test_pinned_tasks_run_one_at_a_time_on_one_thread_in_order(closing):
    pool = closing(ThreadPool(Job(fetch=wf.who_batch), 2, name="seqify-tp-pin"))
    handles = [pool.submit(task) for task in _tasks(6, worker=1)]
    rows = [h.result()[0] for h in handles]
    assert [int(row[2]) for row in rows] == list(range(6))
    assert len({int(row[1]) for row in rows}) == 1  # one thread


def _tagged(batch):
    return (batch, threading.current_thread().name)


@pytest.mark.timeout(60)
def test_prepare_runs_on_the_worker_thread_after_each_task(closing):
    pool = closing(ThreadPool(Job(fetch=wf.index_batch), 2, name="seqify-tp-prepare"))
    got = list(ordered(pool, _tasks(12), 4, prepare=_tagged))
    assert [int(batch[0][0, 0]) for batch, _ in got] == list(range(12))
    assert all(name.startswith("seqify-tp-prepare") for _, name in got)


@pytest.mark.timeout(60)
def test_an_exception_in_prepare_is_raised_by_result_in_its_place(closing):
    def fails_at_3(batch):
        if int(batch[0][0, 0]) == 3:
            raise ValueError("prepare failed at 3")
        return batch

    pool = closing(ThreadPool(Job(fetch=wf.index_batch), 2))
    handles = pool.submit_many(_tasks(5), prepare=fails_at_3)
    assert int(handles[2].result()[0][0, 0]) == 2
    with pytest.raises(ValueError, match="prepare failed at 3"):
        handles[3].result()
    assert int(handles[4].result()[0][0, 0]) == 4


@pytest.mark.timeout(60)
def test_update_swaps_the_job_for_later_tasks(closing):
    pool = closing(ThreadPool(Job(fetch=wf.index_batch), 2))
    assert int(pool.submit(Task(TaskKind.FETCH, 0, 3)).result()[0][0, 0]) == 3
    pool.update(Job(fetch=wf.small_batch))
    assert pool.submit(Task(TaskKind.FETCH, 0, 3)).result()[0].shape == (8, 8)


@pytest.mark.timeout(60)
def test_close_stops_every_thread_and_is_idempotent():
    pool = ThreadPool(Job(fetch=wf.index_batch), 2, name="seqify-tp-close")
    list(ordered(pool, _tasks(4), 2))
    pool.submit(Task(TaskKind.FETCH, 0, 0, worker=0)).result()
    assert threads_named("seqify-tp-close")
    pool.close()
    pool.close()
    assert threads_named("seqify-tp-close") == []


@pytest.mark.timeout(60)
def test_an_exception_in_a_thread_is_raised_by_result_as_itself(closing):
    pool = closing(ThreadPool(Job(fetch=functools.partial(wf.explode_on_index, 1)), 2))
    handles = [pool.submit(task) for task in _tasks(3)]
    assert int(handles[0].result()[0][0, 0]) == 0
    with pytest.raises(wf.UserBoom, match="batch 1"):
        handles[1].result()
    assert int(handles[2].result()[0][0, 0]) == 2


class _Blocker:
    """A batch function that blocks on an Event until the test releases it."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, i):
        self.started.set()
        self.release.wait(30)
        return (i,)


@pytest.fixture
def blocker():
    fn = _Blocker()
    yield fn
    fn.release.set()  # let the stuck thread finish after the test


def _stuck_pool(fn, name):
    pool = ThreadPool(Job(fetch=fn), 1, name)
    handle = pool.submit(Task(TaskKind.FETCH, 0, 0))
    assert fn.started.wait(5)
    return pool, handle


@pytest.mark.timeout(30)
def test_close_returns_within_its_bound_while_a_worker_is_stuck(blocker):
    pool, _ = _stuck_pool(blocker, "stuck-close")
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < CLOSE_TIMEOUT + 0.5
    assert [t.daemon for t in threads_named("stuck-close")] == [True]


@pytest.mark.timeout(30)
def test_close_warns_naming_the_stuck_thread(blocker, caplog):
    pool, _ = _stuck_pool(blocker, "stuck-warn")
    with caplog.at_level(logging.WARNING, logger="seqify"):
        pool.close()
    assert any("stuck-warn_0" in r.getMessage() and "daemon" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_stuck_thread_ends_once_user_code_returns(blocker):
    pool, _ = _stuck_pool(blocker, "stuck-ends")
    pool.close()
    blocker.release.set()
    deadline = time.monotonic() + 5
    while threads_named("stuck-ends") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not threads_named("stuck-ends")


@pytest.mark.timeout(30)
def test_waiting_for_a_batch_of_a_closed_pool_raises(blocker):
    pool, handle = _stuck_pool(blocker, "stuck-wait")
    pool.close()
    started = time.monotonic()
    with pytest.raises(PoolClosedError):
        handle.result()
    assert time.monotonic() - started < 1.0


@pytest.mark.timeout(30)
def test_garbage_collection_returns_within_its_bound_while_a_worker_is_stuck(blocker):
    ds = seqify.from_batch_fn(blocker, 4, workers=1)
    batches = ds.iter_epoch()
    outcome = []

    def consume():
        try:
            list(batches)
        except PoolClosedError as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert blocker.started.wait(5)
    del ds
    started = time.monotonic()
    gc.collect()
    assert time.monotonic() - started < CLOSE_TIMEOUT + 0.5
    consumer.join(5)
    assert not consumer.is_alive() and len(outcome) == 1  # its wait ended with the pool


@pytest.mark.timeout(120)
def test_interpreter_exits_promptly_while_a_worker_is_stuck():
    script = os.path.join(os.path.dirname(__file__), "stuck_thread_exit.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "READY"
        started = time.monotonic()
        # Before: never (concurrent.futures joins its threads at exit). Now:
        # the close bound plus TensorFlow's own teardown (~3.5 s here).
        assert child.wait(timeout=30) == 0
        assert time.monotonic() - started < CLOSE_TIMEOUT + 10.0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
