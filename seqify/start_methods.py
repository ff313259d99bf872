"""Which multiprocessing start method seqify's process workers use.

Decided here, above the engine (which never looks at Keras), and passed down
to the process pool.
"""

import multiprocessing
import sys
from typing import Optional

# Keras backends whose runtimes are not fork-safe: a forked child may
# deadlock on locks that their threads held at fork time.
_FORK_UNSAFE_BACKENDS = ("jax", "torch")


def _fork_unsafe_backend() -> bool:
    keras = sys.modules.get("keras")  # never import Keras just to ask
    if keras is None:
        return False
    try:
        return keras.backend.backend() in _FORK_UNSAFE_BACKENDS
    except Exception:
        return False


def default_start_method() -> str:
    """Python's default start method, unless the Keras backend is fork-unsafe.

    With the JAX or PyTorch backend forking is unsafe, so seqify uses
    "forkserver" (or "spawn" where forkserver does not exist). TensorFlow
    tolerates fork as long as children do not call into it, which seqify's
    workers do not unless user code does.
    """
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_context().get_start_method()
    if method == "fork" and _fork_unsafe_backend():
        available = multiprocessing.get_all_start_methods()
        return "forkserver" if "forkserver" in available else "spawn"
    return method


def start_method_for(requested: Optional[str]) -> str:
    """The user's start method if given, else `default_start_method()`."""
    return requested or default_start_method()
