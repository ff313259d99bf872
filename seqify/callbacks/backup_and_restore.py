"""`BackupAndRestore`: Keras's callback of that name, plus the data state.

Keras 3's `keras.callbacks.BackupAndRestore` saves the weights and the epoch
reached, and on restart replays the interrupted epoch from its first batch,
while a fresh seqify object would start again at epoch 0 (another shuffle,
other `worker_info().rng()` noise, for a stream other batches). This
subclass also saves `get_state()` of the seqify object(s) being trained on,
in the same metadata file, and on restart restores them and lets the
interrupted epoch run only its remaining steps: the batches the model
trains on, concatenated across the runs, are those of an uninterrupted run.
See docs/design.md ("Resume after pre-emption").
"""

import json
import os
import warnings
from typing import Optional

import keras

from seqify import keras_internals as ki

_RAN_OUT = "Your input ran out of data"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore` that also resumes seqify data at the exact batch.

    A drop-in replacement: same arguments, same files in `backup_dir`
    (`latest.weights.h5`, `training_metadata.json`, whose "epoch" Keras reads;
    the data state is an extra "seqify" entry in the latter). On restart the
    model's weights and epoch come back as with Keras's callback, and so does
    the data: every seqify object resumes where the saved step left it, and
    the interrupted epoch continues with only its remaining steps, in the
    same order, with the same `worker_info().rng()` noise, under any worker
    setting.

    Which objects: `data` if given, else the seqify object `fit` trains on
    (`model.fit(ds, ...)` is found automatically). Give `data` when fit gets
    the object inside something else (e.g. `ds.to_tf_dataset().map(...)`).
    Restarted runs must build the same objects (class, source, number of
    batches, seed: pass an explicit `seed=`) or the state is refused.

    Exactness needs one pass of the object per Keras epoch (fit without
    `steps_per_epoch`, or equal to `len(ds)`); for an infinite object
    (`num_batches=None`) any `steps_per_epoch` works. The validation data
    must be another object than the training data.

    Args:
        backup_dir: where the backup lives (as Keras's).
        save_freq: "epoch", or save every `save_freq` batches (as Keras's;
            a mid-epoch save is what makes a mid-epoch resume possible).
        double_checkpoint: keep the previous backup too (as Keras's).
        delete_checkpoint: delete the backup when fit completes (as Keras's).
        data: a seqify object, or a list of them, whose state to save;
            None: the one fit trains on.

    Raises:
        ValueError: at train begin, a saved data state that is not these
            objects', or a finite object whose length is not fit's steps.

    Example:

    ```python
    ds = seqify.from_batch_fn(batch, 1000, shuffle=True, seed=0,
                              workers=4, use_multiprocessing=True)
    backup = seqify.callbacks.BackupAndRestore("/ckpt/run1", save_freq=100)
    model.fit(ds, epochs=10, callbacks=[backup])  # re-run the same line after a crash
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True, *, data=None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint,
                         delete_checkpoint=delete_checkpoint)
        if data is not None:
            from seqify.sequence import Sequence

            for obj in data if isinstance(data, (list, tuple)) else [data]:
                if not isinstance(obj, Sequence):
                    raise TypeError(
                        f"`data` must be a seqify object (or a list of them) whose state to back up; got "
                        f"{type(obj).__name__}. Leave it None to use the seqify object fit trains on."
                    )
        self.data = data
        self._objects = []
        self._delivered_at_begin = []
        self._resume_at = None  # (epoch, step): the restored mid-epoch point
        self._epoch_offset = 0  # steps of the current epoch trained before this run
        self._epoch_trained = 0  # steps of the current epoch trained in this run
        self._trained = 0  # steps trained in this run, all epochs
        self._quiet = None  # silences Keras's "ran out of data" for a resumed epoch
        self._epoch_iterator = None  # fit's EpochIterator, to shorten a resumed epoch
        self._shortened = None  # its (steps_per_epoch, _num_batches) before that

    # -- which objects ---------------------------------------------------------
    def _find_objects(self):
        if self.data is not None:
            return list(self.data) if isinstance(self.data, (list, tuple)) else [self.data]
        from seqify import keras_adapter

        adapter = keras_adapter.training_adapters.get(self.model)
        return [adapter.sequence] if adapter is not None else []

    # -- restore ---------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._objects = self._find_objects()
        steps = (self.params or {}).get("steps")
        for obj in self._objects:
            n = obj._runner.source.num_batches()
            if n is not None and steps is not None and steps != n:
                raise ValueError(
                    f"seqify.callbacks.BackupAndRestore resumes at the exact batch when each Keras epoch is one "
                    f"pass of the data, but fit runs {steps} steps per epoch over {type(obj).__name__} of {n} "
                    f"batches. Drop fit's `steps_per_epoch` (or set it to {n}), or use an infinite source "
                    "(num_batches=None) with steps_per_epoch."
                )
        super().on_train_begin(logs)  # weights and epoch, as Keras does
        self._resume_at = None
        saved = self._read_metadata()
        data = saved.get("seqify") if saved else None
        if saved and data is None and self._objects:
            warnings.warn(
                f"The backup in {self.backup_dir!r} has no seqify data state (was it written by "
                "keras.callbacks.BackupAndRestore?): the model resumes, but the data starts over at its "
                "first epoch's order. Use seqify.callbacks.BackupAndRestore for the whole run.",
                stacklevel=2,
            )
        if data is not None and self._objects:
            states = data.get("data", [])
            if len(states) != len(self._objects):
                raise ValueError(
                    f"The backup in {self.backup_dir!r} holds the state of {len(states)} seqify object(s), but "
                    f"this run trains on {len(self._objects)}. Pass the same `data=` as the interrupted run, or "
                    "delete the backup_dir to start over."
                )
            for obj, state in zip(self._objects, states):
                obj.set_state(state)
            step = int(data.get("step", 0))
            if step > 0:
                self._resume_at = (int(saved["epoch"]), step)
                self._epoch_iterator = _fit_epoch_iterator()
                if self._epoch_iterator is None:
                    # No EpochIterator to shorten: end the data instead.
                    for obj in self._objects:
                        if obj._runner.source.num_batches() is None and steps is not None:
                            obj._runner.limit_next_pass(steps - step)
        self._delivered_at_begin = [obj._runner.delivered for obj in self._objects]
        self._trained = 0
        self._current_epoch = self.model._initial_epoch or 0

    def _read_metadata(self) -> Optional[dict]:
        if not ki.file_utils.exists(self._training_metadata_path):
            return None
        with ki.file_utils.File(self._training_metadata_path, "r") as f:
            return json.loads(f.read())

    # -- progress --------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        # Keras's own callback only learns the epoch at its end, so a backup
        # taken in the first epoch after a restore would record epoch 0.
        self._current_epoch = epoch
        self._epoch_trained = 0
        self._epoch_offset = 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            self._epoch_offset = step = self._resume_at[1]
            iterator = self._epoch_iterator
            if iterator is not None:
                # Keras runs only the epoch's remaining steps. (Ending the
                # epoch by running out of data instead would cost one failed
                # train call, which still advances the optimizer's iteration
                # count and seed generators: Adam would drift.)
                self._shortened = (iterator.steps_per_epoch, iterator._num_batches)
                if iterator.steps_per_epoch:
                    iterator.steps_per_epoch -= step
                elif iterator._num_batches:
                    iterator._num_batches -= step
            else:
                # The data ends after the remaining steps; Keras then warns
                # that the input "ran out of data", which is what we asked for.
                self._quiet = warnings.catch_warnings()
                self._quiet.__enter__()
                warnings.filterwarnings("ignore", message=_RAN_OUT)
        self._resume_at = None

    def on_train_batch_end(self, batch, logs=None):
        self._trained += batch + 1 - self._epoch_trained
        self._epoch_trained = batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._end_quiet()
        if self._shortened is not None:
            self._epoch_iterator.steps_per_epoch, self._epoch_iterator._num_batches = self._shortened
            self._shortened = None
        self._epoch_offset = 0
        self._epoch_trained = 0
        super().on_epoch_end(epoch, logs)  # Keras: next epoch, then save if per epoch

    def on_train_end(self, logs=None):
        self._end_quiet()
        self._epoch_iterator = self._shortened = None
        super().on_train_end(logs)

    def _end_quiet(self):
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.__exit__(None, None, None)

    # -- save --------------------------------------------------------------------
    def _data_states(self) -> list:
        states = []
        for obj, begin in zip(self._objects, self._delivered_at_begin):
            runner = obj._runner
            # Batches handed to the trainer but not trained on yet (a
            # backend's read-ahead) are not consumed.
            rewind = runner.delivered - begin - self._trained
            states.append(runner.get_state(obj._state_fingerprint(), rewind=max(rewind, 0)))
        return states

    def _save_model(self):
        # Keras's _save_model, with the data state in the same metadata file,
        # written atomically after the weights.
        if not ki.file_utils.exists(self.backup_dir):
            ki.file_utils.makedirs(self.backup_dir)
        if self.double_checkpoint and ki.file_utils.exists(self._weights_path):
            ki.file_utils.copy(self._weights_path, self._prev_weights_path)
        if self.double_checkpoint and ki.file_utils.exists(self._training_metadata_path):
            ki.file_utils.copy(self._training_metadata_path, self._prev_training_metadata_path)
        states = self._data_states()
        self.model.save_weights(filepath=self._weights_path, overwrite=True)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "seqify": {"step": self._epoch_offset + self._epoch_trained, "data": states},
        }
        text = json.dumps(metadata)
        path = self._training_metadata_path
        if "://" in str(path):
            with ki.file_utils.File(path, "w") as f:
                f.write(text)
            return
        temporary = f"{path}.tmp"
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)


def _fit_epoch_iterator():
    """The EpochIterator of the running `fit` (a local of its frame), or None."""
    local = ki.fit_locals(2)
    iterator = None if local is None else local.get("epoch_iterator")
    if hasattr(iterator, "steps_per_epoch") and hasattr(iterator, "_num_batches"):
        return iterator
    return None
