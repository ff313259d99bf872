"""get_state()/set_state(): stop anywhere, resume at the exact batch.

A state taken after k batches, sent through JSON and restored into a freshly
built object (under another worker setting) makes that object serve exactly
the batches the first one would have served next: same ids, same order, same
`worker_info().rng()` noise. A state from another object is refused.
"""

import json

import numpy as np
import pytest

import seqify

N, SEED = 7, 11


def noisy(i):
    noise = seqify.worker_info().rng().normal()
    return (np.array([[i, noise]], "float32"),)


class NoisySequence(seqify.Sequence):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return noisy(i)


def counting_stream(start=0):
    i = start
    while True:
        yield (np.array([[i, 0.0]], "float32"),)
        i += 1


def add_noise(batch):
    (x,) = batch
    x = x.copy()
    x[0, 1] = seqify.worker_info().rng().normal()
    return (x,)


def sharded_stream():
    info = seqify.worker_info()
    i = info.shard_index
    while True:
        yield (np.array([[i, 0.0]], "float32"),)
        i += info.num_shards


def build(kind, **settings):
    settings.setdefault("seed", SEED)
    if kind == "batch_fn":
        return seqify.from_batch_fn(noisy, N, **settings)
    if kind == "arrays":
        x = np.stack([np.arange(4 * N), np.zeros(4 * N)], axis=1).astype("float32")
        return seqify.from_arrays(x, batch_size=4, **settings)
    if kind == "subclass":
        return NoisySequence(**settings)
    if kind == "stream":
        return seqify.from_generator(counting_stream, steps_per_epoch=N, transform=add_noise, **settings)
    if kind == "sharded":
        return seqify.from_generator(sharded_stream, steps_per_epoch=N, transform=add_noise, sharded=True, **settings)
    raise ValueError(kind)


def rows(batch):
    return [tuple(float(v) for v in row) for row in np.asarray(batch[0])]


def take(ds, count, shuffle=True, state=False):
    """The first `count` batches of the next pass, and (if `state`) the
    object's state taken then, while the pass is still open, as it is
    during fit."""
    out = []
    taken = None
    batches = ds.iter_epoch(shuffle=shuffle)
    try:
        for batch in batches:
            out.append(rows(batch))
            if len(out) == count:
                break
        if state:
            taken = json.loads(json.dumps(ds.get_state()))
    finally:
        batches.close()
    return (out, taken) if state else out


def epochs(ds, count, shuffle=True):
    return [rows(b) for _ in range(count) for b in ds.iter_epoch(shuffle=shuffle)]


THREADS = dict(workers=2)
PROCESSES = dict(workers=2, use_multiprocessing=True)
INLINE = dict(workers=0)
SETTINGS_PAIRS = [
    pytest.param(PROCESSES, INLINE, id="processes-to-inline"),
    pytest.param(INLINE, THREADS, id="inline-to-threads"),
    pytest.param(THREADS, PROCESSES, id="threads-to-processes"),
]


def json_round_trip(state):
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("saved_under, restored_under", SETTINGS_PAIRS)
@pytest.mark.parametrize("kind", ["batch_fn", "arrays", "subclass", "stream"])
def test_mid_epoch_state_resumes_the_exact_batches_under_another_worker_setting(kind, saved_under, restored_under):
    with build(kind, **saved_under) as reference:
        expected = epochs(reference, 2)
    with build(kind, **saved_under) as first:
        head, state = take(first, 3, state=True)
    with build(kind, **restored_under) as second:
        second.set_state(state)
        rest = [rows(b) for b in second.iter_epoch(shuffle=True)] + [rows(b) for b in second.iter_epoch(shuffle=True)]
    assert head + rest == expected
    assert state["epoch"] == 0 and state["position"] == 3


@pytest.mark.parametrize("kind", ["batch_fn", "arrays", "subclass", "stream"])
def test_state_at_an_epoch_boundary_resumes_the_next_epoch(kind):
    with build(kind, **PROCESSES) as reference:
        expected = epochs(reference, 3)
    with build(kind, **PROCESSES) as first:
        done = epochs(first, 1)
        state = json_round_trip(first.get_state())
    with build(kind, **THREADS) as second:
        second.set_state(state)
        rest = epochs(second, 2)
    assert (state["epoch"], state["position"]) == (1, 0)
    assert done + rest == expected


def test_state_after_a_pass_stopped_early_is_the_next_epoch():
    # As the runner does: a pass closed early leaves the rest of its epoch.
    with build("batch_fn", **INLINE) as ds:
        take(ds, 3)
        assert (ds.get_state()["epoch"], ds.get_state()["position"]) == (1, 0)


def test_state_counts_consumed_batches_not_those_read_ahead():
    with build("batch_fn", workers=4, max_queue_size=8) as ds:
        batches = ds.iter_epoch()
        next(batches), next(batches)
        assert ds._runner.running_pool is not None  # the window is full of batches built ahead
        assert (ds.get_state()["epoch"], ds.get_state()["position"]) == (0, 2)
        batches.close()


def test_stream_state_counts_consumed_items_not_those_read_ahead():
    with build("stream", workers=2, buffer_size=5) as ds:
        batches = ds.iter_epoch()
        next(batches), next(batches)
        assert ds.get_state()["stream"]["items"] == 2
        batches.close()


def test_rest_of_an_interrupted_epoch_keeps_its_shuffled_order():
    with build("batch_fn", **THREADS) as reference:
        expected = epochs(reference, 1, shuffle=True)
    with build("batch_fn", **THREADS) as first:
        head, state = take(first, 2, shuffle=True, state=True)
    with build("batch_fn", **THREADS) as second:
        second.set_state(state)
        # The caller now asks for natural order: the epoch in progress keeps its own.
        rest = [rows(b) for b in second.iter_epoch(shuffle=False)]
    assert head + rest == expected


def test_infinite_source_resumes_at_the_next_index():
    def make():
        return seqify.from_batch_fn(noisy, None, seed=SEED, **THREADS)

    with make() as first:
        head, state = take(first, 5, state=True)
    with make() as second:
        second.set_state(state)
        rest = take(second, 3)
    assert [row[0][0] for row in head + rest] == list(range(8))


def test_sharded_stream_resumes_each_shard_at_its_position():
    with build("sharded", **PROCESSES) as reference:
        expected = epochs(reference, 2)
    with build("sharded", **PROCESSES) as first:
        head, state = take(first, 3, state=True)
    with build("sharded", **PROCESSES) as second:
        second.set_state(state)
        rest = [rows(b) for b in second.iter_epoch()] + [rows(b) for b in second.iter_epoch()]
    assert state["stream"]["per_shard"] == [2, 1]  # items 0, 2 from shard 0; item 1 from shard 1
    assert head + rest == expected


def test_sharded_stream_refuses_a_state_of_another_worker_count():
    with build("sharded", **PROCESSES) as first:
        _, state = take(first, 3, state=True)
    with build("sharded", workers=3, use_multiprocessing=True) as second:
        with pytest.raises(ValueError, match=r"saved with 2 worker shard.*workers=2"):
            second.set_state(state)


def test_stream_replay_skips_items_without_running_transform():
    calls = []

    def transform(batch):
        calls.append(1)
        return batch

    def make():
        return seqify.from_generator(counting_stream, steps_per_epoch=N, transform=transform, seed=SEED, workers=0)

    with make() as first:
        epochs(first, 1)
        _, state = take(first, 2, state=True)
    with make() as second:
        calls.clear()
        second.set_state(state)
        assert calls == []  # 9 items skipped on replay, none transformed
        assert [row[0][0] for row in take(second, 2)] == [9, 10]
        assert len(calls) == 2


def test_stream_with_seek_is_positioned_by_it_instead_of_replayed():
    sought = []

    def seek(n):
        sought.append(n)
        return counting_stream(start=n)

    def make(source):
        return seqify.from_generator(source, steps_per_epoch=N, seek=seek, seed=SEED, workers=0)

    # A generator *object* cannot be replayed, but `seek` makes it resumable.
    with make(counting_stream()) as first:
        _, state = take(first, 4, state=True)
    with make(counting_stream(start=1000)) as second:
        second.set_state(state)
        assert [row[0][0] for row in take(second, 2)] == [4, 5]
    assert sought == [4]


def test_generator_object_refuses_to_resume_naming_the_fix():
    state = None
    with seqify.from_generator(counting_stream(), steps_per_epoch=N, seed=SEED, workers=0) as first:
        _, state = take(first, 2, state=True)
    with seqify.from_generator(counting_stream(), steps_per_epoch=N, seed=SEED, workers=0) as second:
        with pytest.raises(TypeError, match=r"generator \*object\*.*generator function.*seek="):
            second.set_state(state)


def test_same_object_state_round_trip_in_process_is_a_no_op():
    with build("stream", **THREADS) as ds:
        head, state = take(ds, 3, state=True)
        ds.set_state(state)  # items 0-2 served, 3+ pushed back: nothing to replay
        rest = [rows(b) for b in ds.iter_epoch()]
    with build("stream", **THREADS) as reference:
        assert head + rest == epochs(reference, 1)


@pytest.mark.parametrize(
    "other, field",
    [
        pytest.param(lambda: seqify.from_batch_fn(noisy, N + 1, seed=SEED, workers=0), "num_batches", id="other-length"),
        pytest.param(lambda: seqify.from_batch_fn(noisy, N, seed=SEED + 1, workers=0), "seed", id="other-seed"),
        pytest.param(lambda: seqify.from_batch_fn(rows, N, seed=SEED, workers=0), "source", id="other-function"),
        pytest.param(lambda: build("stream", workers=0), "class", id="other-kind"),
        pytest.param(lambda: NoisySequence(seed=SEED, workers=0), "class", id="other-class"),
    ],
)
def test_state_of_another_object_is_refused_naming_the_difference(other, field):
    with build("batch_fn", **INLINE) as first:
        _, state = take(first, 2, state=True)
    with other() as second:
        with pytest.raises(ValueError, match=rf"different seqify object \(.*{field}: .*Restore it into the object it came from"):
            second.set_state(state)
        assert (second.get_state()["epoch"], second.get_state()["position"]) == (0, 0)  # untouched


def test_something_that_is_not_a_state_is_refused():
    with build("batch_fn", **INLINE) as ds:
        with pytest.raises(ValueError, match="not a seqify state"):
            ds.set_state({"epoch": 1, "position": 2})


def test_each_training_workers_shard_restores_independently():
    whole = build("batch_fn", **THREADS)
    with whole.shard(2, 1) as reference:
        expected = epochs(reference, 2)
    with whole.shard(2, 1) as first:
        head, state = take(first, 2, state=True)
    with whole.shard(2, 1) as second:
        second.set_state(state)
        rest = [rows(b) for b in second.iter_epoch(shuffle=True)] + [rows(b) for b in second.iter_epoch(shuffle=True)]
    assert head + rest == expected
    with whole.shard(2, 0) as other:
        with pytest.raises(ValueError, match=r"source: .*\[shard 1/2\].*\[shard 0/2\]"):
            other.set_state(state)
    whole.close()
