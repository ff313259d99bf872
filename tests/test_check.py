"""seqify.check: what it measures and what it recommends.

Timing-based decisions are asserted, never times: the batch functions are
chosen far from every threshold (pure-Python loops of ~20 ms hold the GIL
all the time; sleeps release it whatever the machine's load; a tiny batch
takes microseconds against a 1 ms threshold).
"""

import sys
import threading
import time

import keras
import numpy as np
import pytest

import seqify
from tests.conftest import batch_ids, make_batch

check_module = sys.modules["seqify.check"]


def python_work(i):
    """Pure-Python arithmetic: holds the GIL for its whole ~20 ms."""
    total = 0
    for k in range(200_000):
        total += k % 7
    return np.full((8, 3), i, "float32"), np.full((8, 1), total % 5, "float32")


def sleep_and_numpy(i):
    """Mostly a sleep (the GIL is released, as in file or network reads), then numpy."""
    time.sleep(0.015)
    x = np.sort(np.random.default_rng(i).random((64, 256)), axis=1).astype("float32")
    return x, x[:, :1]


def tiny(i):
    return make_batch(i)


def test_gil_holding_batch_fn_gets_processes():
    report = seqify.check(python_work)
    assert report.recommendation == {"workers": min(check_module.cores(), 8), "use_multiprocessing": True}
    assert report.holds_gil is True


def test_gil_releasing_batch_fn_gets_threads():
    report = seqify.check(sleep_and_numpy)
    assert report.recommendation == {"workers": min(check_module.cores(), 8), "use_multiprocessing": False}
    assert report.holds_gil is False


def test_tiny_batch_fn_gets_no_workers():
    report = seqify.check(tiny)
    assert report.recommendation == {"workers": 0, "use_multiprocessing": False}


def test_recommendation_is_a_plain_dict_the_factories_accept():
    report = seqify.check(tiny)
    ds = seqify.from_batch_fn(tiny, 3, **report.recommendation)
    assert batch_ids(list(ds)) == [0, 1, 2]


def test_report_text_shows_structure_time_gil_transport_pickling_and_reason():
    text = str(seqify.check(seqify.from_batch_fn(python_work, 10)))
    for expected in ("(8, 3)", "float32", "per batch", "time per batch", "2 threads", "GIL", "holds the GIL",
                     "2 processes", "transport", "picklable:        yes", "recommendation:   workers=",
                     "use_multiprocessing=True", "because"):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_unpicklable_gil_holding_fn_names_the_culprit_and_gets_one_thread():
    lock = threading.Lock()

    def locked_work(i):
        with lock:
            return python_work(i)

    report = seqify.check(locked_work)
    assert report.recommendation == {"workers": 1, "use_multiprocessing": False}
    assert report.picklable is False
    assert "closure variable `lock`" in str(report)


def test_stream_batches_read_to_measure_are_not_consumed():
    def stream():
        i = 0
        while True:
            yield make_batch(i)
            i += 1

    ds = seqify.from_generator(stream, steps_per_epoch=5, transform=lambda b: b, workers=2)
    seqify.check(ds)
    assert batch_ids(list(ds)) == [0, 1, 2, 3, 4]
    assert batch_ids(list(ds)) == [5, 6, 7, 8, 9]
    ds.close()


def test_check_leaves_settings_and_epoch_untouched():
    ds = seqify.from_batch_fn(tiny, 6, workers=3, shuffle=True, seed=4)
    first = batch_ids(list(ds))
    ds2 = seqify.from_batch_fn(tiny, 6, workers=3, shuffle=True, seed=4)
    seqify.check(ds2)
    assert (ds2.workers, ds2.use_multiprocessing) == (3, False)
    assert batch_ids(list(ds2)) == first  # still epoch 0's order
    ds.close()
    ds2.close()


def test_sequence_subclass_and_keras_pydataset_are_measured():
    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return make_batch(i)

    report = seqify.check(Data())
    assert report.recommendation == {"workers": 0, "use_multiprocessing": False}
    assert "Data, 4 batches" in str(report)


def test_iterator_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="from_generator"):
        seqify.check(iter([make_batch(0)]))


@pytest.mark.parametrize("batches", [1, 0, 2.5, "3"])
def test_bad_batches_argument_is_refused(batches):
    with pytest.raises(ValueError, match="`batches`"):
        seqify.check(tiny, batches=batches)


def test_batches_argument_bounds_the_work():
    calls = []

    def counted(i):
        calls.append(i)
        return python_work(i)

    seqify.check(counted, batches=4)
    # 1 structure + 2 warm-up + rounds of 4 inline and 8 threaded, the GIL
    # probe (<= 1 s of ~20 ms batches) and 2 warm-up + 8 on processes (not counted here).
    assert len(calls) < 120


# -- decide(): the rule, on fixed numbers -------------------------------------


def measurement(**kwargs):
    base = dict(description="d", cores=4, seconds_per_batch=0.02, thread_speedup=1.0, gil_share=1.0,
                picklable=True, transport_seconds=0.0005, process_speedup=1.9)
    base.update(kwargs)
    return check_module.Measurement(**base)


def test_decide_sends_gil_holding_work_to_one_process_per_core():
    assert check_module.decide(measurement())[:2] == (4, True)


def test_decide_keeps_gil_holding_work_on_one_thread_when_transport_costs_too_much():
    workers, use_mp, reason = check_module.decide(measurement(transport_seconds=0.015))
    assert (workers, use_mp) == (1, False)
    assert "moving a batch" in reason


def test_decide_prefers_threads_unless_processes_are_clearly_faster():
    assert check_module.decide(measurement(gil_share=0.0, thread_speedup=1.8, process_speedup=1.95))[:2] == (4, False)
    assert check_module.decide(measurement(gil_share=0.1, thread_speedup=1.1, process_speedup=1.9))[:2] == (4, True)


def test_decide_caps_workers_at_eight():
    assert check_module.decide(measurement(cores=64))[:2] == (8, True)
