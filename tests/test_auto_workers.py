"""workers="auto": measured once at pool start, logged once, exposed, and
with the same exactly-once and ordering guarantees as a fixed setting."""

import logging
import sys
import time

import numpy as np
import pytest

import seqify
from tests.conftest import Plain, batch_ids, make_batch
from tests.test_check import python_work

cores = sys.modules["seqify.check"].cores


def sleepy_transform(batch):
    time.sleep(0.01)  # releases the GIL: threads
    return batch


def counting_stream():
    i = 0
    while True:
        yield make_batch(i)
        i += 1


def test_auto_trains_every_batch_exactly_once_through_fit(model):
    ds = seqify.from_batch_fn(python_work, 6, workers="auto")
    model.fit(ds, epochs=2, shuffle=False, verbose=0)
    assert model.trained == list(range(6)) * 2
    assert (ds.workers, ds.use_multiprocessing) == (min(cores(), 8), True)
    ds.close()


def test_auto_stream_trains_in_stream_order_exactly_once(model):
    ds = seqify.from_generator(counting_stream, steps_per_epoch=4, transform=sleepy_transform, workers="auto")
    model.fit(ds, epochs=2, verbose=0)  # fit's default shuffle=True: a stream is never reordered
    assert model.trained == list(range(8))
    assert (ds.workers, ds.use_multiprocessing) == (min(cores(), 8), False)
    ds.close()


def test_auto_follows_fit_shuffle_like_a_fixed_setting(model):
    fixed = seqify.from_batch_fn(make_batch, 8, workers=2, seed=3)
    auto = seqify.from_batch_fn(make_batch, 8, workers="auto", seed=3)
    expected = [batch_ids(fixed.iter_epoch(shuffle=True)) for _ in range(2)]
    model.fit(auto, epochs=2, verbose=0)
    assert [model.trained[:8], model.trained[8:]] == expected
    fixed.close()
    auto.close()


def test_auto_reports_auto_until_the_first_pass_then_the_choice():
    ds = Plain(5, workers="auto")
    assert (ds.workers, ds.use_multiprocessing) == ("auto", False)
    assert batch_ids(list(ds)) == [0, 1, 2, 3, 4]
    assert (ds.workers, ds.use_multiprocessing) == (0, False)  # tiny batches: no workers
    ds.close()


def test_auto_logs_its_choice_once(caplog):
    ds = seqify.from_batch_fn(make_batch, 3, workers="auto")
    with caplog.at_level(logging.INFO, logger="seqify"):
        for _ in range(3):
            list(ds)
    choices = [r for r in caplog.records if r.name == "seqify" and "auto" in r.getMessage()]
    assert len(choices) == 1
    assert "chose workers=0, use_multiprocessing=False" in choices[0].getMessage()
    ds.close()


def test_untransformed_stream_resolves_auto_to_no_workers():
    ds = seqify.from_generator(counting_stream, steps_per_epoch=3, workers="auto")
    assert batch_ids(list(ds)) == [0, 1, 2]
    assert (ds.workers, ds.use_multiprocessing) == (0, False)
    ds.close()


def test_sharded_stream_with_auto_keeps_its_interleaving():
    def shard_stream():
        info = seqify.worker_info()
        i = info.shard_index
        while True:
            yield make_batch(i)
            i += info.num_shards

    ds = seqify.from_generator(shard_stream, steps_per_epoch=6, sharded=True, workers="auto")
    assert batch_ids(list(ds)) + batch_ids(list(ds)) == list(range(12))
    ds.close()


def test_changing_workers_after_auto_takes_the_new_setting():
    ds = seqify.from_batch_fn(make_batch, 4, workers="auto")
    list(ds)
    ds.workers = 2
    assert batch_ids(list(ds)) == [0, 1, 2, 3]
    assert ds.workers == 2
    ds.close()


@pytest.mark.parametrize("factory", ["from_batch_fn", "from_arrays", "from_generator"])
def test_every_factory_accepts_auto(factory):
    if factory == "from_batch_fn":
        ds = seqify.from_batch_fn(make_batch, 2, workers="auto")
    elif factory == "from_arrays":
        ds = seqify.from_arrays(np.arange(8, dtype="float32").reshape(4, 2), batch_size=2, workers="auto")
    else:
        ds = seqify.from_generator(counting_stream, steps_per_epoch=2, transform=lambda b: b, workers="auto")
    assert len(list(ds)) == 2
    assert isinstance(ds.workers, int)
    ds.close()
