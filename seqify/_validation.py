"""Argument checks shared by the public constructors."""

import numpy as np


def is_int(value) -> bool:
    """True for Python and numpy integers, False for bools (a common slip)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
