"""Legacy Keras 2 (`tf_keras`, `TF_USE_LEGACY_KERAS=1`) support.

tf_keras picks a data adapter by asking every class in
`tf_keras.src.engine.data_adapter.ALL_ADAPTER_CLS` whether it can handle the
input. seqify appends `LegacySequenceAdapter`, which handles seqify objects
only (no other adapter claims them: they have no `__next__` and no `shape`).
It runs seqify's engine instead of tf_keras's enqueuers, so the "may
duplicate your data" problem of generators cannot happen, and it accepts the
Keras 2 habit of passing `workers=`/`use_multiprocessing=`/`max_queue_size=`
to `fit`: values other than fit's defaults are applied to the object.

Installed when `seqify` is imported if tf_keras is already imported or
`TF_USE_LEGACY_KERAS` is set; `install()` may also be called directly.
"""

import os
import sys

_FIT_DEFAULTS = {"workers": 1, "use_multiprocessing": False, "max_queue_size": 10}


def wanted() -> bool:
    return "tf_keras" in sys.modules or os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")


def install(sequence_class) -> bool:
    """Registers the adapter with tf_keras; returns False if tf_keras is absent."""
    from seqify.keras_internals import tf_keras_data_adapter

    data_adapter = tf_keras_data_adapter()
    if data_adapter is None:
        return False
    if any(getattr(cls, "_seqify", False) for cls in data_adapter.ALL_ADAPTER_CLS):
        return True
    data_adapter.ALL_ADAPTER_CLS.append(_make_adapter_class(data_adapter, sequence_class))
    return True


def _make_adapter_class(data_adapter, sequence_class):
    import tensorflow as tf

    from seqify.keras_adapter import SequenceAdapter, output_signature

    class LegacySequenceAdapter(data_adapter.DataAdapter):
        """tf_keras DataAdapter running a seqify Sequence on seqify's engine."""

        _seqify = True

        @staticmethod
        def can_handle(x, y=None):
            return isinstance(x, sequence_class)

        def __init__(self, x, y=None, sample_weights=None, workers=1, use_multiprocessing=False, max_queue_size=10, model=None, shuffle=False, **kwargs):
            if not data_adapter.is_none_or_empty(y):
                raise ValueError("`y` argument is not supported with a seqify Sequence: the batches carry the targets.")
            if not data_adapter.is_none_or_empty(sample_weights):
                raise ValueError("`sample_weight` argument is not supported with a seqify Sequence: return (x, y, sample_weight) batches.")
            given = {"workers": workers, "use_multiprocessing": use_multiprocessing, "max_queue_size": max_queue_size}
            for name, value in given.items():
                if value != _FIT_DEFAULTS[name]:
                    setattr(x, name, value)
            self._sequence = x
            # Keras 2 shuffles a Sequence's batch order under fit's default
            # shuffle=True; the object's own `shuffle` wins if set.
            self._inner = SequenceAdapter(x, shuffle=bool(shuffle))
            peek = x._runner.sample_batches(1)[0]
            if model is not None and not model.built:
                concrete_x, _, _ = data_adapter.unpack_x_y_sample_weight(peek)
                try:
                    model.distribute_strategy.run(lambda v: model(v, training=False), args=(concrete_x,))
                except NotImplementedError:
                    pass
            first = tf.nest.flatten(peek)[0]
            self._first_batch_size = int(first.shape[0]) if getattr(first, "ndim", 0) else None
            self._signature = output_signature(x)

        def _batches(self):
            self._inner.on_epoch_begin()
            yield from self._inner._batches()

        def _make_dataset(self, context=None):
            ds = tf.data.Dataset.from_generator(self._batches, output_signature=self._signature)
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(options)

        def get_dataset(self):
            strategy = tf.distribute.get_strategy()
            in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
            if in_multi_worker_mode is not None and in_multi_worker_mode():
                # Each training worker feeds its own shard (`shard()`), batch
                # by batch. experimental_distribute_dataset would treat every
                # batch as a *global* batch and keep only this worker's slice
                # of it, silently dropping the rest of the rows.
                return strategy.distribute_datasets_from_function(self._make_dataset)
            return self._make_dataset()

        def get_size(self):
            return self._sequence._runner.source.num_batches()

        def batch_size(self):
            return None

        def representative_batch_size(self):
            return self._first_batch_size

        def has_partial_batch(self):
            return False

        def partial_batch_size(self):
            return None

        def should_recreate_iterator(self):
            return True  # one engine pass per epoch

        def on_epoch_end(self):
            self._inner.on_epoch_end()

    return LegacySequenceAdapter
