"""EpochRunner: epoch cursor, passes, and batches given back."""

import seqify
from conftest import batch_ids, make_batch
from seqify.runner import Delivered


def stream():
    i = 0
    while True:
        yield make_batch(i)
        i += 1


def _take(iterator, count):
    return batch_ids(next(iterator) for _ in range(count))


def test_a_stream_serves_batches_given_back_first_in_their_order():
    with seqify.from_generator(stream, steps_per_epoch=6, workers=2, transform=lambda b: b) as ds:
        runner = ds._runner
        delivered = Delivered()
        batches = runner.iter_epoch(delivered=delivered)
        assert _take(batches, 5) == [0, 1, 2, 3, 4]
        batches.close()  # in-flight work (5, ...) goes back first
        assert runner.give_back(delivered, 2) == 2  # 3 and 4 were never used
        assert batch_ids(ds.iter_epoch()) == [3, 4, 5, 6, 7, 8]


def test_an_infinite_index_source_continues_at_the_first_batch_given_back():
    with seqify.from_batch_fn(make_batch, None, workers=2) as ds:
        runner = ds._runner
        delivered = Delivered()
        batches = runner.iter_epoch(delivered=delivered)
        assert _take(batches, 4) == [0, 1, 2, 3]
        batches.close()
        runner.give_back(delivered, 1)
        assert _take(iter(ds), 2) == [3, 4]


def test_no_more_can_be_given_back_than_was_delivered():
    with seqify.from_generator(stream, steps_per_epoch=4) as ds:
        runner = ds._runner
        delivered = Delivered()
        assert batch_ids(runner.iter_epoch(delivered=delivered)) == [0, 1, 2, 3]
        assert runner.give_back(delivered, 3) == 3
        assert runner.give_back(delivered, 3) == 1
        assert batch_ids(ds.iter_epoch()) == [0, 1, 2, 3]


def test_a_finite_random_access_epoch_is_over_whether_or_not_its_tail_was_used():
    with seqify.from_batch_fn(make_batch, 4, shuffle=False) as ds:
        runner = ds._runner
        delivered = Delivered()
        assert batch_ids(runner.iter_epoch(delivered=delivered)) == [0, 1, 2, 3]
        runner.give_back(delivered, 2)
        assert runner.cursor.epoch == 1 and runner.cursor.position == 0


def test_a_pass_that_delivered_nothing_does_not_use_up_its_epoch():
    with seqify.from_batch_fn(make_batch, 4, shuffle=True, seed=3) as ds:
        runner = ds._runner
        first = runner.iter_epoch()
        first.close()  # never started: nothing claimed
        batches = runner.iter_epoch()
        next(batches)
        batches.close()  # started, then stopped: the epoch is used
        assert runner.cursor.epoch == 1
