"""The older benchmark sections (`python -m benchmarks.extras`; see `cli` for what it runs)."""

from benchmarks.extras.harness import EpochIterator, seqify  # noqa: F401  (quiet TF import, for the other scripts)
