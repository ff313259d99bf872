"""A `tf.data.Dataset` over seqify's batches, several batches per Python call.

Every element of `tf.data.Dataset.from_generator` costs one crossing from
the tf.data runtime into Python and back (~0.3-0.7 ms measured here, see
docs/design.md, "The TensorFlow fit path"): more than everything else on
seqify's path for small batches. `make_dataset` pays it once per *chunk*:
the Python generator stacks consecutive batches of the same shapes into one
element (`(k, batch, ...)` per array) and `unbatch` splits it again inside
the graph, so the consumer still sees one batch per element, in order.

How big a chunk is, is measured, not configured:
- batches of `STACK_BYTES` or more cross one at a time (stacking would copy
  what the crossing already copies): when the first batch is that large the
  dataset has no chunk dimension at all (`per_batch`, no `unbatch` copy);
  a later large batch in a chunked dataset crosses as a view `leaf[None]`;
- otherwise a chunk gathers batches for about `CHUNK_SECONDS` (by the
  measured time per batch), at most `MAX_CHUNK`;
- a batch whose shapes differ from the chunk's (the last, smaller batch; a
  stream of variable-length batches) starts a new chunk, so ragged data
  degrades to one batch per crossing, never to an error; signatures with
  other than dense tensors (ragged, sparse) skip chunking altogether.

Large arrays cross without TensorFlow's copy: tf.data wraps a numpy array
in a tensor without copying only when its data is `TF_ALIGN`-byte aligned;
numpy's own large allocations are 16-byte aligned, so TensorFlow copies
each into a freshly allocated tensor (~20 ms for a 19 MB batch here, against
~1.4 ms aligned). Leaves of `ALIGN_BYTES` or more that are not aligned are
copied once by `_Aligned` into recycled, already-faulted aligned buffers
(`seqify.buffers`: a buffer is reused only once no tensor holds it any
more), and chunks of that size are stacked straight into one. Batches built
in `seqify.empty` are aligned already and cross with no copy at all.

Pulled ahead is never lost: a chunk may hold batches the consumer has not
taken yet when it drops the iterator (Keras's fit stopping mid-epoch, a
`take(n)`). With `keep` (streams), an in-graph counter tells how many were
delivered; the rest are handed to `keep` when the generator is closed
(tf.data closes it when the iterator is destroyed), and the next dataset
iteration serves them first. Chunks also never cross `boundary` (Keras's
steps per epoch), so at an epoch boundary nothing is pulled ahead at all.
"""

import collections
import time
import weakref
from typing import Callable, Iterator, Optional

import numpy as np

from seqify import buffers
from seqify.engine import tree

#: Batches at least this large (all arrays together) cross one at a time.
STACK_BYTES = 256 * 1024
#: A chunk gathers batches for about this long.
CHUNK_SECONDS = 2e-3
#: At most this many batches per chunk.
MAX_CHUNK = 64
#: TensorFlow wraps numpy data this aligned without copying it (Eigen's alignment).
TF_ALIGN = buffers.ALIGN
#: Leaves at least this large are handed to tf.data aligned (below it TF's copy is cheap).
ALIGN_BYTES = 64 * 1024
#: Recycled aligned buffers kept per pass and size; beyond it, fresh ones.
#: (Only buffers that were all in use at once are kept: this caps what a
#: pass retains after its peak, not the peak.)
MAX_BUFFERS = 16


class _Aligned:
    """`TF_ALIGN`-aligned arrays for large leaves, from buffers recycled in one pass.

    A `seqify.buffers.BufferPool`: a buffer is free again once no array (a
    tensor wrapping it holds one) views it. Recycled pages are already
    faulted in, which is most of what a fresh 19 MB allocation costs. Thread
    workers call `prepare` concurrently with the consumer; the pool claims
    buffers under a lock.
    """

    def __init__(self):
        self.buffers = buffers.BufferPool(MAX_BUFFERS)

    def empty(self, shape, dtype):
        return self.buffers.empty(shape, dtype)

    def leaf(self, leaf):
        """`leaf` itself when TensorFlow can wrap it as it is, else an aligned copy."""
        if (type(leaf) is not np.ndarray or leaf.nbytes < ALIGN_BYTES or leaf.dtype.hasobject
                or (leaf.ctypes.data % TF_ALIGN == 0 and leaf.flags.c_contiguous)):
            return leaf
        out = self.empty(leaf.shape, leaf.dtype)
        np.copyto(out, leaf)
        return out

    def prepare(self, batch):
        """`batch` with its large leaves aligned (for thread workers: the copy runs there, in parallel)."""
        return tree.map_structure(self.leaf, batch)

    def stack(self, column):
        """`np.stack(column)`, into an aligned buffer when the result is large."""
        first = column[0]
        if (first.nbytes * len(column) < ALIGN_BYTES or first.dtype.hasobject
                or any(leaf.dtype != first.dtype for leaf in column)):
            return np.stack(column)  # mixed dtypes: numpy's promotion, as before
        return np.stack(column, out=self.empty((len(column),) + first.shape, first.dtype))


def _flatten(tree, out):
    # tf.nest's order (dict keys sorted), without its per-call cost.
    kind = type(tree)
    if kind is tuple or kind is list:
        for leaf in tree:
            _flatten(leaf, out)
    elif isinstance(tree, dict):
        for key in sorted(tree):
            _flatten(tree[key], out)
    else:
        out.append(tree)
    return out


def is_large(samples) -> bool:
    """Whether sample batches are `STACK_BYTES` or more (they cross one at a time)."""
    return any(sum(np.asarray(leaf).nbytes for leaf in _flatten(batch, [])) >= STACK_BYTES for batch in samples)


def chunkable(signature) -> bool:
    """Whether every leaf of `signature` is a dense `tf.TensorSpec` of known rank."""
    import tensorflow as tf

    leaves = tf.nest.flatten(signature)
    return bool(leaves) and all(
        type(spec) is tf.TensorSpec and spec.shape.rank is not None and spec.shape.rank >= 1 for spec in leaves
    )


class _Chunker:
    """The Python side: batches in, stacked chunks out (one pass)."""

    def __init__(self, open_batches, signature, check, boundary, keep, delivered):
        self.open_batches = open_batches
        self.signature = signature
        self.check = check
        self.boundary = boundary
        self.keep = keep
        self.delivered = delivered  # tf.Variable counting batches taken, or None

    def __call__(self):
        keep = self.keep
        if keep is not None:
            # An earlier iteration whose iterator was dropped but not yet
            # collected (Keras's iterators sit in reference cycles) gives its
            # pulled-ahead batches back now, before this one reads them.
            for old in list(keep.live):
                try:
                    old.close()
                except ValueError:  # running on another thread: still in use
                    pass
        generator = self._chunks()
        if keep is not None:
            keep.live.add(generator)
        return generator

    def _chunks(self):
        import tensorflow as tf

        pack = tf.nest.pack_sequence_as
        signature = self.signature
        check = self.check
        boundary = self.boundary
        keep = self.keep
        clock = time.perf_counter
        group = []  # flat leaves of the batches of the chunk being gathered
        shapes = None
        limit = 1
        cost = 0.0
        sent = []  # the batches of the chunk last handed to tf.data (keep mode)
        yielded = 0  # batches handed to tf.data by this generator
        held = None
        aligned = _Aligned()  # this pass's buffers
        start = 0 if self.delivered is None else int(self.delivered.numpy())
        carried = list(keep.batches) if keep is not None else []
        if keep is not None:
            keep.batches.clear()
        batches = self.open_batches(len(carried), None)  # chunks are stacked here anyway
        source = _chain(carried, batches)
        try:
            while True:
                started = clock()
                try:
                    batch = next(source)
                    if check is not None:
                        check(batch)
                except StopIteration:
                    break
                except Exception:
                    # Batches before a failing one are delivered first, as
                    # one at a time would: the error is raised after them.
                    if group:
                        chunk = self._emit(group, pack, signature, sent, aligned)
                        yielded += len(group)
                        group = []
                        yield chunk
                    raise
                cost += 0.2 * ((clock() - started) - cost)
                held = batch  # pulled, not in a chunk yet
                leaves = _flatten(batch, [])
                for i, leaf in enumerate(leaves):
                    if type(leaf) is not np.ndarray:
                        leaves[i] = np.asarray(leaf)
                key = tuple(leaf.shape for leaf in leaves)
                if group and key != shapes:
                    chunk = self._emit(group, pack, signature, sent, aligned)
                    yielded += len(group)
                    group = []  # counted as handed over before the yield: a close there keeps them apart
                    yield chunk
                if not group:
                    shapes = key
                    nbytes = sum(leaf.nbytes for leaf in leaves)
                    if nbytes >= STACK_BYTES:
                        limit = 1
                    else:
                        limit = max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / cost) if cost > 0 else MAX_CHUNK))
                    if boundary:
                        limit = min(limit, boundary - yielded % boundary)
                group.append((batch, leaves))
                held = None
                if len(group) >= limit:
                    chunk = self._emit(group, pack, signature, sent, aligned)
                    yielded += len(group)
                    group = []  # counted as handed over before the yield: a close there keeps them apart
                    yield chunk
            if group:
                chunk = self._emit(group, pack, signature, sent, aligned)
                yielded += len(group)
                group = []  # counted as handed over before the yield: a close there keeps them apart
                yield chunk
        finally:
            # Closed (iterator dropped) or done: give back what the consumer
            # has not taken, in order.
            if keep is not None:
                taken = int(self.delivered.numpy()) - start
                untaken = yielded - taken
                rest = [batch for batch, _ in group] + ([held] if held is not None else [])
                if untaken > 0:
                    rest = [batch for batch, _ in sent[len(sent) - untaken:]] + rest
                rest += list(carried)  # carried batches not even pulled yet
                keep.batches.extend(rest)
            batches.close()

    def _emit(self, group, pack, signature, sent, aligned):
        if self.keep is not None:
            sent[:] = group
        if len(group) == 1:
            leaves = [aligned.leaf(leaf)[None] for leaf in group[0][1]]  # a view: no stacking copy
        else:
            leaves = [aligned.stack(column) for column in zip(*(leaves for _, leaves in group))]
        return pack(signature, leaves)


class Carry:
    """Batches a dropped iteration pulled but did not deliver (see `make_dataset`'s `keep`)."""

    def __init__(self):
        self.batches = collections.deque()
        self.live = weakref.WeakSet()  # running chunk generators


def _chain(carried, batches):
    while carried:
        yield carried.pop(0)
    yield from batches


def make_dataset(
    open_batches: Callable[[int], Iterator],
    signature,
    *,
    check: Optional[Callable] = None,
    boundary: Optional[int] = None,
    keep: Optional[Carry] = None,
    per_batch: bool = False,
    delivered=None,
):
    """A dataset of the batches `open_batches` yields, chunked across the Python boundary.

    Args:
        open_batches: `open_batches(carried, prepare) -> iterator` of batches
            for one pass (called once per dataset iteration); `carried`
            batches from `keep` are served first, so it should yield that
            many fewer. `prepare(batch) -> batch` (or None) is work the
            producer may run on each batch where it is built (aligning
            large leaves; optional: the dataset does it otherwise). Closed
            when the iteration ends or is dropped.
        signature: the element signature (nested `tf.TensorSpec`s, leading
            dimension the batch).
        check: called with every batch before it is stacked (the
            signature check, which must see every batch).
        boundary: chunks never cross a multiple of this many batches (the
            consumer's steps per epoch), or None.
        keep: a `Carry` that receives, in order, the batches pulled but not
            delivered when an iteration is dropped; they are served first
            by the next iteration. None: undelivered batches are dropped
            (batch functions: a dropped pass is not resumed anyway).
        per_batch: one batch per crossing, no chunk dimension (for large
            batches, see `is_large`).
        delivered: a `tf.Variable` (int64) to count, in the graph, the
            batches the consumer takes (made here when `keep` needs one).

    Returns:
        A `tf.data.Dataset` whose elements are the batches, in order.

    Example:

    ```python
    ds = make_dataset(lambda carried, prepare: iter(batches), signature)
    ```
    """
    import tensorflow as tf

    dense = chunkable(signature)
    if per_batch or not dense:
        def plain():
            aligned = _Aligned()
            # Thread workers copy unaligned leaves themselves, in parallel;
            # `leaf` below then passes them through.
            batches = open_batches(0, aligned.prepare if dense else None)
            pack = tf.nest.pack_sequence_as
            try:
                for batch in batches:
                    if check is not None:
                        check(batch)
                    if dense:
                        batch = pack(signature, [aligned.leaf(leaf) for leaf in _flatten(batch, [])])
                    yield batch
            finally:
                batches.close()

        return _counted(tf.data.Dataset.from_generator(plain, output_signature=signature), delivered)
    if keep is not None and delivered is None:
        delivered = counter()
    chunk_signature = tf.nest.map_structure(
        lambda spec: tf.TensorSpec([None] + spec.shape.as_list(), spec.dtype, spec.name), signature
    )
    chunker = _Chunker(open_batches, signature, check, boundary, keep, delivered)
    ds = tf.data.Dataset.from_generator(chunker, output_signature=chunk_signature).unbatch()
    return _counted(ds, delivered)


def counter():
    """A fresh in-graph counter of delivered batches (see `make_dataset`)."""
    import tensorflow as tf

    with tf.init_scope():
        return tf.Variable(0, dtype=tf.int64, trainable=False, name="seqify_delivered")


def _counted(ds, delivered):
    if delivered is None:
        return ds
    import tensorflow as tf

    spec = ds.element_spec

    def count(*element):
        # Counts batches as the consumer takes them (see module docstring):
        # nothing in the pipeline runs ahead of the consumer.
        with tf.control_dependencies([delivered.assign_add(1)]):
            return tf.nest.pack_sequence_as(spec, [tf.identity(t) for t in tf.nest.flatten(element)])

    return ds.map(count)
