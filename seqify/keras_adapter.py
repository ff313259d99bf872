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

import collections
import threading
import weakref

import numpy as np

from seqify import keras_internals as ki
from seqify import tf_dataset
from seqify.engine import tree
from seqify.runner import Delivered
from seqify.threadsafe import ThreadSafeIterator

_sequence_class = None


class SequenceAdapter(ki.DataAdapter):
    """Keras DataAdapter over a seqify Sequence.

    Args:
        sequence: the seqify object.
        class_weight: `fit`'s class_weight, or None.
        shuffle: `fit`'s shuffle (the object's own `shuffle` wins if set).
        natural: always the natural order (for predict).
        steps_per_epoch: fit's `steps_per_epoch` (evaluate's `steps`).
        keras_epochs: Keras's EpochIterator drives this adapter, so its
            epochs tell how many batches were used (see `_feed`); a plain
            consumer (`to_tf_dataset`) uses every batch it receives.
    """

    def __init__(self, sequence, class_weight=None, shuffle=False, natural=False, steps_per_epoch=None, keras_epochs=False):
        self.sequence = sequence
        self.class_weight = class_weight
        self.shuffle = shuffle
        self.natural = natural
        self.steps_per_epoch = steps_per_epoch
        self.keras_epochs = keras_epochs
        self._within_epoch = False
        self._begin_pending = False
        self._begun = False
        self._passes_started = 0
        self._building = False
        self._lock = threading.Lock()
        self._feeds = collections.deque()  # live feeds, oldest first

    def _feed(self, make):
        """A generator of batches for one Keras iterator, with its ledger.

        Keras's iterators (and tf.data's, tf.distribute's, JAX's prefetch
        behind them) pull batches ahead of the steps that use them. When
        Keras drops an iterator, what it pulled and never used goes back to
        the object (`_retire`), so a stream loses no batch to prefetching.
        """
        if not self.keras_epochs:
            return make(None)
        feed = _Feed()
        generator = make(feed)
        feed.generator = weakref.ref(generator)
        # Fires when Keras drops the iterator (an exhausted generator lives
        # on until then, held by Keras or by tf.data's generator registry).
        weakref.finalize(generator, self._dropped, feed)
        return generator

    def _dropped(self, feed):
        # Python runs weakref callbacks before a dropped generator's
        # `finally`; a suspended one retires from there instead, after its
        # pass has handed back its in-flight work.
        if feed.exhausted:
            self._retire(feed)

    def _batches(self, feed=None, convert=None, prepare=None):
        """One pass of the engine, weighted (and `convert`ed per batch if given); a generator started lazily.

        `prepare` is handed to the runner (thread workers run it, see
        `Runner.iter_epoch`).
        """
        if ki.building_model(_OWN_CODES):
            # Keras pulls one batch only to build the model's shapes, then
            # drops the iterator: give it a sample so no stream batch is
            # lost and no epoch (or epoch hook) is spent on it.
            self._building = True
            batch = self._weigh(self.sequence._runner.sample_batches(1)[0])
            yield convert(batch) if convert is not None else batch
            return
        self._deliver_epoch_begin()
        self._passes_started += 1
        runner = self.sequence._runner
        source = runner.source
        if feed is not None and source.reorders and source.num_batches() is not None:
            # A finite random-access pass takes nothing back: no ledger.
            feed = None
        delivered = None
        if feed is not None:
            delivered = feed.delivered
            feed.capacity = source.num_batches()
            with self._lock:
                self._feeds.append(feed)
            self._retire_stale(runner, feed)
        if self.natural:
            batches = runner.iter_epoch(False, force=True, delivered=delivered, prepare=prepare)
        else:
            batches = runner.iter_epoch(self.shuffle, delivered=delivered, prepare=prepare)
        weigh = self._weigh if self.class_weight is not None else None
        try:
            for batch in batches:
                if self._begin_pending:  # a pass that spans Keras epochs
                    self._deliver_epoch_begin()
                if weigh is not None:
                    batch = weigh(batch)
                yield convert(batch) if convert is not None else batch
            if feed is not None:
                feed.exhausted = True  # retires when Keras drops it
        finally:
            batches.close()  # give back in-flight work now, not at GC
            if feed is not None and not feed.exhausted:
                # Dropped while suspended: the pass has just handed back its
                # in-flight work; what Keras pulled but did not use goes in
                # front of it.
                self._retire(feed)

    def _retire_stale(self, runner, feed):
        # A finished fit's iterators can outlive it for a while (Keras's
        # epoch iterator sits in reference cycles), and with them what they
        # pulled ahead. Before this pass reads from the object, iterators of
        # other (earlier) adapters give back what they did not use; this
        # adapter's own old iterators are dropped by Keras as it replaces them.
        live = _LIVE.setdefault(runner, [])
        for entry in list(live):
            adapter_ref, old = entry
            adapter = adapter_ref()
            if old.retired or adapter is None:
                live.remove(entry)
                continue
            if adapter is self:
                continue
            live.remove(entry)
            if old.exhausted:
                adapter._retire(old)
                continue
            generator = old.generator()
            if generator is not None:
                try:
                    generator.close()  # its pass hands back in-flight work, then it retires
                except ValueError:
                    live.append(entry)  # running on another thread: still in use
        live.append((weakref.ref(self), feed))

    def _epoch_steps(self, feed):
        steps = self.steps_per_epoch or feed.capacity
        return steps if steps is not None else 0

    def _retire(self, feed):
        with self._lock:
            front = bool(self._feeds) and self._feeds[0] is feed
            if feed in self._feeds:
                self._feeds.remove(feed)
            if feed.retired:
                return
            feed.retired = True
            if feed.taken is not None:
                used = feed.taken()  # counted in the graph: exact
            else:
                used = feed.credited
                if front and self._within_epoch:
                    # The epoch in progress may have used up to a full epoch more.
                    used += self._epoch_steps(feed)
            unused = feed.delivered.count - used
        if unused > 0 and feed.delivered.plan is not None:
            self.sequence._runner.give_back(feed.delivered, unused)

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

    def _numpy_batches(self, feed=None):
        # Not Keras's get_numpy_iterator: its per-batch tree map costs more
        # than the rest of seqify's path; batches are almost always numpy.
        return self._batches(feed, convert=_as_numpy)

    def _jax_batches(self, feed=None):
        # Keras's get_jax_iterator maps its conversion over every batch; for
        # a tuple of ndarrays (almost every batch) that map is the identity.
        return self._batches(feed, convert=_as_jax)

    def get_numpy_iterator(self):
        return self._feed(self._numpy_batches)

    def get_jax_iterator(self):
        return self._feed(self._jax_batches)

    def get_torch_dataloader(self):
        return ki.get_torch_dataloader(self._feed(self._batches))

    def _tf_batches(self, carried=0, feed=None, prepare=None):
        # One pass for the tf.data path; `carried` batches a dropped
        # iteration handed back are served first, so take fewer.
        batches = self._batches(feed, prepare=prepare)
        if not carried:
            return batches
        return _first(batches, max(0, (self.num_batches or 0) - carried))

    def get_tf_dataset(self, signature=None):
        tf = ki.lazy_tensorflow

        if signature is None:
            signature = output_signature(self.sequence, self.class_weight)
        check = _SignatureCheck(signature, type(self.sequence).__name__)
        runner = self.sequence._runner
        source = runner.source
        keep = None
        boundary = None
        delivered = None
        gives_back = not source.reorders or source.num_batches() is None
        if gives_back:
            # A stream or an infinite source: what the consumer pulled and
            # never used must go back. Without a tf.distribute strategy
            # nothing runs ahead of the consumer but this dataset, so an
            # in-graph counter tells exactly what it took; a strategy's
            # prefetch would defeat that count, so there the adapter's
            # ledger (Keras's epochs, see `_feed`) decides, with one batch
            # per crossing. `to_tf_dataset` consumers keep a carry.
            if ki.building_for_a_strategy():
                boundary = 1 if not source.reorders else self.steps_per_epoch
            else:
                delivered = tf_dataset.counter()
                keep = None if self.keras_epochs or source.reorders else _tf_carry(runner)
                boundary = self.steps_per_epoch
        # Several batches per Python crossing, split in the graph: see
        # seqify/tf_dataset.py and docs/design.md ("The TensorFlow fit path").
        # Large batches cross one at a time without the chunk dimension: its
        # unbatch would copy each batch once more in the graph.
        per_batch = runner.signatures.get("large")
        if per_batch is None:  # measured once per object, like the signature
            per_batch = runner.signatures["large"] = tf_dataset.is_large(runner.sample_batches(1))

        def open_batches(carried, prepare=None):
            def make(feed):
                if feed is not None and delivered is not None:
                    start = int(delivered.numpy())
                    feed.taken = lambda: int(delivered.numpy()) - start
                return self._tf_batches(carried, feed, prepare)

            return self._feed(make)

        ds = tf_dataset.make_dataset(open_batches, signature, check=check, boundary=boundary, keep=keep,
                                     per_batch=per_batch, delivered=delivered)
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
            if self._passes_started:
                # Once a real pass has run, no shape-building pull can come:
                # the hook runs now. Deferring it to the next fetch would
                # miss an epoch served wholly from batches already pulled
                # ahead (a pass that spans Keras epochs).
                self._deliver_epoch_begin()

    def on_epoch_end(self):
        # Keras may call this several times per epoch (reset, end of
        # iteration, StopIteration): the user's hook runs once, and only
        # for an epoch whose on_epoch_begin it saw.
        if self._within_epoch:
            self._within_epoch = False
            self._begin_pending = False
            self._credit_epoch()
            if self._begun:
                self._begun = False
                self.sequence.on_epoch_end()

    def _credit_epoch(self):
        # Keras's EpochIterator used a full epoch of steps from the iterator
        # it consumes (the oldest live one); it never spans two iterators.
        with self._lock:
            if self._building:  # the model-building pull used nothing
                self._building = False
                return
            if not self._feeds:
                return
            feed = self._feeds[0]
            feed.credited = min(feed.credited + self._epoch_steps(feed), feed.delivered.count)
            if feed.capacity is not None and feed.credited >= feed.capacity:
                self._feeds.popleft()  # used up: Keras starts a new iterator

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


class _Feed:
    """Ledger of one Keras iterator: what it delivered and what Keras used."""

    def __init__(self):
        self.delivered = Delivered()
        self.capacity = None  # batches of its pass (None: unbounded)
        self.credited = 0  # batches Keras's finished epochs used
        self.exhausted = False
        self.retired = False
        self.taken = None  # exact count of batches the consumer took, where known
        self.generator = None  # weak reference to the generator it feeds


_LIVE = weakref.WeakKeyDictionary()  # runner -> [(adapter ref, _Feed)] of Keras iterators not yet retired
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
    SequenceAdapter._jax_batches.__code__,
    _first.__code__,
    tf_dataset._Chunker.__call__.__code__,
    tf_dataset._chain.__code__,
)


def _as_numpy(batch):
    """Converts tensor leaves (tf, torch, jax) to numpy; ndarrays pass as is."""
    kind = type(batch)
    if kind is np.ndarray:
        return batch
    if kind is tuple:
        for leaf in batch:
            if type(leaf) is not np.ndarray:
                break
        else:
            return batch  # the common case: already numpy, nothing to rebuild
    return tree.map_structure(_leaf_as_numpy, batch)


def _as_jax(batch):
    """`batch` as Keras's `get_jax_iterator` would yield it; tuples of ndarrays pass as is."""
    if type(batch) is tuple:
        for leaf in batch:
            if type(leaf) is not np.ndarray:
                break
        else:
            return batch  # what Keras's conversion returns for these, without its tree map
    return next(ki.get_jax_iterator((batch,)))


def _leaf_as_numpy(leaf):
    if leaf is None or isinstance(leaf, np.ndarray) or not hasattr(leaf, "__array__"):
        return leaf
    if ki.is_torch_tensor(leaf):
        leaf = leaf.cpu()
    return np.asarray(leaf)


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
    tf = ki.lazy_tensorflow

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
        tf = ki.lazy_tensorflow

        self._name = name
        self._paths = []
        self._dims = []
        for path, spec in tree.leaves_with_paths(signature, "batch"):
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
        leaves = tree.leaves(batch)
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
    adapter = SequenceAdapter(
        x, class_weight=arguments["class_weight"], shuffle=bool(arguments["shuffle"]), natural=predicting,
        steps_per_epoch=arguments["steps_per_epoch"], keras_epochs=True,
    )
    if not predicting:
        _note_training_adapter(adapter)
    return adapter


#: model -> the SequenceAdapter of the training data of its running `fit`
#: (found by seqify.callbacks.BackupAndRestore).
training_adapters = weakref.WeakKeyDictionary()


def _note_training_adapter(adapter) -> None:
    # fit() builds its training adapter first thing (before it has an
    # `epoch_iterator`; validation's comes later); its frame holds the model.
    local = ki.fit_locals(2)
    if local is None:
        return
    model = local.get("self")
    if model is not None and "epoch_iterator" not in local:
        try:
            training_adapters[model] = adapter
        except TypeError:
            pass


def install(sequence_class) -> None:
    """Routes seqify objects in `fit`/`evaluate`/`predict` to SequenceAdapter."""
    global _sequence_class
    _sequence_class = sequence_class
    ki.install_adapter_hook(_claims, _make_adapter)
