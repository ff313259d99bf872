"""Runners: one object, several epochs, timed as `fit` iterates it.
"""

from benchmarks.extras.harness import reap_keras_pools, tf

import multiprocessing
import multiprocessing.pool
import time

from keras.src.trainers.epoch_iterator import EpochIterator

from benchmarks.workloads import consume


# -- runners: one object, several epochs ------------------------------------------


class PlainRunner:
    """`for i in range(n): fn(i)`: the serial limit."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        for i in range(self.n):
            consume(self.fn(i))
            if first is None:
                first = time.perf_counter() - t0
        return time.perf_counter() - t0, first, self.n

    def close(self):
        pass


class RawGeneratorRunner:
    """Pulls a generator directly (one continuous stream, like fit_generator)."""

    def __init__(self, make_generator, n, transform=None):
        self.gen = make_generator()
        self.n, self.transform = n, transform

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        for _ in range(self.n):
            batch = next(self.gen)
            if self.transform is not None:
                batch = self.transform(batch)
            consume(batch)
            if first is None:
                first = time.perf_counter() - t0
        return time.perf_counter() - t0, first, self.n

    def close(self):
        self.gen.close()


class EpochIteratorRunner:
    """Iterates `x` exactly as `fit` does, through Keras's EpochIterator."""

    def __init__(self, x, expected):
        self.x = x
        self.expected = expected
        self.it = EpochIterator(x=x, steps_per_epoch=None, shuffle=False)
        self.it.reset()  # fit calls this once before the first epoch

    def epoch(self):
        t0 = time.perf_counter()
        first = None
        count = 0
        for _begin, _end, buffer in self.it:  # __next__ pulls the batch(es)
            for batch in buffer:
                consume(batch)
                count += 1
            if first is None:
                first = time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if count != self.expected:
            raise RuntimeError(f"epoch yielded {count} batches, expected {self.expected}")
        return elapsed, first, count

    def close(self):
        adapter = getattr(self.it, "data_adapter", None)
        enqueuer = getattr(adapter, "enqueuer", None)
        if enqueuer is not None:
            enqueuer.stop()
        close = getattr(self.x, "close", None)
        if close is not None:
            close()
        self.it = None
        reap_keras_pools()


class CeilingRunner:
    """The ideal: the epoch's batches split evenly over bare workers.

    No ordering, no transport of batches, no Keras: each worker builds and
    consumes its share locally. Run interleaved with the other
    configurations, it shows the speed-up the machine allows at that moment
    (other tenants' load included).
    """

    def __init__(self, chunk_fn, chunks, use_processes):
        self.chunk_fn, self.chunks = chunk_fn, chunks
        if use_processes:
            self.pool = multiprocessing.get_context("fork").Pool(len(chunks))
        else:
            self.pool = multiprocessing.pool.ThreadPool(len(chunks))
        self.pool.map(_noop, range(len(chunks)))  # workers up before epoch 1 ends

    def epoch(self):
        t0 = time.perf_counter()
        n = sum(self.pool.map(self.chunk_fn, self.chunks, chunksize=1))
        return time.perf_counter() - t0, None, n

    def close(self):
        self.pool.terminate()
        self.pool.join()


def _noop(_):
    return None


def split(n, parts):
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def tf_dataset(make_iterable, sample, n):
    signature = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in sample)
    ds = tf.data.Dataset.from_generator(make_iterable, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    return ds.prefetch(tf.data.AUTOTUNE)


class _Range:
    """Picklable-free callable for tf.data: fn(0..n-1)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def __call__(self):
        return (self.fn(i) for i in range(self.n))


class _Window:
    """tf.data over one continuous stream: n items per pass."""

    def __init__(self, gen, n, transform=None):
        self.gen, self.n, self.transform = gen, n, transform

    def __call__(self):
        for _ in range(self.n):
            batch = next(self.gen)
            yield self.transform(batch) if self.transform is not None else batch

