"""seqify: parallel, correct and fast Keras input pipelines.

Adapt a batch function, arrays or a legacy `while True` generator into a
`keras.utils.PyDataset` that goes straight into `model.fit`:

```python
import seqify

ds = seqify.from_generator(legacy_generator, steps_per_epoch=100,
                           workers=4, use_multiprocessing=True)
model.fit(ds, epochs=5)
```

Names that need Keras are imported lazily (PEP 562), so that worker
processes, which only import `seqify.engine`, never pay for TensorFlow.
"""

import importlib

# Eager, and before anything imports the module of the same name: importing
# a submodule binds its name on the package, which would hide the decorator.
from seqify.threadsafe import threadsafe  # noqa: E402  (no Keras inside)
from seqify.check import check  # noqa: E402  (no Keras inside; same reason)

__version__ = "0.1.0"

__all__ = [
    "Sequence",
    "from_batch_fn",
    "from_arrays",
    "from_generator",
    "threadsafe",
    "check",
    "empty",
    "callbacks",
    "locks",
    "worker_info",
    "WorkerInfo",
    "WorkerError",
    "WorkerDiedError",
    "StreamExhaustedError",
]

_LAZY = {
    "Sequence": ("seqify.sequence", "Sequence"),
    "from_batch_fn": ("seqify.adapters.batch_fn", "from_batch_fn"),
    "from_arrays": ("seqify.adapters.arrays", "from_arrays"),
    "from_generator": ("seqify.adapters.generator", "from_generator"),
    "empty": ("seqify.buffers", "empty"),
    "callbacks": ("seqify.callbacks", None),
    "locks": ("seqify.locks", None),
    "worker_info": ("seqify.engine.worker_info", "worker_info"),
    "WorkerInfo": ("seqify.engine.worker_info", "WorkerInfo"),
    "WorkerError": ("seqify.engine.errors", "WorkerError"),
    "WorkerDiedError": ("seqify.engine.errors", "WorkerDiedError"),
    "StreamExhaustedError": ("seqify.engine.errors", "StreamExhaustedError"),
}


def __getattr__(name):
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'seqify' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
