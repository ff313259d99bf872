"""Errors raised by the engine, and how user exceptions cross processes.

A user exception is re-raised in the caller as itself (same type, same
message), with a note naming the batch and the worker, and with the
worker-side traceback attached as `__cause__`, the way `concurrent.futures`
does it. Exceptions that cannot be pickled arrive as `WorkerError`.
"""

import pickle
import traceback

__all__ = ["WorkerError", "WorkerDiedError", "StreamExhaustedError"]


class WorkerError(RuntimeError):
    """A user exception that could not be sent back as itself."""


class WorkerDiedError(RuntimeError):
    """A worker process ended (signal, `os._exit`, OOM killer) mid-batch."""


class StreamExhaustedError(RuntimeError):
    """A generator ran dry in the middle of an epoch."""


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text as an exception's cause."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def pack_exception(exc: BaseException):
    """Turns an exception raised in a worker into something picklable."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)
    except Exception:
        payload = None
    return (payload, type(exc).__qualname__, str(exc), tb)


def unpack_exception(packed, where: str) -> BaseException:
    """Rebuilds a packed exception in the caller, with note and cause."""
    payload, type_name, message, tb = packed
    exc = None
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:
            exc = None
    if exc is None:
        exc = WorkerError(f"{type_name}: {message}")
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    annotate(exc, where)
    return exc


def annotate(exc: BaseException, where: str) -> BaseException:
    """Adds a 'seqify: ...' note (once) saying where the exception happened."""
    note = f"seqify: raised {where}"
    notes = getattr(exc, "__notes__", [])
    if note not in notes and hasattr(exc, "add_note"):
        exc.add_note(note)
    return exc
