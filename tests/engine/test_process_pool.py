"""ProcessPool on its own: real worker processes running tiny jobs."""

import functools
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import seqify
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.process_pool import ProcessPool
from seqify.engine.window import ordered
from . import _workfns as wf
from ._support import OWNED_PIDS, alive, children, new_children, shm, wait_gone


def _tasks(n, epoch=0, **kwargs):
    return [Task(TaskKind.FETCH, epoch, i, **kwargs) for i in range(n)]


def _run(pool, tasks, size=4):
    return list(ordered(pool, tasks, size))


@pytest.fixture(scope="module")
def uneven_pool():
    """Two fork workers building `uneven_batch` (small: inline, no shm), shared by the order tests."""
    pool = ProcessPool(Job(fetch=wf.uneven_batch), 2, "fork", name="seqify-test")
    yield pool
    pool.close()


def _own_pool(closing, fn, start_method="fork", workers=2):
    return closing(ProcessPool(Job(fetch=fn), workers, start_method, name="seqify-test"))


# -- order and exactly once ---------------------------------------------------------
@pytest.mark.timeout(60)
def test_results_come_back_in_submission_order_though_workers_finish_out_of_order(uneven_pool):
    got = _run(uneven_pool, _tasks(20), size=6)
    assert [int(b[0][0]) for b in got] == list(range(20))
    assert sorted({int(b[0][1]) for b in got}) == sorted(uneven_pool.pids)  # both workers took part


@pytest.mark.timeout(60)
def test_a_burst_gives_each_worker_one_consecutive_run_of_its_tasks(uneven_pool):
    uneven_pool.check()
    handles = uneven_pool.submit_many(_tasks(8, epoch=3))
    got = [h.result() for h in handles]
    assert [int(b[0][0]) for b in got] == list(range(8))
    pids = [int(b[0][1]) for b in got]
    assert pids[:4] == [pids[0]] * 4 and pids[4:] == [pids[4]] * 4 and pids[0] != pids[4]


@pytest.mark.timeout(60)
def test_the_pool_measures_the_cost_of_a_batch_on_its_workers(uneven_pool):
    _run(uneven_pool, _tasks(6, epoch=4))
    assert 0.0 < uneven_pool.batch_cost < 1.0


@pytest.mark.timeout(60)
def test_each_task_is_built_exactly_once(tmp_path, closing):
    log = tmp_path / "built"
    pool = _own_pool(closing, functools.partial(wf.recording_batch, str(log)))
    got = _run(pool, _tasks(24), size=5)
    assert len(got) == 24
    assert len(log.read_text().splitlines()) == 24  # no task built twice, none skipped
    assert [int(b[0][0, 0]) for b in got] == list(range(24))


@pytest.mark.timeout(60)
def test_pinned_tasks_run_on_their_worker_in_submission_order(uneven_pool):
    handles = [uneven_pool.submit(Task(TaskKind.FETCH, 0, i, worker=1)) for i in range(8)]
    got = [handle.result() for handle in handles]
    assert [int(b[0][0]) for b in got] == list(range(8))
    assert {int(b[0][1]) for b in got} == {uneven_pool.pids[1]}


@pytest.mark.timeout(60)
def test_discarded_tasks_are_never_delivered_and_the_pool_carries_on(uneven_pool):
    handles = [uneven_pool.submit(task) for task in _tasks(6, epoch=5)]
    for handle in handles[1::2]:
        handle.discard()
    assert [int(handles[i].result()[0][0]) for i in (0, 2, 4)] == [0, 2, 4]
    assert [int(b[0][0]) for b in _run(uneven_pool, _tasks(6, epoch=6))] == list(range(6))
    assert not uneven_pool._results and not uneven_pool._owner  # nothing kept for the discarded ones


@pytest.mark.timeout(60)
def test_a_result_that_was_discarded_frees_its_shared_memory(closing):
    pool = _own_pool(closing, wf.shm_sized_batch)
    handles = [pool.submit(task) for task in _tasks(6)]
    for handle in handles:
        handle.discard()
    assert [int(b[1][0]) for b in _run(pool, _tasks(4, epoch=1))] == [0, 1, 2, 3]
    prefix = pool.shm_prefix
    pool.close()
    assert shm(prefix) == []


@pytest.mark.timeout(60)
def test_close_with_work_in_flight_leaves_no_process_or_segment(closing):
    before = children()
    pool = _own_pool(closing, wf.large_batch)
    it = ordered(pool, _tasks(10), 6)
    next(it)  # the rest are in flight or in the outbox
    pids, prefix = list(pool.pids), pool.shm_prefix
    it.close()
    pool.close()
    assert wait_gone(pids) == []
    assert new_children(before) == []
    assert shm(prefix) == []


def test_an_unknown_start_method_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="start_method.*'threads'"):
        ProcessPool(Job(fetch=wf.index_batch), 1, "threads")


# -- a worker dies -------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_worker_killed_while_idle_is_reported_as_idle(closing):
    pool = _own_pool(closing, wf.pid_batch)
    assert len(_run(pool, _tasks(4))) == 4
    pids, prefix = list(pool.pids), pool.shm_prefix
    os.kill(pids[0], signal.SIGKILL)
    assert wait_gone([pids[0]]) == []
    with pytest.raises(seqify.WorkerDiedError) as info:
        pool.check()
    message = str(info.value)
    assert f"worker process 0 (pid {pids[0]}) was killed by signal SIGKILL while idle" in message
    assert "out-of-memory" in message
    assert wait_gone(pids) == []  # the other worker is shut down too
    assert shm(prefix) == []


@pytest.mark.timeout(60)
def test_worker_killed_while_busy_ends_the_wait_naming_the_batch(tmp_path, closing):
    before = children()
    pool = _own_pool(closing, functools.partial(wf.touch_then_sleep, str(tmp_path)), workers=1)
    handle = pool.submit(Task(TaskKind.FETCH, 2, 7))
    deadline = time.monotonic() + 20
    while not (tmp_path / "7").exists():
        assert time.monotonic() < deadline, "the worker never started batch 7"
        time.sleep(0.01)
    os.kill(pool.pids[0], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(seqify.WorkerDiedError) as info:
        handle.result()
    assert time.monotonic() - start < 5
    assert "killed by signal SIGKILL while building batch 7 (epoch 2)" in str(info.value)
    assert new_children(before) == []


@pytest.mark.timeout(60)
def test_death_is_noticed_at_once_while_the_pipe_stays_open(tmp_path, closing):
    # The worker's grandchild keeps the worker's end of the pipe (and its
    # multiprocessing sentinel) open, so neither reports EOF; the worker's
    # pidfd does. A liveness poll alone would notice about 1 s later.
    pid_file = tmp_path / "grandchild"
    pool = _own_pool(closing, functools.partial(wf.die_holding_pipe, str(pid_file)), workers=1)
    assert int(pool.submit(Task(TaskKind.FETCH, 0, 0)).result()[0][0]) == 0  # started and warm
    handle = pool.submit(Task(TaskKind.FETCH, 0, 1))
    try:
        with pytest.raises(seqify.WorkerDiedError, match="SIGKILL"):
            handle.result()
        noticed = time.monotonic()
        grandchild, died = pid_file.read_text().split()
        assert noticed - float(died) < 0.5
    finally:
        if pid_file.exists() and alive(int(pid_file.read_text().split()[0])):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_sigbus_death_names_shared_memory_and_the_docker_fix(tmp_path, closing):
    flag = tmp_path / "die"
    flag.touch()
    pool = _own_pool(closing, functools.partial(wf.die_once, str(flag), 1, "sigbus"))
    with pytest.raises(seqify.WorkerDiedError) as info:
        _run(pool, _tasks(3))
    message = str(info.value)
    assert "killed by signal SIGBUS while building batch 1 (epoch 0)" in message
    assert "shared memory" in message and "/dev/shm" in message
    assert "docker run --shm-size=" in message


# -- a worker cannot start ----------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_job_that_fails_to_unpickle_in_the_worker_reports_the_unpickling_error(start_method, closing):
    # Python's own helper processes (the forkserver, the resource tracker)
    # outlive pools by design: have them running before counting.
    multiprocessing.resource_tracker.ensure_running()
    if start_method == "forkserver":
        multiprocessing.forkserver.ensure_running()
    before = children()
    pool = closing(ProcessPool(Job(fetch=wf.RefusesToUnpickle()), 2, start_method))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot be restored") as info:
        _run(pool, _tasks(2))
    assert time.monotonic() - start < 20
    assert any("unpickling the dataset in worker process" in note for note in info.value.__notes__)
    assert new_children(before) == []


_UNGUARDED = """
import sys

import numpy as np

from seqify.engine.errors import WorkerDiedError
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.process_pool import ProcessPool
from seqify.engine.window import ordered


def batch(i):
    return (np.full((2, 2), i, dtype=np.float32),)


# No `if __name__ == "__main__":` guard: spawn and forkserver workers run this again.
pool = ProcessPool(Job(fetch=batch), 2, sys.argv[1])
try:
    got = list(ordered(pool, [Task(TaskKind.FETCH, 0, i) for i in range(4)], 2))
    print("BATCHES", len(got))
except WorkerDiedError as exc:
    print("WORKER-DIED", exc)
finally:
    pool.close()
"""


def _run_script(tmp_path, start_method):
    script = tmp_path / "unguarded_train.py"
    script.write_text(textwrap.dedent(_UNGUARDED))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, str(script), start_method], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    OWNED_PIDS.add(process.pid)
    try:
        out, err = process.communicate(timeout=60)  # a hang fails here
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process, out, err


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_unguarded_script_reports_the_bootstrapping_error_and_the_fix(start_method, tmp_path):
    process, out, err = _run_script(tmp_path, start_method)
    assert process.returncode == 0, err
    line = next((l for l in out.splitlines() if l.startswith("WORKER-DIED")), None)
    assert line is not None, (out, err)
    message = out[out.index("WORKER-DIED"):]
    assert re.search(r"worker process \d \(pid \d+\) exited with code 1 while starting", message), message
    assert "has finished its bootstrapping phase" in message  # Python's own words
    assert 'if __name__ == "__main__":' in message  # and the fix
    assert shm(f"seqify-{process.pid}-") == []


@pytest.mark.timeout(90)
def test_unguarded_script_runs_under_fork(tmp_path):
    process, out, err = _run_script(tmp_path, "fork")
    assert process.returncode == 0, err
    assert "BATCHES 4" in out, (out, err)


@pytest.mark.timeout(60)
def test_work_sent_to_a_worker_that_died_idle_raises_instead_of_hanging(closing):
    pool = _own_pool(closing, wf.pid_batch, workers=1)
    assert len(_run(pool, _tasks(2))) == 2
    pid = pool.pids[0]
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid]) == []
    start = time.monotonic()
    with pytest.raises(seqify.WorkerDiedError, match=f"pid {pid}\\) was killed by signal SIGKILL"):
        _run(pool, _tasks(3, epoch=1))
    assert time.monotonic() - start < 5
