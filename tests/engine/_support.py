"""Parent-side helpers for the engine tests (processes, threads, /dev/shm)."""

import glob
import os
import threading
import time

import numpy as np
import psutil

# Worker settings the lifecycle tests run under.
THREADS = dict(workers=2, use_multiprocessing=False)
FORK = dict(workers=2, use_multiprocessing=True, start_method="fork")
SPAWN = dict(workers=2, use_multiprocessing=True, start_method="spawn")
FORKSERVER = dict(workers=2, use_multiprocessing=True, start_method="forkserver")
KINDS = {"threads": THREADS, "fork": FORK, "spawn": SPAWN, "forkserver": FORKSERVER}


def alive(pid) -> bool:
    """True if `pid` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, timeout=5.0):
    """Waits until none of `pids` runs; returns those still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def shm(prefix="seqify-"):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join("/dev/shm", glob.escape(prefix) + "*")))


def threads_named(prefix):
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def pool_of(ds):
    runner = ds.__dict__.get("_seqify_runner")
    return runner.running_pool if runner is not None else None


def epoch(ds):
    return list(ds.iter_epoch())


def ids(batches):
    """Batch ids from batches whose x is filled with the id."""
    return [int(np.asarray(b[0] if not isinstance(b, dict) else b["x"]).reshape(-1)[0]) for b in batches]


def children():
    """Direct and indirect child processes of this test process that are running."""
    return [p for p in psutil.Process().children(recursive=True) if alive(p.pid)]


def new_children(before, timeout=5.0):
    """Waits until no child process that was not in `before` runs; returns those that still do."""
    old = {p.pid for p in before}
    deadline = time.monotonic() + timeout
    while True:
        extra = [p.pid for p in children() if p.pid not in old]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


# Pids of subprocesses that tests started: their /dev/shm segments count as ours.
OWNED_PIDS = set()


def mapped_file(array):
    """The file (per /proc/self/maps) whose mapping holds `array`'s data, or None.

    "/dev/shm/seqify-..." means the array is a zero-copy view of shared memory
    (possibly already unlinked: "... (deleted)"); None means ordinary heap
    memory, i.e. a copy (unpickled bytes, for instance).
    """
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(v, 16) for v in fields[0].split("-"))
            if start <= address < end:
                path = fields[5].strip() if len(fields) == 6 else ""
                return path if path.startswith("/") else None  # not "[heap]", "[stack]", anonymous
    return None
