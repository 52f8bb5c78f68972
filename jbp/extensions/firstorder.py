"""First-order extensions: per-example gradients, their norms, second moment, variance, and
the mean of per-example clipped gradients.

``gᵢ`` is the gradient of the loss on example ``i`` alone (a batch of one); the batch
gradient of the mean loss is ``ḡ = (1/n) Σᵢ gᵢ``. Layers provide closed forms as methods
``batch_grad``, ``batch_l2`` and ``sum_grad_squared`` taking ``(params, cache, dy)`` with
``dy`` per example (row ``i`` = ``∂ℓᵢ/∂y``); without them the generic ``vmap`` default runs.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jbp._validate import check_positive
from jbp.extensions.base import Extension, generic_batch_grad

if TYPE_CHECKING:
    from jbp.core import Array, PyTree
    from jbp.engine import LayerCall, SeedContext


__all__ = ["BatchGrad", "BatchL2", "SumGradSquared", "Variance", "ClippedGrad", "global_sq_norms"]


def _sum_but_first(a):
    return jnp.sum(jnp.square(a), axis=tuple(range(1, a.ndim)))


@dataclasses.dataclass(frozen=True)
class BatchGrad(Extension):
    """``"batch_grad"``: every ``gᵢ``; leaves ``(n, *leaf.shape)`` (materialises ``n ×``
    the parameters). Layer method: ``batch_grad(params, cache, dy)``."""

    name = "batch_grad"
    per_example = True

    def default(self, call: LayerCall) -> PyTree:
        return generic_batch_grad(call.layer, call.params, call.cache, call.per_example_dy)


@dataclasses.dataclass(frozen=True)
class BatchL2(Extension):
    """``"batch_l2"``: ``‖gᵢ‖²`` restricted to each leaf; leaves ``(n,)``. Closed forms never
    form ``gᵢ`` (``Dense``: ``‖aᵢ‖²‖δᵢ‖²``). Layer method: ``batch_l2(params, cache, dy)``."""

    name = "batch_l2"
    per_example = True

    def default(self, call: LayerCall) -> PyTree:
        g = generic_batch_grad(call.layer, call.params, call.cache, call.per_example_dy)
        return jax.tree.map(_sum_but_first, g)


@dataclasses.dataclass(frozen=True)
class SumGradSquared(Extension):
    """``"sum_grad_squared"``: ``Σᵢ gᵢ ⊙ gᵢ``; leaves ``leaf.shape`` (``Dense``:
    ``(a²)ᵀ(δ²)``). Layer method: ``sum_grad_squared(params, cache, dy)``."""

    name = "sum_grad_squared"
    per_example = True

    def default(self, call: LayerCall) -> PyTree:
        g = generic_batch_grad(call.layer, call.params, call.cache, call.per_example_dy)
        return jax.tree.map(lambda a: jnp.sum(jnp.square(a), axis=0), g)


@dataclasses.dataclass(frozen=True)
class Variance(Extension):
    """``"variance"``: ``(1/n) Σᵢ (gᵢ − ḡ)² = (1/n) Σᵢ gᵢ² − ḡ²``, elementwise; leaves
    ``leaf.shape``. Read from the layer's ``sum_grad_squared`` and the batch gradient
    ``ḡ`` of the same walk (clamped at 0 against rounding)."""

    name = "variance"
    per_example = True

    def compute(self, call: LayerCall) -> PyTree:
        method = getattr(call.layer, self.name, None)
        if callable(method):
            return method(call.params, call.cache, self.cotangent(call))
        sgs = SumGradSquared().compute(call)
        return jax.tree.map(
            lambda s, g: jnp.maximum(s / call.n - jnp.square(g), 0), sgs, call.grads
        )


@dataclasses.dataclass(frozen=True)
class ClippedGrad(Extension):
    """``"clipped_grad"``: ``(1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ``, the mean of the per-example
    gradients each clipped to L2 norm ``C = max_norm`` (DP-SGD's clipped sum over ``n``).

    One more backward pass: the norms ``‖gᵢ‖`` come from ``BatchL2`` in the main walk
    (summed over every leaf: the global norm), then the output delta's row ``i`` is scaled
    by ``min(1, C/‖gᵢ‖)`` and backpropagated again (the backward is linear in the delta for
    a fixed cache). Nothing per-example is materialised when the layers have closed forms.
    """

    max_norm: float = 1.0
    name = "clipped_grad"
    per_example = True
    seeded = True
    requires = (BatchL2(),)

    def __post_init__(self):
        check_positive("ClippedGrad: max_norm", self.max_norm)

    def seed(self, ctx: SeedContext) -> Array:
        norms = jnp.sqrt(jnp.maximum(global_sq_norms(ctx.extras["batch_l2"]), 0.0))
        scale = jnp.minimum(1.0, self.max_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))
        d = ctx.dpred
        return (d * scale.astype(d.dtype).reshape((ctx.n,) + (1,) * (d.ndim - 1)))[None]

    def compute(self, call: LayerCall) -> PyTree:
        return call.grads

    def __repr__(self) -> str:
        return f"ClippedGrad(max_norm={self.max_norm})"


def global_sq_norms(batch_l2: PyTree) -> jax.Array:
    """``Σ_leaves`` of a ``batch_l2`` tree: ``‖gᵢ‖²`` over all parameters, shape ``(n,)``."""
    leaves = jax.tree.leaves(batch_l2)
    if not leaves:
        raise ValueError("batch_l2: the model has no parameters, so no per-example gradient")
    return functools.reduce(operator.add, leaves[1:], leaves[0])
