"""The one batch-structure walker: the node types keras.tree walks, rebuilt with their own types."""

import collections

import numpy as np
import pytest
from keras import tree as keras_tree

from seqify.engine import tree

Pair = collections.namedtuple("Pair", "x y")
Triple = collections.namedtuple("Triple", ["image", "label", "weight"])


class UserList(list):
    pass


class UserTuple(tuple):
    pass


class UserDict(dict):
    pass


def nested():
    return {
        "b": Pair(x=np.arange(2), y=[np.ones(1), (np.zeros(3),)]),
        "a": collections.OrderedDict([("z", np.full(2, 7)), ("m", Triple(np.ones(1), None, 3.5))]),
        "c": collections.deque([np.arange(4)], maxlen=5),
        "d": collections.defaultdict(list, {"k": np.ones(2), "j": np.zeros(2)}),
    }


def test_namedtuple_is_rebuilt_as_the_same_namedtuple():
    out = tree.map_structure(lambda v: v * 2, Pair(1, 2))
    assert type(out) is Pair and out == Pair(x=2, y=4)


def test_ordereddict_keeps_its_type_and_key_order():
    source = collections.OrderedDict([("z", 1), ("a", 2), ("m", 3)])
    out = tree.map_structure(str, source)
    assert type(out) is collections.OrderedDict
    assert list(out.items()) == [("z", "1"), ("a", "2"), ("m", "3")]


def test_plain_dict_keeps_its_insertion_order_when_mapped():
    out = tree.map_structure(lambda v: -v, {"z": 1, "a": 2})
    assert type(out) is dict and list(out) == ["z", "a"]


def test_defaultdict_keeps_its_default_factory():
    out = tree.map_structure(lambda v: v + 1, collections.defaultdict(list, {"a": 1}))
    assert type(out) is collections.defaultdict and out.default_factory is list
    assert out["missing"] == [] and out["a"] == 2


def test_deque_keeps_its_maxlen():
    out = tree.map_structure(lambda v: v * 10, collections.deque([1, 2], maxlen=3))
    assert type(out) is collections.deque and out.maxlen == 3 and list(out) == [10, 20]


def test_lists_tuples_and_nested_mixes_keep_every_type_on_the_way_down():
    source = nested()
    out = tree.map_structure(lambda v: v, source)
    assert type(out["b"]) is Pair and type(out["b"].y) is list and type(out["b"].y[1]) is tuple
    assert type(out["a"]) is collections.OrderedDict and type(out["a"]["m"]) is Triple
    assert type(out["c"]) is collections.deque and type(out["d"]) is collections.defaultdict
    assert list(out) == ["b", "a", "c", "d"]


@pytest.mark.parametrize(
    "leaf",
    [UserList([1, 2]), UserTuple((1, 2)), UserDict(a=1), np.arange(3), "text", b"bytes", None, 3],
    ids=["list-subclass", "tuple-subclass", "dict-subclass", "ndarray", "str", "bytes", "None", "int"],
)
def test_other_types_are_leaves_passed_to_fn_whole(leaf):
    seen = []
    out = tree.map_structure(lambda v: seen.append(v) or "mapped", (leaf,))
    assert out == ("mapped",) and len(seen) == 1 and seen[0] is leaf
    assert not tree.is_nested(leaf)


def test_leaves_are_in_keras_tree_flatten_order():
    source = nested()
    ours = tree.leaves(source)
    theirs = keras_tree.flatten(source)
    assert len(ours) == len(theirs) == 10
    assert all(a is b for a, b in zip(ours, theirs))


def test_leaves_with_paths_names_each_leaf_by_its_keys_and_indices():
    paths = [path for path, _ in tree.leaves_with_paths({"img": Pair(np.ones(1), [np.ones(1)])}, "x")]
    assert paths == ["x['img'][0]", "x['img'][1][0]"]


def test_leaves_of_a_dict_built_in_another_order_line_up():
    one = {"a": np.zeros(1), "b": np.ones(1)}
    other = {"b": np.ones(1), "a": np.zeros(1)}
    assert [float(v[0]) for v in tree.leaves(one)] == [float(v[0]) for v in tree.leaves(other)] == [0.0, 1.0]


def test_dict_with_keys_of_mixed_types_keeps_insertion_order_in_leaves():
    assert tree.leaves({2: "two", "a": "a", 1: "one"}) == ["two", "a", "one"]


def test_empty_containers_have_no_leaves_and_map_to_themselves():
    source = ((), [], {}, collections.OrderedDict())
    assert tree.leaves(source) == []
    assert tree.map_structure(lambda v: 1 / 0, source) == source
