"""`seqify.from_batch_fn`: which batches `fit` consumes, in what order, and its errors."""

import re
import threading
import traceback

import numpy as np
import pytest

import seqify
from conftest import WORKER_SETTINGS, FIT_SHUFFLE, assert_no_warnings, expected_epochs, make_batch, recording_model, split_epochs


def first_ids(batches):
    return [int(np.asarray(b[0]).reshape(-1)[0]) for b in batches]


def load_sample_that_fails(i):
    """A user batch function with a bug at batch 3."""
    if i == 3:
        raise KeyError("bad sample 3")
    return make_batch(i)


# -- every batch exactly once, in order ------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fit_kwargs", FIT_SHUFFLE)
@pytest.mark.parametrize("workers,use_mp", WORKER_SETTINGS)
def test_fit_consumes_every_batch_once_per_epoch_in_fits_order(model, workers, use_mp, fit_kwargs):
    with seqify.from_batch_fn(make_batch, 5, seed=3, workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0, **fit_kwargs)
    assert split_epochs(model.trained, 5) == expected_epochs(3, 5, 3, fit_kwargs)


def test_fit_steps_per_epoch_smaller_than_data_walks_through_the_pass_then_starts_a_new_one(model):
    with seqify.from_batch_fn(make_batch, 6, workers=2) as ds:
        model.fit(ds, epochs=4, steps_per_epoch=2, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 3, 4, 5, 0, 1]


def test_fit_steps_per_epoch_smaller_than_data_with_shuffle_covers_a_permutation(model):
    with seqify.from_batch_fn(make_batch, 6, shuffle=True, seed=4, workers=2) as ds:
        model.fit(ds, epochs=3, steps_per_epoch=2, verbose=0)
    assert sorted(model.trained) == list(range(6))


# -- shuffle=True, seed=s ---------------------------------------------------------


def test_shuffle_visits_a_permutation_every_epoch_and_a_different_one_each_epoch(model):
    with seqify.from_batch_fn(make_batch, 8, shuffle=True, seed=3, workers=2) as ds:
        model.fit(ds, epochs=3, verbose=0)
    epochs = split_epochs(model.trained, 8)
    for order in epochs:
        assert sorted(order) == list(range(8))
    assert len({tuple(order) for order in epochs}) == 3
    assert list(range(8)) not in epochs


@pytest.mark.timeout(60)
def test_shuffle_with_same_seed_is_identical_across_objects_and_worker_settings():
    orders = {}
    for workers, use_mp in [(1, False), (1, False), (2, False), (4, False), (2, True), (4, True)]:
        model = recording_model()
        with seqify.from_batch_fn(make_batch, 8, shuffle=True, seed=21, workers=workers, use_multiprocessing=use_mp) as ds:
            model.fit(ds, epochs=3, verbose=0)
        orders.setdefault(model.trained.__repr__(), []).append((workers, use_mp))
    assert len(orders) == 1, f"different orders for different settings: {orders}"


def test_shuffle_with_different_seeds_gives_different_orders():
    def three_epochs(seed):
        with seqify.from_batch_fn(make_batch, 8, shuffle=True, seed=seed, workers=2) as ds:
            return [first_ids(ds.iter_epoch()) for _ in range(3)]

    assert three_epochs(1) != three_epochs(2)
    assert three_epochs(1) == three_epochs(1)


def test_explicit_shuffle_false_wins_over_fits_default_shuffle(model):
    with seqify.from_batch_fn(make_batch, 8, workers=4, shuffle=False) as ds:
        model.fit(ds, epochs=2, verbose=0)  # fit(shuffle=True) is the default
    assert model.trained == list(range(8)) * 2


def test_fit_default_shuffle_reorders_batches_every_epoch_reproducibly():
    orders = []
    for workers, use_mp in [(0, False), (2, False), (2, True)]:
        model = recording_model()
        with seqify.from_batch_fn(make_batch, 8, seed=5, workers=workers, use_multiprocessing=use_mp) as ds:
            model.fit(ds, epochs=3, verbose=0)  # fit(shuffle=True) is the default, as for PyDataset
        epochs = split_epochs(model.trained, 8)
        assert all(sorted(e) == list(range(8)) for e in epochs)
        assert len({tuple(e) for e in epochs}) == 3  # a new order each epoch
        orders.append(epochs)
    assert orders[0] == orders[1] == orders[2]  # same seed: same orders whatever the workers


def test_evaluate_and_predict_see_the_natural_order_after_a_shuffled_fit(model):
    with seqify.from_batch_fn(make_batch, 6, seed=2, workers=2) as ds:
        model.fit(ds, epochs=1, verbose=0)
        model.evaluate(ds, verbose=0)
        model.predict(ds, verbose=0)
    assert sorted(model.trained) == list(range(6)) and model.trained != list(range(6))
    assert model.tested == list(range(6))
    assert model.predicted == list(range(6))


def test_infinite_batch_fn_runs_on_across_epochs_exactly_once(model):
    with seqify.from_batch_fn(make_batch, None, workers=2, use_multiprocessing=True) as ds:
        model.fit(ds, epochs=3, steps_per_epoch=4, verbose=0)
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    assert model.trained == list(range(14))  # indices 0, 1, 2, ... never repeated, none skipped


# -- construction errors ------------------------------------------------------------


@pytest.mark.parametrize("fn", [42, "make_batch", [make_batch(0)]], ids=["int", "str", "list-of-batches"])
def test_non_callable_fn_is_a_type_error_naming_fn(fn):
    with pytest.raises(TypeError, match=r"`fn` must be a callable") as info:
        seqify.from_batch_fn(fn, 3)
    assert type(fn).__name__ in str(info.value)


@pytest.mark.parametrize("num_batches", [0, -1, 2.5, 3.0, True], ids=["zero", "negative", "float", "integral-float", "bool"])
def test_num_batches_must_be_an_int_of_at_least_one(num_batches):
    with pytest.raises(ValueError) as info:
        seqify.from_batch_fn(make_batch, num_batches)
    message = str(info.value)
    assert "`num_batches`" in message
    assert ">= 1" in message
    assert repr(num_batches) in message


def test_unpicklable_closure_with_process_workers_fails_at_construction_naming_fn_and_culprit():
    guard = threading.Lock()

    def fn(i):
        with guard:
            return make_batch(i)

    with pytest.raises(TypeError) as info:
        seqify.from_batch_fn(fn, 3, workers=2, use_multiprocessing=True)
    message = str(info.value)
    assert "`fn`" in message
    assert "closure variable `guard`" in message
    assert "lock" in message
    assert "use_multiprocessing=False" in message or "seqify.locks" in message  # names a fix


def test_unpicklable_closure_is_fine_with_thread_workers(model):
    guard = threading.Lock()

    def fn(i):
        with guard:
            return make_batch(i)

    with seqify.from_batch_fn(fn, 4, workers=2, shuffle=False) as ds:
        model.fit(ds, epochs=2, verbose=0)
    assert model.trained == [0, 1, 2, 3] * 2


# -- bad batches -------------------------------------------------------------------------


def _returns_int_at_2(i):
    return 7 if i == 2 else make_batch(i)


def _returns_4_tuple_at_2(i):
    return make_batch(i) + (np.ones(4), np.ones(4)) if i == 2 else make_batch(i)


BAD_BATCHES = [
    pytest.param(_returns_int_at_2, "an object of type int", id="int"),
    pytest.param(_returns_4_tuple_at_2, "a tuple of length 4", id="4-tuple"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("fn,what", BAD_BATCHES)
def test_batch_that_is_not_a_tuple_or_dict_is_a_type_error_naming_the_batch_index(fn, what, use_mp):
    got = []
    with seqify.from_batch_fn(fn, 4, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(TypeError) as info:
            for batch in ds.iter_epoch():
                got.append(first_ids([batch])[0])
    message = str(info.value)
    assert "Batch 2" in message
    assert what in message
    assert "return x, y" in message  # says what to return instead
    assert any(re.search(r"\bbatch 2\b", note) for note in info.value.__notes__)
    assert got == [0, 1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_batch_that_is_not_a_tuple_or_dict_stops_fit_with_the_batch_index_in_the_message(model, use_mp):
    with seqify.from_batch_fn(_returns_int_at_2, 4, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(Exception) as info:
            model.fit(ds, epochs=1, verbose=0, shuffle=False)
    message = str(info.value)
    assert "TypeError" in message
    assert "Batch 2" in message
    assert "an object of type int" in message
    assert model.trained == [0, 1]


def test_list_and_bare_array_batches_are_accepted_like_keras_does():
    def fn(i):
        x, y = make_batch(i)
        return [x, y] if i % 2 else x

    with seqify.from_batch_fn(fn, 4, workers=2) as ds:
        batches = list(ds.iter_epoch())
    assert [type(b) for b in batches] == [tuple] * 4
    assert [len(b) for b in batches] == [1, 2, 1, 2]
    assert first_ids(batches) == [0, 1, 2, 3]


# -- exceptions from user code, iterating directly ---------------------------------------


def test_exception_in_thread_worker_reaches_caller_as_itself_with_batch_index_and_user_traceback():
    got = []
    with seqify.from_batch_fn(load_sample_that_fails, 6, workers=2) as ds:
        with pytest.raises(KeyError) as info:
            for batch in ds.iter_epoch():
                got.append(first_ids([batch])[0])
    exc = info.value
    assert type(exc) is KeyError
    assert exc.args == ("bad sample 3",)
    assert any(re.search(r"\bbatch 3\b", note) and "thread" in note for note in exc.__notes__)
    frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert "load_sample_that_fails" in frames
    assert got == [0, 1, 2]


@pytest.mark.timeout(60)
def test_exception_in_process_worker_reaches_caller_as_itself_with_batch_index_and_remote_traceback():
    got = []
    with seqify.from_batch_fn(load_sample_that_fails, 6, workers=2, use_multiprocessing=True) as ds:
        with pytest.raises(KeyError) as info:
            for batch in ds.iter_epoch():
                got.append(first_ids([batch])[0])
    exc = info.value
    assert type(exc) is KeyError
    assert exc.args == ("bad sample 3",)
    assert any(re.search(r"\bbatch 3\b", note) and "process" in note for note in exc.__notes__)
    cause = str(exc.__cause__)
    assert "load_sample_that_fails" in cause
    assert "KeyError: 'bad sample 3'" in cause
    assert got == [0, 1, 2]


class _UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()  # cannot travel back from a worker process


def _raises_unpicklable_at_2(i):
    if i == 2:
        raise _UnpicklableError("cannot ship me")
    return make_batch(i)


@pytest.mark.timeout(60)
def test_unpicklable_exception_in_process_worker_arrives_as_worker_error_with_type_message_and_index():
    with seqify.from_batch_fn(_raises_unpicklable_at_2, 4, workers=2, use_multiprocessing=True) as ds:
        with pytest.raises(seqify.WorkerError) as info:
            list(ds.iter_epoch())
    exc = info.value
    assert "_UnpicklableError: cannot ship me" in str(exc)
    assert any(re.search(r"\bbatch 2\b", note) for note in exc.__notes__)
    assert "_raises_unpicklable_at_2" in str(exc.__cause__)


def _fails_in_first_epoch_only(i):
    if i == 1 and seqify.worker_info().epoch == 0:
        raise RuntimeError("transient failure in epoch 0")
    return make_batch(i)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_next_pass_works_after_a_user_exception(use_mp):
    with seqify.from_batch_fn(_fails_in_first_epoch_only, 4, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(RuntimeError, match="transient failure in epoch 0"):
            list(ds.iter_epoch())
        assert first_ids(ds.iter_epoch()) == [0, 1, 2, 3]


def test_no_warning_from_fit_evaluate_predict(model):
    with seqify.from_batch_fn(make_batch, 4, workers=2) as ds:
        with assert_no_warnings():
            model.fit(ds, epochs=2, verbose=0, shuffle=False)
            model.evaluate(ds, verbose=0)
            model.predict(ds, verbose=0)
    assert model.trained == [0, 1, 2, 3] * 2
    assert model.tested == [0, 1, 2, 3]
    assert model.predicted == [0, 1, 2, 3]
