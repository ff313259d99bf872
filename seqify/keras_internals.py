"""Every place where seqify touches Keras's (or tf_keras's) private internals.

Keras exposes no public hook for custom data adapters, so seqify relies on a
few private names. They are all imported, and checked, here; no other module
imports `keras.src` or `tf_keras.src`. `tests/test_keras_internals.py` holds
one contract test per touchpoint, so a Keras upgrade that moves one fails
loudly, naming it, instead of breaking `fit` in a confusing way.

Touchpoints:
1. `keras.src.trainers.data_adapters.get_data_adapter` (module attribute,
   called by `EpochIterator`): wrapped so that seqify objects get seqify's
   adapter; everything else reaches Keras unchanged, whatever its arguments.
2. `keras.src.trainers.data_adapters.data_adapter.DataAdapter`: the base
   class of `seqify.keras_adapter.SequenceAdapter`.
3. `keras.src.trainers.data_adapters.data_adapter_utils`:
   `class_weight_to_sample_weights`, `get_tensor_spec`,
   `get_jax_iterator`, `get_torch_dataloader`, `is_torch_tensor`,
   `NUM_BATCHES_FOR_TENSOR_SPEC`.
4. Keras's callers, recognised by code-object identity (captured when seqify
   is imported): `Trainer._symbolic_build` and the TF trainer's
   `_maybe_symbolic_build` (the model-building pull), each loaded backend
   trainer's `predict` (JAX's builds the model inline with a bare `next()`).
5. tf_keras: `tf_keras.src.engine.data_adapter` (`ALL_ADAPTER_CLS`,
   `DataAdapter`, `is_none_or_empty`, `unpack_x_y_sample_weight`).
6. The running `fit`: its frame's locals (`self`, the model; its
   `epoch_iterator`, an `EpochIterator` whose `steps_per_epoch` and
   `_num_batches` seqify.callbacks.BackupAndRestore shortens for a resumed
   epoch), found by the code object of the backend trainer's `fit`.
8. The TF backend's `TFEpochIterator.__init__` frame: its
   `distribute_strategy` argument tells whether a tf.distribute strategy
   (whose input pipeline prefetches) will iterate the dataset being built;
   the default strategy's class is `_DefaultDistributionStrategy`.
7. `keras.src.utils.file_utils` (the backup callback writes Keras's files
   with it) and `keras.src.utils.module_utils.tensorflow` (TensorFlow,
   imported lazily).
"""

import functools
import importlib
import inspect
import sys
import threading

from keras.src.trainers import data_adapters
from keras.src.trainers.data_adapters import data_adapter_utils
from keras.src.trainers.data_adapters.data_adapter import DataAdapter
from keras.src.utils import file_utils
from keras.src.utils.module_utils import tensorflow as lazy_tensorflow

__all__ = [
    "DataAdapter",
    "class_weight_to_sample_weights",
    "get_tensor_spec",
    "get_jax_iterator",
    "get_torch_dataloader",
    "is_torch_tensor",
    "NUM_BATCHES_FOR_TENSOR_SPEC",
    "raise_unsupported_arg",
    "install_adapter_hook",
    "building_model",
    "called_from_predict",
    "tf_keras_data_adapter",
    "fit_locals",
    "building_for_a_strategy",
    "file_utils",
    "lazy_tensorflow",
]

class_weight_to_sample_weights = data_adapter_utils.class_weight_to_sample_weights
get_tensor_spec = data_adapter_utils.get_tensor_spec
get_jax_iterator = data_adapter_utils.get_jax_iterator
get_torch_dataloader = data_adapter_utils.get_torch_dataloader
is_torch_tensor = data_adapter_utils.is_torch_tensor
NUM_BATCHES_FOR_TENSOR_SPEC = data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC
raise_unsupported_arg = data_adapters.raise_unsupported_arg

# The parameters of get_data_adapter seqify reads (by name, never by position).
ADAPTER_PARAMETERS = ("x", "y", "sample_weight", "steps_per_epoch", "shuffle", "class_weight")


# -- 1. the get_data_adapter hook --------------------------------------------
def install_adapter_hook(claims, make_adapter) -> None:
    """Wraps `get_data_adapter`: inputs `claims(x)` accepts go to `make_adapter`.

    `make_adapter(x, arguments)` gets the call's arguments as a dict (every
    parameter of Keras's function, defaults filled in). The wrapper takes
    `(x, *args, **kwargs)` and forwards anything else untouched, so a new
    Keras parameter cannot break inputs that are not seqify's. Idempotent.
    """
    original = data_adapters.get_data_adapter
    if getattr(original, "_seqify_original", None) is not None:
        original = original._seqify_original
    signature = inspect.signature(original)
    missing = [name for name in ADAPTER_PARAMETERS if name not in signature.parameters]
    if missing:
        raise ImportError(
            f"seqify: keras.src.trainers.data_adapters.get_data_adapter has no parameter(s) {missing} "
            f"in this Keras ({_keras_version()}); seqify's adapter hook needs an update."
        )

    @functools.wraps(original)
    def get_data_adapter(x, *args, **kwargs):
        if claims(x):
            bound = signature.bind(x, *args, **kwargs)
            bound.apply_defaults()
            return make_adapter(x, dict(bound.arguments))
        return original(x, *args, **kwargs)

    get_data_adapter._seqify_original = original
    data_adapters.get_data_adapter = get_data_adapter


def _keras_version() -> str:
    import keras

    return getattr(keras, "__version__", "?")


# -- 4. Keras's callers, by code identity --------------------------------------
def _code(obj, name):
    """The code object of `obj.name`, under any decorators (Keras wraps its
    public methods in one shared `error_handler`, whose code matches them all)."""
    function = getattr(obj, name, None)
    function = getattr(function, "__func__", function)
    if function is None:
        return None
    return getattr(inspect.unwrap(function), "__code__", None)


def _backend_trainer():
    """The loaded backend's trainer class (TF, JAX or torch), or None."""
    import keras

    module_name = {
        "tensorflow": ("keras.src.backend.tensorflow.trainer", "TensorFlowTrainer"),
        "jax": ("keras.src.backend.jax.trainer", "JAXTrainer"),
        "torch": ("keras.src.backend.torch.trainer", "TorchTrainer"),
    }.get(keras.backend.backend())
    if module_name is None:
        return None
    return getattr(importlib.import_module(module_name[0]), module_name[1], None)


class _Callers:
    """Code objects of the Keras functions whose calls seqify must recognise."""

    def __init__(self):
        from keras.src.trainers.trainer import Trainer

        trainer = _backend_trainer()
        self.builders = {c for c in (_code(Trainer, "_symbolic_build"), _code(trainer, "_maybe_symbolic_build")) if c}
        self.predicts = {c for c in (_code(trainer, "predict"), _code(Trainer, "predict")) if c}
        self.fit = _code(trainer, "fit")
        self.tf_epoch_iterator_init = None
        if trainer is not None and trainer.__name__ == "TensorFlowTrainer":
            from keras.src.backend.tensorflow.trainer import TFEpochIterator

            self.tf_epoch_iterator_init = _code(TFEpochIterator, "__init__")
        self.inline_build_predict = _code(trainer, "predict") if trainer is not None and trainer.__name__ == "JAXTrainer" else None
        # Generator frames between Keras's `next()` and seqify's own.
        self.pass_through = {
            c for c in (_code(data_adapter_utils, "get_jax_iterator"), _code(data_adapter_utils, "get_numpy_iterator")) if c
        }


_callers = None


def callers() -> _Callers:
    global _callers
    if _callers is None:
        _callers = _Callers()
    return _callers


def building_model(own_codes=()) -> bool:
    """Whether Keras is pulling a batch only to build the model.

    Keras's JAX and torch trainers (and TF's under a distribution strategy)
    take one batch from a fresh iterator to build an unbuilt model, then drop
    it. Under TF the pull happens on a tf.data thread while the main thread
    waits in Keras, so both stacks are looked at. `own_codes`: code objects
    of the caller's own generator frames (skipped when looking for JAX's
    inline `predict` build).
    """
    known = callers()
    stacks = [sys._getframe(1)]
    main = threading.main_thread()
    if threading.current_thread() is not main:
        stacks.append(sys._current_frames().get(main.ident))
    skip = known.pass_through | set(own_codes)
    for frame in stacks:
        first = True
        while frame is not None:
            code = frame.f_code
            if code in known.builders:
                return True
            if first and code not in skip:
                first = False
                # JAX's predict() builds inline with a bare next(iterator);
                # its real loop calls next() from inside its step function.
                if code is known.inline_build_predict:
                    return True
            frame = frame.f_back
    return False


def called_from_predict() -> bool:
    """Whether the current call comes from a Keras `predict`."""
    predicts = callers().predicts
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in predicts:
            return True
        frame = frame.f_back
    return False


# -- 6. the running fit ---------------------------------------------------------
def fit_locals(depth: int = 1):
    """The locals of the nearest calling frame of Keras's `fit`, or None.

    A snapshot (`frame.f_locals`): `self` is the model, `epoch_iterator` its
    training `EpochIterator` once fit has made it.
    """
    fit = callers().fit
    frame = sys._getframe(depth)
    while frame is not None:
        if frame.f_code is fit:
            return frame.f_locals
        frame = frame.f_back
    return None


def building_for_a_strategy() -> bool:
    """Whether Keras's TF trainer is building a dataset for a non-default
    tf.distribute strategy (called from within `TFEpochIterator.__init__`)."""
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return True
    code = callers().tf_epoch_iterator_init
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            strategy = frame.f_locals.get("distribute_strategy")
            return strategy is not None and type(strategy).__name__ != "_DefaultDistributionStrategy"
        frame = frame.f_back
    return False


# -- 5. tf_keras ---------------------------------------------------------------
def tf_keras_data_adapter():
    """tf_keras's `data_adapter` module, or None where tf_keras is absent."""
    try:
        from tf_keras.src.engine import data_adapter
    except ImportError:
        return None
    return data_adapter
