"""One contract test per Keras/tf_keras touchpoint (seqify/keras_internals.py).

When a Keras upgrade moves or changes a private name seqify relies on, the
test named for that touchpoint fails, instead of `fit` breaking obscurely.
"""

import inspect

import keras
import numpy as np
import pytest

import seqify  # noqa: F401  (installs the hook)
from seqify import keras_internals as ki


# 1. keras.src.trainers.data_adapters.get_data_adapter -----------------------------
def test_touchpoint_get_data_adapter_is_a_module_attribute_seqify_wraps_with_every_parameter_it_reads():
    from keras.src.trainers import data_adapters

    wrapper = data_adapters.get_data_adapter
    original = wrapper._seqify_original
    assert original.__module__.startswith("keras.src.trainers.data_adapters")
    parameters = inspect.signature(original).parameters
    assert all(name in parameters for name in ki.ADAPTER_PARAMETERS), list(parameters)


def test_touchpoint_get_data_adapter_is_what_keras_epoch_iterator_calls():
    # EpochIterator must look the function up on the module at call time, or
    # seqify objects would reach Keras's own PyDatasetAdapter.
    from keras.src.trainers import epoch_iterator

    source = inspect.getsource(epoch_iterator.EpochIterator.__init__)
    assert "data_adapters.get_data_adapter(" in source


def test_touchpoint_get_data_adapter_wrapper_forwards_other_inputs_untouched_by_keyword_or_position():
    from keras.src.trainers import data_adapters

    x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    by_keyword = data_adapters.get_data_adapter(x=x, y=y, batch_size=4, shuffle=False)
    by_position = data_adapters.get_data_adapter(x, y, None, 4, None, False)
    assert type(by_keyword).__name__ == type(by_position).__name__ == "ArrayDataAdapter"
    assert by_keyword.num_batches == by_position.num_batches == 2


# 2. DataAdapter ---------------------------------------------------------------------
def test_touchpoint_data_adapter_base_class_has_the_methods_seqify_implements():
    from seqify.keras_adapter import SequenceAdapter

    assert issubclass(SequenceAdapter, ki.DataAdapter)
    for name in ("get_numpy_iterator", "get_tf_dataset", "get_jax_iterator", "get_torch_dataloader",
                 "num_batches", "batch_size", "has_partial_batch", "partial_batch_size",
                 "on_epoch_begin", "on_epoch_end"):
        assert hasattr(ki.DataAdapter, name), name


# 3. data_adapter_utils ------------------------------------------------------------
def test_touchpoint_class_weight_to_sample_weights_weights_by_class():
    y = np.array([[0], [1], [1]])
    weights = ki.class_weight_to_sample_weights(y, {0: 1.0, 1: 3.0})
    assert np.asarray(weights).tolist() == [1.0, 3.0, 3.0]


def test_touchpoint_get_tensor_spec_relaxes_dimensions_that_differ():
    import tensorflow as tf

    spec = ki.get_tensor_spec([np.zeros((2, 5, 3), "float32"), np.zeros((2, 7, 3), "float32")])
    assert isinstance(spec, tf.TensorSpec)
    assert spec.shape.as_list()[1:] == [None, 3]
    assert isinstance(ki.NUM_BATCHES_FOR_TENSOR_SPEC, int) and ki.NUM_BATCHES_FOR_TENSOR_SPEC >= 1


def test_touchpoint_jax_and_torch_iterator_helpers_take_a_plain_iterator():
    batches = [(np.zeros((2, 1), "float32"),)]
    assert callable(ki.get_jax_iterator) and callable(ki.get_torch_dataloader)
    assert len(list(ki.get_jax_iterator(iter(batches)))) == 1
    assert ki.is_torch_tensor(np.zeros(1)) is False


# 4. Keras's callers by code identity ------------------------------------------------
def test_touchpoint_model_building_and_predict_callers_are_found_for_the_loaded_backend():
    from keras.src.trainers.trainer import Trainer

    known = ki.callers()
    assert inspect.unwrap(Trainer._symbolic_build).__code__ in known.builders
    assert known.predicts, "no predict() code object found for this backend"
    if keras.backend.backend() == "tensorflow":
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

        assert inspect.unwrap(TensorFlowTrainer._maybe_symbolic_build).__code__ in known.builders


def test_touchpoint_predict_is_recognised_from_inside_a_real_predict_call():
    seen = []  # what the caller check said while predict built its adapter

    class Probe(seqify.Sequence):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return np.zeros((2, 1), "float32"), np.zeros((2, 1), "float32")

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    from keras.src.trainers import data_adapters

    from seqify import keras_adapter

    inner = data_adapters.get_data_adapter._seqify_original

    make = keras_adapter._make_adapter

    def recording(x, arguments):
        seen.append(ki.called_from_predict())
        return make(x, arguments)

    try:
        ki.install_adapter_hook(keras_adapter._claims, recording)
        with Probe() as data:
            model.predict(data, verbose=0)
            model.evaluate(data, verbose=0)
    finally:
        ki.install_adapter_hook(keras_adapter._claims, make)
    assert inner is data_adapters.get_data_adapter._seqify_original
    assert seen == [True, False]


# 5. tf_keras ---------------------------------------------------------------------------
def test_touchpoint_tf_keras_data_adapter_has_the_names_seqify_uses():
    module = ki.tf_keras_data_adapter()
    if module is None:
        pytest.skip("tf_keras is not installed (pip install '.[legacy]')")
    for name in ("ALL_ADAPTER_CLS", "DataAdapter", "is_none_or_empty", "unpack_x_y_sample_weight"):
        assert hasattr(module, name), name


# 6. EpochIterator's accounting (the prefetch ledger mirrors it) ---------------------------
def test_touchpoint_epoch_iterator_keeps_one_iterator_across_epochs_when_steps_per_epoch_is_shorter():
    from keras.src.trainers.epoch_iterator import EpochIterator

    class Six(keras.utils.PyDataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return np.full((1, 1), i, "float32"), np.zeros((1, 1), "float32")

    iterator = EpochIterator(Six(), steps_per_epoch=3)
    seen = []
    for _ in range(3):
        ids = []
        for _, _, batches in iterator:
            ids.extend(int(b[0][0, 0]) for b in batches)
        seen.append(ids)
    # Epoch 2 continues epoch 1's iterator; epoch 3 starts a fresh one.
    assert seen == [[0, 1, 2], [3, 4, 5], [0, 1, 2]]


# 6. the running fit's frame ------------------------------------------------------------
def test_touchpoint_fit_frame_holds_the_model_and_an_epoch_iterator_with_the_fields_seqify_shortens():
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            local = ki.fit_locals()
            seen["model"] = local.get("self") if local else None
            iterator = local.get("epoch_iterator") if local else None
            seen["fields"] = iterator is not None and all(
                hasattr(iterator, name) for name in ("steps_per_epoch", "_num_batches"))

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.zeros((4, 1)), np.zeros((4, 1)), epochs=1, verbose=0, callbacks=[Peek()])
    assert seen == {"model": model, "fields": True}


# 7. file_utils and the lazy TensorFlow module ---------------------------------------------
def test_touchpoint_file_utils_and_lazy_tensorflow_have_what_seqify_calls():
    for name in ("exists", "makedirs", "copy", "File"):
        assert callable(getattr(ki.file_utils, name)), name
    assert ki.lazy_tensorflow.data.Dataset is not None


# 8. the strategy a TFEpochIterator is built for ------------------------------------------
def test_touchpoint_tf_epoch_iterator_takes_a_distribute_strategy_and_the_default_one_is_recognised():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow backend only")
    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    assert "distribute_strategy" in inspect.signature(TFEpochIterator.__init__).parameters
    assert type(tf.distribute.get_strategy()).__name__ == "_DefaultDistributionStrategy"
    assert ki.callers().tf_epoch_iterator_init is inspect.unwrap(TFEpochIterator.__init__).__code__
    assert ki.building_for_a_strategy() is False
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert ki.building_for_a_strategy() is True
