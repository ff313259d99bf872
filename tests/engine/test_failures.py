"""Failures in workers surface as clear errors, never as hangs or leaks."""

import functools
import re
import sys
import textwrap
import time
import traceback

import pytest

import seqify
from . import _workfns as wf
from ._support import KINDS, children, epoch, ids, new_children, pool_of, shm, wait_gone

INLINE = dict(workers=0)


# -- a worker process dies ----------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "how, kind",
    [
        ("sigkill", "fork"),
        ("sigkill", "spawn"),
        ("sigkill", "forkserver"),
        ("exit3", "fork"),
        ("exit3", "spawn"),
    ],
)
def test_dead_worker_ends_the_epoch_with_worker_died_error(how, kind, closing, tmp_path):
    flag = tmp_path / "die"
    fn = functools.partial(wf.die_once, str(flag), 3, how)
    ds = closing(seqify.from_batch_fn(fn, 8, **KINDS[kind]))
    assert ids(epoch(ds)) == list(range(8))  # epoch 0 is clean and starts the pool
    pool = pool_of(ds)
    pids, prefix = list(pool.pids), pool.shm_prefix
    flag.touch()  # epoch 1: batch 3 kills its worker
    got = []
    it = ds.iter_epoch()

    start = time.monotonic()
    with pytest.raises(seqify.WorkerDiedError) as info:
        for batch in it:
            got.append(batch)
    elapsed = time.monotonic() - start

    assert elapsed < 10
    message = str(info.value)
    match = re.search(r"worker process (\d+) \(pid (\d+)\)", message)
    assert match, message
    worker_id, pid = int(match.group(1)), int(match.group(2))
    assert pids[worker_id] == pid
    if how == "sigkill":
        assert "killed by signal SIGKILL" in message
    else:
        assert "exited with code 3" in message
    assert "batch 3 (epoch 1)" in message
    assert ids(got) == list(range(len(got))) and len(got) <= 3  # in order, nothing past the failure
    assert wait_gone(pids, timeout=5.0) == []  # the surviving worker is not orphaned
    assert shm(prefix) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigkill", "exit3"])
def test_object_works_again_after_a_worker_died(how, closing, tmp_path):
    flag = tmp_path / "die"
    flag.touch()
    fn = functools.partial(wf.die_once, str(flag), 2, how)
    ds = closing(seqify.from_batch_fn(fn, 6, **KINDS["fork"]))
    with pytest.raises(seqify.WorkerDiedError):
        epoch(ds)
    assert not flag.exists()  # the failure was triggered, and only once
    again = epoch(ds)
    assert ids(again) == list(range(6))
    assert len(pool_of(ds).pids) == 2
    assert ids(epoch(ds)) == list(range(6))


# -- a user exception -----------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["inline", "threads", "fork", "spawn"])
def test_user_exception_is_reraised_with_its_type_message_and_a_batch_note(kind, closing):
    settings = INLINE if kind == "inline" else KINDS[kind]
    ds = closing(seqify.from_batch_fn(functools.partial(wf.explode_on_index, 2), 5, **settings))
    with pytest.raises(wf.UserBoom) as info:
        epoch(ds)
    assert type(info.value) is wf.UserBoom
    assert info.value.args == ("user code rejected batch 2",)
    notes = [note for note in getattr(info.value, "__notes__", []) if "batch 2" in note]
    assert len(notes) == 1, info.value.__notes__
    where = {"inline": "calling thread", "threads": "worker thread", "fork": "worker process", "spawn": "worker process"}
    assert where[kind] in notes[0]
    assert "epoch 0" in notes[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_process_exception_carries_the_worker_traceback_as_cause(kind, closing):
    ds = closing(seqify.from_batch_fn(functools.partial(wf.explode_on_index, 1), 3, **KINDS[kind]))
    with pytest.raises(wf.UserBoom) as info:
        epoch(ds)
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "Traceback" in text and "explode_on_index" in text and "user code rejected batch 1" in text
    assert "explode_on_index" in "".join(traceback.format_exception(info.value))


@pytest.mark.timeout(60)
def test_thread_exception_traceback_reaches_into_the_batch_function(closing):
    ds = closing(seqify.from_batch_fn(functools.partial(wf.explode_on_index, 1), 3, **KINDS["threads"]))
    with pytest.raises(wf.UserBoom) as info:
        epoch(ds)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "explode_on_index" in frames


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_user_exception_leaves_the_pool_running_for_the_next_epoch(kind, closing, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    ds = closing(seqify.from_batch_fn(functools.partial(wf.explode_once, str(flag), 1), 5, **KINDS[kind]))
    with pytest.raises(wf.UserBoom):
        epoch(ds)
    pool = pool_of(ds)
    pids = list(pool.pids) if KINDS[kind]["use_multiprocessing"] else None
    assert ids(epoch(ds)) == list(range(5))
    assert pool_of(ds) is pool
    if pids is not None:
        assert pool.pids == pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind, type_name, message",
    [("locked", "LockedError", "locked failure in batch 1"), ("two-args", "TwoArgError", "left and right")],
)
def test_exception_that_cannot_be_pickled_arrives_as_worker_error(kind, type_name, message, closing):
    ds = closing(seqify.from_batch_fn(functools.partial(wf.explode_unpicklably, kind, 1), 3, **KINDS["fork"]))
    with pytest.raises(seqify.WorkerError) as info:
        epoch(ds)
    text = str(info.value)
    assert type_name in text and message in text
    assert any("batch 1" in note for note in info.value.__notes__)
    assert "explode_unpicklably" in str(info.value.__cause__)


@pytest.mark.timeout(60)
def test_batch_that_cannot_be_sent_back_raises_naming_the_batch(closing):
    ds = closing(seqify.from_batch_fn(functools.partial(wf.unsendable_batch, 1), 3, **KINDS["fork"]))
    start = time.monotonic()
    with pytest.raises(TypeError, match="pickle") as info:
        epoch(ds)
    assert time.monotonic() - start < 10
    assert any("sending batch 1" in note for note in info.value.__notes__), info.value.__notes__


# -- a worker cannot even load the job ---------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_batch_function_failing_to_unpickle_in_a_worker_raises_instead_of_hanging(kind, closing):
    before = children()
    ds = closing(seqify.from_batch_fn(wf.RefusesToUnpickle(), 3, **KINDS[kind]))
    for _ in range(2):  # and again on the next attempt: still an error, not a hang
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="cannot be restored") as info:
            epoch(ds)
        assert time.monotonic() - start < 10
        assert any("unpickling" in note for note in info.value.__notes__), info.value.__notes__
    assert new_children(before) == []


@pytest.mark.timeout(60)
def test_batch_function_from_a_module_only_the_parent_can_import(tmp_path, closing, monkeypatch):
    module_name = f"seqify_parent_only_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module_name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def batch(i):
                return (np.full((2, 2), i, dtype=np.float32),)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(module_name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.setitem(sys.modules, module_name, module)  # removed again after the test
    before = children()
    ds = closing(seqify.from_batch_fn(module.batch, 3, **KINDS["spawn"]))
    start = time.monotonic()
    with pytest.raises(ModuleNotFoundError, match=module_name) as info:
        epoch(ds)
    assert time.monotonic() - start < 10
    assert any("unpickling" in note for note in info.value.__notes__)
    assert new_children(before) == []
