"""Data sets for jbp: small ones embedded in the package, loaders for the standard ones.

Every loader returns numpy arrays as ``((x_train, y_train), (x_test, y_test))`` with a
fixed, documented, seed-deterministic split. Runtime dependencies: numpy only.
"""

from .digits import digits, load_digits_raw
from .split import one_hot

__all__ = ["digits", "load_digits_raw", "one_hot"]
