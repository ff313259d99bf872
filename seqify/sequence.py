"""`seqify.Sequence`: a `keras.utils.PyDataset` driven by seqify's engine."""

import math
import weakref
from typing import Iterator, Optional

import cloudpickle
import keras

from seqify.runner import EpochRunner
from seqify.settings import Settings
from seqify.source import IndexSource, Source


class _GetItem:
    """A user's Sequence subclass as a batch function.

    Holds a weak reference so that thread pools do not keep the Sequence
    alive; pickled (for process workers) it becomes a strong one.
    """

    def __init__(self, sequence):
        self._ref = weakref.ref(sequence)

    def __call__(self, index):
        sequence = self._ref()
        if sequence is None:
            raise RuntimeError("the seqify Sequence was garbage-collected while its workers ran")
        return sequence[index]

    def __reduce__(self):
        return _StrongGetItem, (self._ref(),)


class _StrongGetItem:
    def __init__(self, sequence):
        self.sequence = sequence

    def __call__(self, index):
        return self.sequence[index]


class _NumBatches:
    """A subclass's current number of batches (it may change between epochs)."""

    def __init__(self, sequence):
        self._ref = weakref.ref(sequence)

    def __call__(self):
        sequence = self._ref()
        n = sequence.num_batches
        if n is not None and n < 1:
            raise ValueError(
                f"{type(sequence).__name__} has {n} batches; seqify needs at least one (`__len__` >= 1), "
                "or `num_batches` None for an infinite Sequence (with fit(steps_per_epoch=...))."
            )
        return n


class Sequence(keras.utils.PyDataset):
    """Base class for datasets that seqify runs on its own parallel engine.

    Subclass it like `keras.utils.PyDataset`: implement `__len__` (number of
    batches; or a `num_batches` property returning None for an infinite
    dataset) and `__getitem__(index)` (one batch), optionally
    `on_epoch_begin`/`on_epoch_end`. Pass the object straight to
    `model.fit`/`evaluate`/`predict`, or iterate it (`for batch in ds:` runs
    one epoch on the workers). Unlike Keras's own workers, seqify's are
    started once and reused across epochs, process workers return arrays
    through shared memory, a dead worker raises instead of hanging, and
    `seqify.worker_info().rng()` gives reproducible per-batch randomness.

    Args:
        workers: number of workers (threads, or processes with
            `use_multiprocessing=True`); 0 builds batches on the thread that
            consumes them; "auto" measures and picks (see `seqify.check`).
        use_multiprocessing: use processes (for GIL-holding Python work).
        max_queue_size: maximum number of batches in flight (for tiny,
            cheap batches of a random-access source the window may grow,
            within 4 MiB and ~20 ms of work: docs/design.md, record 23).
        seed: seed for shuffling, `worker_info().rng()` and the global
            RNGs of process workers; drawn at random if None.
        start_method: "fork", "spawn", "forkserver", or None for seqify's
            default (Python's, or forkserver under the JAX/torch backends).
        shuffle: None (default) follows `fit(shuffle=...)` as Keras does;
            True/False overrides it. Orders are drawn from (seed, epoch).
        output_signature: `tf.TensorSpec` structure for the TF backend;
            inferred from the first batches if None.

    Example:

    ```python
    class Squares(seqify.Sequence):
        def __len__(self):
            return 100

        def __getitem__(self, i):
            x = np.full((32, 1), i, "float32")
            return x, x**2

    model.fit(Squares(workers=4, use_multiprocessing=True), epochs=3)
    ```
    """

    def __init__(
        self,
        workers=1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        *,
        seed: Optional[int] = None,
        start_method: Optional[str] = None,
        shuffle: Optional[bool] = None,
        output_signature=None,
    ):
        settings = Settings.create(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
            seed=seed, start_method=start_method, shuffle=shuffle, output_signature=output_signature,
        )
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=settings.max_queue_size)
        self.__dict__["_settings"] = settings

    # -- settings (Keras's attributes, validated) ----------------------------
    @property
    def settings(self) -> Settings:
        """This object's `seqify.settings.Settings` (read-only)."""
        settings = self.__dict__.get("_settings")
        if settings is None:  # a subclass that skipped super().__init__()
            settings = self.__dict__["_settings"] = Settings.create()
        return settings

    def _replace_settings(self, **changes) -> None:
        settings = self.settings.replace(**changes)
        self.__dict__["_settings"] = settings
        runner = self.__dict__.get("_seqify_runner")
        if runner is not None:
            runner.update_settings(settings)

    @property
    def workers(self):
        runner = self.__dict__.get("_seqify_runner")
        if self.settings.workers == "auto" and runner is not None and runner._resolved is not None:
            return runner._resolved[0]
        return self.settings.workers

    @workers.setter
    def workers(self, value):
        if "_settings" in self.__dict__:
            self._replace_settings(workers=value)

    @property
    def use_multiprocessing(self) -> bool:
        runner = self.__dict__.get("_seqify_runner")
        if self.settings.workers == "auto" and runner is not None and runner._resolved is not None:
            return runner._resolved[1]
        return self.settings.use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value):
        if "_settings" in self.__dict__:
            self._replace_settings(use_multiprocessing=value)

    @property
    def max_queue_size(self) -> int:
        return self.settings.max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value):
        if "_settings" in self.__dict__:
            self._replace_settings(max_queue_size=value)

    @property
    def seed(self) -> int:
        """The seed used for shuffling and `worker_info().rng()`."""
        return self.settings.seed

    @property
    def shuffle(self) -> Optional[bool]:
        """The object's own `shuffle` (None: follows `fit(shuffle=...)`)."""
        return self.settings.shuffle

    # -- pickling -----------------------------------------------------------
    # Runtime state (pool, threads, epoch cursor) never travels. The rest is
    # cloudpickled, so lambdas and closures survive plain `pickle` too.
    def __reduce_ex__(self, protocol):
        state = {k: v for k, v in self.__dict__.items() if k != "_seqify_runner"}
        return _restore, (cloudpickle.dumps((type(self), state)),)

    # -- the source and its runner -------------------------------------------
    def _make_source(self) -> Source:
        """The `Source` of this object's batches (built once per process)."""
        cls = type(self)
        hooks = cls.on_epoch_begin is not Sequence.on_epoch_begin or cls.on_epoch_end is not Sequence.on_epoch_end
        return IndexSource(_GetItem(self), _NumBatches(self), self.seed, reship=hooks)

    @property
    def _runner(self) -> EpochRunner:
        runner = self.__dict__.get("_seqify_runner")
        if runner is None:
            runner = self.__dict__["_seqify_runner"] = EpochRunner(self._make_source(), self.settings, type(self).__name__)
            # Pools and producer threads never reference the Sequence, so it
            # can be collected; this then shuts them down (and at exit).
            weakref.finalize(self, runner.close)
        return runner

    def iter_epoch(self, *, shuffle: Optional[bool] = None) -> Iterator:
        """Runs one epoch on the workers and yields its batches in order.

        This is what `fit` runs each epoch, and what `for batch in ds:` does.
        Batches come out standardized (`(x,)`, `(x, y)`, `(x, y, sw)` or a
        dict), each once. Epoch hooks are not called (Keras calls them).

        Args:
            shuffle: whether to shuffle this pass if the object's own
                `shuffle` is None (default: natural order).

        Returns:
            A generator over the epoch's batches; close it (or let it go) to
            stop early: in-flight work is given back, no stream batch is lost.
        """
        return self._runner.iter_epoch(shuffle)

    # -- resumable state ----------------------------------------------------
    def _state_fingerprint(self) -> dict:
        """What identifies this object's data: a state from another is refused."""
        cls = type(self)
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "source": self._state_source(),
            "num_batches": self._runner.source.num_batches(),
            "seed": self.seed,
        }

    def _state_source(self) -> str:
        # A subclass's data is its class (already in the fingerprint).
        return "getitem"

    def get_state(self) -> dict:
        """Where this object's data stands: a small JSON-serialisable dict.

        It records what was *consumed* (the batches handed to `fit` or to a
        `for` loop), not what the workers built ahead: the epoch, the
        position in it, the order of the epoch in progress, and for streams
        the stream position (per shard for sharded streams). Order and
        `worker_info().rng()` are functions of (seed, epoch, index), so
        with `set_state` the next batch is exactly the one that would have
        come next, under any worker setting. Also carries a fingerprint
        (class, source, number of batches, seed) so that a foreign state is
        refused. `seqify.callbacks.BackupAndRestore` saves it for you.

        A subclass whose own state changes the data (an `on_epoch_end` that
        reshuffles an index with its own RNG) must save that too: override
        both methods, adding its entries to `super().get_state()`.

        Returns:
            A dict of plain ints, strings, bools and None (`json.dumps` it).

        Example:

        ```python
        state = ds.get_state()           # e.g. {"epoch": 3, "position": 17, ...}
        json.dump(state, open("data.json", "w"))
        # ... later, in a new process, on an identically built object:
        ds.set_state(json.load(open("data.json")))
        ```
        """
        return self._runner.get_state(self._state_fingerprint())

    def set_state(self, state: dict) -> None:
        """Resumes this object where `state` (from `get_state`) left off.

        The next batch served (by `fit` or `iter_epoch`) is the one that
        would have come next; a mid-epoch state continues that epoch with
        its remaining batches, in the same order. A stream made from a
        generator *function* or an iterable is replayed to its position
        without running `transform`; see `seqify.from_generator` (`seek=`).

        Args:
            state: a dict returned by `get_state()` of an identically built
                object (class, source, number of batches, seed), possibly
                after a JSON round trip, under any worker setting.

        Raises:
            ValueError: `state` is not a seqify state or is another object's
                (the message says which field differs).
            TypeError: a stream made from a generator *object* (it cannot be
                replayed; pass the generator function, or `seek=`).
        """
        self._runner.set_state(state, self._state_fingerprint())

    def __iter__(self):
        return self.iter_epoch()

    def to_tf_dataset(self, output_signature=None):
        """Returns a `tf.data.Dataset` over this object, one pass per iteration.

        The dataset keeps seqify's parallel workers and ordering: each
        `iter(dataset)` runs one epoch through the engine. It composes with
        `.map`, `.prefetch`, `.unbatch`, and `tf.distribute` strategies.

        Args:
            output_signature: a nested `tf.TensorSpec` structure; the
                object's own `output_signature`, or inferred from the first
                batches (consuming none) if None.

        Returns:
            A `tf.data.Dataset`.

        Example:

        ```python
        ds = seqify.from_batch_fn(fn, 100, workers=4).to_tf_dataset()
        ds = ds.map(lambda x, y: (x / 255.0, y)).prefetch(2)
        ```
        """
        from seqify.keras_adapter import SequenceAdapter

        return SequenceAdapter(self).get_tf_dataset(output_signature)

    def close(self) -> None:
        """Shuts down the workers and frees their shared memory. Idempotent.

        The object stays usable: the next epoch starts a fresh pool.
        """
        runner = self.__dict__.get("_seqify_runner")
        if runner is not None:
            runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def _restore(payload):
    cls, state = cloudpickle.loads(payload)
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def num_batches_for(num_samples: int, batch_size: int, drop_remainder: bool) -> int:
    if drop_remainder:
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)


from seqify import keras_adapter as _keras_adapter  # noqa: E402  (needs Sequence)

_keras_adapter.install(Sequence)

from seqify import legacy_adapter as _legacy_adapter  # noqa: E402

if _legacy_adapter.wanted():
    _legacy_adapter.install(Sequence)
