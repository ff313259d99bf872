"""Keras callbacks for seqify objects.

- `InputMonitor`: how much of `fit`'s step time went into waiting for data.
- `BackupAndRestore`: Keras's callback of that name, plus the data state, so
  that a restarted run resumes at the exact batch.

Each lives in its own module; import them from here.
"""

import importlib

__all__ = ["InputMonitor", "BackupAndRestore"]

_LAZY = {
    "InputMonitor": "seqify.callbacks.input_monitor",
    "BackupAndRestore": "seqify.callbacks.backup_and_restore",
}


def __getattr__(name):
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'seqify.callbacks' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
