"""Per-example gradients, their norms without materialising them, and per-example clipping.

Every jbp loss is mean-reduced over the batch, so the batch gradient is
``∇L = (1/n) Σᵢ gᵢ`` where ``gᵢ = ∇ℓᵢ`` is **the gradient of the loss on example i
alone** (the loss evaluated on a batch of one). That ``gᵢ`` is what every function here
returns or measures — the quantity DP-SGD clips — not its ``1/n`` share of the batch
gradient.

- :func:`per_example_grads` — ``gᵢ`` for every ``i``: ``vmap`` of the hand-written
  backward over single examples (each given a batch axis of 1). Leaves get a leading
  batch axis; memory is ``n ×`` the parameters.
- :func:`per_example_grad_norms` — ``‖gᵢ‖₂`` for every ``i`` from ONE batched forward and
  backward: each layer reads its ``(input a, delta δ)`` pair and returns
  ``‖∂ℓᵢ/∂θ_layer‖²`` (``Layer.per_example_sq_norms``); for ``Dense``,
  ``‖∇Wᵢ‖² = ‖aᵢ‖²‖δᵢ‖²`` and ``‖∇bᵢ‖² = ‖δᵢ‖²``. The layers' squares are summed:
  ``‖gᵢ‖² = Σ_layers ‖∂ℓᵢ/∂θ_layer‖²``. No per-example gradient is formed.
- :func:`per_example_clipped_grad` — ``(1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ``, the mean of the
  individually clipped per-example gradients, by rescaling row ``i`` of the output delta
  by ``min(1, C/‖gᵢ‖)`` and running the batched backward a second time (the backward is
  linear in the delta for a fixed cache). Still nothing per-example is materialised.

The per-example scaling uses ``δ_out = n · loss.grad(pred, y)`` (row ``i`` is then the
gradient of ``ℓᵢ`` alone). All of this assumes the model's layers do not mix examples
(BatchNorm in training mode does: its per-example gradient is not defined this way).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jbp.core import Layer, _check_batch, _check_model_and_loss

__all__ = ["per_example_grads", "per_example_grad_norms", "per_example_clipped_grad"]


def per_example_grads(model: Layer, loss, *, grad_fn: str = "manual") -> Callable:
    """``f(params, x, y, *, key=None, train=True) -> grads`` with a leading batch axis on
    every leaf: ``grads[...][i] = ∇θ loss(model(params, x[i:i+1]), y[i:i+1])``.

    ``vmap`` over examples of the hand-written backward (``grad_fn="autodiff"``: of
    ``jax.grad``, the reference). Their mean over the batch is the batch gradient. With a
    ``key`` (dropout), example ``i`` uses ``jax.random.fold_in(key, i)``.
    """
    _check_model_and_loss(model, loss)
    if grad_fn not in ("manual", "autodiff"):
        raise ValueError(f"grad_fn: expected 'manual' or 'autodiff', got {grad_fn!r}")

    def one(params, xi, yi, k, train):
        xb, yb = xi[None], yi[None]
        if grad_fn == "manual":
            pred, cache = model.forward(params, xb, key=k, train=train)
            grads, _ = model.backward(params, cache, loss.grad(pred, yb))
            return grads
        return jax.grad(lambda p: loss.value(model.apply(p, xb, key=k, train=train), yb))(params)

    def f(params, x, y, *, key=None, train=True):
        x, y = _check_batch(x, y)
        n = x.shape[0]
        if key is None:
            return jax.vmap(lambda xi, yi: one(params, xi, yi, None, train))(x, y)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        return jax.vmap(lambda xi, yi, k: one(params, xi, yi, k, train))(x, y, keys)

    return f


def _per_example_delta(model, loss, params, x, y, key, train):
    """One batched forward; the output delta scaled so that row i is ∂ℓᵢ/∂pred."""
    x, y = _check_batch(x, y)
    pred, cache = model.forward(params, x, key=key, train=train)
    dy = loss.grad(pred, y)
    return cache, dy, x.shape[0]


def per_example_grad_norms(model: Layer, loss) -> Callable:
    """``f(params, x, y, *, key=None, train=True) -> (batch,)``: ``‖gᵢ‖₂`` per example.

    ``gᵢ`` is the gradient of the loss on example ``i`` alone (see the module docstring).
    One batched forward and one batched backward; each layer turns its ``(input, delta)``
    pair into per-example squared norms (``Layer.per_example_sq_norms``; ``Dense``:
    ``‖aᵢ‖²‖δᵢ‖² + ‖δᵢ‖²``), summed over layers. Per-example gradients are never formed.
    """
    _check_model_and_loss(model, loss)

    def f(params, x, y, *, key=None, train=True):
        cache, dy, n = _per_example_delta(model, loss, params, x, y, key, train)
        sq = model.per_example_sq_norms(params, cache, dy * n)
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    return f


def per_example_clipped_grad(model: Layer, loss, max_norm: float) -> Callable:
    """``f(params, x, y, *, key=None, train=True) -> (grads, norms)``.

    ``grads = (1/n) Σᵢ min(1, C/‖gᵢ‖) gᵢ`` — the mean of the per-example gradients, each
    clipped to L2 norm at most ``C = max_norm`` (DP-SGD's clipped sum, divided by ``n``,
    before noise) — and ``norms = ‖gᵢ‖`` before clipping. Computed as: one forward, the
    norms from the ``(input, delta)`` pairs, then the batched backward again with row
    ``i`` of the output delta scaled by ``min(1, C/‖gᵢ‖)``.
    """
    _check_model_and_loss(model, loss)
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")

    def f(params, x, y, *, key=None, train=True):
        cache, dy, n = _per_example_delta(model, loss, params, x, y, key, train)
        norms = jnp.sqrt(jnp.maximum(model.per_example_sq_norms(params, cache, dy * n), 0.0))
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))
        scale = scale.astype(dy.dtype).reshape((n,) + (1,) * (dy.ndim - 1))
        grads, _ = model.backward(params, cache, dy * scale)
        return grads, norms

    return f
