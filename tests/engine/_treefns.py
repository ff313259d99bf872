"""Batch functions with every structure Keras accepts, for the transport tests.

Importable by spawn workers without Keras or pytest (see _workfns.py).
"""

import collections

import numpy as np

Pair = collections.namedtuple("Pair", "x y")
Inputs = collections.namedtuple("Inputs", "image mask")
BIG = (256, 256)  # float32: 256 KiB, through shared memory
FEATURES = 16384  # one 64 KiB float32 row per sample


def big(i, k):
    """Array `k` of batch `i`: every value is 10 * i + k."""
    return np.full(BIG, 10 * i + k, np.float32)


def namedtuple_batch(i):
    return Pair(big(i, 0), big(i, 1))


def ordereddict_batch(i):
    return collections.OrderedDict([("z", big(i, 0)), ("a", big(i, 1))]), big(i, 2)


def list_batch(i):
    # A top-level list becomes a tuple (as in Keras); the inner list stays a list.
    return [big(i, 0), big(i, 1)], big(i, 2)


def nested_batch(i):
    x = {
        "image": [big(i, 0), Inputs(image=big(i, 1), mask=np.array([i]))],
        "meta": collections.OrderedDict([("b", big(i, 2)), ("a", (big(i, 3), "tag"))]),
    }
    return x, big(i, 4)


def dict_inputs_batch(i):
    """4 samples of a two-input model: x["image"] (256 KiB) and x["meta"], both filled with i."""
    x = collections.OrderedDict(
        [("image", np.full((4, FEATURES), i, np.float32)), ("meta", np.full((4, 2), i, np.float32))]
    )
    return x, np.zeros((4, 1), np.float32)
