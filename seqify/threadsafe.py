"""`@seqify.threadsafe`: a generator that several threads may share safely."""

import functools
import os

from seqify import locks


class ThreadSafeIterator:
    """Serializes `next()` with a lock from `seqify.locks`.

    Threads of one process share the stream, each batch going to exactly one
    of them. The object refuses to run in any process but the one that
    created it: a lock cannot guard a generator across processes, and a
    forked copy would silently produce duplicate batches.
    """

    def __init__(self, iterator, name="generator"):
        self._iterator = iterator
        self._name = name
        self._lock_key = locks.new_key("threadsafe")
        self._pid = os.getpid()

    def __iter__(self):
        return self

    def __next__(self):
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"seqify.threadsafe {self._name!r} was created in process {self._pid} but is used in "
                f"process {os.getpid()}: every process would replay its own copy and train on duplicate "
                "batches. Pass the generator function to seqify.from_generator(...) instead; it runs "
                "one producer and shares its batches with all workers."
            )
        with locks.get_lock(self._lock_key):
            return next(self._iterator)

    def as_sequence(self, steps_per_epoch):
        """This iterator as a seqify stream of `steps_per_epoch` batches per epoch.

        What `model.fit(it, steps_per_epoch=N)` trains on: one stream per
        iterator (and per N), so consecutive fit calls continue where the
        last one stopped, each batch exactly once, in order.

        Raises:
            ValueError: `steps_per_epoch` is None (an iterator has no end
                seqify could know).
        """
        if steps_per_epoch is None:
            raise ValueError(
                f"model.fit() got the seqify.threadsafe generator {self._name!r} without `steps_per_epoch`: "
                "a generator has no length, so seqify cannot know where an epoch ends. Pass "
                "steps_per_epoch=N to fit/evaluate (predict: steps=N), as with fit_generator."
            )
        cache = self.__dict__.setdefault("_sequences", {})
        sequence = cache.get(steps_per_epoch)
        if sequence is None:
            from seqify.adapters.generator import from_generator

            sequence = cache[steps_per_epoch] = from_generator(self, steps_per_epoch=steps_per_epoch, workers=0)
        return sequence

    def __reduce__(self):
        raise TypeError(
            f"seqify.threadsafe {self._name!r} is a running generator and cannot be pickled or sent to "
            "another process. Pass the generator function to seqify.from_generator(...) instead."
        )


def threadsafe(generator_function):
    """Decorates a generator function so that its generators are thread-safe.

    What the folk `threadsafe_iter` recipe meant to do, done right: the lock
    comes from `seqify.locks` (so nothing unpicklable is stored), and using
    the generator from another process raises a clear error instead of
    duplicating data.

    Args:
        generator_function: a function that returns a generator.

    Returns:
        A function with the same signature returning a `ThreadSafeIterator`.

    Example:

    ```python
    @seqify.threadsafe
    def batches():
        while True:
            yield make_batch()

    it = batches()  # safe to call next(it) from several threads
    ```
    """
    if not callable(generator_function):
        raise TypeError(f"@seqify.threadsafe decorates a generator function; got {type(generator_function).__name__}.")

    @functools.wraps(generator_function)
    def wrapper(*args, **kwargs):
        return ThreadSafeIterator(generator_function(*args, **kwargs), getattr(generator_function, "__name__", "generator"))

    return wrapper
