"""ThreadPool on its own: real threads running tiny jobs."""

import functools

import pytest

from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.thread_pool import ThreadPool
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
