"""The UCI optical-recognition handwritten digits, embedded in the package (45 KB).

1,797 grey-scale images of 8×8 pixels, values 0..16, ten classes 0..9 (174–183 per class).
Source: Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten Digits [Dataset].
UCI Machine Learning Repository. https://doi.org/10.24432/C50P49 — licence CC BY 4.0
(the test split of the UCI data as distributed with scikit-learn's ``load_digits``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .split import split_indices

__all__ = ["digits", "load_digits_raw"]

_FILE = Path(__file__).resolve().parent / "data" / "digits.npz"


@functools.lru_cache(maxsize=1)
def _raw():
    with np.load(_FILE) as f:
        x = f["images"]
        y = f["labels"]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """Return all 1,797 digits unsplit: ``(images uint8 (1797, 8, 8) in 0..16, labels int32)``.

    Fresh copies, in the original order.
    """
    x, y = _raw()
    return x.copy(), y.astype(np.int32)


def digits(
    *, flatten: bool = True, scale: bool = True, test_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load the embedded UCI handwritten digits, split into train and test.

    Args:
      flatten: if True, images have shape ``(n, 64)``; else ``(n, 8, 8, 1)`` (NHWC).
      scale: if True, images are float32 ``pixel / 16`` in ``[0, 1]``; else uint8 in 0..16.
      test_fraction: fraction in (0, 1) of the examples held out for test.
      seed: non-negative int seeding ``np.random.default_rng`` for the split.

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` as numpy arrays, labels int32 in 0..9.

    The split is stratified by class and deterministic in ``seed``: the test split holds
    ``ceil(test_fraction * 1797)`` examples (default: 360 test, 1,437 train), each class
    contributing ``floor(test_fraction * n_c)`` plus one for the classes with the largest
    remainders (see :mod:`jbp.datasets.split`). Every class is present in both splits for
    any ``test_fraction`` in roughly [0.006, 0.994].

    Raises:
      ValueError: naming the argument, for a bad ``test_fraction``, ``seed``, ``flatten``
        or ``scale``.
    """
    for name, v in (("flatten", flatten), ("scale", scale)):
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} must be a bool, got {v!r}")
    x, y = _raw()
    train, test = split_indices(len(y), test_fraction, seed, labels=y)

    def prep(idx):
        xi = x[idx]
        if scale:
            xi = xi.astype(np.float32) / np.float32(16.0)
        else:
            xi = xi.copy()
        xi = xi.reshape(len(idx), 64) if flatten else xi.reshape(len(idx), 8, 8, 1)
        return xi, y[idx].astype(np.int32)

    return prep(train), prep(test)
