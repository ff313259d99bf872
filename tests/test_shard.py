"""`shard(num_shards, index)`: disjoint shards whose union is every batch once."""

import numpy as np
import pytest

import seqify
from conftest import make_batch, recording_model


def _epoch(ds):
    return [int(b[0].reshape(-1)[0]) for b in ds.iter_epoch()]


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_shards_are_disjoint_and_cover_every_batch_once(num_shards):
    with seqify.from_batch_fn(make_batch, 7, workers=2) as ds:
        shards = [ds.shard(num_shards, k) for k in range(num_shards)]
        seen = [i for shard in shards for i in _epoch(shard)]
        for shard in shards:
            shard.close()
    assert sorted(seen) == list(range(7))


def test_shuffled_array_shards_cover_every_sample_once_per_epoch():
    x = np.arange(20, dtype="float32").reshape(20, 1)
    with seqify.from_arrays(x, batch_size=3, shuffle=True, seed=5) as ds:
        shards = [ds.shard(2, k) for k in range(2)]
        for _ in range(2):  # two epochs, both shards advance together
            samples = [int(v) for shard in shards for b in shard.iter_epoch() for v in b[0].ravel()]
            assert sorted(samples) == list(range(20))


def test_two_training_workers_fit_on_shards_consume_each_batch_once():
    with seqify.from_batch_fn(make_batch, 6) as ds:
        consumed = []
        for k in range(2):
            model = recording_model()
            with ds.shard(2, k) as shard:
                model.fit(shard, epochs=2, verbose=0)
            consumed.append(model.trained)
    for epoch in range(2):
        per_epoch = consumed[0][epoch * 3:(epoch + 1) * 3] + consumed[1][epoch * 3:(epoch + 1) * 3]
        assert sorted(per_epoch) == list(range(6))


@pytest.mark.parametrize("num_shards,index", [(0, 0), (8, 0), (2, 2), (2, -1)])
def test_bad_shard_arguments_are_rejected(num_shards, index):
    with seqify.from_batch_fn(make_batch, 7) as ds:
        with pytest.raises(ValueError, match="num_shards|index"):
            ds.shard(num_shards, index)


def _global_shard_stream():
    info = seqify.worker_info()
    k = 0
    while True:
        yield make_batch(info.shard_index + k * info.num_shards)
        k += 1


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_sharded_stream_shards_cover_every_item_once_per_epoch(use_multiprocessing):
    with seqify.from_generator(
        _global_shard_stream, steps_per_epoch=8, sharded=True, workers=2, use_multiprocessing=use_multiprocessing,
    ) as ds:
        parts = [ds.shard(2, k) for k in range(2)]
        for epoch in range(2):
            items = [int(b[0].reshape(-1)[0]) for part in parts for b in part.iter_epoch()]
            assert sorted(items) == list(range(8 * epoch, 8 * (epoch + 1)))
        for part in parts:
            part.close()


def test_a_single_producer_stream_refuses_to_shard():
    with seqify.from_generator(_global_shard_stream, steps_per_epoch=4) as ds:
        with pytest.raises(TypeError, match="sharded=True"):
            ds.shard(2, 0)
