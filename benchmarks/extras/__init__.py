"""seqify benchmark suite: batches/s through Keras's own epoch iterator.

Run from the repository root:

    python -m benchmarks.extras [--quick] [--out FILE.md]

Everything runs in this one process (worker processes aside). Every dataset
object, Keras's and seqify's, is iterated the way `fit` does it: a Keras
`EpochIterator` over the object, whose data adapter hands out a numpy
iterator per epoch (`get_numpy_iterator`), each batch pulled with `next` and
then consumed (one byte read per 4 KiB page of large arrays).

Each repetition builds a fresh object (fresh pool) and runs several epochs:
epoch 1 includes pool start-up and is reported separately; batches/s is over
epochs 2+ (steady state). Repetitions are interleaved across configurations
(rep 1 of every configuration, then rep 2, ...) so that drift in machine load
hits every configuration alike; the table shows medians and the range.
"""

from benchmarks.extras.harness import EpochIterator, seqify  # noqa: F401  (quiet TF import, for the other scripts)
