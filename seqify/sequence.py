"""`seqify.Sequence`: a `keras.utils.PyDataset` driven by seqify's engine."""

import math
import random
import threading
import weakref

import cloudpickle
import keras
import numpy as np

from seqify._validation import is_int
from seqify.engine.executor import Executor
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import FETCH, Job
from seqify.engine.messages import Task

_START_METHODS = (None, "fork", "spawn", "forkserver")


def validate_worker_args(workers, use_multiprocessing, max_queue_size, start_method=None):
    """Raises ValueError/TypeError naming the bad argument and the fix."""
    if not is_int(workers) or workers < 0:
        raise ValueError(f"`workers` must be an int >= 0 (0 builds batches on the calling thread); got {workers!r}.")
    if not isinstance(use_multiprocessing, (bool, np.bool_)):
        raise TypeError(f"`use_multiprocessing` must be True or False; got {use_multiprocessing!r}.")
    if not is_int(max_queue_size) or max_queue_size < 1:
        raise ValueError(f"`max_queue_size` must be an int >= 1 (batches in flight); got {max_queue_size!r}.")
    if start_method not in _START_METHODS:
        raise ValueError(f"`start_method` must be one of {_START_METHODS}; got {start_method!r}.")


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


class Sequence(keras.utils.PyDataset):
    """Base class for datasets that seqify runs on its own parallel engine.

    Subclass it like `keras.utils.PyDataset`: implement `__len__` (number of
    batches) and `__getitem__(index)` (one batch), optionally
    `on_epoch_begin`/`on_epoch_end`. Pass the object straight to
    `model.fit`/`evaluate`/`predict`. Unlike Keras's own workers, seqify's
    are started once and reused across epochs, process workers return arrays
    through shared memory, a dead worker raises instead of hanging, and
    `seqify.worker_info().rng()` gives reproducible per-batch randomness.

    Args:
        workers: number of workers (threads, or processes with
            `use_multiprocessing=True`); 0 builds batches on the thread that
            consumes them.
        use_multiprocessing: use processes (for GIL-holding Python work).
        max_queue_size: maximum number of batches in flight.
        seed: seed for `worker_info().rng()` and for shuffling; drawn at
            random if None.
        start_method: "fork", "spawn", "forkserver", or None for Python's
            default.

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
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        *,
        seed=None,
        start_method=None,
    ):
        validate_worker_args(workers, use_multiprocessing, max_queue_size, start_method)
        super().__init__(workers=int(workers), use_multiprocessing=bool(use_multiprocessing), max_queue_size=int(max_queue_size))
        self._seqify_seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**32)
        self._seqify_start_method = start_method

    # -- pickling -----------------------------------------------------------
    # Runtime state (pool, threads, epoch counter) never travels. The rest is
    # cloudpickled, so lambdas and closures survive plain `pickle` too.
    def __reduce_ex__(self, protocol):
        state = {k: v for k, v in self.__dict__.items() if k != "_seqify_rt"}
        return _restore, (cloudpickle.dumps((type(self), state)),)

    # -- runtime --------------------------------------------------------------
    def _seqify_runtime(self):
        runtime = self.__dict__.get("_seqify_rt")
        if runtime is None:
            runtime = self.__dict__["_seqify_rt"] = _Runtime()
            # Pools and producer threads never reference the Sequence, so it
            # can be collected; this then shuts them down (and at exit).
            weakref.finalize(self, runtime.close)
        return runtime

    def _seqify_executor(self):
        runtime = self._seqify_runtime()
        settings = (self.workers, self.use_multiprocessing, getattr(self, "_seqify_start_method", None), self.max_queue_size)
        with runtime.lock:
            if runtime.executor is None or runtime.settings != settings:
                if runtime.executor is not None:
                    runtime.executor.close()
                runtime.executor = Executor(*settings[:3], name=type(self).__name__, max_queue_size=settings[3])
                runtime.settings = settings
            return runtime.executor

    @property
    def seed(self) -> int:
        """The seed used for shuffling and `worker_info().rng()`."""
        if "_seqify_seed" not in self.__dict__:
            self._seqify_seed = random.SystemRandom().randrange(2**32)
        return self._seqify_seed

    def _seqify_make_job(self) -> Job:
        return Job(fetch=_GetItem(self), seed=self.seed)

    def _seqify_num_batches(self) -> int:
        n = self.num_batches
        if n is None or n < 1:
            raise ValueError(f"{type(self).__name__} has {n} batches; seqify needs at least one (`__len__` >= 1).")
        return int(n)

    def _seqify_order(self, epoch: int, n: int):
        return range(n)

    def _seqify_hooks_overridden(self) -> bool:
        cls = type(self)
        return cls.on_epoch_begin is not Sequence.on_epoch_begin or cls.on_epoch_end is not Sequence.on_epoch_end

    def _seqify_iter_pass(self):
        """Yields one pass (epoch) of standardized batches, in order, in parallel."""
        runtime = self._seqify_runtime()
        epoch = runtime.next_epoch()
        n = self._seqify_num_batches()
        executor = self._seqify_executor()
        pool = executor.running_pool
        if pool is not None and pool.use_multiprocessing and self._seqify_hooks_overridden():
            # Epoch hooks may have changed state that process workers hold a
            # copy of; re-ship it. Objects without hooks never pay for this.
            pool.update(self._seqify_make_job())
        tasks = (Task(FETCH, epoch, int(i)) for i in self._seqify_order(epoch, n))
        window = max(int(self.max_queue_size), executor.workers, 1)
        return executor.run(self._seqify_make_job, tasks, window)

    def _seqify_peek(self):
        """A few batches to infer a tf.data signature, consuming nothing."""
        n = self._seqify_num_batches()
        pool = InlinePool(self._seqify_make_job())
        return [pool.submit(Task(FETCH, 0, i)).result() for i in sorted({0, n - 1})]

    def to_tf_dataset(self, output_signature=None):
        """Returns a `tf.data.Dataset` over this object, one pass per iteration.

        The dataset keeps seqify's parallel workers and ordering: each
        `iter(dataset)` runs one epoch through the engine. It composes with
        `.map`, `.prefetch`, `.unbatch`, and `tf.distribute` strategies.

        Args:
            output_signature: a nested `tf.TensorSpec` structure; inferred
                (without consuming a batch of the epoch) if None.

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
        runtime = self.__dict__.get("_seqify_rt")
        if runtime is not None:
            runtime.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


class _Runtime:
    """Per-process, never-pickled state of a Sequence."""

    def __init__(self):
        self.lock = threading.RLock()
        self.executor = None
        self.settings = None
        self.epoch = -1
        self.spec = None
        self.extra = {}

    def next_epoch(self) -> int:
        with self.lock:
            self.epoch += 1
            return self.epoch

    def close(self) -> None:
        with self.lock:
            if self.executor is not None:
                self.executor.close()
            # Streams keep their buffered items across close() (none is lost);
            # only their producer threads stop.
            for value in list(self.extra.values()):
                close = getattr(value, "close", None)
                if close is not None:
                    close()


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
