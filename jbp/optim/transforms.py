"""Composable gradient transformations, written by hand (the optax building blocks).

Each function returns an :class:`~jbp.optim.base.Optimizer`; the optimizers in
``optimizers.py`` are ``chain``s of these, exactly as in optax. Notation: ``g``
is the incoming update (the gradient at the head of a chain), ``t`` the step
count *before* this update (0 on the first call), ``u`` the outgoing update.

Statistics (moments, traces, sums of squares) are kept in float32 or wider
(:func:`~jbp.optim.base.acc_dtype`: a bfloat16 or float16 parameter gets float32
statistics, float32 and float64 keep their own), and the arithmetic of an update runs in
the wider of the gradient's and the statistics' dtypes; the updates of a low-precision
leaf are float32, and ``apply_updates`` rounds ``p + u`` once into the parameter's dtype.
New state leaves are cast back to the dtype they had, so a state is a fixed-dtype carry
for ``lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .base import (
    CountState,
    Optimizer,
    acc_dtype,
    cast_like,
    check_learning_rate,
    check_real,
    check_tree_match,
    increment,
    scalar_like,
    widen,
    zero_count,
)
from .schedules import ScalarOrSchedule, Schedule

__all__ = [
    "scale",
    "scale_by_schedule",
    "scale_by_learning_rate",
    "trace",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_rss",
    "add_decayed_weights",
    "TraceState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRStdDevState",
    "ScaleByRssState",
]


# ----------------------------------------------------------------------------
# states
# ----------------------------------------------------------------------------


class TraceState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    trace: Any


class ScaleByAdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: Any
    nu: Any


class ScaleByRmsState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    nu: Any


class ScaleByRStdDevState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    mu: Any
    nu: Any


class ScaleByRssState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    sum_of_squares: Any


def _zeros_like(tree):
    """Zeros shaped like each leaf, in its statistics dtype (float32 for bfloat16 leaves)."""
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), acc_dtype(x)), tree)


def _full_like(tree, value):
    return jax.tree.map(lambda x: jnp.full(jnp.shape(x), value, acc_dtype(x)), tree)


def _ema(g, m, decay):
    """(1 − decay)·g + decay·m, in the wider of g's and m's dtypes (float32 at least)."""
    g = widen(g, m)
    d = scalar_like(decay, g)
    return (1 - d) * g + d * m


def _debias(m, decay, count):
    """m / (1 − decay^count), the bias correction of an EMA started at zero."""
    d = scalar_like(decay, m)
    return m / (1 - d ** count.astype(jnp.result_type(m)))


# ----------------------------------------------------------------------------
# scaling by a constant, a schedule, a learning rate
# ----------------------------------------------------------------------------


def scale(step_size: float) -> Optimizer:
    """``u = step_size · g`` (``step_size`` cast to each leaf's dtype)."""
    check_real("step_size", step_size, where="scale: ")

    def init(params):
        del params
        return CountState(count=zero_count())

    def update(grads, state, params=None):
        del params
        updates = jax.tree.map(lambda g: scalar_like(step_size, widen(g)) * widen(g), grads)
        return updates, CountState(count=increment(state.count))

    return Optimizer(init, update)


def scale_by_schedule(step_size_fn: Schedule) -> Optimizer:
    """``u = step_size_fn(t) · g`` with ``t`` the count before this update (0 first)."""
    if not callable(step_size_fn):
        raise TypeError(f"scale_by_schedule: step_size_fn must be callable, got {step_size_fn!r}")

    def init(params):
        del params
        return CountState(count=zero_count())

    def update(grads, state, params=None):
        del params
        step_size = step_size_fn(state.count)
        updates = jax.tree.map(lambda g: scalar_like(step_size, widen(g)) * widen(g), grads)
        return updates, CountState(count=increment(state.count))

    return Optimizer(init, update)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> Optimizer:
    """``u = −η_t · g`` where ``η_t`` is ``learning_rate`` or ``learning_rate(t)``.

    ``flip_sign=False`` drops the minus sign (gradient *ascent* step sizes).
    """
    check_learning_rate(learning_rate, where="scale_by_learning_rate: ")
    m = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: m * learning_rate(count))
    return scale(m * learning_rate)


# ----------------------------------------------------------------------------
# momentum
# ----------------------------------------------------------------------------


def trace(decay: float, nesterov: bool = False) -> Optimizer:
    """Heavy-ball momentum trace (optax ``trace``).

    ``τ ← g + decay·τ``;  ``u = τ``, or with ``nesterov=True``  ``u = g + decay·τ``
    (using the freshly updated ``τ``). ``τ`` starts at zero.
    """
    check_real("decay", decay, low=0.0, high=1.0, high_open=True, where="trace: ")

    def init(params):
        return TraceState(count=zero_count(), trace=_zeros_like(params))

    def update(grads, state, params=None):
        del params
        check_tree_match(grads, state.trace, where="trace.update: ")
        f = lambda g, t: widen(g, t) + scalar_like(decay, widen(g, t)) * t
        new_trace = jax.tree.map(f, grads, state.trace)
        updates = jax.tree.map(f, grads, new_trace) if nesterov else new_trace
        return updates, TraceState(
            count=increment(state.count), trace=cast_like(new_trace, state.trace)
        )

    return Optimizer(init, update)


# ----------------------------------------------------------------------------
# adaptive scalings
# ----------------------------------------------------------------------------


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> Optimizer:
    """Adam's rescaling (optax ``scale_by_adam``), with ``t`` counted from 1::

    m ← b1·m + (1 − b1)·g          v ← b2·v + (1 − b2)·g²
    m̂ = m / (1 − b1ᵗ)              v̂ = v / (1 − b2ᵗ)
    u = m̂ / (sqrt(v̂ + eps_root) + eps)
    """
    where = "scale_by_adam: "
    check_real("b1", b1, low=0.0, high=1.0, high_open=True, where=where)
    check_real("b2", b2, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    check_real("eps_root", eps_root, low=0.0, where=where)

    def init(params):
        return ScaleByAdamState(count=zero_count(), mu=_zeros_like(params), nu=_zeros_like(params))

    def update(grads, state, params=None):
        del params
        check_tree_match(grads, state.mu, where="scale_by_adam.update: ")
        mu = jax.tree.map(lambda g, m: _ema(g, m, b1), grads, state.mu)
        nu = jax.tree.map(lambda g, v: _ema(jnp.square(widen(g)), v, b2), grads, state.nu)
        count = increment(state.count)
        updates = jax.tree.map(
            lambda m, v: (
                _debias(m, b1, count)
                / (jnp.sqrt(_debias(v, b2, count) + scalar_like(eps_root, v)) + scalar_like(eps, v))
            ),
            mu,
            nu,
        )
        return updates, ScaleByAdamState(
            count=count, mu=cast_like(mu, state.mu), nu=cast_like(nu, state.nu)
        )

    return Optimizer(init, update)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0) -> Optimizer:
    """RMSProp's rescaling (optax ``scale_by_rms``, eps inside the root, no bias correction)::

    ν ← decay·ν + (1 − decay)·g²      (ν starts at initial_scale)
    u = g / sqrt(ν + eps)
    """
    where = "scale_by_rms: "
    check_real("decay", decay, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    check_real("initial_scale", initial_scale, low=0.0, where=where)

    def init(params):
        return ScaleByRmsState(count=zero_count(), nu=_full_like(params, initial_scale))

    def update(grads, state, params=None):
        del params
        check_tree_match(grads, state.nu, where="scale_by_rms.update: ")
        nu = jax.tree.map(lambda g, v: _ema(jnp.square(widen(g)), v, decay), grads, state.nu)
        updates = jax.tree.map(
            lambda g, v: widen(g, v) * jax.lax.rsqrt(v + scalar_like(eps, v)), grads, nu
        )
        return updates, ScaleByRmsState(count=increment(state.count), nu=cast_like(nu, state.nu))

    return Optimizer(init, update)


def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0) -> Optimizer:
    """Centered RMSProp's rescaling (optax ``scale_by_stddev``)::

    μ ← decay·μ + (1 − decay)·g        (μ starts at 0)
    ν ← decay·ν + (1 − decay)·g²       (ν starts at initial_scale)
    u = g / sqrt(ν − μ² + eps)
    """
    where = "scale_by_stddev: "
    check_real("decay", decay, low=0.0, high=1.0, high_open=True, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)
    check_real("initial_scale", initial_scale, low=0.0, where=where)

    def init(params):
        return ScaleByRStdDevState(
            count=zero_count(), mu=_zeros_like(params), nu=_full_like(params, initial_scale)
        )

    def update(grads, state, params=None):
        del params
        check_tree_match(grads, state.nu, where="scale_by_stddev.update: ")
        mu = jax.tree.map(lambda g, m: _ema(g, m, decay), grads, state.mu)
        nu = jax.tree.map(lambda g, v: _ema(jnp.square(widen(g)), v, decay), grads, state.nu)
        updates = jax.tree.map(
            lambda g, m, v: widen(g, v) * jax.lax.rsqrt(v - m * m + scalar_like(eps, v)),
            grads,
            mu,
            nu,
        )
        return updates, ScaleByRStdDevState(
            count=increment(state.count), mu=cast_like(mu, state.mu), nu=cast_like(nu, state.nu)
        )

    return Optimizer(init, update)


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> Optimizer:
    """Adagrad's rescaling (optax ``scale_by_rss``)::

    s ← s + g²                         (s starts at initial_accumulator_value)
    u = g / sqrt(s + eps)   where s > 0,   0 where s = 0
    """
    where = "scale_by_rss: "
    check_real("initial_accumulator_value", initial_accumulator_value, low=0.0, where=where)
    check_real("eps", eps, low=0.0, low_open=True, where=where)

    def init(params):
        return ScaleByRssState(
            count=zero_count(), sum_of_squares=_full_like(params, initial_accumulator_value)
        )

    def update(grads, state, params=None):
        del params
        check_tree_match(grads, state.sum_of_squares, where="scale_by_rss.update: ")
        sos = jax.tree.map(lambda g, s: jnp.square(widen(g, s)) + s, grads, state.sum_of_squares)
        updates = jax.tree.map(
            lambda g, s: (
                widen(g, s)
                * jnp.where(s > 0, jax.lax.rsqrt(s + scalar_like(eps, s)), jnp.zeros_like(s))
            ),
            grads,
            sos,
        )
        return updates, ScaleByRssState(
            count=increment(state.count), sum_of_squares=cast_like(sos, state.sum_of_squares)
        )

    return Optimizer(init, update)


# ----------------------------------------------------------------------------
# decoupled weight decay
# ----------------------------------------------------------------------------

MaskOrFn = Any | Callable[[Any], Any] | None


def _is_static_bool(m) -> bool:
    return isinstance(m, (bool, np.bool_))


def add_decayed_weights(weight_decay: float = 0.0, mask: MaskOrFn = None) -> Optimizer:
    """``u = g + weight_decay · p`` (optax ``add_decayed_weights``); needs ``params``.

    ``mask`` — a pytree of bools with the structure of ``params`` (or a prefix
    of it), or a callable ``params -> such a pytree`` — limits the decay to the
    leaves (subtrees) marked True; the others pass through unchanged.
    """
    where = "add_decayed_weights: "
    check_real("weight_decay", weight_decay, low=0.0, where=where)

    def init(params):
        del params
        return CountState(count=zero_count())

    def decay(g, p):
        return g + scalar_like(weight_decay, g) * p

    def update(grads, state, params=None):
        if params is None:
            raise ValueError(
                f"{where}update needs params (call update(grads, state, params)): "
                "weight decay adds weight_decay * params"
            )
        check_tree_match(grads, params, reference_name="params", where=f"{where}update: ")
        if mask is None:
            updates = jax.tree.map(decay, grads, params)
        else:
            mask_tree = mask(params) if callable(mask) else mask

            def apply(m, g_sub, p_sub):
                if _is_static_bool(m):
                    return jax.tree.map(decay, g_sub, p_sub) if m else g_sub
                return jax.tree.map(lambda g, p: jnp.where(m, decay(g, p), g), g_sub, p_sub)

            try:
                updates = jax.tree.map(apply, mask_tree, grads, params)
            except ValueError as e:
                raise ValueError(
                    f"{where}mask must be a pytree of bools with the structure of params "
                    f"(or a prefix of it), or a callable params -> such a tree: {e}"
                ) from None
        return updates, CountState(count=increment(state.count))

    return Optimizer(init, update)
