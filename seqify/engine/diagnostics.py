"""Why a worker process died, in words a user can act on.

Two questions, answered for the parent (`seqify.engine.process_pool`):

- How did it end? Exit code or signal, which batches it held, and the likely
  cause with its fix (`death_message`): SIGKILL is usually the OOM killer,
  SIGBUS is usually a full `/dev/shm`.
- Did it ever start? A spawn or forkserver worker first re-imports the main
  module, and an unguarded script (no `if __name__ == "__main__":`) then
  starts seqify's pool again inside the worker, which Python refuses while
  the worker is bootstrapping. That error happens in seqify code running in
  the worker but before the worker's pipe exists, so it is handed over
  through a small file instead (`report_startup_failure` in the worker,
  `read_startup_report` in the parent). The file is named after the pool's
  shared-memory prefix, so the pool's sweep removes it whatever happens.
"""

import multiprocessing
import os
import re
import signal
import tempfile
import traceback
from typing import Iterable, Optional

from seqify.engine import shm_transport

# The report file's name travels in the worker's process name (the only
# per-process field that spawn and forkserver hand to a child before it
# re-imports the main module).
_REPORT = re.compile(r"\[(seqify-\d+-[0-9a-f]+-startup-w\d+)\]$")
_MAX_REPORT_BYTES = 16 * 1024

BOOTSTRAP_FIX = (
    'Fix: put the code that builds and iterates seqify objects (or calls model.fit) under '
    '`if __name__ == "__main__":` in your script. Process workers started with "spawn" or '
    '"forkserver" re-import the main module, so unguarded top-level code runs again in every '
    'worker; alternatively pass start_method="fork" (Linux).'
)


def _report_dir() -> str:
    return shm_transport.SHM_DIR if shm_transport.AVAILABLE else tempfile.gettempdir()


def process_name(name: str, worker_id: int, shm_prefix: str) -> str:
    """The worker's process name: readable, and naming its start-up report file."""
    return f"{name}-worker-{worker_id} [{shm_prefix}startup-w{worker_id}]"


def report_startup_failure(exc: BaseException) -> bool:
    """In a worker that is still bootstrapping, leaves `exc` for the parent.

    Called where seqify itself fails inside such a worker (its pool cannot
    start there). Does nothing in any other process.

    Returns:
        True if a report was written.
    """
    me = multiprocessing.current_process()
    if not getattr(me, "_inheriting", False):
        return False
    match = _REPORT.search(me.name or "")
    if match is None:
        return False
    # Python's own message is an indented paragraph: one line reads better
    # inside ours.
    text = " ".join("".join(traceback.format_exception_only(type(exc), exc)).split())
    if "bootstrapping phase" in text:
        text += "\n" + BOOTSTRAP_FIX
    try:
        fd = os.open(os.path.join(_report_dir(), match.group(1)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode("utf-8", "replace")[:_MAX_REPORT_BYTES])
        finally:
            os.close(fd)
    except OSError:
        return False  # the parent still reports the death, with general hints
    return True


def read_startup_report(shm_prefix: str, worker_id: int) -> Optional[str]:
    """The start-up error a worker left (and removes it), or None."""
    path = os.path.join(_report_dir(), f"{shm_prefix}startup-w{worker_id}")
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_REPORT_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    return text or None


def _shm_size() -> str:
    try:
        stats = os.statvfs(shm_transport.SHM_DIR)
    except OSError:
        return ""
    mib = 1024 * 1024
    return f" (here: {stats.f_blocks * stats.f_frsize // mib} MiB, {stats.f_bavail * stats.f_frsize // mib} MiB free now)"


def how_it_ended(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def likely_cause(exitcode: Optional[int], started: bool, start_method: str) -> str:
    """The usual reason for this kind of death, and what to do about it."""
    if exitcode == -signal.SIGKILL:
        return "A SIGKILL is usually the out-of-memory killer: lower `max_queue_size`, the batch size or `workers`."
    if exitcode == -signal.SIGBUS:
        return (
            "A SIGBUS in a seqify worker almost always means shared memory ran out: batches travel "
            f"through /dev/shm, and /dev/shm is too small{_shm_size()}. Give it more room (Docker: "
            "`docker run --shm-size=2g ...`; Kubernetes: an `emptyDir` with `medium: Memory` mounted "
            "at /dev/shm), or lower `max_queue_size`, the batch size or `workers`."
        )
    if exitcode is not None and exitcode < 0:
        return "A crash in native code (or a signal sent to the worker) ended it."
    if not started:
        hint = (
            "It ended while starting, before it could run any batch; its own error is printed above "
            "on stderr."
        )
        if start_method in ("spawn", "forkserver"):
            hint += (
                f' With start_method="{start_method}" a worker first re-imports the main module: '
                "that import failed, or the module could not be found in a fresh interpreter. "
                + BOOTSTRAP_FIX
            )
        return hint
    return "User code in the worker called os._exit()/sys.exit(), or a native library exited."


def death_message(
    worker_id: int,
    pid: Optional[int],
    exitcode: Optional[int],
    held: Iterable,
    started: bool,
    start_method: str,
    startup_report: Optional[str] = None,
) -> str:
    """The `WorkerDiedError` text for a worker process that ended.

    Args:
        worker_id: the worker's index in its pool.
        pid: its process id.
        exitcode: `Process.exitcode` (negative: killed by that signal).
        held: the `Task`s sent to it and not answered.
        started: whether it had reported ready (job unpickled).
        start_method: the pool's start method.
        startup_report: the error it left while bootstrapping, if any.
    """
    held = sorted(held, key=lambda task: (task.epoch, task.index))
    if not started:
        what = " while starting"
    elif held:
        what = " while building " + ", ".join(f"batch {task.index} (epoch {task.epoch})" for task in held)
    else:
        what = " while idle"
    if startup_report:
        cause = f"Its start-up error:\n{startup_report}"
    else:
        cause = likely_cause(exitcode, started, start_method)
    return (
        f"seqify worker process {worker_id} (pid {pid}) {how_it_ended(exitcode)}{what}. {cause}\n"
        "The pool was shut down; the next epoch starts a fresh one."
    )
