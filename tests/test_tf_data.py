"""`Sequence.to_tf_dataset()`: signature, ordering, parallel workers, composition."""

import numpy as np
import pytest
import tensorflow as tf

import seqify
from conftest import make_batch


def _ids(dataset):
    return [int(x.numpy().reshape(-1)[0]) for x, _ in dataset]


def test_element_spec_has_unknown_batch_dimension_and_exact_feature_shape():
    with seqify.from_batch_fn(make_batch, 5) as ds:
        spec = ds.to_tf_dataset().element_spec
    assert spec[0].shape.as_list() == [None, 3]
    assert spec[0].dtype == tf.float32
    assert spec[1].shape.as_list() == [None, 1]


def test_signature_inference_consumes_no_stream_batch():
    def gen():
        i = 0
        while True:
            yield make_batch(i)
            i += 1

    with seqify.from_generator(gen, steps_per_epoch=4) as ds:
        dataset = ds.to_tf_dataset()
        assert _ids(dataset) == [0, 1, 2, 3]
        assert _ids(dataset) == [4, 5, 6, 7]


@pytest.mark.parametrize("use_multiprocessing", [False, True])
def test_each_iteration_is_one_ordered_epoch_from_parallel_workers(use_multiprocessing):
    with seqify.from_batch_fn(make_batch, 6, workers=2, use_multiprocessing=use_multiprocessing) as ds:
        dataset = ds.to_tf_dataset()
        assert _ids(dataset) == list(range(6))
        assert _ids(dataset) == list(range(6))


def test_composes_with_map_prefetch_and_unbatch():
    with seqify.from_batch_fn(make_batch, 4, workers=2) as ds:
        dataset = ds.to_tf_dataset().map(lambda x, y: (x * 2.0, y)).unbatch().prefetch(2)
        values = [int(x.numpy()[0]) for x, _ in dataset]
    assert values == [2 * i for i in range(4) for _ in range(4)]


def test_user_signature_is_used_as_given():
    signature = (tf.TensorSpec([4, 3], tf.float32), tf.TensorSpec([4, 1], tf.float32))
    with seqify.from_batch_fn(make_batch, 3) as ds:
        dataset = ds.to_tf_dataset(output_signature=signature)
        assert dataset.element_spec[0].shape.as_list() == [4, 3]
        assert _ids(dataset) == [0, 1, 2]


def test_trains_under_a_tf_distribute_strategy(model):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with seqify.from_batch_fn(make_batch, 5, workers=2) as ds:
        dataset = strategy.experimental_distribute_dataset(ds.to_tf_dataset())
        seen = [int(x.numpy().reshape(-1)[0]) for x, _ in dataset]
    assert seen == list(range(5))
