"""Shared-memory transport: large arrays cross processes through /dev/shm, once."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import keras
import numpy as np
import pytest

import seqify
from seqify.engine import shm_transport
from seqify.engine.shm_transport import INLINE_BYTES, Encoder, FileSegments, ShmArray, StdlibSegments, decode, discard, select_segments, sweep

from . import _treefns as tf_, _workfns as wf
from ._support import KINDS, epoch, mapped_file, pool_of, shm

pytestmark = pytest.mark.skipif(not shm_transport.AVAILABLE, reason="needs /dev/shm")


@pytest.fixture
def prefix():
    tag = f"seqify-{os.getpid()}-test{uuid.uuid4().hex[:8]}-"
    yield tag
    sweep(tag)


# -- through a process pool -------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_large_batch_from_process_workers_arrives_with_equal_values(kind, closing):
    ds = closing(seqify.from_batch_fn(wf.large_batch, 3, **KINDS[kind]))
    batches = epoch(ds)
    for i, (x, y) in enumerate(batches):
        assert x.dtype == np.float32 and x.shape == wf.LARGE_SHAPE
        np.testing.assert_array_equal(x, wf.large_value(i))
        np.testing.assert_array_equal(y, [i])


@pytest.mark.timeout(60)
def test_large_batch_is_a_view_of_shared_memory_not_a_pickled_copy(closing):
    ds = closing(seqify.from_batch_fn(wf.large_batch, 2, **KINDS["fork"]))
    x, y = epoch(ds)[0]
    assert not x.flags.owndata
    assert (mapped_file(x) or "").startswith("/dev/shm/seqify-")
    assert mapped_file(y) is None  # the 8-byte y went inline


@pytest.mark.timeout(60)
def test_after_receipt_the_pool_keeps_only_its_bounded_recycled_slots(closing):
    # One-off segments are unlinked on receipt; a worker may keep up to
    # MAX_SLOTS warm, recycled segments ("...-w<id>-s<k>") until the pool closes.
    ds = closing(seqify.from_batch_fn(wf.large_batch, 12, **KINDS["fork"]))
    for _ in range(3):
        kept = epoch(ds)  # every batch of the epoch held at once
        prefix = pool_of(ds).shm_prefix
        names = shm(prefix)
        assert all(re.fullmatch(re.escape(prefix) + r"w\d+-s\d+", name) for name in names), names
        assert len(names) <= shm_transport.MAX_SLOTS * 2
    for i, (x, _) in enumerate(kept):
        np.testing.assert_array_equal(x, wf.large_value(i))
    ds.close()
    assert shm(prefix) == []


@pytest.mark.timeout(60)
def test_kept_batches_are_never_overwritten_by_later_batches(closing):
    ds = closing(seqify.from_batch_fn(wf.large_epoch_batch, 4, **KINDS["fork"]))
    kept = epoch(ds)  # epoch 0, kept
    for _ in range(6):  # later epochs, dropped at once: their slots get recycled
        for batch in ds.iter_epoch():
            del batch
    part = kept[2][0][5:7, ::3]  # a view that outlives its batch
    del kept[2]
    for _ in range(3):
        for batch in ds.iter_epoch():
            del batch
    for i, (x,) in zip([0, 1, 3], kept):
        np.testing.assert_array_equal(x, wf.large_epoch_value(0, i))
    np.testing.assert_array_equal(part, wf.large_epoch_value(0, 2)[5:7, ::3])


@pytest.mark.timeout(60)
def test_every_batch_of_several_kept_epochs_keeps_its_values(closing):
    # More batches held than a worker has recycled slots: the rest travel in one-off segments.
    ds = closing(seqify.from_batch_fn(wf.large_epoch_batch, 12, **KINDS["fork"]))
    epochs = [epoch(ds) for _ in range(3)]
    for number, batches in enumerate(epochs):
        for i, (x,) in enumerate(batches):
            np.testing.assert_array_equal(x, wf.large_epoch_value(number, i))


@pytest.mark.timeout(120)
def test_fit_trains_on_every_shared_memory_batch_with_its_own_values(model, closing):
    # The recording model reads each batch inside train_step, after tf.data has
    # converted and prefetched it: a shared-memory segment reused too early
    # would show up there as a wrong batch id.
    ds = closing(seqify.from_batch_fn(wf.large_keras_batch, 12, max_queue_size=4, **KINDS["fork"]))
    model.fit(ds, epochs=3, verbose=0, shuffle=False)
    assert model.trained == list(range(12)) * 3
    predictions = model.predict(ds, verbose=0)
    assert model.predicted == list(range(12))
    assert predictions.shape == (12 * 512, 1)


@pytest.mark.timeout(60)
def test_received_large_batch_is_writable(closing):
    ds = closing(seqify.from_batch_fn(wf.large_batch, 1, workers=1, use_multiprocessing=True))
    (x, _), = epoch(ds)
    assert x.flags.writeable
    x[:] = -1.0
    assert float(x.sum()) == -float(x.size)


@pytest.mark.timeout(60)
def test_large_batch_sliced_from_a_memmap_travels_through_shared_memory(closing, tmp_path):
    # np.load(mmap_mode="r") datasets: a slice of one is an np.memmap (an ndarray subclass).
    source = np.arange(4 * 256 * 1024, dtype=np.float32).reshape(4 * 256, 1024)
    path = tmp_path / "data.npy"
    np.save(path, source)
    ds = closing(seqify.from_batch_fn(functools.partial(wf.memmap_slice_batch, str(path)), 4, **KINDS["fork"]))
    for i, (x, _) in enumerate(epoch(ds)):
        np.testing.assert_array_equal(x, source[i * 256:(i + 1) * 256])
        assert (mapped_file(x) or "").startswith("/dev/shm/seqify-")


@pytest.mark.timeout(60)
def test_small_arrays_from_process_workers_travel_inline(closing):
    ds = closing(seqify.from_batch_fn(wf.small_batch, 2, **KINDS["fork"]))
    for i, (x, y) in enumerate(epoch(ds)):
        assert x.nbytes < INLINE_BYTES
        assert mapped_file(x) is None
        np.testing.assert_array_equal(x, np.full((8, 8), i, np.float32))


# -- every batch structure Keras accepts ------------------------------------------------
def assert_same_batch(out, expected, path="batch"):
    """Same types all the way down, same keys in the same order, equal values,
    and every large array a view of shared memory (not pickled whole)."""
    assert type(out) is type(expected), f"{path}: {type(out).__name__}, expected {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(out) == list(expected), path
        for key in expected:
            assert_same_batch(out[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (tuple, list)):
        assert len(out) == len(expected), path
        for i, (a, b) in enumerate(zip(out, expected)):
            assert_same_batch(a, b, f"{path}[{i}]")
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(out, expected, err_msg=path)
        if expected.nbytes >= INLINE_BYTES:
            assert (mapped_file(out) or "").startswith("/dev/shm/seqify-"), f"{path} was pickled, not sent through shared memory"
    else:
        assert out == expected, path


def _sent_as(batch):
    # What the worker sends: a top-level list becomes a tuple, as Keras does.
    return tuple(batch) if type(batch) is list else batch


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make,kind",
    [
        pytest.param(tf_.namedtuple_batch, "fork", id="namedtuple"),
        pytest.param(tf_.ordereddict_batch, "fork", id="ordereddict"),
        pytest.param(tf_.list_batch, "fork", id="list"),
        pytest.param(tf_.nested_batch, "fork", id="nested-fork"),
        pytest.param(tf_.nested_batch, "spawn", id="nested-spawn"),
    ],
)
def test_batch_structures_keras_accepts_cross_through_shared_memory_with_their_types(make, kind, closing):
    ds = closing(seqify.from_batch_fn(make, 3, **KINDS[kind]))
    batches = epoch(ds)
    assert len(batches) == 3
    for i, batch in enumerate(batches):
        assert_same_batch(batch, _sent_as(make(i)))


class _TwoInputs(keras.Model):
    """Sums a dense layer over each named input; records the id of every batch it trains on."""

    def __init__(self):
        super().__init__()
        self.image = keras.layers.Dense(1)
        self.meta = keras.layers.Dense(1)
        self.trained = []

    def call(self, x):
        return self.image(x["image"]) + self.meta(x["meta"])

    def train_step(self, data):
        x, _ = data
        image, meta = (np.asarray(x[k]) for k in ("image", "meta"))
        assert image.shape[1:] == (tf_.FEATURES,) and meta.shape[1:] == (2,)
        assert float(image.min()) == float(image.max()) == float(meta[0, 0])  # each input belongs to the same batch
        self.trained.append(int(meta[0, 0]))
        return super().train_step(data)


@pytest.mark.timeout(120)
def test_fit_trains_a_two_input_model_on_dict_batches_from_shared_memory(closing):
    model = _TwoInputs()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    ds = closing(seqify.from_batch_fn(tf_.dict_inputs_batch, 6, **KINDS["fork"]))
    x, _ = epoch(ds)[0]
    assert type(x) is type(tf_.dict_inputs_batch(0)[0])
    assert (mapped_file(x["image"]) or "").startswith("/dev/shm/seqify-")
    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert model.trained == list(range(6)) * 2


# -- a /dev/shm too small for the batches (Docker's default is 64 MB) -------------
SMALL_SHM = "48m"
_CHILD = os.path.join(os.path.dirname(__file__), "_small_shm_child.py")
# Mounts a small tmpfs over /dev/shm in a private mount namespace, then runs the command.
_MOUNT_THEN = 'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" "$@"'


@pytest.fixture(scope="module")
def small_shm_namespace():
    """`run(*argv)` runs argv where /dev/shm is a 48 MB tmpfs of its own; skips where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace with a small /dev/shm needs root (unshare -m, mount)")
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs util-linux's unshare and mount")
    base = ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_THEN.format(size=SMALL_SHM)]
    probe = subprocess.run(base + ["df", "-B1", "--output=size", "/dev/shm"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    assert int(probe.stdout.split()[-1]) == 48 << 20  # the probe saw its own small /dev/shm

    reports = {}

    def run(*argv):
        # Cached: each behaviour of one run gets its own test without paying for another epoch.
        if argv in reports:
            return reports[argv]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(_CHILD)))] + sys.path))
        done = subprocess.run(base + list(argv), capture_output=True, text=True, timeout=150, env=env)
        assert done.returncode == 0, f"exit code {done.returncode}; stderr:\n{done.stderr[-4000:]}"
        reports[argv] = json.loads(done.stdout.strip().splitlines()[-1])
        return reports[argv]

    return run


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_batches_that_do_not_fit_in_a_small_dev_shm_arrive_intact_through_the_pipe(kind, small_shm_namespace):
    report = small_shm_namespace(sys.executable, _CHILD, kind)
    assert sorted(report["ids"]) == list(range(8))
    assert all(report["right_on_arrival"]) and all(report["right_at_end"])
    # Fewer slots, not none: the slots that fit (two of 19 MiB) carry batches, the rest take the pipe.
    assert "shm" in report["via"] and "pipe" in report["via"]
    assert report["left_in_shm"] == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_a_small_dev_shm_is_reported_once_with_its_size_and_the_fix(kind, small_shm_namespace):
    report = small_shm_namespace(sys.executable, _CHILD, kind)
    assert len(report["warnings"]) == 1, report["warnings"]
    (message,) = report["warnings"]
    assert "/dev/shm" in message and "48.0 MiB" in message and "free" in message
    assert "docker run --shm-size=" in message and "mount" in message


# -- Encoder / decode / discard / sweep ------------------------------------------------
def test_arrays_below_inline_bytes_are_not_written_to_shared_memory(prefix):
    small = np.zeros(INLINE_BYTES - 1, dtype=np.uint8)
    encoder = Encoder(prefix)
    encoded = encoder.encode((small,))
    assert encoded[0] is small
    assert shm(prefix) == []
    assert not encoder.mapped  # the receiver may skip decoding


def test_arrays_of_inline_bytes_or_more_go_to_shared_memory(prefix):
    big = np.arange(INLINE_BYTES, dtype=np.uint8)
    encoder = Encoder(prefix)
    (ref,) = encoder.encode((big,))
    assert encoder.mapped
    assert isinstance(ref, ShmArray)
    assert ref.name.startswith(prefix) and shm(prefix) == [ref.name]
    assert ref.nbytes == INLINE_BYTES and tuple(ref.shape) == big.shape
    np.testing.assert_array_equal(decode(ref), big)


def test_decode_unlinks_the_segment_and_keeps_the_data(prefix):
    big = np.random.default_rng(0).normal(size=(256, 256))
    ref = Encoder(prefix).encode(big)
    assert shm(prefix) == [ref.name]
    out = decode(ref)
    assert shm(prefix) == []
    np.testing.assert_array_equal(out, big)
    assert (mapped_file(out) or "").startswith(f"/dev/shm/{ref.name}")  # a view of it, not a copy


def test_nested_dicts_tuples_and_lists_round_trip_with_their_types(prefix):
    big = lambda k: np.full((128, 129), k, dtype=np.float32)  # noqa: E731 - 66 KB each
    batch = {
        "x": (big(1), np.arange(3), [big(2), {"deep": big(3), "name": "label"}]),
        "y": [np.float32(2.5), None, 7],
        "empty": ((), [], {}),
    }
    encoded = Encoder(prefix).encode(batch)
    assert len(shm(prefix)) == 3
    assert isinstance(encoded["x"][0], ShmArray) and isinstance(encoded["x"][2][1]["deep"], ShmArray)
    out = decode(encoded)
    assert shm(prefix) == []
    assert type(out["x"]) is tuple and type(out["x"][2]) is list and type(out["x"][2][1]) is dict
    np.testing.assert_array_equal(out["x"][0], big(1))
    np.testing.assert_array_equal(out["x"][1], np.arange(3))
    np.testing.assert_array_equal(out["x"][2][0], big(2))
    np.testing.assert_array_equal(out["x"][2][1]["deep"], big(3))
    assert out["x"][2][1]["name"] == "label"
    assert out["y"] == [np.float32(2.5), None, 7]
    assert out["empty"] == ((), [], {})


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a[::2, ::3], id="strided"),
        pytest.param(lambda a: a.T, id="transposed"),
        pytest.param(lambda a: np.asfortranarray(a), id="fortran"),
        pytest.param(lambda a: a[:, ::-1], id="reversed"),
    ],
)
def test_non_contiguous_arrays_round_trip(make, prefix):
    source = np.arange(600 * 500, dtype=np.float64).reshape(600, 500)
    array = make(source)
    assert array.nbytes >= INLINE_BYTES
    ref = Encoder(prefix).encode(array)
    assert isinstance(ref, ShmArray)
    out = decode(ref)
    assert out.shape == array.shape and out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_zero_dimensional_array_goes_inline_and_round_trips(prefix):
    scalar = np.array(3.25, dtype=np.float64)
    encoded = Encoder(prefix).encode((scalar, {"s": scalar}))
    assert encoded[0] is scalar and encoded[1]["s"] is scalar
    out = decode(encoded)
    assert out[0].shape == () and float(out[0]) == 3.25
    assert shm(prefix) == []


def test_object_arrays_go_inline_even_when_large(prefix):
    objects = np.empty(20_000, dtype=object)
    objects[:] = [("row", i) for i in range(20_000)]
    assert objects.nbytes >= INLINE_BYTES
    encoded = Encoder(prefix).encode((objects,))
    assert encoded[0] is objects
    assert shm(prefix) == []


@pytest.mark.parametrize(
    "dtype",
    [
        "bool", "int8", "uint16", "int64", "float16", "float64", "complex64", ">f4", "<U8",
        "datetime64[ms]", "timedelta64[s]",
    ],
)
def test_dtype_and_values_survive_the_round_trip(dtype, prefix):
    array = (np.arange(70_000) % 100).astype(dtype)
    assert array.nbytes >= INLINE_BYTES
    ref = Encoder(prefix).encode(array)
    assert isinstance(ref, ShmArray)
    out = decode(ref)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_structured_dtype_keeps_its_fields(prefix):
    records = np.zeros(10_000, dtype=[("a", "<f4"), ("b", "<i8")])
    records["a"] = np.arange(10_000)
    records["b"] = -np.arange(10_000)
    out = decode(Encoder(prefix).encode(records))
    assert out.dtype == records.dtype
    np.testing.assert_array_equal(out["b"], records["b"])


def test_masked_array_keeps_its_mask(prefix):
    values = np.arange(20_000, dtype=np.float64)
    masked = np.ma.masked_array(values, mask=values % 3 == 0)
    out = decode(Encoder(prefix).encode(masked))
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), values % 3 == 0)


def test_discard_unlinks_every_segment_of_an_encoded_batch(prefix):
    big = np.ones((200, 200))
    encoded = Encoder(prefix).encode({"a": (big, [big, {"b": big}]), "c": np.ones(2)})
    assert len(shm(prefix)) == 3
    discard(encoded)
    assert shm(prefix) == []
    discard(encoded)  # a second discard is harmless


def test_sweep_removes_exactly_the_segments_with_its_prefix(prefix):
    other = prefix[:-1] + "x-"
    big = np.ones((200, 200))
    encoder = Encoder(prefix)
    mine = [encoder.encode(big) for _ in range(3)]
    theirs = Encoder(other).encode(big)
    try:
        assert sweep(prefix) == 3
        assert shm(prefix) == []
        assert shm(other) == [theirs.name]
        assert sweep(prefix) == 0
        assert len(mine) == 3
    finally:
        sweep(other)


def test_each_encoded_array_gets_its_own_segment_name(prefix):
    encoder = Encoder(prefix)
    big = np.ones((200, 200))
    names = [encoder.encode(big).name for _ in range(5)]
    assert len(set(names)) == 5 and all(name.startswith(prefix) for name in names)
    assert sorted(shm(prefix)) == sorted(names)


def test_a_recycled_slot_has_all_its_pages_allocated_before_anything_is_written(prefix):
    # A sparse (ftruncate-only) slot on a full tmpfs is a SIGBUS at the first
    # write into its mapping; allocated pages make a full tmpfs an ENOSPC up front.
    encoder = Encoder(prefix, inline_bytes=0, max_slots=1)
    ref = encoder.encode(np.ones(3 << 20, dtype=np.uint8))
    assert ref.slot == 0
    assert os.stat(os.path.join("/dev/shm", ref.name)).st_blocks * 512 >= 3 << 20


# -- which segment implementation each Python gets ------------------------------------
@pytest.mark.parametrize("version", [(3, 13), (3, 13, 0, "final", 0), (3, 14, 2), (4, 0)])
def test_python_3_13_and_later_create_slots_with_shared_memory_untracked(version):
    assert select_segments(version) is StdlibSegments


@pytest.mark.parametrize("version", [(3, 8), (3, 11, 7), (3, 12, 9, "final", 0)])
def test_pythons_before_3_13_create_slots_as_files_in_dev_shm(version):
    assert select_segments(version) is FileSegments


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="checks the path of Pythons before 3.13")
def test_this_python_exercises_the_hand_written_file_path():
    assert select_segments() is FileSegments
    assert type(shm_transport.SEGMENTS) is FileSegments
