"""How Keras 3's `fit`/`evaluate`/`predict` consume a seqify object.

`seqify.keras_internals` diverts seqify objects (and `seqify.threadsafe`
iterators) from Keras's `get_data_adapter` to a `SequenceAdapter`, one per
fit/evaluate/predict call. It:
- runs each pass on seqify's engine (`Sequence.iter_epoch`), shuffled when
  `fit(shuffle=...)` asks and the object leaves the choice to fit;
- applies `class_weight` exactly as Keras's PyDatasetAdapter does;
- calls the object's `on_epoch_begin`/`on_epoch_end` once per epoch, never
  for Keras's model-building pull (answered with a sample batch, so no
  stream batch is lost);
- infers the tf.data signature from the first batches without consuming any.
See docs/design.md ("How fit drives a seqify object").
"""

import weakref

import numpy as np

from seqify import keras_internals as ki
from seqify import tf_dataset
from seqify.threadsafe import ThreadSafeIterator

_sequence_class = None


class SequenceAdapter(ki.DataAdapter):
    """Keras DataAdapter over a seqify Sequence.

    Args:
        sequence: the seqify object.
        class_weight: `fit`'s class_weight, or None.
        shuffle: `fit`'s shuffle (the object's own `shuffle` wins if set).
        natural: always the natural order (for predict).
    """

    def __init__(self, sequence, class_weight=None, shuffle=False, natural=False):
        self.sequence = sequence
        self.class_weight = class_weight
        self.shuffle = shuffle
        self.natural = natural
        self._within_epoch = False
        self._begin_pending = False
        self._begun = False

    def _batches(self):
        """One pass of the engine, weighted; a generator started lazily."""
        if ki.building_model(_OWN_CODES):
            # Keras pulls one batch only to build the model's shapes, then
            # drops the iterator: give it a sample so no stream batch is
            # lost and no epoch (or epoch hook) is spent on it.
            yield self._weigh(self.sequence._runner.sample_batches(1)[0])
            return
        self._deliver_epoch_begin()
        if self.natural:
            batches = self.sequence._runner.iter_epoch(False, force=True)
        else:
            batches = self.sequence.iter_epoch(shuffle=self.shuffle)
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
            sw = ki.class_weight_to_sample_weights(batch[1], self.class_weight)
            batch = batch + (sw,)
        return batch

    def _numpy_batches(self):
        # Not Keras's get_numpy_iterator: its per-batch tree map costs more
        # than the rest of seqify's path; batches are almost always numpy.
        for batch in self._batches():
            yield _as_numpy(batch)

    def get_numpy_iterator(self):
        return self._numpy_batches()

    def get_jax_iterator(self):
        return ki.get_jax_iterator(self._batches())

    def get_torch_dataloader(self):
        return ki.get_torch_dataloader(self._batches())

    def _tf_batches(self, carried=0):
        # One pass for the tf.data path; `carried` batches a dropped
        # iteration handed back are served first, so take fewer.
        batches = self._batches()
        if not carried:
            return batches
        return _first(batches, max(0, (self.num_batches or 0) - carried))

    def get_tf_dataset(self, signature=None):
        from keras.src.utils.module_utils import tensorflow as tf

        if signature is None:
            signature = output_signature(self.sequence, self.class_weight)
        check = _SignatureCheck(signature, type(self.sequence).__name__)
        runner = self.sequence._runner
        keep = None
        boundary = None
        if not runner.source.reorders:
            # A stream: batches pulled ahead but not taken go back (served
            # first next time). Under a tf.distribute strategy the in-graph
            # counter that tells them apart is not available: one batch per
            # crossing then, which never pulls ahead.
            if tf.distribute.has_strategy():
                boundary = 1
            else:
                keep = _tf_carry(runner)
                boundary = getattr(self, "steps_per_epoch", None)
        # Several batches per Python crossing, split in the graph: see
        # seqify/tf_dataset.py and docs/design.md ("The TensorFlow fit path").
        # Large batches cross one at a time without the chunk dimension: its
        # unbatch would copy each batch once more in the graph.
        per_batch = tf_dataset.is_large(runner.sample_batches(1))
        ds = tf_dataset.make_dataset(self._tf_batches, signature, check=check, boundary=boundary, keep=keep,
                                     per_batch=per_batch)
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
        return self.sequence._runner.source.num_batches()

    @property
    def batch_size(self):
        return None

    @property
    def has_partial_batch(self):
        return None

    @property
    def partial_batch_size(self):
        return None




_CARRY = weakref.WeakKeyDictionary()  # runner -> stream batches a dropped tf.data iteration gave back


def _tf_carry(runner):
    carry = _CARRY.get(runner)
    if carry is None:
        carry = _CARRY[runner] = tf_dataset.Carry()
    return carry


def _first(batches, count):
    try:
        for _ in range(count):
            try:
                yield next(batches)
            except StopIteration:
                return
    finally:
        batches.close()


_OWN_CODES = (
    SequenceAdapter._batches.__code__,
    SequenceAdapter._numpy_batches.__code__,
    _first.__code__,
    tf_dataset._Chunker.__call__.__code__,
    tf_dataset._chain.__code__,
)


def _as_numpy(tree):
    """Converts tensor leaves (tf, torch, jax) to numpy; ndarrays pass as is."""
    kind = type(tree)
    if kind is np.ndarray:
        return tree
    if kind is tuple:
        for leaf in tree:
            if type(leaf) is not np.ndarray:
                return tuple(_as_numpy(leaf) for leaf in tree)
        return tree  # the common case: already numpy, nothing to rebuild
    if kind is dict:
        return {key: _as_numpy(leaf) for key, leaf in tree.items()}
    if kind is list:
        return [_as_numpy(leaf) for leaf in tree]
    if tree is None or isinstance(tree, np.ndarray) or not hasattr(tree, "__array__"):
        return tree
    if ki.is_torch_tensor(tree):
        tree = tree.cpu()
    return np.asarray(tree)


def output_signature(sequence, class_weight=None):
    """tf.data signature of `sequence`'s batches (cached per process).

    The object's own `output_signature` if it has one; else inferred like
    Keras does, from the first `NUM_BATCHES_FOR_TENSOR_SPEC` batches
    (dimensions that differ between them become None), read without
    consuming anything (a stream's through its push-back buffer). The
    leading (batch) dimension is always relaxed.
    """
    given = sequence.settings.output_signature
    if given is not None:
        return given
    runner = sequence._runner
    key = class_weight is not None
    cached = runner.signatures.get(key)
    if cached is not None:
        return cached
    from keras.src.utils.module_utils import tensorflow as tf

    samples = runner.sample_batches(ki.NUM_BATCHES_FOR_TENSOR_SPEC)
    if class_weight is not None:
        samples = [SequenceAdapter(sequence, class_weight)._weigh(b) for b in samples]
    spec = ki.get_tensor_spec(samples)

    def relax_batch_dim(s):
        # Batches may differ in size (the last one, or a stream's); the
        # leading dimension is always the batch dimension.
        if isinstance(s, tf.TensorSpec) and s.shape.rank:
            return tf.TensorSpec([None] + s.shape.as_list()[1:], s.dtype, s.name)
        return s

    spec = tf.nest.map_structure(relax_batch_dim, spec)
    runner.signatures[key] = spec
    return spec


class _SignatureCheck:
    """Raises a clear error for a batch that does not fit the tf.data signature.

    Without it tf.data fails deep inside the train step with "yielded an
    element of shape ... where ... was expected" and no hint at the fix.
    """

    def __init__(self, signature, name):
        from keras.src.utils.module_utils import tensorflow as tf

        self._name = name
        self._paths = []
        self._dims = []
        for path, spec in _leaves(signature, "batch"):
            shape = getattr(spec, "shape", None)
            if isinstance(spec, tf.TensorSpec) and shape is not None and shape.rank is not None:
                self._paths.append(path)
                self._dims.append(tuple(shape.as_list()))
            else:
                self._paths.append(None)
                self._dims.append(None)
        self._signature = signature
        self._count = 0

    def __call__(self, batch):
        index = self._count
        self._count += 1
        leaves = [leaf for _, leaf in _leaves(batch, "batch")]
        if len(leaves) != len(self._dims):
            self._fail(index, f"it has {len(leaves)} arrays where the signature has {len(self._dims)}")
        for leaf, dims, path in zip(leaves, self._dims, self._paths):
            if dims is None:
                continue
            shape = np.shape(leaf)
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                self._fail(index, f"{path} has shape {tuple(shape)} where the signature expects {dims}")

    def _fail(self, index, what):
        raise ValueError(
            f"Batch {index} of this pass of {self._name} does not fit the tf.data signature seqify "
            f"inferred from the first {ki.NUM_BATCHES_FOR_TENSOR_SPEC} batches: {what}. Pass the full "
            "signature as `output_signature=` (to the constructor or to_tf_dataset), with None for "
            f"every dimension that varies. Inferred: {self._signature}"
        )


def _leaves(tree, path):
    if isinstance(tree, dict):
        for key in tree:
            yield from _leaves(tree[key], f"{path}[{key!r}]")
    elif isinstance(tree, (tuple, list)):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, tree


# -- the get_data_adapter hook ---------------------------------------------------
def _claims(x) -> bool:
    return isinstance(x, (_sequence_class, ThreadSafeIterator))


def _make_adapter(x, arguments):
    if isinstance(x, ThreadSafeIterator):
        x = x.as_sequence(arguments["steps_per_epoch"])
    if arguments["y"] is not None:
        ki.raise_unsupported_arg("y", "the targets", "seqify Sequence")
    if arguments["sample_weight"] is not None:
        ki.raise_unsupported_arg("sample_weights", "the sample weights", "seqify Sequence")
    # predict() always runs in natural order, whatever the object's own
    # `shuffle`: predictions must line up with the inputs.
    predicting = ki.called_from_predict()
    adapter = SequenceAdapter(x, class_weight=arguments["class_weight"], shuffle=bool(arguments["shuffle"]), natural=predicting)
    adapter.steps_per_epoch = arguments.get("steps_per_epoch")  # chunks of the tf.data path never cross it
    return adapter


def install(sequence_class) -> None:
    """Routes seqify objects in `fit`/`evaluate`/`predict` to SequenceAdapter."""
    global _sequence_class
    _sequence_class = sequence_class
    ki.install_adapter_hook(_claims, _make_adapter)
