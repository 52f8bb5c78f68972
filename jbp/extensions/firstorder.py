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
from jbp.core import unmasked
from jbp.extensions.base import Extension, generic_batch_grad

if TYPE_CHECKING:
    from jbp.core import PyTree
    from jbp.engine import LayerCall


__all__ = [
    "BatchGrad",
    "BatchL2",
    "SumGradSquared",
    "Variance",
    "ClippedGrad",
    "global_sq_norms",
    "clip_factors",
    "scale_rows",
    "scaled_mean_grad",
]


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


class _LayerRecord:
    """One parameterised layer's visit, kept for :class:`ClippedGrad`'s ``finalize``:
    ``(params, cache, dy, l2)`` as children, the layer as static data (a pytree node, so
    tree operations on the results of a walk still see arrays only)."""

    __slots__ = ("layer", "params", "cache", "dy", "l2")

    def __init__(self, layer, params, cache, dy, l2):
        self.layer, self.params, self.cache, self.dy, self.l2 = layer, params, cache, dy, l2


jax.tree_util.register_pytree_node(
    _LayerRecord,
    lambda r: ((r.params, r.cache, r.dy, r.l2), r.layer),
    lambda layer, ch: _LayerRecord(layer, *ch),
)


def _is_record(a) -> bool:
    return isinstance(a, _LayerRecord)


def scale_rows(dy, scale: jax.Array):
    """``dy`` with row ``i`` multiplied by ``scale[i]`` (a ``Masked`` delta keeps its mask)."""
    values = unmasked(dy)
    scaled = values * scale.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
    if values is dy:
        return scaled
    return dy._replace(values=scaled) if hasattr(dy, "_replace") else type(dy)(scaled, dy.mask)


def clip_factors(sq_norms: jax.Array, max_norm: float) -> jax.Array:
    """``min(1, C/‖gᵢ‖)`` from the squared norms ``‖gᵢ‖²`` (``(n,)``; 1 where ``‖gᵢ‖ = 0``)."""
    norms = jnp.sqrt(jnp.maximum(sq_norms, 0.0))
    return jnp.minimum(1.0, max_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))


def scaled_mean_grad(layer, params, cache, dy, scale: jax.Array, n: int) -> PyTree:
    """``(1/n) Σᵢ sᵢ gᵢ`` for one layer: its parameter gradient with example ``i`` weighted
    by ``scale[i]``, from the main-walk delta ``dy`` of the mean loss.

    The layer's method ``scaled_grad_sum(params, cache, n·dy, scale) -> Σᵢ sᵢ gᵢ`` when it
    has one (``Conv2D``: from the per-example gradients its ``batch_l2`` formed, which XLA
    shares), else ``layer.backward(params, cache, s ⊙ dy)`` — a layer's backward is linear
    in its delta for a fixed cache and rows do not mix (per-example models); only its
    parameter gradient is used (XLA drops the ``dx``)."""
    method = getattr(layer, "scaled_grad_sum", None)
    if callable(method):
        values = unmasked(dy)
        return jax.tree.map(lambda g: g / n, method(params, cache, values * n, scale))
    return layer.backward(params, cache, scale_rows(dy, scale))[0]


@dataclasses.dataclass(frozen=True)
class ClippedGrad(Extension):
    """``"clipped_grad"``: ``(1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ``, the mean of the per-example
    gradients each clipped to L2 norm ``C = max_norm`` (DP-SGD's clipped sum over ``n``);
    leaves ``leaf.shape``.

    Book-keeping (Bu et al. 2023, arXiv:2210.00038): no second backward pass through the
    network. The main walk visits each parameterised layer once; the extension keeps its
    ``(params, cache, dy)`` and its per-example squared norms (``BatchL2``'s closed form:
    the same computation as the ``BatchL2`` result, which XLA computes once). Once every
    layer is visited (``finalize``), the global norms ``‖gᵢ‖`` (summed over every leaf) give
    the factors ``sᵢ = min(1, C/‖gᵢ‖)`` and each layer's result is ``(1/n) Σᵢ sᵢ gᵢ`` for
    that layer (:func:`scaled_mean_grad`): the layer's ``scaled_grad_sum`` method when it
    has one (``Conv2D`` weights the per-example gradients its norms already formed), else
    its parameter gradient ``layer.backward(params, cache, s ⊙ dy)[0]`` for the main-walk
    delta with row ``i`` scaled by ``sᵢ`` — a layer's backward is linear in its delta for a
    fixed cache and rows do not mix (per-example models); XLA drops the unused ``dx``. So
    at most one more ``dW`` per layer, not the whole backward again, and nothing
    per-example is materialised when the layers have closed forms.

    The same result as backpropagating the output delta with row ``i`` scaled by ``sᵢ``
    through the whole network again (up to rounding: the factor is applied at each layer
    rather than at the output).
    """

    max_norm: float = 1.0
    name = "clipped_grad"
    per_example = True
    requires = (BatchL2(),)

    def __post_init__(self):
        check_positive("ClippedGrad: max_norm", self.max_norm)

    def compute(self, call: LayerCall) -> PyTree:
        return _LayerRecord(call.layer, call.params, call.cache, call.dy, BatchL2().compute(call))

    def finalize(self, result: PyTree, n: int) -> PyTree:
        records = jax.tree.leaves(result, is_leaf=_is_record)
        scale = clip_factors(global_sq_norms([r.l2 for r in records]), self.max_norm)

        return jax.tree.map(
            lambda r: scaled_mean_grad(r.layer, r.params, r.cache, r.dy, scale, n),
            result,
            is_leaf=_is_record,
        )

    def __repr__(self) -> str:
        return f"ClippedGrad(max_norm={self.max_norm})"


def global_sq_norms(batch_l2: PyTree) -> jax.Array:
    """``Σ_leaves`` of a ``batch_l2`` tree: ``‖gᵢ‖²`` over all parameters, shape ``(n,)``."""
    leaves = jax.tree.leaves(batch_l2)
    if not leaves:
        raise ValueError("batch_l2: the model has no parameters, so no per-example gradient")
    return functools.reduce(operator.add, leaves[1:], leaves[0])
