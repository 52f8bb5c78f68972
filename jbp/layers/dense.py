"""The fully connected layer."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jbp import initializers
from jbp.core import Array, PyTree, check_array, check_floating, layer_error
from jbp.layers import _per_example as _pe
from jbp.layers._feedback import RuleLayer, rule_field, seed_field


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(RuleLayer):
    """Fully connected layer ``z = a W + b``.

    Forward, for an input ``a`` of shape ``(batch, ..., in)`` (the seed's
    ``z_j = Σ_i w_ji a_i + b_j``, with ``W`` stored as ``(in, units)``)::

        z = a W + b

    Backward, given ``δ = ∂L/∂z`` of shape ``(batch, ..., units)``::

        ∂L/∂W = aᵀ δ          (summed over the batch and any other leading axes)
        ∂L/∂b = Σ_batch δ
        ∂L/∂a = δ Wᵀ           (handed to the previous layer as its ``dy``)

    ``params = {"W": (in, units), "b": (units,)}`` (no ``"b"`` when ``use_bias=False``).
    ``w_init``/``b_init`` take an initializer object or its name (``"he_normal"``);
    defaults: Glorot-uniform weights, zero biases. ``cache = {"x": a}``: the layer's
    input, from which per-example gradients and their norms are computed.

    ``rule`` (default ``"bp"``) swaps the ``W`` of ``∂L/∂a = δ Wᵀ`` for a feedback matrix
    ``B`` — ``"fa"`` (fixed random, state drawn from ``feedback_seed``), ``"sign"``
    (``sign(W)·mean|W|``), ``"kolen_pollack"`` (trainable ``params["B"]``) — leaving
    ``∂L/∂W`` and ``∂L/∂b`` as they are: see :mod:`jbp.layers._feedback`.
    """

    units: int
    w_init: Any = "glorot_uniform"
    b_init: Any = "zeros"
    use_bias: bool = True
    rule: str = rule_field()
    feedback_seed: int = seed_field()

    def __post_init__(self):
        if isinstance(self.units, bool) or not isinstance(self.units, (int,)) or self.units <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {self.units!r}")
        initializers.get(self.w_init)  # unknown names fail here, at construction
        initializers.get(self.b_init)
        self.check_rule()

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        if len(in_shape) < 1 or in_shape[-1] <= 0:
            raise layer_error(
                self,
                f"expected an input shape (..., features) with features > 0, got {tuple(in_shape)}",
            )
        n_in = int(in_shape[-1])
        params = {"W": initializers.get(self.w_init)(key, (n_in, self.units))}
        if self.use_bias:
            params["b"] = initializers.get(self.b_init)(key, (self.units,))
        return self.rule_params(key, params), tuple(in_shape[:-1]) + (self.units,)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        self._check_params(params)
        W = params["W"]
        if x.ndim < 2 or x.shape[-1] != W.shape[0]:
            raise layer_error(
                self, f"expected input of shape (batch, ..., {W.shape[0]}), got {x.shape}"
            )
        z = jnp.matmul(x, W)
        if self.use_bias:
            z = z + params["b"]
        return z, {"x": x}

    def _check_params(self, params):
        """Static shape checks, so a wrong ``W`` or ``b`` is not blamed on the input."""
        names = ("W", "b") if self.use_bias else ("W",)
        missing = [k for k in names if not (isinstance(params, dict) and k in params)]
        if missing:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise layer_error(
                self, f"params must be a dict with {list(names)}, missing {missing} (got {got})"
            )
        W = params["W"]
        if jnp.ndim(W) != 2 or jnp.shape(W)[1] != self.units:
            hint = (
                "; it looks transposed (W is stored as (in, units))"
                if jnp.ndim(W) == 2 and jnp.shape(W)[0] == self.units
                else ""
            )
            raise layer_error(
                self,
                f"params['W'] has shape {jnp.shape(W)}, expected (in_features, {self.units}){hint}",
            )
        if self.use_bias and jnp.shape(params["b"]) != (self.units,):
            raise layer_error(
                self, f"params['b'] has shape {jnp.shape(params['b'])}, expected ({self.units},)"
            )

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x = cache["x"]
        x2 = x.reshape(-1, x.shape[-1])
        d2 = dy.reshape(-1, dy.shape[-1])
        grads = {"W": jnp.matmul(x2.T, d2)}
        if self.use_bias:
            grads["b"] = jnp.sum(d2, axis=0)
        dx = jnp.matmul(dy, self.feedback(params, cache, "W").T)  # W itself for rule="bp"
        return self.rule_grads(grads), dx

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # ``dy`` here is per example: row i is the delta of example i's own loss, so the
    # per-example gradient is ∂ℓᵢ/∂W = Σₜ aᵢₜᵀ δᵢₜ (one outer product without extra axes).
    # The rule does not change the parameter gradients; Kolen–Pollack's B gets W's
    # (``rule_grads`` copies the entry).

    def _per_example_views(self, cache, dy):
        x = cache["x"]
        n = x.shape[0]
        return x.reshape(n, -1, x.shape[-1]), dy.reshape(n, -1, dy.shape[-1])

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``∂ℓᵢ/∂W = Σₜ aᵢₜᵀ δᵢₜ`` ``(n, in, units)`` and ``∂ℓᵢ/∂b = Σₜ δᵢₜ`` ``(n, units)``."""
        a, d = self._per_example_views(cache, dy)
        out = {"W": _pe.outer_grads(a, d)}
        if self.use_bias:
            out["b"] = _pe.bias_grads(d)
        return self.rule_grads(out)

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖∂ℓᵢ/∂W‖²`` and ``‖∂ℓᵢ/∂b‖²`` per example, without forming ``∂ℓᵢ/∂W``.

        Input ``a`` of shape ``(n, in)``, ``δ`` of shape ``(n, units)``: ``∂ℓᵢ/∂W = aᵢᵀδᵢ`` is
        an outer product, so ``‖∂ℓᵢ/∂W‖² = ‖aᵢ‖² ‖δᵢ‖²`` and ``‖∂ℓᵢ/∂b‖² = ‖δᵢ‖²``.
        With extra axes, ``(n, T, in)``: the Gram form
        ``‖∂ℓᵢ/∂W‖² = Σₜₛ (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` costs ``O(T²(in+units))`` per example; when
        ``2T² > in·units`` the per-example ``(in, units)`` gradient is cheaper and is formed
        instead (:func:`jbp.layers._per_example.use_gram`). ``∂ℓᵢ/∂b = Σₜ δᵢₜ``.
        """
        a, d = self._per_example_views(cache, dy)
        out = {"W": _pe.outer_sq_norms(a, d)}
        if self.use_bias:
            out["b"] = jnp.sum(jnp.square(_pe.bias_grads(d)), axis=1)
        return self.rule_grads(out)

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ (∂ℓᵢ/∂W)²`` elementwise: ``(a²)ᵀ(δ²)`` without extra axes (never forming the
        per-example gradients); with extra axes from the per-example gradients."""
        a, d = self._per_example_views(cache, dy)
        out = {"W": _pe.outer_sum_sq(a, d)}
        if self.use_bias:
            out["b"] = jnp.sum(jnp.square(_pe.bias_grads(d)), axis=0)
        return self.rule_grads(out)

    # --- closed form for the Kronecker-factored curvature (jbp.extensions.KFAC / KFLR) -------
    def kron_factors(
        self, params: PyTree, cache: PyTree, dy: Array
    ) -> dict[str, tuple[Array, Array]]:
        """Kronecker factors of the GGN blocks from one backpropagated column ``dy``.

        With ``a`` the input ``(n, T, in)`` and ``δ`` this column's delta ``(n, T, units)``
        (``T = 1`` without extra axes), the per-example gradient of ``W.reshape(-1)``
        (row-major ``(in, units)``) is ``Σₜ aᵢₜ ⊗ δᵢₜ``, so for ``T = 1`` the GGN block is
        ``(1/n) Σᵢ Σ_c (aᵢaᵢᵀ) ⊗ (δᵢ,c δᵢ,cᵀ)`` and K-FAC takes it apart as ``kron(A, B)``::

            A = (1/(n·T)) Σᵢₜ aᵢₜ aᵢₜᵀ            (in, in)     — the same for every column
            B = (1/n) Σ_c R_cᵀ R_c,   R_c = δ_c reshaped to (n·T, units)

        Each column contributes the rows ``R_c`` (the extension sums the Gram matrices over
        the columns in one product and divides by ``n``). Extra axes count as more examples
        ("expand"/KFC convention: ``A`` averages over positions, ``B`` sums over them). The
        bias gets its exact block: ``A = [[1]]``, rows ``Σₜ δᵢₜ`` (the same rows as ``W``'s
        when ``T = 1``).

        Returns ``{"W": (A, R), "b": ([[1]], R_b)}`` (pairs in the structure of params).
        """
        a, d = self._per_example_views(cache, dy)
        n, T = a.shape[0], a.shape[1]
        a2 = a.reshape(n * T, a.shape[2])
        rows = d.reshape(n * T, d.shape[2])
        out = {"W": (jnp.matmul(a2.T, a2) / (n * T), rows)}
        if self.use_bias:
            out["b"] = (jnp.ones((1, 1), rows.dtype), rows if T == 1 else jnp.sum(d, axis=1))
        return out
