"""One training run for the resume proofs (tests/callbacks/test_backup_and_restore.py).

Usage: resume_run.py OUT_DIR KIND[,KIND...] [--kill-after STEPS]

For each KIND (batch_fn, arrays, subclass, stream, sharded) it trains a tiny
model with `seqify.callbacks.BackupAndRestore(OUT_DIR/KIND/backup,
save_freq=SAVE_FREQ)` on a seqify object with process workers, and appends to
OUT_DIR/KIND/ids.jsonl the first two columns (id, noise) of every batch the compiled train
step consumed (recorded by a py_function inside it, as it trains). At the
end it writes OUT_DIR/KIND/weights.npz. With --kill-after N the process
SIGKILLs itself when its (N+1)th step begins: a pre-emption mid-epoch, with
the last backup SAVE_FREQ steps (or fewer) before it.
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import seqify  # noqa: E402

EPOCHS, BATCHES, ROWS, SAVE_FREQ, SEED = 3, 6, 4, 2, 7
WORKERS = dict(workers=2, use_multiprocessing=True, seed=SEED)


def _batch(first_row, rows=ROWS):
    x = np.zeros((rows, 3), "float32")
    x[:, 0] = np.arange(first_row, first_row + rows)
    x[:, 1:] = 1.0
    return x, (x[:, :1] * 0.01 + 0.5).astype("float32")


def _augment(batch):
    # Seeded per batch: a function of (seed, epoch, index), so exact on resume.
    x, y = batch
    x = x.copy()
    x[:, 1:] += seqify.worker_info().rng().normal(size=(len(x), 2)).astype("float32")
    return x, y


def batch_fn(i):
    return _augment(_batch(100 * i))


class Noisy(seqify.Sequence):
    def __len__(self):
        return BATCHES

    def __getitem__(self, i):
        return _augment(_batch(100 * i))


def stream():
    i = 0
    while True:
        yield _batch(100 * i)
        i += 1


def sharded_stream():
    info = seqify.worker_info()
    i = info.shard_index
    while True:
        yield _batch(100 * i)
        i += info.num_shards


def build(kind):
    if kind == "batch_fn":
        return seqify.from_batch_fn(batch_fn, BATCHES, **WORKERS)
    if kind == "arrays":
        x, y = _batch(0, rows=BATCHES * ROWS)
        return seqify.from_arrays(x, y, batch_size=ROWS, **WORKERS)
    if kind == "subclass":
        return Noisy(**WORKERS)
    if kind == "stream":
        return seqify.from_generator(stream, steps_per_epoch=BATCHES, transform=_augment, **WORKERS)
    if kind == "sharded":
        return seqify.from_generator(sharded_stream, steps_per_epoch=BATCHES, transform=_augment, sharded=True, **WORKERS)
    raise ValueError(kind)


class Recording(keras.Model):
    """Records x[:, 0] of every batch its compiled train step consumes."""

    def __init__(self, path):
        inputs = keras.Input((3,))
        super().__init__(inputs, keras.layers.Dense(1)(keras.layers.Rescaling(0.002)(inputs)))
        self._file = open(path, "a", buffering=1)

    def _record(self, column):
        self._file.write(json.dumps([float(v) for v in column.numpy()]) + "\n")

    def train_step(self, data):
        tf.py_function(self._record, [tf.reshape(data[0][:, :2], [-1])], [])
        return super().train_step(data)


class KillAfter(keras.callbacks.Callback):
    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.seen = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen == self.steps:
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen += 1


def train(out_dir, kind, kill_after=None):
    folder = os.path.join(out_dir, kind)
    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)
    ds = build(kind)
    model = Recording(os.path.join(folder, "ids.jsonl"))
    model.compile(optimizer=keras.optimizers.get(os.environ.get("RESUME_OPTIMIZER", "adam")), loss="mse")
    callbacks = [seqify.callbacks.BackupAndRestore(os.path.join(folder, "backup"), save_freq=SAVE_FREQ)]
    if kill_after is not None:
        callbacks.append(KillAfter(kill_after))
    model.fit(ds, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    np.savez(os.path.join(folder, "weights.npz"), *model.get_weights())
    ds.close()


if __name__ == "__main__":
    out, kinds = sys.argv[1], sys.argv[2].split(",")
    kill = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--kill-after" else None
    for kind in kinds:
        train(out, kind, kill)
