"""Ctrl-C and a killed main process: scripts end promptly, workers never linger."""

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from seqify.engine.shm_transport import sweep

from ._support import OWNED_PIDS, alive, shm, wait_gone

# Epoch 0 is quick and starts the pool; in epoch 1, batch 0 takes SLOW seconds,
# so the main process sits waiting for it while the other worker's finished
# batches (256 KiB each: shared memory) are already received, not yet consumed.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import seqify

    SLOW = float(sys.argv[3])

    def batch(i):
        if seqify.worker_info().epoch == 1 and i == 0:
            time.sleep(SLOW)
        return (np.full((256, 256), i, dtype=np.float32),)

    if __name__ == "__main__":
        ds = seqify.from_batch_fn(batch, 8, workers=2, use_multiprocessing=True,
                                  max_queue_size=4, start_method=sys.argv[1])
        list(ds.iter_epoch())
        print("PIDS", *ds._runner.running_pool.pids, flush=True)
        if sys.argv[2] == "idle":
            time.sleep(120)
        for _ in ds.iter_epoch():
            pass
        print("EPOCH-1-DONE", flush=True)
    """
)


# A main process that stops reading: its single worker has 20 finished batches
# to send back, 128 KB each, small arrays (inline, through the pipe itself), so
# the worker ends up blocked writing to the full pipe.
STUCK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import seqify

    def batch(i):
        return np.full((32, 500), i, dtype=np.float32), np.full((32, 500), i, dtype=np.float32)

    if __name__ == "__main__":
        ds = seqify.from_batch_fn(batch, 50, workers=1, use_multiprocessing=True,
                                  max_queue_size=20, start_method=sys.argv[1])
        it = ds.iter_epoch()
        next(it)
        print("PIDS", *ds._runner.running_pool.pids, flush=True)
        time.sleep(120)
    """
)


class Script:
    """A Python script running a process-worker seqify object in its own session."""

    def __init__(self, tmp_path, start_method, mode, slow=60.0, text=SCRIPT):
        path = tmp_path / "seqify_script.py"
        path.write_text(text)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(path), start_method, mode, str(slow)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
            start_new_session=True,  # its own process group, like a terminal job
        )
        OWNED_PIDS.add(self.proc.pid)
        self.prefix = f"seqify-{self.proc.pid}-"
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.worker_pids = []

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for_workers(self, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("PIDS"):
                self.worker_pids = [int(p) for p in line.split()[1:]]
                return self.worker_pids
        raise AssertionError(f"the script never reported its workers: {self.proc.stderr.read()[-2000:]}")

    def wait_for_segments(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not shm(self.prefix):
            assert time.monotonic() < deadline, "no batch reached shared memory"
            time.sleep(0.02)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pid in wait_gone(self.worker_pids, timeout=0):
            os.kill(pid, signal.SIGKILL)
        wait_gone(self.worker_pids, timeout=5.0)
        sweep(self.prefix)


@pytest.fixture
def script(tmp_path):
    started = []

    def start(start_method, mode, slow=60.0, text=SCRIPT):
        started.append(Script(tmp_path, start_method, mode, slow, text))
        return started[-1]

    yield start
    for s in started:
        s.cleanup()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_ctrl_c_mid_epoch_ends_the_script_and_leaves_no_workers_or_segments(start_method, script):
    s = script(start_method, "run")
    pids = s.wait_for_workers()
    s.wait_for_segments()  # batches are in flight in shared memory

    start = time.monotonic()
    os.killpg(s.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, err = s.proc.communicate(timeout=30)
    elapsed = time.monotonic() - start

    assert elapsed < 10, f"Ctrl-C took {elapsed:.1f} s to end the script"
    assert "KeyboardInterrupt" in err
    assert s.proc.returncode in (-signal.SIGINT, 1, 130)
    assert wait_gone(pids, timeout=5.0) == []
    assert shm(s.prefix) == []


@pytest.mark.timeout(150)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_workers_exit_on_their_own_when_the_main_process_is_killed(start_method, script):
    s = script(start_method, "idle")
    pids = s.wait_for_workers()
    assert all(alive(pid) for pid in pids)

    s.proc.kill()  # SIGKILL: no cleanup code runs in the main process
    s.proc.wait()
    start = time.monotonic()
    left = wait_gone(pids, timeout=10.0)
    assert left == [], f"workers {left} outlived their main process"
    assert time.monotonic() - start < 5


@pytest.mark.timeout(150)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_worker_blocked_sending_results_exits_when_the_main_process_is_killed(start_method, script):
    s = script(start_method, "stuck", text=STUCK_SCRIPT)
    pids = s.wait_for_workers()
    time.sleep(1.5)  # the worker fills the pipe and blocks in write()
    s.proc.kill()
    s.proc.wait()
    left = wait_gone(pids, timeout=8.0)
    assert left == [], f"workers {left} outlived their main process"


@pytest.mark.timeout(150)
def test_batches_in_flight_when_the_main_process_is_killed_do_not_stay_in_shared_memory(script):
    s = script("fork", "run", slow=1.0)
    pids = s.wait_for_workers()
    s.wait_for_segments()
    s.proc.kill()
    s.proc.wait()
    assert wait_gone(pids, timeout=10.0) == []
    assert shm(s.prefix) == [], "segments outlived the main process and all its workers"
