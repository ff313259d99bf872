"""Module-level lock factory.

seqify objects never hold a lock: they hold a *key* (a short string) and ask
this module for the lock when they need it. Keys pickle, locks do not, so every
seqify object survives `pickle`/`cloudpickle` and arrives in another process
with a fresh, unheld lock.

A lock is a per-process object: it cannot guard a generator across processes.
seqify never needs that, because a stream has exactly one producer (see
`seqify.from_generator`).

Example:

```python
from seqify import locks

key = locks.new_key("my-reader")
with locks.get_lock(key):
    ...  # critical section shared by every thread that uses `key`
```
"""

import itertools
import os
import threading
import uuid

__all__ = ["get_lock", "new_key"]

_locks: dict = {}
_registry_lock = threading.Lock()
_counter = itertools.count()
# One random prefix per interpreter keeps keys made in different processes
# (spawned workers, say) from colliding.
_process_tag = uuid.uuid4().hex[:12]


def new_key(prefix: str = "lock") -> str:
    """Returns a new, unique lock key.

    Args:
        prefix: a readable label, kept in the key for debugging.

    Returns:
        A string that `get_lock` maps to one lock per process.
    """
    return f"{prefix}-{_process_tag}-{next(_counter)}"


def get_lock(key: str) -> threading.RLock:
    """Returns this process's lock for `key`, creating it on first use.

    The lock is re-entrant, so a generator that calls back into its own
    wrapper on the same thread does not deadlock.

    Args:
        key: a key from `new_key` (any hashable string works).

    Returns:
        A `threading.RLock`, the same object for the same key in this process.

    Raises:
        TypeError: if `key` is not a string.
    """
    if not isinstance(key, str):
        raise TypeError(
            f"`key` must be a str (from seqify.locks.new_key()); got {type(key).__name__}."
        )
    lock = _locks.get(key)
    if lock is None:
        with _registry_lock:
            lock = _locks.setdefault(key, threading.RLock())
    return lock


def _reset_after_fork() -> None:
    # A forked child inherits locks in whatever state the parent's threads
    # held them; the threads themselves do not survive the fork, so those
    # locks could never be released. Start the child with none.
    global _registry_lock, _process_tag
    _locks.clear()
    _registry_lock = threading.Lock()
    _process_tag = uuid.uuid4().hex[:12]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
