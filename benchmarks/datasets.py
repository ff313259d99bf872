"""Keras-side dataset classes for the benchmarks (imports Keras and seqify)."""

import threading

import keras
from keras.src.trainers.data_adapters.data_adapter import DataAdapter

import seqify


class _BatchFn:
    """Batch `i` is `fn(i)`; mixed into a Keras and a seqify dataset class."""

    def __init__(self, fn, num_batches, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn
        self.n = num_batches

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.fn(index)


class KerasBatchFnDataset(_BatchFn, keras.utils.PyDataset):
    """Keras's own PyDataset calling a batch function: the baseline."""


class KerasGeneratorDataset(keras.utils.PyDataset):
    """The usual way to put a legacy generator behind a PyDataset.

    `__getitem__` ignores the index and takes the next item of one shared
    generator under a lock, then applies the transform outside the lock.
    Only meaningful with threads: process workers would each advance their
    own copy of the generator (duplicated batches).
    """

    def __init__(self, make_generator, num_batches, transform=None, **kwargs):
        super().__init__(**kwargs)
        self.gen = make_generator()
        self.n = num_batches
        self.transform = transform
        self.lock = threading.Lock()

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        with self.lock:
            batch = next(self.gen)
        if self.transform is not None:
            batch = self.transform(batch)
        return batch


class HookedStateSequence(_BatchFn, seqify.Sequence):
    """A seqify.Sequence holding big state and overriding `on_epoch_end`.

    Overriding an epoch hook makes seqify re-ship the object to its process
    workers every epoch (the hook may have changed state they hold a copy of).
    """

    def on_epoch_end(self):
        pass


class PlainStateSequence(HookedStateSequence):
    """The same object without epoch hooks."""

    on_epoch_end = seqify.Sequence.on_epoch_end


class BareAdapter(DataAdapter):
    """A data adapter handing out batches built beforehand, with nothing else
    per batch: what Keras's EpochIterator alone costs per step (the floor
    under every row that `fit` drives)."""

    def __init__(self, fn, n):
        self.batches = [fn(i) for i in range(64)]
        self.n = n

    def get_numpy_iterator(self):
        batches = self.batches
        return (batches[i & 63] for i in range(self.n))

    @property
    def num_batches(self):
        return self.n

    @property
    def batch_size(self):
        return None

    @property
    def has_partial_batch(self):
        return False

    @property
    def partial_batch_size(self):
        return None
