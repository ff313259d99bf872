"""The one walker for nested batch structures (the node types Keras walks).

A batch is a tree: its nodes are the containers `keras.tree` (optree, in
Keras's namespace) treats as structure, everything else is a leaf:

- `tuple`, `list`, `dict` (exact types),
- namedtuples (any tuple subclass with `_fields`), rebuilt `type(t)(*items)`,
- `collections.OrderedDict`, `collections.defaultdict` (its default factory
  kept) and `collections.deque` (its `maxlen` kept).

Other subclasses of tuple/list/dict are leaves, as they are for Keras: their
constructors and extra attributes are unknown, so rebuilding them could lose
data. `None` is a leaf.

`map_structure` keeps every container's type and key order.
`leaves_with_paths` yields leaves in `keras.tree.flatten` order (plain-dict
keys sorted where they can be, OrderedDict keys in insertion order), so two
trees of the same structure line up leaf by leaf even if their plain dicts
were built in different orders.
"""

import collections
from typing import Any, Callable, Iterator, List, Tuple

# type -> kind of node ("tuple", "list", "dict", "namedtuple", "ordereddict",
# "defaultdict", "deque") or None for a leaf. Classifying a type once keeps
# the per-batch walk to one dict lookup per node.
_KINDS = {
    tuple: "tuple",
    list: "list",
    dict: "dict",
    collections.OrderedDict: "ordereddict",
    collections.defaultdict: "defaultdict",
    collections.deque: "deque",
}


def _kind(cls):
    try:
        return _KINDS[cls]
    except KeyError:
        pass
    fields = getattr(cls, "_fields", None)
    kind = "namedtuple" if issubclass(cls, tuple) and isinstance(fields, tuple) else None
    _KINDS[cls] = kind
    return kind


def is_nested(obj) -> bool:
    """True if `obj` is a node (a container the walker descends into)."""
    return _kind(type(obj)) is not None


def map_structure(fn: Callable[[Any], Any], tree):
    """Returns `tree` with every leaf replaced by `fn(leaf)`.

    Containers are rebuilt with their own type and key order (namedtuples
    with `type(t)(*items)`, defaultdicts with their factory, deques with
    their maxlen).

    Args:
        fn: called once per leaf, in insertion order.
        tree: a leaf, or a nest of tuples, lists, dicts, namedtuples,
            OrderedDicts, defaultdicts and deques.

    Returns:
        A tree of the same structure and types.

    Example:

    ```python
    Batch = collections.namedtuple("Batch", "x y")
    map_structure(np.asarray, Batch([1, 2], {"a": [3]}))
    # Batch(x=array([1, 2]), y={'a': array([3])})
    ```
    """
    kind = _kind(type(tree))
    if kind is None:
        return fn(tree)
    if kind == "tuple":
        return tuple([map_structure(fn, item) for item in tree])
    if kind == "list":
        return [map_structure(fn, item) for item in tree]
    if kind == "dict":
        return {key: map_structure(fn, value) for key, value in tree.items()}
    if kind == "namedtuple":
        return type(tree)(*[map_structure(fn, item) for item in tree])
    if kind == "ordereddict":
        return collections.OrderedDict((key, map_structure(fn, value)) for key, value in tree.items())
    if kind == "defaultdict":
        return collections.defaultdict(tree.default_factory, ((key, map_structure(fn, value)) for key, value in tree.items()))
    return collections.deque((map_structure(fn, item) for item in tree), maxlen=tree.maxlen)


def _sorted_keys(mapping):
    try:
        return sorted(mapping)
    except TypeError:  # keys of mixed types: keep insertion order
        return list(mapping)


def leaves_with_paths(tree, path: str = "") -> Iterator[Tuple[str, Any]]:
    """Yields `(path, leaf)` for every leaf, in `keras.tree.flatten` order.

    Args:
        tree: as for `map_structure`.
        path: the name of the root; each level appends `[key]` or `[index]`,
            e.g. `"batch[0]['image']"`, for error messages.
    """
    kind = _kind(type(tree))
    if kind is None:
        yield path, tree
    elif kind in ("dict", "defaultdict"):
        for key in _sorted_keys(tree):
            yield from leaves_with_paths(tree[key], f"{path}[{key!r}]")
    elif kind == "ordereddict":
        for key, value in tree.items():
            yield from leaves_with_paths(value, f"{path}[{key!r}]")
    else:
        for i, item in enumerate(tree):
            yield from leaves_with_paths(item, f"{path}[{i}]")


def leaves(tree) -> List[Any]:
    """Every leaf of `tree`, in `keras.tree.flatten` order (see `leaves_with_paths`)."""
    out = []
    _collect(tree, out)
    return out


def _collect(tree, out):
    kind = _kind(type(tree))
    if kind is None:
        out.append(tree)
    elif kind in ("dict", "defaultdict"):
        for key in _sorted_keys(tree):
            _collect(tree[key], out)
    elif kind == "ordereddict":
        for value in tree.values():
            _collect(value, out)
    else:
        for item in tree:
            _collect(item, out)
