"""Recurrent layers with backpropagation through time written by hand.

Both layers run the recurrence with ``lax.scan`` over time, keep every hidden state in the
cache, and run the backward as a second ``lax.scan(reverse=True)`` over those cached
states, carrying ``∂L/∂h_t`` (and ``∂L/∂c_t`` for the LSTM) from step ``t`` to ``t − 1``.
Only ``δ_t W_hᵀ`` is inherently sequential; the input projection ``x_t W_x`` of the
forward and the weight gradients ``Σ_t x_tᵀ δ_t``, ``Σ_t h_{t−1}ᵀ δ_t`` of the backward
are computed for all steps at once, as single matrix products outside the scans.

Padding: input ``(batch, T, features)`` or ``Masked(values, mask)`` (see
:mod:`jbp.layers.masking`). At a padded step (``m_t = 0``) the state is carried
unchanged, ``h_t = h_{t−1}``, and the step's parameters get no gradient; with
``return_sequences=False`` the output is the last *real* state of each sequence (so
right- and left-padding both work). With ``return_sequences=True`` the output is
``(batch, T, features)`` — ``Masked`` again when the input was — its padded rows
repeating the previous state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jbp import initializers
from jbp.core import Array, PyTree, layer_error
from jbp.layers import _per_example as _pe
from jbp.layers._feedback import RuleLayer, rule_field, seed_field
from jbp.layers._window import _positive_int
from jbp.layers.masking import Masked, cotangent_values, split_masked

__all__ = ["SimpleRNN", "LSTM"]


class _Recurrent(RuleLayer):
    """Shared input checking, shapes and output packing; ``gates`` = 1 (RNN) or 4 (LSTM).

    Backward rules (``rule``, see :mod:`jbp.layers._feedback`): ``"fa"``, ``"sign"`` and
    ``"kolen_pollack"`` use ``B_h`` in place of ``W_h`` in the recurrent delta
    ``∂L/∂h_{t−1} = δ_t B_hᵀ (+ …)`` and ``B_x`` in place of ``W_x`` in ``∂L/∂x_t = δ_t B_xᵀ``;
    the weight gradients ``Σ_t x_tᵀδ_t``, ``Σ_t h_{t−1}ᵀδ_t``, ``Σ_t δ_t`` keep their form.
    """

    gates = 1
    _feedback_of = {"B_x": ("W_x", "w_init"), "B_h": ("W_h", "recurrent_init")}
    # each subclass's BPTT: (params, cache, dy) -> (xs, hs, dz, h0)
    _deltas: Callable[[PyTree, PyTree, Array], tuple[Array, Array, Array, Array]]

    def __post_init__(self):
        name = type(self).__name__
        if not _positive_int(self.features):
            raise ValueError(f"{name}: features must be a positive integer, got {self.features!r}")
        for init in (self.w_init, self.recurrent_init, self.b_init):
            initializers.get(init)
        self.check_rule()

    def _init_weights(self, key, in_shape):
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 2 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (time, features) without the batch axis, got {in_shape}",
            )
        k1, k2, k3 = jax.random.split(key, 3)
        n, g = self.features, self.gates * self.features
        params = {
            "W_x": initializers.get(self.w_init)(k1, (in_shape[1], g)),
            "W_h": initializers.get(self.recurrent_init)(k2, (n, g)),
            "b": initializers.get(self.b_init)(k3, (g,)),
        }
        out = (in_shape[0], n) if self.return_sequences else (n,)
        return self.rule_params(key, params), out

    def _inputs(self, params, x):
        xs, mask = split_masked(self, x, rank=3)
        f_in = params["W_x"].shape[0]
        if xs.shape[2] != f_in or xs.shape[1] == 0:
            raise layer_error(
                self, f"expected input of shape (batch, time ≥ 1, {f_in}), got {xs.shape}"
            )
        dtype = jnp.result_type(xs.dtype, params["W_x"].dtype, params["W_h"].dtype)
        return xs, mask, dtype

    def _output(self, hs_b, mask):
        """``hs_b``: all states ``(batch, T, features)``."""
        if not self.return_sequences:
            return hs_b[:, -1]
        return hs_b if mask is None else Masked(hs_b, mask)

    def _seed(self, dy, hs_b, dtype):
        """``(∂L/∂h_T carried in, per-step ∂L/∂h_t time-major or None)``."""
        dy = cotangent_values(dy).astype(dtype)
        if self.return_sequences:
            return jnp.zeros(hs_b[:, 0].shape, dtype), jnp.swapaxes(dy, 0, 1)
        return dy, None

    def _weight_grads(self, params, xs, hs, dz, h0, cache):
        """Everything that is not sequential: ``dW_x, dW_h, db, dx`` from all ``δ_t`` at once.

        ``hs``, ``dz``: time-major ``(T, batch, ·)``; ``xs`` and the returned ``dx`` batch-first.
        ``dx`` goes through ``feedback(…, "W_x")`` (``W_x`` itself for ``rule="bp"``).
        """
        h_prev = self._previous(hs, h0)
        Wx = params["W_x"]
        xs_t = jnp.swapaxes(xs, 0, 1).astype(dz.dtype)
        grads = {
            "W_x": jnp.einsum("tbf,tbg->fg", xs_t, dz).astype(Wx.dtype),
            "W_h": jnp.einsum("tbh,tbg->hg", h_prev, dz).astype(params["W_h"].dtype),
            "b": jnp.sum(dz, axis=(0, 1)).astype(params["b"].dtype),
        }
        Fx = self.feedback(params, cache, "W_x")
        dx = jnp.swapaxes(jnp.matmul(dz, Fx.T.astype(dz.dtype)), 0, 1).astype(xs.dtype)
        return self.rule_grads(grads), dx

    @staticmethod
    def _previous(hs, h0):
        """``h_{t−1}`` for every step, time-major: ``[h_0, h_1, …, h_{T−1}]``."""
        return jnp.concatenate([h0[None], hs[:-1]], axis=0)

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        """BPTT (the subclass's ``_deltas``: a reverse scan for every ``δ_t``), then the
        weight gradients and ``∂L/∂x`` from all steps at once (``_weight_grads``)."""
        return self._weight_grads(params, *self._deltas(params, cache, dy), cache)

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # ``dy`` here is per example: row i is the delta of example i's own loss. The weight
    # gradients are sums over time of outer products, like Dense on (batch, T, in):
    #     ∂ℓᵢ/∂W_x = Σ_t xᵢₜᵀ δᵢₜ      ∂ℓᵢ/∂W_h = Σ_t hᵢ,ₜ₋₁ᵀ δᵢₜ      ∂ℓᵢ/∂b = Σ_t δᵢₜ
    # with the per-step deltas δᵢₜ of the same reverse scan as backward (``_deltas``; zero at
    # padded steps, so padding contributes nothing). ``batch_l2`` uses the sequence Gram form
    # ‖∂ℓᵢ/∂W_x‖² = Σ_{t,s} (xᵢₜ·xᵢₛ)(δᵢₜ·δᵢₛ) while 2T² ≤ in·gates·features (resp.
    # features·gates·features for W_h), and forms the per-example gradient otherwise
    # (jbp.layers._per_example.use_gram, the rule of Dense). The backward rule shapes δ (through
    # B_h in the reverse scan) but not the form of the weight gradients; Kolen–Pollack's B_x, B_h
    # get W_x's, W_h's (``rule_grads``).

    def _per_example_pairs(self, params, cache, dy):
        """``({"W_x": x, "W_h": h_{t−1}}, δ)``, batch-first ``(n, T, ·)``."""
        xs, hs, dzs, h0 = self._deltas(params, cache, dy)
        d = jnp.swapaxes(dzs, 0, 1)
        h_prev = jnp.swapaxes(self._previous(hs, h0), 0, 1)
        return {"W_x": xs.astype(d.dtype), "W_h": h_prev}, d

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``∂ℓᵢ/∂W_x``, ``∂ℓᵢ/∂W_h``, ``∂ℓᵢ/∂b`` with a leading batch axis."""
        a, d = self._per_example_pairs(params, cache, dy)
        out = {k: _pe.outer_grads(v, d).astype(params[k].dtype) for k, v in a.items()}
        out["b"] = _pe.bias_grads(d).astype(params["b"].dtype)
        return self.rule_grads(out)

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖∂ℓᵢ/∂θ‖²`` per leaf, ``(n,)``: the sequence Gram form or the per-example
        gradient, whichever is cheaper (see above)."""
        a, d = self._per_example_pairs(params, cache, dy)
        out = {k: _pe.outer_sq_norms(v, d).astype(params[k].dtype) for k, v in a.items()}
        out["b"] = jnp.sum(jnp.square(_pe.bias_grads(d)), axis=1).astype(params["b"].dtype)
        return self.rule_grads(out)

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ (∂ℓᵢ/∂θ)²`` elementwise, per leaf."""
        a, d = self._per_example_pairs(params, cache, dy)
        out = {k: _pe.outer_sum_sq(v, d).astype(params[k].dtype) for k, v in a.items()}
        out["b"] = jnp.sum(jnp.square(_pe.bias_grads(d)), axis=0).astype(params["b"].dtype)
        return self.rule_grads(out)

    @staticmethod
    def _projection(params, xs, dtype):
        """``x_t W_x + b`` for every step at once, time-major ``(T, batch, gates·features)``."""
        xs_t = jnp.swapaxes(xs, 0, 1).astype(dtype)
        return jnp.matmul(xs_t, params["W_x"].astype(dtype)) + params["b"]


@dataclasses.dataclass(frozen=True, repr=False)
class SimpleRNN(_Recurrent):
    """Elman RNN with tanh, ``h_0 = 0``::

        z_t = x_t W_x + h_{t−1} W_h + b          h_t = tanh(z_t)

    Backpropagation through time (``lax.scan`` backwards over the cached ``h_t``), with
    ``g_t = ∂L/∂h_t`` = the output's delta at ``t`` plus what flows back from ``t + 1``::

        δ_t = g_t ⊙ (1 − h_t²)                   g_{t−1} += δ_t W_hᵀ
        ∂L/∂W_x = Σ_t x_tᵀ δ_t    ∂L/∂W_h = Σ_t h_{t−1}ᵀ δ_t    ∂L/∂b = Σ_t δ_t    ∂L/∂x_t = δ_t W_xᵀ

    With a padding mask ``m_t``: ``h_t = m_t tanh(z_t) + (1 − m_t) h_{t−1}``, so
    ``δ_t = m_t g_t ⊙ (1 − h_t²)`` and ``g_{t−1} += δ_t W_hᵀ + (1 − m_t) g_t``.

    Input ``(batch, T, in)`` (or ``Masked``); output ``h_T`` ``(batch, features)``, or all
    ``h_t`` ``(batch, T, features)`` with ``return_sequences=True``. Initializers: Glorot-
    uniform ``W_x``, orthogonal ``W_h``, zero ``b``. ``params = {"W_x": (in, features),
    "W_h": (features, features), "b": (features,)}``; ``cache = {"x", "mask", "h"}`` with
    ``h`` all states ``(batch, T, features)``.
    """

    features: int
    return_sequences: bool = False
    w_init: Any = "glorot_uniform"
    recurrent_init: Any = "orthogonal"
    b_init: Any = "zeros"
    rule: str = rule_field()
    feedback_seed: int = seed_field()

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return self._init_weights(key, in_shape)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        xs, mask, dtype = self._inputs(params, x)
        Wh = params["W_h"].astype(dtype)
        zx = self._projection(params, xs, dtype)
        h0 = jnp.zeros((xs.shape[0], self.features), dtype)

        if mask is None:

            def step(h, z):
                h = jnp.tanh(z + h @ Wh)
                return h, h

            _, hs = lax.scan(step, h0, zx)
        else:

            def step(h, inp):
                z, m = inp
                h = jnp.where(m, jnp.tanh(z + h @ Wh), h)
                return h, h

            _, hs = lax.scan(step, h0, (zx, jnp.swapaxes(mask, 0, 1)[:, :, None]))
        hs_b = jnp.swapaxes(hs, 0, 1)
        return self._output(hs_b, mask), {"x": xs, "mask": mask, "h": hs_b}

    def _deltas(self, params, cache, dy):
        """Backpropagation through time: ``(xs, hs, δ, h_0)`` with ``hs`` and the per-step
        deltas ``δ_t = ∂L/∂z_t`` time-major ``(T, batch, features)`` (zero at padding)."""
        xs, mask, hs_b = cache["x"], cache["mask"], cache["h"]
        dtype = hs_b.dtype
        WhT = self.feedback(params, cache, "W_h").T.astype(dtype)  # W_hᵀ for rule="bp"
        g_T, dys = self._seed(dy, hs_b, dtype)
        ms = None if mask is None else jnp.swapaxes(mask, 0, 1)[:, :, None]

        def step(g_next, inp):
            h, dy_t, m = inp
            g = g_next if dy_t is None else g_next + dy_t  # ∂L/∂h_t
            dz = g * (1 - h * h)  # δ_t
            if m is None:
                return dz @ WhT, dz
            dz = jnp.where(m, dz, 0)
            return dz @ WhT + jnp.where(m, 0, g), dz

        hs = jnp.swapaxes(hs_b, 0, 1)
        _, dzs = lax.scan(step, g_T, (hs, dys, ms), reverse=True)
        return xs, hs, dzs, jnp.zeros(hs.shape[1:], dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class LSTM(_Recurrent):
    """Long short-term memory, ``h_0 = c_0 = 0``; gates in the column order ``i, f, g, o``::

        [zᵢ, z_f, z_g, z_o] = x_t W_x + h_{t−1} W_h + b
        i = σ(zᵢ)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
        c_t = f ⊙ c_{t−1} + i ⊙ g          h_t = o ⊙ tanh(c_t)

    Backpropagation through time carries ``(∂L/∂h_t, ∂L/∂c_t)`` backwards; at each step,
    with ``g_h = ∂L/∂h_t`` (output delta plus the carry) and ``τ = tanh(c_t)``::

        ∂L/∂o = g_h ⊙ τ            g_c = ∂L/∂c_t (carry) + g_h ⊙ o ⊙ (1 − τ²)
        ∂L/∂i = g_c ⊙ g    ∂L/∂g = g_c ⊙ i    ∂L/∂f = g_c ⊙ c_{t−1}
        δ_t = [∂L/∂i ⊙ i(1−i), ∂L/∂f ⊙ f(1−f), ∂L/∂g ⊙ (1−g²), ∂L/∂o ⊙ o(1−o)]
        ∂L/∂h_{t−1} = δ_t W_hᵀ       ∂L/∂c_{t−1} = g_c ⊙ f

    and, as for ``SimpleRNN``, ``∂L/∂W_x = Σ_t x_tᵀ δ_t``, ``∂L/∂W_h = Σ_t h_{t−1}ᵀ δ_t``,
    ``∂L/∂b = Σ_t δ_t``, ``∂L/∂x_t = δ_t W_xᵀ``. A padded step carries ``(h, c)`` unchanged
    and passes both deltas straight through (``δ_t = 0``).

    Initializers: Glorot-uniform ``W_x``, orthogonal ``W_h``, zero ``b`` plus
    ``forget_bias`` (default 1) on the forget gate. ``params = {"W_x": (in, 4·features),
    "W_h": (features, 4·features), "b": (4·features,)}``; ``cache = {"x", "mask", "h",
    "c", "gates"}`` (states and activated gates, batch axis first).
    """

    features: int
    return_sequences: bool = False
    w_init: Any = "glorot_uniform"
    recurrent_init: Any = "orthogonal"
    b_init: Any = "zeros"
    forget_bias: float = 1.0
    rule: str = rule_field()
    feedback_seed: int = seed_field()

    gates = 4

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        params, out = self._init_weights(key, in_shape)
        n = self.features
        params["b"] = params["b"].at[n : 2 * n].add(self.forget_bias)
        return params, out

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        xs, mask, dtype = self._inputs(params, x)
        n = self.features
        Wh = params["W_h"].astype(dtype)
        zx = self._projection(params, xs, dtype)
        zeros = jnp.zeros((xs.shape[0], n), dtype)

        def cell(h, c, z):
            z = z + h @ Wh
            i, f, o = (jax.nn.sigmoid(z[:, k * n : (k + 1) * n]) for k in (0, 1, 3))
            g = jnp.tanh(z[:, 2 * n : 3 * n])
            c_new = f * c + i * g
            return o * jnp.tanh(c_new), c_new, jnp.concatenate([i, f, g, o], axis=1)

        if mask is None:

            def step(carry, z):
                h, c, gates = cell(*carry, z)
                return (h, c), (h, c, gates)

            _, (hs, cs, gs) = lax.scan(step, (zeros, zeros), zx)
        else:

            def step(carry, inp):
                z, m = inp
                h, c, gates = cell(*carry, z)
                h, c = jnp.where(m, h, carry[0]), jnp.where(m, c, carry[1])
                return (h, c), (h, c, gates)

            _, (hs, cs, gs) = lax.scan(
                step, (zeros, zeros), (zx, jnp.swapaxes(mask, 0, 1)[:, :, None])
            )
        hs_b, cs_b, gs_b = (jnp.swapaxes(a, 0, 1) for a in (hs, cs, gs))
        return self._output(hs_b, mask), {
            "x": xs,
            "mask": mask,
            "h": hs_b,
            "c": cs_b,
            "gates": gs_b,
        }

    def _deltas(self, params, cache, dy):
        """Backpropagation through time: ``(xs, hs, δ, h_0)`` with ``hs`` and the per-step
        gate deltas ``δ_t = ∂L/∂z_t`` time-major (``(T, batch, 4·features)``; zero at padding)."""
        xs, mask, hs_b = cache["x"], cache["mask"], cache["h"]
        dtype, n = hs_b.dtype, self.features
        WhT = self.feedback(params, cache, "W_h").T.astype(dtype)  # W_hᵀ for rule="bp"
        g_T, dys = self._seed(dy, hs_b, dtype)
        zeros = jnp.zeros(hs_b[:, 0].shape, dtype)
        cs = jnp.swapaxes(cache["c"], 0, 1)
        c_prev = jnp.concatenate([zeros[None], cs[:-1]], axis=0)
        ms = None if mask is None else jnp.swapaxes(mask, 0, 1)[:, :, None]

        def step(carry, inp):
            dh_next, dc_next = carry
            gates, c, cp, dy_t, m = inp
            i, f, g, o = (gates[:, k * n : (k + 1) * n] for k in range(4))
            gh = dh_next if dy_t is None else dh_next + dy_t  # ∂L/∂h_t
            tc = jnp.tanh(c)
            gc = dc_next + gh * o * (1 - tc * tc)  # ∂L/∂c_t
            dz = jnp.concatenate(
                [
                    gc * g * i * (1 - i),
                    gc * cp * f * (1 - f),
                    gc * i * (1 - g * g),
                    gh * tc * o * (1 - o),
                ],
                axis=1,
            )
            if m is None:
                return (dz @ WhT, gc * f), dz
            dz = jnp.where(m, dz, 0)
            return (dz @ WhT + jnp.where(m, 0, gh), jnp.where(m, gc * f, dc_next)), dz

        _, dzs = lax.scan(
            step,
            (g_T, zeros),
            (jnp.swapaxes(cache["gates"], 0, 1), cs, c_prev, dys, ms),
            reverse=True,
        )
        return xs, jnp.swapaxes(hs_b, 0, 1), dzs, zeros
