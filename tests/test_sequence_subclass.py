"""A user `seqify.Sequence` subclass: batches through fit, epoch hooks, state across processes."""

import numpy as np
import pytest

import seqify
from conftest import assert_no_warnings, make_batch, split_epochs, Plain, expected_epochs

SETTINGS = [
    pytest.param(0, False, id="inline"),
    pytest.param(2, False, id="threads-2"),
    pytest.param(1, True, id="processes-1"),
    pytest.param(2, True, id="processes-2"),
]


class ShiftingOffset(seqify.Sequence):
    """Batch i has id offset + i; on_epoch_end moves the offset by 100.

    Counts its hook calls (in the main process, where fit calls them).
    """

    def __init__(self, n=3, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.offset = 0
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return make_batch(self.offset + index)

    def on_epoch_begin(self):
        self.calls.append("begin")

    def on_epoch_end(self):
        self.calls.append("end")
        self.offset += 100


class ReorderedOnEpochBegin(seqify.Sequence):
    """on_epoch_begin draws a new batch order; batch i serves order[i]."""

    def __init__(self, n=5, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.epochs_begun = 0
        self.order = list(range(n))
        self.orders = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return make_batch(self.order[index])

    def on_epoch_begin(self):
        rng = np.random.default_rng([99, self.epochs_begun])
        self.order = [int(v) for v in rng.permutation(self.n)]
        self.orders.append(self.order)
        self.epochs_begun += 1


class FailsAtBatch2(Plain):
    def __getitem__(self, index):
        if index == 2:
            raise LookupError("record 2 is corrupt")
        return make_batch(index)


# -- batches -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fit_kwargs", [{}, {"shuffle": False}], ids=["fit-defaults", "fit-shuffle-False"])
@pytest.mark.parametrize("workers,use_mp", [(1, False), (4, False), (2, True), (4, True)], ids=["threads-1", "threads-4", "processes-2", "processes-4"])
def test_fit_consumes_every_batch_once_per_epoch_in_fits_order(model, workers, use_mp, fit_kwargs):
    with Plain(5, workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0, **fit_kwargs)
    assert split_epochs(model.trained, 5) == expected_epochs(ds.seed, 5, 3, fit_kwargs)


# -- epoch hooks ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers,use_mp", SETTINGS)
def test_on_epoch_begin_and_end_are_called_exactly_once_per_epoch(model, workers, use_mp):
    with ShiftingOffset(workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0)
        assert ds.calls == ["begin", "end"] * 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers,use_mp", SETTINGS)
def test_state_changed_in_on_epoch_end_is_seen_by_the_workers_next_epoch(model, workers, use_mp):
    with ShiftingOffset(workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0, shuffle=False)
    assert model.trained == [0, 1, 2, 100, 101, 102, 200, 201, 202]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers,use_mp", SETTINGS)
def test_state_changed_in_on_epoch_begin_is_seen_by_the_workers_in_that_epoch(model, workers, use_mp):
    with ReorderedOnEpochBegin(workers=workers, use_multiprocessing=use_mp) as ds:
        model.fit(ds, epochs=3, verbose=0, shuffle=False)
        expected = ds.orders
    assert len(expected) == 3
    assert split_epochs(model.trained, 5) == expected


@pytest.mark.timeout(60)
def test_hooks_run_once_per_epoch_with_fit_steps_per_epoch_smaller_than_data(model):
    with ShiftingOffset(n=4, workers=2, use_multiprocessing=True) as ds:
        model.fit(ds, epochs=4, steps_per_epoch=2, verbose=0)
        assert ds.calls == ["begin", "end"] * 4


# -- errors and warnings -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_exception_in_getitem_reaches_caller_as_itself_with_batch_index(use_mp):
    got = []
    with FailsAtBatch2(4, workers=2, use_multiprocessing=use_mp) as ds:
        with pytest.raises(LookupError) as info:
            for batch in ds.iter_epoch():
                got.append(int(batch[0][0, 0]))
    exc = info.value
    assert type(exc) is LookupError
    assert str(exc) == "record 2 is corrupt"
    assert any("batch 2" in note for note in exc.__notes__)
    if use_mp:
        assert "__getitem__" in str(exc.__cause__)
    assert got == [0, 1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_mp", [False, True], ids=["threads", "processes"])
def test_no_warning_from_fit_evaluate_predict(model, use_mp):
    with ShiftingOffset(workers=2, use_multiprocessing=use_mp) as ds:
        with assert_no_warnings():
            model.fit(ds, epochs=2, verbose=0, shuffle=False)
            model.evaluate(ds, verbose=0)
            model.predict(ds, verbose=0)
    assert model.trained == [0, 1, 2, 100, 101, 102]


def test_len_below_one_is_a_clear_error():
    with Plain(0) as ds:
        with pytest.raises(ValueError, match=r"__len__"):
            list(ds.iter_epoch())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"workers": -1}, r"`workers` must be an int >= 0"),
        ({"workers": 1.5}, r"`workers` must be an int >= 0"),
        ({"use_multiprocessing": "yes"}, r"`use_multiprocessing` must be True or False"),
        ({"max_queue_size": 0}, r"`max_queue_size` must be an int >= 1"),
        ({"start_method": "thread"}, r"`start_method` must be one of"),
    ],
)
def test_bad_worker_settings_are_clear_errors_naming_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Plain(3, **kwargs)
