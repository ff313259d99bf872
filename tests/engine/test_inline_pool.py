"""InlinePool: batches built on the consuming thread, when asked for."""

import threading

import pytest

from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from . import _workfns as wf


def test_a_batch_is_built_on_the_calling_thread_when_its_result_is_asked(tmp_path):
    log = tmp_path / "built"
    pool = InlinePool(Job(fetch=lambda i: wf.recording_batch(str(log), i)))
    handle = pool.submit(Task(TaskKind.FETCH, 0, 4))
    assert not log.exists()  # nothing built yet
    batch = handle.result()
    assert int(batch[0][0, 0]) == 4
    assert log.read_text().split()[1] == str(threading.get_ident())


def test_a_discarded_batch_is_never_built(tmp_path):
    log = tmp_path / "built"
    pool = InlinePool(Job(fetch=lambda i: wf.recording_batch(str(log), i)))
    pool.submit(Task(TaskKind.FETCH, 0, 1)).discard()
    assert not log.exists()


def test_worker_info_says_calling_thread_unless_pinned():
    pool = InlinePool(Job(fetch=wf.info_batch))
    plain = pool.submit(Task(TaskKind.FETCH, 3, 2)).result()[0]
    pinned = pool.submit(Task(TaskKind.FETCH, 3, 2, worker=1)).result()[0]
    assert list(plain[:4]) == [-1, 0, 3, 2]  # worker_id, num_workers, epoch, index
    assert list(pinned[:2]) == [1, 1]


def test_an_exception_is_raised_by_result_with_a_note_naming_the_batch():
    pool = InlinePool(Job(fetch=lambda i: wf.explode_on_index(0, i)))
    with pytest.raises(wf.UserBoom) as info:
        pool.submit(Task(TaskKind.FETCH, 2, 0)).result()
    assert any("batch 0 (epoch 2) on the calling thread" in note for note in info.value.__notes__)
