"""The extension protocol.

An extension is a small object with a ``name`` and a ``compute(call)`` method that turns one
layer's visit during the backward walk (:class:`jbp.engine.LayerCall`: ``layer``, ``params``,
``cache``, ``dy``, ``grads``, ``n``) into one result for that layer. The engine collects the
results in the structure of ``params`` under ``Pass.extras[name]``.

**Closed forms live on the layers.** ``Extension.compute`` first looks for a method of the
layer named like the extension (``Dense.batch_l2``, ``Conv2D.sum_grad_squared``, ...) and calls
it as ``method(params, cache, dy)`` with the cotangent the extension prepares (for
per-example quantities ``n · dy``, whose row ``i`` is the delta of example ``i``'s own loss);
otherwise it runs the extension's ``default``, which for the per-example family is a ``vmap``
of the layer's own ``backward`` over single examples (:func:`generic_batch_grad`). So a layer
you write with only ``init``/``forward``/``backward`` works with every extension, and giving
it a closed form is one more method.

Writing a new extension::

    import dataclasses, jax, jax.numpy as jnp
    from jbp.extensions import Extension, generic_batch_grad

    @dataclasses.dataclass(frozen=True)
    class BatchL1(Extension):
        '''Per-example L1 norm of the gradient, per leaf.'''
        name = "batch_l1"
        per_example = True

        def default(self, call):
            g = generic_batch_grad(call.layer, call.params, call.cache, call.per_example_dy)
            return jax.tree.map(lambda a: jnp.sum(jnp.abs(a), axis=tuple(range(1, a.ndim))), g)

    out = jbp.backprop(model, loss, extensions=[BatchL1()])(params, x, y)
    out.extras["batch_l1"]

**Seeded extensions** (``seeded = True``) backpropagate cotangents of their own: ``seed(ctx)``
returns an array of shape ``(C, *pred.shape)``; the engine runs the hand-written backward
once per column (``vmap``), visits each layer with that column's delta, and combines the
columns with ``reduce`` (default: the sum). ``requires`` names extensions whose results the
seed reads from ``ctx.extras`` (computed first, in the main walk). ``finalize(result, n)``
post-processes the assembled tree (default: unchanged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jbp.core import unmasked as _values

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree
    from jbp.engine import LayerCall, SeedContext


__all__ = ["Extension", "generic_batch_grad"]


class Extension:
    """Base class of every extension (subclass as a frozen dataclass).

    Attributes:
      name: the key of the result in ``Pass.extras`` and the name of the layer method that
        provides a closed form.
      per_example: the quantity is defined per example; models that mix examples
        (BatchNorm in training mode) are refused.
      params_only: parameterless layers are not visited (their result is their empty params).
      needs_key: the extension samples random numbers; ``backprop``'s ``key`` is required.
      seeded: the extension backpropagates cotangents of its own (see the module docstring).
      requires: extensions that must be computed in the main walk first.
    """

    name: str = ""
    per_example: bool = False
    params_only: bool = True
    needs_key: bool = False
    seeded: bool = False
    requires: tuple = ()

    # -- one layer ------------------------------------------------------------------
    def compute(self, call: LayerCall) -> PyTree:
        """The result for one layer: its closed-form method when it has one, else ``default``."""
        method = getattr(call.layer, self.name, None)
        if callable(method):
            return method(call.params, call.cache, self.cotangent(call))
        return self.default(call)

    def cotangent(self, call: LayerCall) -> Array:
        """What the layer's closed-form method receives as ``dy``: ``n · dy`` for per-example
        quantities (row ``i`` = the delta of example ``i``'s loss), else ``dy`` itself."""
        return call.per_example_dy if self.per_example else _values(call.dy)

    def default(self, call: LayerCall) -> PyTree:
        """The generic computation for a layer without a closed form."""
        raise NotImplementedError(
            f"{type(self).__name__}: layer {call.layer!r} has no method "
            f"{self.name!r} and the extension has no generic default"
        )

    # -- seeded walks ----------------------------------------------------------------
    def seed(self, ctx: SeedContext) -> Array:
        """Cotangents ``(C, *pred.shape)`` to backpropagate (seeded extensions only)."""
        raise NotImplementedError

    def reduce(self, stacked: PyTree) -> PyTree:
        """Combine the per-column results of a seeded walk (default: sum over columns)."""
        return jax.tree.map(lambda a: jnp.sum(a, axis=0), stacked)

    def finalize(self, result: PyTree, n: int) -> PyTree:
        """Post-process the assembled result tree (default: unchanged)."""
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def generic_batch_grad(layer: Layer, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
    """Per-example parameter gradients by ``vmap`` of the layer's own ``backward``.

    Example ``i`` runs ``layer.backward(params, cacheᵢ, dyᵢ)`` on its slices, each given a
    batch axis of 1; ``dy`` must already be per-example (row ``i`` = the delta of example
    ``i``'s own loss). Returns the structure of ``params`` with a leading ``n`` axis.

    Every leaf of ``cache`` carries the batch axis first (true when the cache keeps the
    layer's inputs, as the protocol asks) unless the layer's ``cache_axes`` says ``None``
    for it (a leaf the batch shares); a leaf that breaks this is an error naming it, never
    a guess.
    """
    dy = _values(dy)
    n = dy.shape[0]
    axes = layer.cache_axes(cache)
    for (path, leaf), ax in zip(
        jax.tree_util.tree_flatten_with_path(cache)[0],
        jax.tree.leaves(axes, is_leaf=lambda a: a is None),
    ):
        shape = getattr(leaf, "shape", None)
        if ax == 0 and (shape is None or len(shape) == 0 or shape[0] != n):
            where = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                f"{layer!r}: the generic per-example extensions vmap the layer's backward over "
                f"the batch axis of its cache, but cache leaf {where} has shape {shape} (batch "
                f"size {n}); declare it shared with the layer's cache_axes (None), or give the "
                f"layer closed-form methods (batch_grad, batch_l2, sum_grad_squared)"
            )

    def one(c, d):
        c1 = jax.tree.map(
            lambda a, ax: a if ax is None else a[None], c, axes, is_leaf=lambda a: a is None
        )
        return layer.backward(params, c1, d[None])[0]

    return jax.vmap(one, in_axes=(axes, 0))(cache, dy)
