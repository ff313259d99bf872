"""seqify.callbacks.BackupAndRestore: a run SIGKILLed mid-epoch and restarted
trains on exactly the batches of an uninterrupted run, and ends with the same
weights.

All runs train with process workers, with tests/callbacks/resume_run.py: the
reference run in this process, one child process per data kind that SIGKILLs
itself mid-epoch (between two backups, so one trained step is lost and must
be replayed), and one restarted child process that resumes them all from
their backups. (Sharded streams are proven at the state level in
tests/test_resume.py: one TensorFlow start less here.)
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import resume_run  # noqa: E402

# Its batch functions reach the workers by value, under any start method.
cloudpickle.register_pickle_by_value(resume_run)

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_run.py")
KINDS = ["batch_fn", "arrays", "subclass", "stream"]
EPOCHS, BATCHES, SAVE_FREQ = 3, 6, 2  # as in resume_run.py
KILL_AFTER = 9  # steps the interrupted run trains: epoch 1, step 3; last backup after step 8


def _run(args, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    return subprocess.Popen([sys.executable, SCRIPT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs, timeout=240):
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _await_shm_release(pid, timeout=15.0):
    # Workers of a SIGKILLed trainer notice and exit, releasing its segments.
    deadline = time.monotonic() + timeout
    while glob.glob(f"/dev/shm/seqify-{pid}-*") and time.monotonic() < deadline:
        time.sleep(0.1)
    return glob.glob(f"/dev/shm/seqify-{pid}-*")


def _ids(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    reference, interrupted = root / "reference", root / "interrupted"
    procs = [_run([str(interrupted), kind, "--kill-after", str(KILL_AFTER)]) for kind in KINDS]
    try:
        for kind in KINDS:  # meanwhile
            resume_run.train(str(reference), kind)
    finally:
        logs = _wait(procs)
    for kind, p, (_, err) in zip(KINDS, procs, logs):
        assert p.returncode == -signal.SIGKILL, f"{kind}: the interrupted run was not killed:\n{err[-3000:]}"
        assert not _await_shm_release(p.pid), f"{kind}: shared memory of the killed run left behind"
    saved = {}
    for kind in KINDS:
        with open(interrupted / kind / "backup" / "training_metadata.json") as f:
            saved[kind] = json.load(f)
    killed_ids = {kind: _ids(interrupted / kind / "ids.jsonl") for kind in KINDS}
    (proc,) = procs = [_run([str(interrupted), ",".join(KINDS)])]
    (log,) = _wait(procs)
    assert proc.returncode == 0, log[1][-3000:]
    return {
        "reference": {kind: _ids(reference / kind / "ids.jsonl") for kind in KINDS},
        "killed": killed_ids,
        "all": {kind: _ids(interrupted / kind / "ids.jsonl") for kind in KINDS},
        "saved": saved,
        "weights": {
            kind: (np.load(reference / kind / "weights.npz"), np.load(interrupted / kind / "weights.npz")) for kind in KINDS
        },
        "stderr": log[1],
    }


def _saved_step(runs, kind):
    meta = runs["saved"][kind]
    return meta["epoch"] * BATCHES + meta["seqify"]["step"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", KINDS)
def test_backup_is_taken_mid_epoch_before_the_kill(runs, kind):
    meta = runs["saved"][kind]
    assert (meta["epoch"], meta["seqify"]["step"]) == (1, 2)
    assert len(runs["killed"][kind]) == KILL_AFTER  # one trained step after the backup is lost


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", KINDS)
def test_restarted_run_trains_on_exactly_the_reference_batches(runs, kind):
    saved = _saved_step(runs, kind)
    resumed = runs["all"][kind][len(runs["killed"][kind]):]
    reference = runs["reference"][kind]
    assert len(reference) == EPOCHS * BATCHES
    # Only the interrupted epoch's remaining steps, then the later epochs:
    assert len(resumed) == EPOCHS * BATCHES - saved
    # Ids and worker_info().rng() noise: no repeat, no gap, same order.
    assert runs["killed"][kind][:saved] + resumed == reference


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", KINDS)
def test_restarted_run_ends_with_the_reference_weights(runs, kind):
    reference, resumed = runs["weights"][kind]
    for name in reference.files:
        # Same batches in the same order, Adam's state restored: bit-identical on CPU.
        np.testing.assert_array_equal(resumed[name], reference[name])


@pytest.mark.timeout(600)
def test_resumed_epoch_is_not_ended_by_running_out_of_data(runs):
    assert "ran out of data" not in runs["stderr"]


# -- in-process behaviour (an exception stands for the interruption) -----------
import keras  # noqa: E402

import seqify  # noqa: E402
from tests.conftest import make_batch, recording_model  # noqa: E402


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _shuffled(**kwargs):
    return seqify.from_batch_fn(make_batch, 5, seed=3, workers=2, **kwargs)


def _fitted(ds, callbacks, epochs=3):
    model = recording_model()
    model(np.zeros((1, 3), "float32"))  # built, as BackupAndRestore requires
    try:
        model.fit(ds, epochs=epochs, verbose=0, callbacks=callbacks)
    except RuntimeError:
        pass
    return model.trained


def test_restart_at_an_epoch_boundary_continues_with_that_epochs_order(tmp_path):
    with _shuffled() as ds:
        reference = _fitted(ds, [])
    backup = str(tmp_path / "backup")
    with _shuffled() as ds:
        first = _fitted(ds, [seqify.callbacks.BackupAndRestore(backup), _Interrupt(2)])
    with _shuffled() as ds:  # a new object starts at epoch 0; the backup says 2
        second = _fitted(ds, [seqify.callbacks.BackupAndRestore(backup)])
    assert len(first) == 10
    assert first + second == reference


def test_data_given_explicitly_is_the_one_backed_up(tmp_path):
    backup = tmp_path / "backup"
    with _shuffled() as ds, _shuffled() as other:
        callback = seqify.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False, data=other)
        _fitted(ds, [callback, _Interrupt(1)])
        saved = json.loads((backup / "training_metadata.json").read_text())["seqify"]
    # `other` was never read: its state is the start, not ds's epoch 1.
    assert [(s["epoch"], s["position"]) for s in saved["data"]] == [(0, 0)]


def test_fit_steps_other_than_the_objects_length_are_refused(tmp_path):
    model = recording_model()
    model(np.zeros((1, 3), "float32"))  # built, as BackupAndRestore requires
    with _shuffled() as ds:
        with pytest.raises(ValueError, match=r"one pass of the data.*runs 3 steps per epoch.*of 5 batches.*steps_per_epoch"):
            model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0,
                      callbacks=[seqify.callbacks.BackupAndRestore(str(tmp_path / "b"))])


def test_data_that_is_not_a_seqify_object_is_refused(tmp_path):
    with pytest.raises(TypeError, match="`data` must be a seqify object"):
        seqify.callbacks.BackupAndRestore(str(tmp_path), data=[np.zeros(3)])


def test_a_backup_without_data_state_warns_that_the_data_starts_over(tmp_path):
    backup = str(tmp_path / "backup")
    with _shuffled() as ds:
        _fitted(ds, [keras.callbacks.BackupAndRestore(backup), _Interrupt(1)])
    with _shuffled() as ds:
        with pytest.warns(UserWarning, match="no seqify data state.*starts over"):
            _fitted(ds, [seqify.callbacks.BackupAndRestore(backup)])
