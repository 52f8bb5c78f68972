"""Deterministic train/test splits shared by the embedded datasets.

The rule, used by :func:`jbp.datasets.digits`, :func:`jbp.datasets.rotten_tomatoes` and
:func:`jbp.datasets.ames`:

* ``n_test = ceil(test_fraction * n)`` (so 1,797 digits at 0.2 give 360 test, 1,437 train),
  and the test split is never empty nor the whole data set.
* Stratified (classification): class ``c`` with ``n_c`` examples contributes
  ``floor(test_fraction * n_c)`` test examples; the ``n_test - sum(floors)`` left over go, one
  each, to the classes with the largest fractional remainders (ties: lower class first).
  Inside each class the examples are permuted by ``np.random.default_rng(seed)`` and the
  first ones taken for test.
* Plain (regression): one permutation of ``range(n)`` by ``np.random.default_rng(seed)``;
  its first ``n_test`` entries are the test split.
* Both splits are returned as sorted index arrays, then shuffled once more with the same
  generator, so the examples come in a random but reproducible order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["check_fraction", "check_seed", "split_indices", "one_hot", "select_classes"]


def check_fraction(test_fraction: float, n: int, name: str = "test_fraction") -> int:
    """Validate ``test_fraction`` in (0, 1) and return ``n_test = ceil(test_fraction * n)``.

    Raises ``ValueError`` naming the argument when the fraction is out of range or gives an
    empty train or test split.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise ValueError(f"{name} must be a float in (0, 1), got {test_fraction!r}")
    f = float(test_fraction)
    if not (0.0 < f < 1.0) or math.isnan(f):
        raise ValueError(f"{name} must be in the open interval (0, 1), got {test_fraction!r}")
    n_test = math.ceil(f * n - 1e-9)
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"{name}={test_fraction!r} leaves an empty train or test split for {n} examples"
        )
    return n_test


def check_seed(seed: int, name: str = "seed") -> int:
    """Validate a non-negative integer seed; raise ``ValueError`` naming the argument."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return int(seed)


def split_indices(
    n: int, test_fraction: float, seed: int, labels: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(train_idx, test_idx)`` int64 index arrays following the module's rule.

    With ``labels`` (a length-``n`` integer array) the split is stratified by class.
    """
    n_test = check_fraction(test_fraction, n)
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        test = np.sort(perm[:n_test])
        train = np.sort(perm[n_test:])
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        classes, counts = np.unique(labels, return_counts=True)
        quota = float(test_fraction) * counts
        take = np.floor(quota).astype(np.int64)
        left = n_test - int(take.sum())
        # largest remainder first; stable sort keeps lower class first on ties
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:left]] += 1
        test_parts, train_parts = [], []
        for c, k in zip(classes, take):
            idx = np.flatnonzero(labels == c)
            idx = idx[rng.permutation(idx.size)]
            test_parts.append(idx[:k])
            train_parts.append(idx[k:])
        test = np.sort(np.concatenate(test_parts))
        train = np.sort(np.concatenate(train_parts))
    return train[rng.permutation(train.size)], test[rng.permutation(test.size)]


def one_hot(labels: ArrayLike, num_classes: int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """One-hot encode integer ``labels`` (any shape) into ``labels.shape + (num_classes,)``.

    Works on numpy and JAX arrays (returns numpy). Raises ``ValueError`` when
    ``num_classes`` is not a positive int or a label lies outside ``[0, num_classes)``.
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes <= 0
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and labels.size and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        elif labels.size == 0:
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return (labels[..., None] == np.arange(num_classes)).astype(dtype)


def select_classes(
    x: np.ndarray, y: np.ndarray, classes: Sequence[str | int], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the examples whose label is in ``classes`` and relabel them ``0..k-1``.

    ``classes`` is a sequence of class names (entries of ``names``) or integer labels; the
    new label of each kept example is the position of its class in ``classes``.

    Raises ``ValueError`` naming ``classes`` for an unknown name (listing the known ones),
    an out-of-range label, a duplicate, an empty sequence, or a bare string.
    """
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(
            f"classes must be a sequence of class names or labels, e.g. ('cat', 'dog'), "
            f"got {classes!r}"
        )
    classes = list(classes)
    if not classes:
        raise ValueError("classes must name at least one class, got an empty sequence")
    ids = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(
                    f"classes: unknown class name {c!r}; known names: {', '.join(names)}"
                )
            ids.append(list(names).index(c))
        elif isinstance(c, numbers.Integral) and not isinstance(c, bool):
            if not 0 <= c < len(names):
                raise ValueError(f"classes: label {c} outside [0, {len(names)})")
            ids.append(int(c))
        else:
            raise ValueError(f"classes: entries must be names or int labels, got {c!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"classes: duplicate class in {classes!r}")
    lut = np.full(len(names), -1, dtype=np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)
    new = lut[np.asarray(y)]
    keep = new >= 0
    return x[keep], new[keep]
