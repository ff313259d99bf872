"""The ordered window: order, bound on work in flight, abandoned work handed back."""


import pytest

from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.thread_pool import ThreadPool
from seqify.engine.window import ordered
from . import _workfns as wf


class _CountingPool:
    """An InlinePool that records how many tasks are submitted and not yet resolved."""

    def __init__(self):
        self._pool = InlinePool(Job(fetch=wf.index_batch))
        self.in_flight = 0
        self.peak = 0
        self.submitted = []

    def submit(self, task):
        handle = self._pool.submit(task)
        self.submitted.append(task.index)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        pool = self

        class Handle:
            def result(self):
                pool.in_flight -= 1
                return handle.result()

            def discard(self):
                pool.in_flight -= 1
                handle.discard()

        return Handle()


def _tasks(n):
    return [Task(TaskKind.FETCH, 0, i) for i in range(n)]


def _ids(batches):
    return [int(b[0].reshape(-1)[0]) for b in batches]


@pytest.mark.parametrize("size", [1, 3, 8])
def test_never_more_than_size_tasks_in_flight(size):
    pool = _CountingPool()
    assert _ids(ordered(pool, _tasks(12), size)) == list(range(12))
    assert pool.peak == min(size, 12)
    assert pool.in_flight == 0


@pytest.mark.timeout(60)
def test_results_follow_submission_order_not_completion_order(closing):
    pool = closing(ThreadPool(Job(fetch=wf.uneven_batch), 4))
    got = list(ordered(pool, _tasks(16), 8))
    assert [int(b[0][0]) for b in got] == list(range(16))


def test_stopping_early_hands_the_pending_work_to_on_abandon_in_order():
    pool = _CountingPool()
    abandoned = []
    it = ordered(pool, _tasks(10), 4, on_abandon=abandoned.extend)
    assert _ids([next(it), next(it)]) == [0, 1]
    it.close()
    # Refilled once after batch 0 was handed out; batch 1 is the consumer's.
    assert [task.index for task, _ in abandoned] == [2, 3, 4]
    # The handles are the abandon hook's: still resolvable.
    assert [int(handle.result()[0][0, 0]) for _, handle in abandoned] == [2, 3, 4]
    assert pool.submitted == list(range(5))  # nothing submitted past the window


def test_stopping_early_discards_pending_work_by_default():
    pool = _CountingPool()
    it = ordered(pool, _tasks(10), 3)
    next(it)
    it.close()
    assert pool.in_flight == 0


def test_an_error_from_the_items_comes_after_every_batch_before_it():
    def items():
        yield from _tasks(3)
        raise LookupError("the stream ran dry")

    got = []
    with pytest.raises(LookupError, match="ran dry"):
        for batch in ordered(_CountingPool(), items(), 5):
            got.append(batch)
    assert _ids(got) == [0, 1, 2]


def test_a_failing_batch_raises_in_its_place_and_abandons_the_rest():
    pool = InlinePool(Job(fetch=lambda i: wf.explode_on_index(2, i)))
    abandoned, got = [], []
    tasks = iter(_tasks(6))
    with pytest.raises(wf.UserBoom):
        for batch in ordered(pool, tasks, 4, on_abandon=abandoned.extend):
            got.append(batch)
    assert _ids(got) == [0, 1]
    # Inline, nothing is built ahead: the failed task is handed back, the
    # rest were never taken from the source.
    assert [task.index for task, _ in abandoned] == [2]
    assert [task.index for task in tasks] == [3, 4, 5]


def test_prepare_is_ignored_by_pools_whose_workers_cannot_run_it():
    got = list(ordered(InlinePool(Job(fetch=wf.index_batch)), _tasks(4), 2, prepare=lambda batch: "prepared"))
    assert [int(batch[0][0, 0]) for batch in got] == list(range(4))


def test_ready_handles_are_passed_through_in_their_place():
    inline = InlinePool(Job(fetch=wf.index_batch))

    class Ready:
        def __init__(self, index):
            self.task = Task(TaskKind.FETCH, 0, index)
            self._handle = inline.submit(self.task)

        def result(self):
            return self._handle.result()

        def discard(self):
            self._handle.discard()

    pool = _CountingPool()
    items = [Ready(0), *_tasks(3)[1:], Ready(3)]
    assert _ids(ordered(pool, items, 2)) == [0, 1, 2, 3]
    assert pool.submitted == [1, 2]  # the ready ones were not submitted again


# -- the elastic window ---------------------------------------------------------------
from seqify.engine import window as window_module  # noqa: E402


@pytest.mark.parametrize(
    "cost, nbytes, expected",
    [
        (0.0, 512, 10),  # not measured yet
        (10e-6, None, 10),  # size not sampled yet
        (10e-6, 512, 256),  # tiny and cheap: up to `elastic`
        (10e-6, 32 << 10, 10),  # too large
        (1e-3, 512, 10),  # too slow
        (95e-6, 512, 210),  # bounded by ELASTIC_SECONDS of work
        (10e-6, 16 << 10, 256),  # 256 x 16 KiB = 4 MiB: just within ELASTIC_BYTES
    ],
)
def test_elastic_size_grows_only_for_tiny_cheap_batches_within_its_bounds(cost, nbytes, expected):
    assert window_module.elastic_size(10, 256, cost, nbytes) == expected


def test_elastic_size_never_shrinks_below_the_queue_size():
    assert window_module.elastic_size(300, 256, 10e-6, 512) == 300


# -- batches cheaper than a hand-off: built by the consumer ---------------------------
import functools  # noqa: E402
import threading  # noqa: E402


def _built_by(batches):
    return [int(b[1][0]) for b in batches]


@pytest.fixture
def cheap_thresholds(monkeypatch):
    """Makes every measured batch "cheap" and never too costly to build here."""
    monkeypatch.setattr(window_module, "INLINE_BATCH_SECONDS", 1.0)
    monkeypatch.setattr(window_module, "INLINE_LEAVE_SECONDS", 1.0)


@pytest.mark.timeout(60)
def test_tiny_cheap_batches_are_built_by_the_consumer_once_measured(closing):
    # Real thresholds: a few-µs batch costs less than handing it to a thread.
    pool = closing(ThreadPool(Job(fetch=wf.ident_batch), 2))
    got = list(ordered(pool, _tasks(3000), 10, elastic=256))
    assert _ids(got) == list(range(3000))
    built_by = _built_by(got)
    here = threading.get_ident()
    assert here not in built_by[:10]  # the first window went to the workers, unmeasured
    assert built_by.count(here) > 300


@pytest.mark.timeout(60)
def test_slow_batches_stay_on_the_worker_threads(closing):
    pool = closing(ThreadPool(Job(fetch=functools.partial(wf.ident_batch_slow_from, 0)), 2))
    got = list(ordered(pool, _tasks(60), 10, elastic=256))
    assert _ids(got) == list(range(60))
    assert threading.get_ident() not in _built_by(got)


@pytest.mark.timeout(60)
def test_batches_go_back_to_the_workers_when_they_grow_costly(closing, monkeypatch):
    monkeypatch.setattr(window_module, "INLINE_BATCH_SECONDS", 1e-3)  # the cheap batches surely qualify
    pool = closing(ThreadPool(Job(fetch=functools.partial(wf.ident_batch_slow_from, 200)), 2))
    got = list(ordered(pool, _tasks(300), 10, elastic=256))
    assert _ids(got) == list(range(300))
    built_by = _built_by(got)
    here = threading.get_ident()
    assert here in built_by[:200]
    # A slow batch or two is built here before the moving average says so;
    # after that the workers build them (and keep them for a while).
    assert here not in built_by[220:]


@pytest.mark.timeout(60)
def test_batches_in_flight_are_delivered_before_the_consumer_builds_in_order(closing, cheap_thresholds):
    pool = closing(ThreadPool(Job(fetch=wf.ident_batch), 2))
    got = list(ordered(pool, _tasks(50), 8, elastic=256))
    assert _ids(got) == list(range(50))
    built_by = _built_by(got)
    here = threading.get_ident()
    first_here = built_by.index(here)
    assert 0 < first_here <= 8 and set(built_by[first_here:]) == {here}


@pytest.mark.timeout(60)
def test_a_batch_failing_on_the_consumer_raises_in_its_place_and_is_handed_back(closing, cheap_thresholds):
    pool = closing(ThreadPool(Job(fetch=lambda i: wf.explode_on_index(30, i)), 2))
    abandoned, got = [], []
    tasks = iter(_tasks(40))
    with pytest.raises(wf.UserBoom):
        for batch in ordered(pool, tasks, 8, on_abandon=abandoned.extend, elastic=256):
            got.append(batch)
    assert _ids(got) == list(range(30))
    assert [task.index for task, _ in abandoned] == [30]
    assert [task.index for task in tasks] == list(range(31, 40))  # never taken from the source


@pytest.mark.timeout(60)
def test_the_consumer_builds_nothing_without_an_elastic_window(closing, cheap_thresholds):
    # Streams (no elastic window) keep every transform on the workers.
    pool = closing(ThreadPool(Job(fetch=wf.ident_batch), 2))
    got = list(ordered(pool, _tasks(200), 8))
    assert _ids(got) == list(range(200))
    assert threading.get_ident() not in _built_by(got)


@pytest.mark.timeout(60)
def test_a_pinned_task_met_while_the_consumer_builds_goes_to_its_worker_in_its_place(closing, cheap_thresholds):
    pool = closing(ThreadPool(Job(fetch=wf.ident_batch), 2))
    items = [*_tasks(40), Task(TaskKind.FETCH, 0, 40, worker=1), *_tasks(60)[41:]]
    got = list(ordered(pool, items, 8, elastic=256))
    assert _ids(got) == list(range(60))
    built_by = _built_by(got)
    here = threading.get_ident()
    assert built_by[39] == here and built_by[40] != here
