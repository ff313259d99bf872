"""The settings of a seqify object: one frozen value, validated once.

Every public constructor funnels its worker arguments through `Settings`, so
the rules (and the error messages that name the argument and the fix) live in
one place. Changing a setting later (`ds.workers = 4`, or tf_keras's
`fit(workers=4)`) builds a new, validated `Settings`; the runner notices the
change and starts a matching pool for the next pass.
"""

import dataclasses
import random
from typing import Any, Optional, Union

import numpy as np

from seqify._validation import is_int

START_METHODS = (None, "fork", "spawn", "forkserver")
AUTO = "auto"


def draw_seed() -> int:
    """A fresh random seed (for objects built with `seed=None`)."""
    return random.SystemRandom().randrange(2**32)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a seqify object builds its batches.

    Attributes:
        workers: number of workers, 0 (build on the consuming thread) or
            "auto" (measured at pool start, see `seqify.check`). Thread
            workers leave random-access batches that take under ~20 µs to
            the consuming thread (docs/design.md, record 29).
        use_multiprocessing: processes instead of threads.
        max_queue_size: batches in flight at most (tiny, cheap batches of
            a random-access source excepted: docs/design.md, record 23).
        start_method: "fork", "spawn", "forkserver" or None (seqify's
            default for the running Keras backend).
        seed: seeds the order of shuffled passes, `worker_info().rng()` and
            the global RNGs of process workers.
        shuffle: True/False, or None to follow `fit(shuffle=...)`.
        output_signature: a `tf.TensorSpec` structure for the TF backend,
            or None to infer it from the first batches.
    """

    workers: Union[int, str] = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10
    start_method: Optional[str] = None
    seed: int = 0
    shuffle: Optional[bool] = None
    output_signature: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        workers = self.workers
        if workers != AUTO and (not is_int(workers) or workers < 0):
            raise ValueError(
                f"`workers` must be an int >= 0 (0 builds batches on the calling thread) or \"auto\"; got {workers!r}."
            )
        if not isinstance(self.use_multiprocessing, (bool, np.bool_)):
            raise TypeError(f"`use_multiprocessing` must be True or False; got {self.use_multiprocessing!r}.")
        if not is_int(self.max_queue_size) or self.max_queue_size < 1:
            raise ValueError(f"`max_queue_size` must be an int >= 1 (batches in flight); got {self.max_queue_size!r}.")
        if self.start_method not in START_METHODS:
            raise ValueError(f"`start_method` must be one of {START_METHODS}; got {self.start_method!r}.")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"`seed` must be an int in 0..2**63-1 or None (drawn at random); got {self.seed!r}.")
        if self.shuffle is not None and not isinstance(self.shuffle, (bool, np.bool_)):
            raise TypeError(
                f"`shuffle` must be True, False or None (None follows fit(shuffle=...)); got {self.shuffle!r}."
            )
        # Normalise numpy scalars once, so comparisons and pickles are plain.
        object.__setattr__(self, "workers", workers if workers == AUTO else int(workers))
        object.__setattr__(self, "use_multiprocessing", bool(self.use_multiprocessing))
        object.__setattr__(self, "max_queue_size", int(self.max_queue_size))
        object.__setattr__(self, "seed", int(self.seed))
        if self.shuffle is not None:
            object.__setattr__(self, "shuffle", bool(self.shuffle))

    @classmethod
    def create(cls, *, seed=None, **kwargs) -> "Settings":
        """Validated settings; `seed=None` draws a seed once, here."""
        if seed is None:
            seed = draw_seed()
        return cls(seed=seed, **kwargs)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def uses_processes(self) -> bool:
        return self.use_multiprocessing and self.workers != 0

    def pool_key(self):
        """What a running pool depends on: a change means a new pool."""
        return (self.workers, self.uses_processes, self.start_method, self.max_queue_size)
