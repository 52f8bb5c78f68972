"""The training metrics ``fit`` knows by name: one small registry.

A metric is a batch mean ``fn(pred, target, loss) -> scalar`` (``loss`` is the model's
loss object, used by ``"loss"``) and a ``finalize`` applied to the example-weighted mean
over batches (``rmse`` is ``sqrt`` of the mean squared error, not the mean of per-batch
RMSEs). Batch means weighted by batch size add up exactly to the mean over the data set,
so a partial last batch counts for its true size.

=============  ===============================================  ==========
name           value on a batch of n                            better
=============  ===============================================  ==========
``loss``       the model's loss ``loss.value(pred, target)``     lower
``accuracy``   :func:`jbp.losses.accuracy`                      higher
``mse``        ``mean((pred − target)²)`` over all entries      lower
``rmse``       ``sqrt(mse)`` over the whole set                 lower
``mae``        ``mean(|pred − target|)`` over all entries       lower
=============  ===============================================  ==========

Note: the ``mse`` *metric* is the plain mean of squares; the ``mse`` *loss*
(:data:`jbp.losses.mse`) follows the seed's ``1/(2n) Σᵢ ‖yᵢ − ŷᵢ‖²``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from jbp.losses import accuracy

__all__ = ["Metric", "METRICS", "get_metrics"]


def _identity(v):
    return v


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable  # (pred, target, loss) -> scalar batch mean
    finalize: Callable = _identity
    higher_is_better: bool = False


def _regression_target(pred, target):
    target = jnp.asarray(target)
    if (
        target.shape != pred.shape
        and pred.ndim == 2
        and pred.shape[1] == 1
        and target.shape == pred.shape[:1]
    ):
        target = target[:, None]
    if target.shape != pred.shape:
        raise ValueError(
            f"metrics: mse/rmse/mae need targets of the prediction's shape "
            f"{pred.shape}, got {target.shape} (integer class labels? use "
            f"'accuracy', or one-hot targets)"
        )
    return target.astype(pred.dtype)


def _mean_sq(pred, target, loss):
    return jnp.mean(jnp.square(pred - _regression_target(pred, target)))


def _mean_abs(pred, target, loss):
    return jnp.mean(jnp.abs(pred - _regression_target(pred, target)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("loss", lambda pred, target, loss: loss.value(pred, target)),
        Metric(
            "accuracy", lambda pred, target, loss: accuracy(pred, target), higher_is_better=True
        ),
        Metric("mse", _mean_sq),
        Metric("rmse", _mean_sq, finalize=lambda v: v**0.5),
        Metric("mae", _mean_abs),
    )
}


def get_metrics(names: str | Sequence[str]) -> tuple[Metric, ...]:
    """The :class:`Metric` objects for ``names`` (``"loss"`` always first, no duplicates).

    Raises ``ValueError`` naming ``metrics`` for an unknown name, ``TypeError`` for
    something that is not a string or a sequence of strings.
    """
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(
            f"metrics: expected a sequence of metric names, e.g. "
            f"('loss', 'accuracy'), got {type(names).__name__}"
        ) from None
    out = [METRICS["loss"]]
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metrics: expected metric names (strings), got {name!r}")
        if name not in METRICS:
            raise ValueError(
                f"metrics: unknown metric {name!r}; known: {', '.join(sorted(METRICS))}"
            )
        if METRICS[name] not in out:
            out.append(METRICS[name])
    return tuple(out)
