"""`from_arrays`: in-memory arrays as a batched Sequence."""

from typing import Optional

import numpy as np

from seqify.adapters.batch_fn import BatchFnSequence
from seqify.engine import tree
from seqify.engine.worker_info import worker_info
from seqify.sequence import num_batches_for
from seqify.settings import draw_seed
from seqify._validation import is_int


class _ArraySlicer:
    """Batch `i` of the arrays; in a shuffled pass, of a per-epoch sample permutation."""

    def __init__(self, data, batch_size, num_samples, seed):
        self.data = data
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.seed = seed
        self._perm = (None, None)

    def describe_source(self) -> str:
        shapes = [tuple(np.shape(leaf)) for leaf in tree.leaves(self.data)]
        return f"arrays:{self.num_samples}x{self.batch_size}:{shapes}"

    def _permutation(self, epoch):
        cached_epoch, perm = self._perm
        if cached_epoch != epoch:
            perm = np.random.default_rng([self.seed, epoch, 2]).permutation(self.num_samples)
            self._perm = (epoch, perm)
        return perm

    def __call__(self, i):
        start = i * self.batch_size
        stop = min(start + self.batch_size, self.num_samples)
        info = worker_info()
        if info is not None and info.shuffled:
            rows = self._permutation(info.epoch)[start:stop]
            return tree.map_structure(lambda a: np.take(a, rows, axis=0), self.data)
        return tree.map_structure(lambda a: a[start:stop], self.data)


def from_arrays(
    x,
    y=None,
    sample_weight=None,
    *,
    batch_size: int = 32,
    shuffle: Optional[bool] = None,
    seed: Optional[int] = None,
    drop_remainder: bool = False,
    workers: int = 1,
    use_multiprocessing: bool = False,
    max_queue_size: int = 10,
    start_method: Optional[str] = None,
    output_signature=None,
) -> BatchFnSequence:
    """Adapts in-memory arrays into a batched, Keras-ready Sequence.

    Args:
        x: an array, or a nest of arrays (multi-input models): dicts,
            OrderedDicts, tuples, namedtuples, lists, as `keras.tree` walks
            them; batches keep the same structure and types.
        y: targets, same forms as `x`, or None.
        sample_weight: per-sample weights, or None.
        batch_size: samples per batch (>= 1).
        shuffle: None (default) follows `fit(shuffle=...)` as Keras does for
            arrays: a new sample order each training epoch, drawn from
            (seed, epoch); True/False overrides it.
        seed: seed for shuffling and `seqify.worker_info().rng()`.
        drop_remainder: drop the last partial batch instead of keeping it.
        workers, use_multiprocessing, max_queue_size, start_method,
            output_signature: as in `seqify.from_batch_fn`.

    Returns:
        A `seqify.Sequence` yielding `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

    Raises:
        ValueError: arrays of different lengths, an empty input, or a bad
            `batch_size`.

    Example:

    ```python
    ds = seqify.from_arrays(x_train, y_train, batch_size=64, shuffle=True, seed=0)
    model.fit(ds, epochs=5)
    ```
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1; got {batch_size!r}.")
    parts = [("x", x), ("y", y), ("sample_weight", sample_weight)]
    parts = [(name, tree.map_structure(np.asarray, value)) for name, value in parts if value is not None]
    if x is None:
        raise ValueError("`x` is required: pass an array or a dict/tuple of arrays.")
    lengths = []
    for name, value in parts:
        for path, leaf in tree.leaves_with_paths(value, name):
            if leaf.ndim == 0:
                raise ValueError(f"`{path}` is a scalar; every input needs a leading sample dimension.")
            lengths.append((path, len(leaf)))
    distinct = sorted({n for _, n in lengths})
    if len(distinct) > 1:
        listing = ", ".join(f"{p}: {n}" for p, n in lengths)
        raise ValueError(
            f"All arrays must have the same number of samples (first dimension); got {listing}. "
            "Trim or align them before calling seqify.from_arrays."
        )
    num_samples = distinct[0] if distinct else 0
    num_batches = num_batches_for(num_samples, int(batch_size), drop_remainder)
    if num_batches < 1:
        raise ValueError(
            f"{num_samples} samples make no batch of batch_size={batch_size}"
            + (" with drop_remainder=True" if drop_remainder else "")
            + "; pass more data or a smaller batch_size."
        )
    data = tuple(value for _, value in parts)
    if seed is None:
        seed = draw_seed()  # the slicer and the Sequence share it
    return BatchFnSequence(
        _ArraySlicer(data, int(batch_size), num_samples, seed), num_batches,
        shuffle=shuffle, seed=seed, workers=workers, use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size, start_method=start_method, output_signature=output_signature,
        _shuffles_samples=True,
    )
