"""How Keras 3's `fit`/`evaluate`/`predict` consume a seqify Sequence.

Keras picks a data adapter per call in
`keras.src.trainers.data_adapters.get_data_adapter`. For a PyDataset it builds
a `PyDatasetAdapter`, which would run Keras's own enqueuer (a pool re-created
every epoch, batches pickled through pipes) and shuffle batch indices with
Python's global `random`. seqify wraps that one function so that a seqify
Sequence gets a `SequenceAdapter` instead; every other input goes to Keras
unchanged. The adapter:
- iterates seqify's engine (persistent pool, shared memory, ordered);
- applies `class_weight` exactly as Keras's PyDatasetAdapter does;
- calls the Sequence's `on_epoch_begin`/`on_epoch_end` once per epoch;
- infers the tf.data signature without consuming a batch.
See docs/design.md ("How fit drives a seqify object").
"""

import functools
import os
import sys
import threading

import numpy as np
from keras.src.trainers.data_adapters import data_adapter_utils
from keras.src.trainers.data_adapters.data_adapter import DataAdapter

_sequence_class = None


class SequenceAdapter(DataAdapter):
    """Keras DataAdapter over a seqify Sequence, one per fit/evaluate/predict call."""

    def __init__(self, sequence, class_weight=None):
        self.sequence = sequence
        self.class_weight = class_weight
        self._within_epoch = False
        self._begin_pending = False
        self._begun = False

    def _batches(self):
        """One pass of the engine, weighted; a generator started lazily."""
        if _building_model():
            # Keras pulls one batch only to build the model's shapes, then
            # drops the iterator: give it a peeked batch so no stream batch is
            # lost and no epoch (or epoch hook) is spent on it.
            yield self._weigh(self.sequence._seqify_peek()[0])
            return
        self._deliver_epoch_begin()
        batches = self.sequence._seqify_iter_pass()
        try:
            for batch in batches:
                if self._begin_pending:  # a pass that spans Keras epochs
                    self._deliver_epoch_begin()
                yield self._weigh(batch)
        finally:
            batches.close()  # give back in-flight work now, not at GC

    def _deliver_epoch_begin(self):
        # The user's hook runs just before the pass that it precedes starts
        # fetching, and never for Keras's shape-building pull.
        if self._begin_pending:
            self._begin_pending = False
            self._begun = True
            self.sequence.on_epoch_begin()

    def _weigh(self, batch):
        # Same rules as keras's PyDatasetAdapter._standardize_batch.
        if self.class_weight is None or isinstance(batch, dict):
            return batch
        if len(batch) == 3:
            raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same time.")
        if len(batch) == 2:
            sw = data_adapter_utils.class_weight_to_sample_weights(batch[1], self.class_weight)
            batch = batch + (sw,)
        return batch

    def get_numpy_iterator(self):
        # Not data_adapter_utils.get_numpy_iterator: its per-batch tree map
        # costs more than the rest of seqify's path (and releases the GIL to
        # any waiting thread); batches are almost always numpy already.
        return (_as_numpy(batch) for batch in self._batches())

    def get_jax_iterator(self):
        return data_adapter_utils.get_jax_iterator(self._batches())

    def get_torch_dataloader(self):
        return data_adapter_utils.get_torch_dataloader(self._batches())

    def get_tf_dataset(self, signature=None):
        from keras.src.utils.module_utils import tensorflow as tf

        if signature is None:
            signature = output_signature(self.sequence, self.class_weight)
        ds = tf.data.Dataset.from_generator(self._batches, output_signature=signature)
        # seqify's engine already runs ahead in parallel; tf.data's own
        # autotuned threads would only compete with it for the cores. No
        # tf.data prefetch either: batches it pre-pulled would be dropped
        # with the iterator, which for a stream means lost batches.
        options = tf.data.Options()
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        # seqify objects are sharded explicitly (`shard()`); tf.distribute's
        # auto-sharding would make every worker build every batch.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    def on_epoch_begin(self):
        if not self._within_epoch:
            self._within_epoch = True
            self._begin_pending = True

    def on_epoch_end(self):
        # Keras may call this several times per epoch (reset, end of
        # iteration, StopIteration): the user's hook runs once, and only
        # for an epoch whose on_epoch_begin it saw.
        if self._within_epoch:
            self._within_epoch = False
            self._begin_pending = False
            if self._begun:
                self._begun = False
                self.sequence.on_epoch_end()

    @property
    def num_batches(self):
        return self.sequence._seqify_num_batches()

    @property
    def batch_size(self):
        return None

    @property
    def has_partial_batch(self):
        return None

    @property
    def partial_batch_size(self):
        return None


def _as_numpy(tree):
    """Converts tensor leaves (tf, torch, jax) to numpy; ndarrays pass as is."""
    kind = type(tree)
    if kind is np.ndarray:
        return tree
    if kind is tuple:
        return tuple(_as_numpy(leaf) for leaf in tree)
    if kind is dict:
        return {key: _as_numpy(leaf) for key, leaf in tree.items()}
    if kind is list:
        return [_as_numpy(leaf) for leaf in tree]
    if tree is None or isinstance(tree, np.ndarray) or not hasattr(tree, "__array__"):
        return tree
    if data_adapter_utils.is_torch_tensor(tree):
        tree = tree.cpu()
    return np.asarray(tree)


def output_signature(sequence, class_weight=None):
    """tf.data signature of `sequence`'s batches (cached on the object)."""
    runtime = sequence._seqify_runtime()
    key = class_weight is not None
    cached = runtime.extra.get(("spec", key))
    if cached is not None:
        return cached.value
    from keras.src.utils.module_utils import tensorflow as tf

    samples = sequence._seqify_peek()
    if class_weight is not None:
        samples = [SequenceAdapter(sequence, class_weight)._weigh(b) for b in samples]
    spec = data_adapter_utils.get_tensor_spec(samples)

    def relax_batch_dim(s):
        # Batches may differ in size (the last one, or a stream's); the
        # leading dimension is always the batch dimension.
        if isinstance(s, tf.TensorSpec) and s.shape.rank:
            return tf.TensorSpec([None] + s.shape.as_list()[1:], s.dtype, s.name)
        return s

    spec = tf.nest.map_structure(relax_batch_dim, spec)
    runtime.extra[("spec", key)] = _Cached(spec)
    return spec


class _Cached:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


_SEQIFY_DIR = os.path.dirname(os.path.abspath(__file__))
_PASS_THROUGH = (
    _SEQIFY_DIR,
    f"{os.sep}data_adapters{os.sep}",
    f"{os.sep}tensorflow{os.sep}",
    f"{os.sep}torch{os.sep}utils{os.sep}data{os.sep}",
    threading.__file__,
)
_MODEL_BUILDERS = ("_symbolic_build", "_maybe_symbolic_build")


def _first_caller(frame):
    """The innermost frame that is not seqify, a data adapter, TF or threading."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(part in filename for part in _PASS_THROUGH):
            return frame
        frame = frame.f_back
    return None


def _building_model() -> bool:
    """Whether Keras is pulling a batch only to build the model.

    Keras's JAX and torch trainers (and TF's under a distribution strategy)
    take one batch from a fresh iterator to build an unbuilt model, then drop
    it. The caller is the only way to tell. Under TF the pull happens on a
    tf.data thread while the main thread waits in Keras, so both are looked at.
    Checked once per pass.
    """
    stacks = [sys._getframe(1)]
    main = threading.main_thread()
    if threading.current_thread() is not main:
        stacks.append(sys._current_frames().get(main.ident))
    keras_dir = f"{os.sep}keras{os.sep}"
    for frame in stacks:
        caller = _first_caller(frame)
        if caller is None:
            continue
        # JAX's predict() builds inline with a bare next(iterator); its real
        # loop goes through EpochIterator.__next__ instead.
        if caller.f_code.co_name == "predict" and keras_dir in caller.f_code.co_filename:
            return True
        while caller is not None:
            code = caller.f_code
            if code.co_name in _MODEL_BUILDERS and keras_dir in code.co_filename:
                return True
            caller = caller.f_back
        return False
    return False


def _called_from_predict() -> bool:
    # Keras passes shuffle=False to both evaluate and predict, so the call
    # site is the only way to tell them apart; looked up once per call.
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "predict" and f"{os.sep}keras{os.sep}" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def install(sequence_class) -> None:
    """Routes seqify Sequences in `fit`/`evaluate`/`predict` to SequenceAdapter."""
    global _sequence_class
    _sequence_class = sequence_class
    from keras.src.trainers import data_adapters

    original = data_adapters.get_data_adapter
    if getattr(original, "_seqify_original", None) is not None:
        return

    @functools.wraps(original)
    def get_data_adapter(x, y=None, sample_weight=None, batch_size=None, steps_per_epoch=None, shuffle=False, class_weight=None):
        if isinstance(x, _sequence_class):
            if y is not None:
                data_adapters.raise_unsupported_arg("y", "the targets", "seqify Sequence")
            if sample_weight is not None:
                data_adapters.raise_unsupported_arg("sample_weights", "the sample weights", "seqify Sequence")
            if getattr(x, "is_shuffled", False) and _called_from_predict():
                raise ValueError(
                    f"model.predict() was given a shuffled seqify object ({type(x).__name__} with "
                    "shuffle=True): its outputs would come back in a shuffled order that matches "
                    "no input order. Build a copy with shuffle=False for prediction."
                )
            # `shuffle` is deliberately not used: a seqify object owns its
            # order (its own `shuffle`/`seed`), so fit's default shuffle=True
            # can neither reorder a stream nor break reproducibility.
            return SequenceAdapter(x, class_weight=class_weight)
        return original(x, y, sample_weight, batch_size, steps_per_epoch, shuffle, class_weight)

    get_data_adapter._seqify_original = original
    data_adapters.get_data_adapter = get_data_adapter
