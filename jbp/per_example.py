"""Per-example gradients, their norms without materialising them, and per-example clipping.

Every jbp loss is mean-reduced over the batch, so the batch gradient is
``∇L = (1/n) Σᵢ gᵢ`` where ``gᵢ = ∇ℓᵢ`` is **the gradient of the loss on example i
alone** (the loss evaluated on a batch of one). That ``gᵢ`` is what every function here
returns or measures — the quantity DP-SGD clips — not its ``1/n`` share of the batch
gradient.

These are short readers of :func:`jbp.backprop` with the extensions of
:mod:`jbp.extensions`:

- :func:`per_example_grads` — ``gᵢ`` for every ``i`` (``BatchGrad``). Leaves get a leading
  batch axis; memory is ``n ×`` the parameters.
- :func:`per_example_grad_norms` — ``‖gᵢ‖₂`` for every ``i`` from ONE batched forward and
  backward: each layer reads its ``(input a, delta δ)`` pair and returns
  ``‖∂ℓᵢ/∂θ_leaf‖²`` (``BatchL2``, the layer method ``batch_l2``); for ``Dense``,
  ``‖∇Wᵢ‖² = ‖aᵢ‖²‖δᵢ‖²`` and ``‖∇bᵢ‖² = ‖δᵢ‖²``. The layers' squares are summed:
  ``‖gᵢ‖² = Σ_leaves ‖∂ℓᵢ/∂θ_leaf‖²``. No per-example gradient is formed.
- :func:`per_example_clipped_grad` — ``(1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ``, the mean of the
  individually clipped per-example gradients, by book-keeping (``ClippedGrad``): each
  layer's parameter gradient is recomputed from its own delta with row ``i`` scaled by
  ``min(1, C/‖gᵢ‖)`` (a layer's backward is linear in its delta for a fixed cache), so
  there is no second backward pass through the network. Still nothing per-example is
  materialised where the layers have closed forms.

The per-example scaling uses ``δ_out = n · loss.grad(pred, y)`` (row ``i`` is then the
gradient of ``ℓᵢ`` alone). All of this assumes the model's layers do not mix examples
(BatchNorm in training mode does: its per-example gradient is not defined this way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jbp._validate import check_batch, check_grad_fn, check_model_and_loss, check_positive
from jbp.engine import backprop
from jbp.extensions import BatchGrad, BatchL2, ClippedGrad, global_sq_norms

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree
    from jbp.losses import Loss

__all__ = ["per_example_grads", "per_example_grad_norms", "per_example_clipped_grad"]


def per_example_grads(
    model: Layer, loss: Loss, *, grad_fn: str = "manual"
) -> Callable[..., PyTree]:
    """``f(params, x, y, *, key=None, train=True, state=None) -> grads`` with a leading batch
    axis on every leaf: ``grads[...][i] = ∇θ loss(model(params, x[i:i+1]), y[i:i+1])``.

    The :class:`jbp.extensions.BatchGrad` extension of one batched hand-written backward
    (closed forms where layers have them). ``grad_fn="autodiff"`` is the reference:
    ``vmap`` over single examples of ``jax.grad`` (with a ``key``, example ``i`` then uses
    ``jax.random.fold_in(key, i)``). Their mean over the batch is the batch gradient.
    """
    check_model_and_loss(model, loss)
    check_grad_fn(grad_fn)
    if grad_fn == "manual":
        run = backprop(model, loss, extensions=(BatchGrad(),))

        def manual(params, x, y, *, key=None, train=True, state=None):
            return run(params, x, y, key=key, train=train, state=state).extras["batch_grad"]

        return manual

    def one(params, xi, yi, k, train, state):
        xb, yb = xi[None], yi[None]
        return jax.grad(
            lambda p: loss.value(model.apply(p, xb, key=k, train=train, state=state), yb)
        )(params)

    def f(params, x, y, *, key=None, train=True, state=None):
        x, y = check_batch(x, y)
        if key is None:
            return jax.vmap(lambda xi, yi: one(params, xi, yi, None, train, state))(x, y)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
        return jax.vmap(lambda xi, yi, k: one(params, xi, yi, k, train, state))(x, y, keys)

    return f


def per_example_grad_norms(model: Layer, loss: Loss) -> Callable[..., Array]:
    """``f(params, x, y, *, key=None, train=True, state=None) -> (batch,)``: ``‖gᵢ‖₂``.

    ``gᵢ`` is the gradient of the loss on example ``i`` alone (see the module docstring).
    One batched forward and one batched backward with the :class:`jbp.extensions.BatchL2`
    extension (``Dense``: ``‖aᵢ‖²‖δᵢ‖² + ‖δᵢ‖²``), summed over leaves. Per-example gradients
    are never formed where the layers have closed forms.
    """
    check_model_and_loss(model, loss)
    run = backprop(model, loss, extensions=(BatchL2(),))

    def f(params, x, y, *, key=None, train=True, state=None):
        sq = global_sq_norms(
            run(params, x, y, key=key, train=train, state=state).extras["batch_l2"]
        )
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    return f


def per_example_clipped_grad(
    model: Layer, loss: Loss, max_norm: float
) -> Callable[..., tuple[Array, PyTree]]:
    """``f(params, x, y, *, key=None, train=True, state=None) -> (grads, norms)``.

    ``grads = (1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ`` — the mean of the per-example gradients, each
    clipped to L2 norm at most ``C = max_norm`` (DP-SGD's clipped sum, divided by ``n``,
    before noise) — and ``norms = ‖gᵢ‖`` before clipping: the
    :class:`jbp.extensions.ClippedGrad` extension (one forward and one backward; the norms
    from the ``(input, delta)`` pairs, then each layer's parameter gradient from its own
    delta with row ``i`` scaled by ``min(1, C/‖gᵢ‖)``: book-keeping).
    """
    check_model_and_loss(model, loss)
    max_norm = check_positive("max_norm", max_norm)
    run = backprop(model, loss, extensions=(ClippedGrad(max_norm),))

    def f(params, x, y, *, key=None, train=True, state=None):
        out = run(params, x, y, key=key, train=train, state=state)
        norms = jnp.sqrt(jnp.maximum(global_sq_norms(out.extras["batch_l2"]), 0.0))
        return out.extras["clipped_grad"], norms

    return f
