"""`InputMonitor`: how much of `fit`'s step time went into waiting for data.

How it measures, per epoch, from `on_epoch_begin` to the end of the last
training step (validation is not counted):

- seqify inputs: the wait seqify itself records (`seqify.input_wait`): the
  time the consumer was blocked on the next batch in the ordered window,
  getting the next task from the source (a stream's next item), or building
  the batch itself when there are no workers. This is exact wherever Keras
  pulls the batch: inside the compiled step (TensorFlow, through tf.data) or
  between steps (JAX, PyTorch).
- other inputs (arrays, tf.data, a Keras PyDataset): the time between the
  end of one step (`on_train_batch_end`) and the start of the next
  (`on_train_batch_begin`), plus the time before the first step. On the JAX
  and PyTorch backends the next batch is fetched there, so it is the data
  wait (plus the other callbacks' time). On TensorFlow, Keras pulls tf.data
  inside the compiled step, so this misses the wait: wrap the input with
  seqify to measure it.

A fit's first step is left out (when its epoch has more): it also traces
and compiles the step function, which would make the first epoch look
compute-bound.

The fraction goes into the epoch logs as `input_wait_fraction` (0..1), so
`History`, `CSVLogger` and `TensorBoard` get it (list this callback before
them). Like Keras's progress bar, it overrides `on_train_batch_end`, so Keras
runs batch-end callbacks synchronously (`verbose=1`/`2` fits already do).
"""

import logging
from typing import List, Optional

import keras

from seqify import input_wait

logger = logging.getLogger("seqify")
clock = input_wait.clock


class InputMonitor(keras.callbacks.Callback):
    """Adds `input_wait_fraction` to the epoch logs, with a hint when input-bound.

    The fraction is the share of the epoch's training time (first step to
    last, validation excluded) spent waiting for the next batch. When it is
    at least `threshold`, a one-line hint is printed (and logged on the
    "seqify" logger), e.g. "input-bound: 72% of step time waiting for data;
    seqify.check(ds) suggests workers=2, use_multiprocessing=True". For a
    seqify input the suggestion is measured once per `fit` (about a second,
    as `workers="auto"` measures; nothing is consumed).

    Args:
        threshold: fraction (0..1) from which an epoch counts as input-bound.
        suggest: measure and name a workers setting in the hint (seqify
            inputs only).
        verbose: 1 prints the hint, 0 only logs it.

    Attributes:
        fractions: `input_wait_fraction` of each epoch so far.
        hints: the hints given, in order.

    Example:

    ```python
    history = model.fit(ds, epochs=5, callbacks=[seqify.callbacks.InputMonitor()])
    history.history["input_wait_fraction"]  # e.g. [0.71, 0.69, ...]
    ```
    """

    def __init__(self, threshold: float = 0.5, suggest: bool = True, verbose: int = 1):
        super().__init__()
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be a number in (0, 1] (a fraction of step time); got {threshold!r}.")
        self.threshold = float(threshold)
        self.suggest = bool(suggest)
        self.verbose = verbose
        self.fractions: List[float] = []
        self.hints: List[str] = []
        self._suggestion = None
        self._first_of_fit = False
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self._start = now
        self._start_wait = input_wait.snapshot()
        self._last_end = None  # when the previous step ended
        self._gaps = 0.0  # time outside steps (non-seqify measure)
        self._end_wait = None
        self._steps = 0
        self._after_first = None  # (time, wait snapshot, gaps) after a fit's first step

    def on_train_begin(self, logs=None):
        self._suggestion = None
        self._first_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        self._reset(clock())

    def on_train_batch_begin(self, batch, logs=None):
        now = clock()
        self._gaps += now - (self._start if self._last_end is None else self._last_end)

    def on_train_batch_end(self, batch, logs=None):
        self._last_end = clock()
        self._end_wait = input_wait.snapshot()
        self._steps += 1
        if self._steps == 1 and getattr(self, "_first_of_fit", False):
            # A fit's first step also traces and compiles the step function
            # (often a second or more): measured from its end instead.
            self._first_of_fit = False
            self._after_first = (self._last_end, self._end_wait, self._gaps)

    def epoch_fraction(self) -> Optional[float]:
        """The fraction for the epoch in progress (None before its first step)."""
        if self._last_end is None:
            return None
        start, start_wait, gaps = self._start, self._start_wait, 0.0
        if self._after_first is not None and self._steps > 1:
            start, start_wait, gaps = self._after_first
        elapsed = self._last_end - start
        if elapsed <= 0:
            return 0.0
        waited, batches = self._end_wait[0] - start_wait[0], self._end_wait[1] - self._start_wait[1]
        if batches <= 0:  # not a seqify input: the time outside steps
            waited = self._gaps - gaps
        return min(1.0, max(0.0, waited / elapsed))

    def on_epoch_end(self, epoch, logs=None):
        fraction = self.epoch_fraction()
        if fraction is None:
            return
        self.fractions.append(fraction)
        if logs is not None:
            logs["input_wait_fraction"] = fraction
        if fraction >= self.threshold:
            self._hint(fraction, self._end_wait[1] > self._start_wait[1])

    def _hint(self, fraction: float, seqify_input: bool) -> None:
        text = f"input-bound: {100 * fraction:.0f}% of step time waiting for data; "
        if not seqify_input:
            text += ("wrap the input with seqify (from_batch_fn, from_generator, from_arrays) and "
                     "seqify.check(ds) suggests a workers setting")
        else:
            suggestion = self._suggest()
            if suggestion is None:
                text += "seqify.check(ds) suggests a workers setting"
            else:
                (workers, use_mp, reason), current = suggestion
                text += f"seqify.check(ds) suggests workers={workers}, use_multiprocessing={use_mp}"
                if current == (workers, use_mp):
                    text += " (already in use: building the batches is the bottleneck)"
        self.hints.append(text)
        logger.info("%s", text)
        if self.verbose:
            print(text, flush=True)

    def _suggest(self):
        """`((workers, use_mp, reason), current setting)` for the last seqify input, once per fit."""
        if not self.suggest:
            return None
        if self._suggestion is None:
            runner = input_wait.last_runner()
            if runner is None:
                return None
            from seqify.check import choose_workers

            try:
                with runner.lock:
                    current = runner.workers()
                    self._suggestion = (choose_workers(runner), current)
            except Exception as exc:  # a hint must never break training
                logger.warning("seqify: InputMonitor could not measure the input: %s", exc)
                return None
        return self._suggestion
