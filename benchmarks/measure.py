"""Measurement: one backend per process, every configuration on its fit path.

    python -m benchmarks.measure --backend tensorflow --json out.json [--quick]

`KERAS_BACKEND` is fixed when Keras is imported, so `benchmarks.run` starts
this module once per backend. For each workload and configuration it:
1. calibrates: times a short probe epoch, then sizes the epoch so that it
   lasts at least `--target` seconds (Keras's fixed per-epoch costs then do
   not inflate the ratios);
2. builds a fresh object of that length, runs one warm-up epoch (pool
   start-up, reported apart), then `--reps` timed epochs;
3. records batches/s of each timed epoch and how long each epoch took.
Each batch is consumed (`workloads.consume`); on the `tf` path the batch
stays in the graph, as in Keras's TF train step.
"""

import argparse
import gc
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers are the only parallelism


def log(*args):
    print(*args, flush=True)


def quiet_keras_import():
    """Imports Keras (and TensorFlow when it is the backend) with native stderr muted."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def fit_runner(obj, fn):
    """One real `model.fit(epochs=1)` per call on the current backend; returns the steps it trained.

    The model is one Dense layer on the flattened input (input-bound by
    design): the rows compare what feeding `fit` costs, not the model.
    """
    import keras

    x, y = fn(0)[:2]
    inputs = keras.Input(x.shape[1:])
    hidden = keras.layers.Flatten()(inputs) if x.ndim > 2 else inputs
    model = keras.Model(inputs, keras.layers.Dense(y.shape[-1])(hidden))
    model.compile(optimizer="sgd", loss="mse")
    data = getattr(obj, "loader", obj)  # a peer: its own DataLoader, as its users pass it

    class Steps(keras.callbacks.Callback):
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1

    def fit_epoch():
        steps = Steps()
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[steps])
        return steps.count

    return fit_epoch


def epoch_runner(obj, family, path, fn=None):
    """A function running one epoch of `obj` as `fit` iterates it on `path`; returns batches seen."""
    from benchmarks.workloads import consume

    if path.endswith("-fit"):
        return fit_runner(obj, fn)

    if family == "ceiling":
        import tensorflow as tf

        per_call = SPE if path == "tf32" else 1

        @tf.function
        def graph_step(data_iterator):
            total = tf.constant(0)
            for _ in tf.range(per_call):
                total += tf.shape(tf.nest.flatten(next(data_iterator))[0])[0]
            return total

        def ceiling_epoch():
            data_iterator = iter(obj)
            for _ in range(obj.n // per_call):
                graph_step(data_iterator)
            return obj.n // per_call * per_call

        return ceiling_epoch
    if family in ("plain", "torch", "grain"):
        def plain_epoch():
            count = 0
            for batch in obj:
                consume(batch)
                count += 1
            return count

        return plain_epoch
    if path in ("numpy", "torch"):
        if path == "numpy":
            from keras.src.trainers.epoch_iterator import EpochIterator
        else:  # the base class's buffered __next__, over get_torch_dataloader()
            from keras.src.backend.torch.trainer import TorchEpochIterator as EpochIterator

        if family == "floor":  # a bare adapter: Keras's EpochIterator and nothing else
            import numpy as np

            iterator = EpochIterator(x=np.zeros((1, 1)), batch_size=1, shuffle=False)
            iterator.data_adapter = obj
            iterator._num_batches = obj.num_batches
        else:
            iterator = EpochIterator(x=obj, shuffle=False)

        def numpy_epoch():
            count = 0
            for _begin, _end, buffer in iterator:
                for batch in buffer:
                    consume(batch)
                    count += 1
            return count

        return numpy_epoch
    if path in ("tf", "tf32"):
        import tensorflow as tf
        from keras.src.backend.tensorflow.trainer import TFEpochIterator

        per_call = SPE if path == "tf32" else 1
        iterator = TFEpochIterator(x=obj, shuffle=False, distribute_strategy=tf.distribute.get_strategy(),
                                   steps_per_execution=per_call)

        @tf.function
        def step(data_iterator):
            # What Keras's train_function does with its iterator, minus the
            # model: `steps_per_execution` next() calls inside one graph call.
            total = tf.constant(0)
            for _ in tf.range(per_call):
                batch = next(data_iterator)
                total += tf.shape(tf.nest.flatten(batch)[0])[0]
            return total

        def tf_epoch():
            count = 0
            for _begin, _end, data_iterator in iterator:
                step(data_iterator)
                count += per_call
            return count

        return tf_epoch
    from keras.src.backend.jax.trainer import JAXEpochIterator

    iterator = JAXEpochIterator(x=obj, shuffle=False)

    def backend_epoch():
        count = 0
        for _begin, _end, data_iterator in iterator:
            consume(next(data_iterator))
            count += 1
        return count

    return backend_epoch


def close(obj):
    closer = getattr(obj, "close", None)
    if closer is not None:
        closer()
    try:
        from keras.src.trainers.data_adapters import py_dataset_adapter

        for pool in list(py_dataset_adapter._DATA_POOLS):
            pool.terminate()
            pool.join()
    except Exception:
        pass
    gc.collect()


def timed_epochs(cfg, fn, n, path, epochs):
    """Builds `cfg` with `n` batches; returns (first epoch s, [seconds of each later epoch])."""
    if path == "tf32":
        n = -(-n // SPE) * SPE
    obj = cfg.make(fn, n)
    try:
        run = epoch_runner(obj, cfg.family, path, fn)
        started = time.perf_counter()
        seen = run()
        first = time.perf_counter() - started
        if seen != n:
            raise RuntimeError(f"{cfg.name} on {path}: {seen} batches in an epoch of {n}")
        times = []
        for _ in range(epochs):
            started = time.perf_counter()
            seen = run()
            times.append(time.perf_counter() - started)
            if seen != n:
                raise RuntimeError(f"{cfg.name} on {path}: {seen} batches in an epoch of {n}")
        return first, times
    finally:
        close(obj)


SPE = 32  # steps_per_execution of the "tf32" path

PROBE = {"tiny": 400, "numpy_gil_free": 16, "python_gil": 16, "large_payload": 12, "large_recycled": 12}


def measure(cfg, workload, fn, path, target, reps):
    probe = PROBE.get(workload, 16)
    if cfg.family in ("torch", "grain"):
        probe = min(probe, 40)  # slow to start per epoch: a short probe
    _, (probe_s,) = timed_epochs(cfg, fn, probe, path, 1)
    n = max(10, math.ceil(target * 1.3 / (probe_s / probe)))
    for _ in range(3):  # a probe's fixed costs make it undershoot: grow until epochs last `target`
        first, times = timed_epochs(cfg, fn, n, path, reps)
        if min(times) >= target * 0.9:
            break
        n = math.ceil(n * target * 1.3 / min(times))
    if path == "tf32":
        n = -(-n // SPE) * SPE
    return dict(config=cfg.name, family=cfg.family, workload=workload, path=path, n=n,
                first_epoch_s=first, epoch_s=times, rates=[n / t for t in times])


def serial_cost(fn, batches=50):
    fn(0)
    started = time.perf_counter()
    for i in range(batches):
        fn(i)
    return (time.perf_counter() - started) / batches


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True, choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--json", required=True)
    parser.add_argument("--workloads", default=None)
    parser.add_argument("--target", type=float, default=1.0, help="seconds per timed epoch (at least)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated configuration names (substrings)")
    parser.add_argument("--paths", default=None, help="comma-separated paths (default: all of the backend's)")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    quiet_keras_import()
    import warnings

    warnings.filterwarnings("ignore")
    from benchmarks import configurations

    names = args.workloads.split(",") if args.workloads else (
        configurations.QUICK_WORKLOADS if args.quick else list(configurations.WORKLOADS))
    records = []
    for path in (args.paths.split(",") if args.paths else configurations.PATHS[args.backend]):
        cfgs = configurations.configs_for(path, args.quick)
        if args.only:
            cfgs = [c for c in cfgs if any(s in c.name for s in args.only.split(","))]
        for workload in names:
            fn = configurations.WORKLOADS[workload]
            for cfg in cfgs:
                started = time.perf_counter()
                try:
                    record = measure(cfg, workload, fn, path, args.target, args.reps)
                except Exception as exc:  # a peer that cannot run here: reported, not fatal
                    record = dict(config=cfg.name, family=cfg.family, workload=workload, path=path,
                                  error=f"{type(exc).__name__}: {exc}"[:300])
                    log(f"  [{args.backend}/{path}] {workload:>14} | {cfg.name:<32} FAILED {record['error']}")
                else:
                    rates = sorted(record["rates"])
                    log(f"  [{args.backend}/{path}] {workload:>14} | {cfg.name:<32} {rates[len(rates) // 2]:>11,.0f} batches/s "
                        f"(epochs of {record['n']} batches, {min(record['epoch_s']):.2f}-{max(record['epoch_s']):.2f} s; "
                        f"{time.perf_counter() - started:.0f} s)")
                record["backend"] = args.backend
                record["serial_s"] = serial_cost(fn)
                records.append(record)
                with open(args.json, "w") as f:
                    json.dump(records, f)
    return 0


if __name__ == "__main__":
    code = main()
    # Every record is on disk (written after each row). Skip interpreter
    # finalisation: TensorFlow can deadlock there, destroying a peer's tf.data
    # iterator whose prefetch thread waits for the GIL (seen once after the
    # Grain rows failed inside `fit`), and `benchmarks.run` would wait forever.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
