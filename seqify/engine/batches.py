"""Checks that a batch has a shape Keras accepts."""

import numpy as np


def standardize_batch(batch, index):
    """Returns `batch` as a tuple `(x,)`, `(x, y)`, `(x, y, sw)` or a dict.

    A bare ndarray becomes `(x,)` and a list becomes a tuple, as Keras does
    for PyDataset. A namedtuple counts as a tuple and a dict subclass
    (OrderedDict, ...) as a dict; both are returned unchanged, so their types
    survive the trip (`seqify.engine.tree` walks them).

    Raises:
        TypeError: naming the batch index and what was returned instead.
    """
    if type(batch) is tuple and 1 <= len(batch) <= 3:  # the common case, first
        return batch
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, np.ndarray):
        return (batch,)
    if isinstance(batch, list):
        batch = tuple(batch)
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        return batch
    if isinstance(batch, tuple):
        got = f"a tuple of length {len(batch)}"
    else:
        got = f"an object of type {type(batch).__name__}"
    raise TypeError(
        f"Batch {index} must be a tuple `(x,)`, `(x, y)` or "
        f"`(x, y, sample_weight)`, or a dict; got {got}. Make the batch "
        "function (or generator, or transform) return e.g. `return x, y`."
    )
