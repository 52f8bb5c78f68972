"""Normalization layers: BatchNorm (with non-trainable running statistics) and LayerNorm.

Both normalise ``x̂ = (x − μ) / σ`` with ``σ = sqrt(var + eps)`` and return
``y = γ ⊙ x̂ + β`` over the feature (last) axis. With ``g = δ ⊙ γ`` (``δ = ∂L/∂y``) and
``m`` the number of values that share one ``(μ, σ)``, both backward passes are the same
closed form, summing over those ``m`` values::

    ∂L/∂γ = Σ δ ⊙ x̂        ∂L/∂β = Σ δ
    ∂L/∂x = (1/m) σ⁻¹ (m g − Σ g − x̂ Σ (g ⊙ x̂))

(BatchNorm sums over the batch and any spatial axes, per feature; LayerNorm over the
features, per example.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jbp import initializers
from jbp.core import Array, Layer, PyTree, check_array, check_floating, layer_error

__all__ = ["BatchNorm", "LayerNorm"]


def _check_eps(who, eps):
    if not (
        isinstance(eps, (int, float))
        and not isinstance(eps, bool)
        and math.isfinite(eps)
        and eps > 0
    ):
        raise ValueError(f"{who}: eps must be a finite number > 0, got {eps!r}")


class _Norm(Layer):
    """Shared parameters ``γ`` ("gamma", shape (F,)) and ``β`` ("beta", shape (F,))."""

    # fields of the dataclass subclasses (declared here for the type checker only)
    use_scale: bool
    use_bias: bool
    scale_init: Any
    bias_init: Any

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) < 1 or in_shape[-1] <= 0:
            raise layer_error(
                self, f"expected an input shape (..., features) with features > 0, got {in_shape}"
            )
        f = in_shape[-1]
        k1, k2 = jax.random.split(key)
        params = {}
        if self.use_scale:
            params["gamma"] = initializers.get(self.scale_init)(k1, (f,))
        if self.use_bias:
            params["beta"] = initializers.get(self.bias_init)(k2, (f,))
        return params, in_shape

    def _check_input(self, params, x):
        x = check_array("x", x)
        check_floating("x", x)
        f = next((p.shape[0] for p in params.values()), None) if isinstance(params, dict) else None
        if x.ndim < 2 or (f is not None and x.shape[-1] != f):
            want = f"(batch, ..., {f})" if f is not None else "(batch, ..., features)"
            raise layer_error(self, f"expected input of shape {want}, got {x.shape}")
        return x

    def _affine(self, params, xhat):
        y = xhat * params["gamma"] if self.use_scale else xhat
        return y + params["beta"] if self.use_bias else y

    def _param_grads(self, params, dy, xhat, axes):
        grads = {}
        if self.use_scale:
            grads["gamma"] = jnp.sum(dy * xhat, axis=axes).astype(params["gamma"].dtype)
        if self.use_bias:
            grads["beta"] = jnp.sum(dy, axis=axes).astype(params["beta"].dtype)
        return grads

    def _scaled(self, params, dy):
        return dy * params["gamma"] if self.use_scale else dy

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # ``dy`` here is per example: row i is the delta of example i's own loss. With fixed
    # normalisation statistics (LayerNorm: each example's own; BatchNorm in evaluation:
    # the running ones) example i's gradients are its own sums over the non-batch axes:
    #     ∂ℓᵢ/∂γ = Σ_{...} δᵢ ⊙ x̂ᵢ        ∂ℓᵢ/∂β = Σ_{...} δᵢ        (n, F) each.

    def _check_per_example(self, cache):
        """Raise when the cache does not allow per-example gradients (BatchNorm in training)."""

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``∂ℓᵢ/∂γ = Σ δᵢ ⊙ x̂ᵢ`` and ``∂ℓᵢ/∂β = Σ δᵢ`` over the non-batch axes, ``(n, F)``."""
        self._check_per_example(cache)
        return self._param_grads(params, dy, cache["xhat"], tuple(range(1, dy.ndim - 1)))

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖∂ℓᵢ/∂γ‖²`` and ``‖∂ℓᵢ/∂β‖²``, ``(n,)``, from the ``(n, F)`` rows of ``batch_grad``."""
        return jax.tree.map(
            lambda g: jnp.sum(jnp.square(g), axis=1), self.batch_grad(params, cache, dy)
        )

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ (∂ℓᵢ/∂γ)²`` and ``Σᵢ (∂ℓᵢ/∂β)²``, ``(F,)``, from the rows of ``batch_grad``."""
        return jax.tree.map(
            lambda g: jnp.sum(jnp.square(g), axis=0), self.batch_grad(params, cache, dy)
        )


@dataclasses.dataclass(frozen=True)
class BatchNorm(_Norm):
    """Batch normalization over every axis but the last (features): ``(batch, F)``,
    ``(batch, T, F)`` or NHWC ``(batch, H, W, F)``.

    Training (``train=True``), with ``m`` = number of values per feature (batch × spatial)::

        μ = (1/m) Σ x          var = (1/m) Σ (x − μ)²          (biased, per feature)
        x̂ = (x − μ) / sqrt(var + eps)          y = γ ⊙ x̂ + β
        ∂L/∂x = (1/m) γ σ⁻¹ (m δ − Σ δ − x̂ Σ (δ ⊙ x̂))        ∂L/∂γ = Σ δ ⊙ x̂    ∂L/∂β = Σ δ

    Evaluation (``train=False``) uses the running statistics, so it is a fixed affine map::

        x̂ = (x − running_mean) / sqrt(running_var + eps)       ∂L/∂x = γ δ / sqrt(running_var + eps)

    **Non-trainable state.** ``stateful = True``; ``init_state(in_shape)`` returns
    ``{"mean": zeros(F), "var": ones(F)}`` (float32; cast it with ``jbp.cast`` for float64
    work) and ``forward_with_state(params, state, x, *, train)`` returns
    ``(y, cache, new_state)``. In training the running statistics move towards the batch
    statistics (the flax/Keras convention; PyTorch's ``momentum`` is ``1 − momentum``)::

        running_mean ← momentum · running_mean + (1 − momentum) · μ
        running_var  ← momentum · running_var  + (1 − momentum) · var

    (``var`` is the biased batch variance, as in flax.) In evaluation the state is
    returned unchanged. The state is never differentiated nor touched by an optimizer;
    ``Sequential`` threads a tuple of its layers' states, and the training loop carries
    it from step to step (``make_train_step`` then takes and returns ``state``, ``fit``
    returns the final one as ``history.state``).

    The stateless entry ``forward(params, x, train=True)`` — what ``value_and_grad``,
    ``check_gradients`` and per-example gradients call — uses batch statistics and needs
    no state; ``forward(params, x, train=False)`` (and so ``apply`` with its default
    ``train=False``) raises, because the running statistics live in the state: call
    ``model.forward_with_state(params, state, x, train=False)``.

    Per-example gradients of a BatchNorm network in training mode are those of each
    example normalised by its own statistics (a batch of one): they do not average to
    the batch gradient, because the batch statistics mix the examples. So
    ``mixes_examples(train=True)`` is ``True`` and ``jbp.backprop`` refuses per-example
    extensions in training mode; in evaluation (``train=False``, running statistics)
    the layer is a fixed per-feature affine map and its closed forms ``batch_grad``,
    ``batch_l2``, ``sum_grad_squared`` give ``∂ℓᵢ/∂γ = Σ δᵢ ⊙ x̂ᵢ``, ``∂ℓᵢ/∂β = Σ δᵢ``
    (sums over the spatial axes). They are needed: the eval cache holds ``inv_std`` of
    shape ``(F,)``, without a batch axis, so the generic ``vmap`` default cannot run.

    ``params = {"gamma": (F,), "beta": (F,)}`` (``use_scale``/``use_bias`` drop them);
    ``cache = {"x", "xhat", "inv_std"}`` (+ an empty ``"running"`` marker in eval mode).
    """

    momentum: float = 0.99
    eps: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = "ones"
    bias_init: Any = "zeros"

    stateful = True

    def mixes_examples(self, train: bool) -> bool:
        """In training mode the batch statistics couple the examples (per-example
        extensions and DP-SGD refuse it); in evaluation mode they do not."""
        return bool(train)

    def __post_init__(self):
        if not (
            isinstance(self.momentum, (int, float))
            and not isinstance(self.momentum, bool)
            and 0 <= self.momentum <= 1
        ):
            raise ValueError(
                f"BatchNorm: momentum must be a number in [0, 1], got {self.momentum!r}"
            )
        _check_eps("BatchNorm", self.eps)
        initializers.get(self.scale_init)
        initializers.get(self.bias_init)

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) < 1 or in_shape[-1] <= 0:
            raise layer_error(
                self, f"expected an input shape (..., features) with features > 0, got {in_shape}"
            )
        f = in_shape[-1]
        return {"mean": jnp.zeros((f,), jnp.float32), "var": jnp.ones((f,), jnp.float32)}

    def _check_per_example(self, cache):
        if "running" not in cache:
            raise layer_error(
                self,
                "per-example gradients need the running statistics "
                "(evaluation mode): the cache comes from train=True, where the "
                "batch statistics mix the examples; call with train=False and the "
                "model's state",
            )

    def _batch_forward(self, params, x):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        inv_std = jax.lax.rsqrt(var + self.eps)
        xhat = (x - mean) * inv_std
        return self._affine(params, xhat), {"x": x, "xhat": xhat, "inv_std": inv_std}, mean, var

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = self._check_input(params, x)
        if not train:
            raise layer_error(
                self,
                "forward(train=False) needs the running statistics, which are "
                "non-trainable state: call model.forward_with_state(params, state, x, "
                "train=False) with state from model.init_state(in_shape) (or "
                "history.state after fit)",
            )
        y, cache, _, _ = self._batch_forward(params, x)
        return y, cache

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        x = self._check_input(params, x)
        if not (isinstance(state, dict) and set(state) == {"mean", "var"}):
            raise layer_error(
                self,
                f"expected state {{'mean': (F,), 'var': (F,)}} from init_state, "
                f"got {jax.tree.map(jnp.shape, state)}",
            )
        if state["mean"].shape != (x.shape[-1],) or state["var"].shape != (x.shape[-1],):
            raise layer_error(
                self,
                f"state has mean {state['mean'].shape} and var {state['var'].shape}, "
                f"expected ({x.shape[-1]},) for input {x.shape}",
            )
        if train:
            y, cache, mean, var = self._batch_forward(params, x)
            m = self.momentum
            new_state = {
                "mean": (m * state["mean"] + (1 - m) * mean).astype(state["mean"].dtype),
                "var": (m * state["var"] + (1 - m) * var).astype(state["var"].dtype),
            }
            return y, cache, new_state
        mean = state["mean"].astype(x.dtype)
        inv_std = jax.lax.rsqrt(state["var"].astype(x.dtype) + self.eps)
        xhat = (x - mean) * inv_std
        cache = {"x": x, "xhat": xhat, "inv_std": inv_std, "running": ()}
        return self._affine(params, xhat), cache, state

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        xhat, inv_std = cache["xhat"], cache["inv_std"]
        axes = tuple(range(dy.ndim - 1))
        grads = self._param_grads(params, dy, xhat, axes)
        g = self._scaled(params, dy)
        if "running" in cache:  # eval mode: fixed statistics
            return grads, (g * inv_std).astype(cache["x"].dtype)
        m = math.prod(dy.shape[:-1])
        dx = (inv_std / m) * (m * g - jnp.sum(g, axis=axes) - xhat * jnp.sum(g * xhat, axis=axes))
        return grads, dx.astype(cache["x"].dtype)


@dataclasses.dataclass(frozen=True)
class LayerNorm(_Norm):
    """Layer normalization over the last axis (features), per example and position.

    With ``F`` features, for each row ``x`` of the last axis::

        μ = (1/F) Σ x       var = (1/F) Σ (x − μ)²       x̂ = (x − μ) / sqrt(var + eps)
        y = γ ⊙ x̂ + β
        ∂L/∂x = (1/F) σ⁻¹ (F g − Σ g − x̂ Σ (g ⊙ x̂)),  g = γ ⊙ δ  (sums over the F features)
        ∂L/∂γ = Σ_{batch, ...} δ ⊙ x̂        ∂L/∂β = Σ_{batch, ...} δ

    Same in training and evaluation; no state. ``params = {"gamma": (F,), "beta": (F,)}``;
    ``cache = {"x", "xhat", "inv_std"}`` (all with the batch axis first).
    """

    eps: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = "ones"
    bias_init: Any = "zeros"

    def __post_init__(self):
        _check_eps("LayerNorm", self.eps)
        initializers.get(self.scale_init)
        initializers.get(self.bias_init)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = self._check_input(params, x)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        inv_std = jax.lax.rsqrt(var + self.eps)
        xhat = (x - mean) * inv_std
        return self._affine(params, xhat), {"x": x, "xhat": xhat, "inv_std": inv_std}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        xhat, inv_std = cache["xhat"], cache["inv_std"]
        grads = self._param_grads(params, dy, xhat, tuple(range(dy.ndim - 1)))
        g = self._scaled(params, dy)
        f = dy.shape[-1]
        dx = (inv_std / f) * (
            f * g
            - jnp.sum(g, axis=-1, keepdims=True)
            - xhat * jnp.sum(g * xhat, axis=-1, keepdims=True)
        )
        return grads, dx.astype(cache["x"].dtype)
