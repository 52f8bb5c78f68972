"""The optimizers: optax's aliases, each a ``chain`` of hand-written transformations.

``η_t`` is the learning rate at step ``t`` (a float, or ``learning_rate(t)`` for
a schedule, ``t`` counted from 0); ``g`` the gradient; ``p`` the parameter;
``u`` the update that ``apply_updates`` adds to ``p``. Moments start at zero
unless stated. Every optimizer keeps each leaf's dtype and validates its
hyperparameters at construction (``ValueError`` naming the argument).
"""

from __future__ import annotations

from .base import Optimizer, chain, check_learning_rate, check_real, identity
from .schedules import ScalarOrSchedule
from .transforms import (
    MaskOrFn,
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
    trace,
)

__all__ = ["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]


def _check_momentum(momentum, where):
    if momentum is not None:
        check_real("momentum", momentum, low=0.0, high=1.0, high_open=True, where=where)


def sgd(
    learning_rate: ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False
) -> Optimizer:
    """Stochastic gradient descent, optionally with heavy-ball or Nesterov momentum (optax ``sgd``).

    Without momentum:          ``u = −η_t · g``
    With momentum ``β``:       ``τ ← g + β·τ``;  ``u = −η_t · τ``
    With ``nesterov=True``:    ``τ ← g + β·τ``;  ``u = −η_t · (g + β·τ)``

    ``chain(trace(β, nesterov), scale_by_learning_rate(η))``.
    """
    where = "sgd: "
    check_learning_rate(learning_rate, where=where)
    _check_momentum(momentum, where)
    return chain(
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate),
    )


def momentum(
    learning_rate: ScalarOrSchedule, beta: float = 0.9, nesterov: bool = False
) -> Optimizer:
    """``sgd(learning_rate, momentum=beta, nesterov=nesterov)``: ``τ ← g + β·τ``; ``u = −η_t·τ``."""
    where = "momentum: "
    check_learning_rate(learning_rate, where=where)
    check_real("beta", beta, low=0.0, high=1.0, high_open=True, where=where)
    return sgd(learning_rate, momentum=beta, nesterov=nesterov)


def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> Optimizer:
    """Adagrad (optax ``adagrad``)::

        s ← s + g²                  (s starts at initial_accumulator_value)
        u = −η_t · g / sqrt(s + eps)     (0 where s = 0)

    ``chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(η))``.
    """
    check_learning_rate(learning_rate, where="adagrad: ")
    return chain(
        scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
) -> Optimizer:
    """RMSProp (optax ``rmsprop``; ``eps`` sits *inside* the square root)::

        ν ← decay·ν + (1 − decay)·g²                     (ν starts at initial_scale)
        centered=False:  v = −η_t · g / sqrt(ν + eps)
        centered=True:   μ ← decay·μ + (1 − decay)·g;   v = −η_t · g / sqrt(ν − μ² + eps)
        no momentum:     u = v
        momentum β:      τ ← v + β·τ;   u = τ      (nesterov: u = v + β·τ)

    As in optax the momentum trace runs *after* the learning-rate scaling:
    ``chain(scale_by_rms | scale_by_stddev, scale_by_learning_rate(η), trace(β))``.
    """
    where = "rmsprop: "
    check_learning_rate(learning_rate, where=where)
    _check_momentum(momentum, where)
    check_real("decay", decay, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(
        scaler(decay=decay, eps=eps, initial_scale=initial_scale),
        scale_by_learning_rate(learning_rate),
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> Optimizer:
    """Adam (optax ``adam``), ``t`` counted from 1 in the bias corrections::

        m ← b1·m + (1 − b1)·g          v ← b2·v + (1 − b2)·g²
        m̂ = m / (1 − b1ᵗ)              v̂ = v / (1 − b2ᵗ)
        u = −η · m̂ / (sqrt(v̂ + eps_root) + eps)

    ``chain(scale_by_adam(b1, b2, eps, eps_root), scale_by_learning_rate(η))``.
    """
    where = "adam: "
    check_learning_rate(learning_rate, where=where)
    for name, v in (("b1", b1), ("b2", b2)):
        check_real(name, v, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    check_real("eps_root", eps_root, low=0.0, where=where)
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    mask: MaskOrFn = None,
) -> Optimizer:
    """AdamW, Adam with decoupled weight decay (optax ``adamw``)::

        m, v, m̂, v̂ as in adam
        u = −η · ( m̂ / (sqrt(v̂ + eps_root) + eps) + weight_decay · p )

    The decay is multiplied by the learning rate (as optax and PyTorch). ``mask``
    (a pytree of bools like ``params``, or a callable ``params -> such a tree``)
    restricts the decay to the leaves marked True, e.g. to skip biases. ``update``
    needs ``params``.

    ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(η))``.
    """
    where = "adamw: "
    check_learning_rate(learning_rate, where=where)
    for name, v in (("b1", b1), ("b2", b2)):
        check_real(name, v, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    check_real("eps_root", eps_root, low=0.0, where=where)
    check_real("weight_decay", weight_decay, low=0.0, where=where)
    if mask is not None and isinstance(mask, (str, bytes)):
        raise TypeError(f"{where}mask must be a pytree of bools or a callable, got {mask!r}")
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
