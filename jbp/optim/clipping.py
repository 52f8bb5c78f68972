"""Gradient clipping as transformations usable inside ``chain`` (optax semantics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from jbp.core import PyTree

from .base import CountState, Optimizer, check_real, increment, scalar_like, widen, zero_count

__all__ = ["global_norm", "clip", "clip_by_global_norm"]


def _sq_norm(x):
    x = widen(x)  # float32 or wider: a bfloat16 sum of squares loses the small leaves
    if jnp.iscomplexobj(x):
        return jnp.sum(jnp.real(x * jnp.conj(x)))
    return jnp.sum(x * x)


def global_norm(tree: PyTree) -> jax.Array:
    """``‖tree‖ = sqrt(Σ_leaves Σ_i x_i²)`` — the L2 norm of all leaves taken as one vector."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([])
    return jnp.sqrt(sum(_sq_norm(x) for x in leaves))


def clip(max_abs: float) -> Optimizer:
    """Clip by value: ``u_i = min(max(g_i, −max_abs), max_abs)`` for every element.

    optax calls the argument ``max_delta``; it is positional in both.
    """
    check_real("max_abs", max_abs, low=0.0, low_open=True, where="clip: ")

    def init(params):
        del params
        return CountState(count=zero_count())

    def update(grads, state, params=None):
        del params
        updates = jax.tree.map(
            lambda g: jnp.clip(g, -scalar_like(max_abs, g), scalar_like(max_abs, g)), grads
        )
        return updates, CountState(count=increment(state.count))

    return Optimizer(init, update)


def clip_by_global_norm(max_norm: float) -> Optimizer:
    """Clip by global norm (optax ``clip_by_global_norm``)::

        n = global_norm(g)
        u = g                    if n < max_norm
        u = g · max_norm / n     otherwise

    The direction of the whole update is kept; only its length shrinks to ``max_norm``.
    """
    check_real("max_norm", max_norm, low=0.0, low_open=True, where="clip_by_global_norm: ")

    def init(params):
        del params
        return CountState(count=zero_count())

    def update(grads, state, params=None):
        del params
        g_norm = global_norm(grads)
        trigger = g_norm < max_norm

        def clip_leaf(g):
            clipped = (g / g_norm.astype(jnp.result_type(g))) * scalar_like(max_norm, g)
            return jnp.where(trigger, g, clipped)

        updates = jax.tree.map(clip_leaf, grads)
        return updates, CountState(count=increment(state.count))

    return Optimizer(init, update)
