"""Multi-head self-attention with a hand-written backward (dense, or blockwise over query and
key blocks in the FlashAttention style), and the pre-LayerNorm Transformer block.

Notation, per example and head (``T`` positions, head size ``d``, ``s = 1/√d``)::

    Q = x W_q + b_q     K = x W_k + b_k     V = x W_v + b_v         (split into heads)
    S = s Q Kᵀ          P = softmax_rows(S + mask)                  O = P V
    y = concat_heads(O) W_o + b_o

Backward, with ``dO = ∂L/∂O`` (from ``dy W_oᵀ``)::

    dV = Pᵀ dO          dP = dO Vᵀ          dS = P ⊙ (dP − rowsum(dP ⊙ P))
    dQ = s dS K         dK = s dSᵀ Q

then the projections, which are ``Dense`` layers on the extra axes ``(batch, T)``:
``∂L/∂W_q = Σ_{batch,T} xᵀ dQ``, ``∂L/∂b_q = Σ dQ``, and
``∂L/∂x = dQ W_qᵀ + dK W_kᵀ + dV W_vᵀ`` (likewise ``∂L/∂W_o = Σ Oᵀ dy``, ``∂L/∂b_o = Σ dy``).

**Blockwise** (``block_size=k``): queries and keys are both cut into ``n = ⌈T/k⌉`` blocks
of ``k`` positions (``Q_i``, ``K_j``, ``V_j``; ``k`` is capped at ``T``, and when it does
not divide ``T`` the last block is padded with masked positions), and one ``lax.scan``
walks the ``(query block i, key block j)`` pairs, so no ``T × T`` matrix is ever formed:
each step works on one ``k × k`` block ``S_ij = s Q_i K_jᵀ`` per head, and the memory is
``O(T)`` (the per-row state below and the outputs). With ``causal=True`` only the pairs
``j ≤ i`` are visited, ``n(n+1)/2`` of the ``n²``: key blocks wholly in query block ``i``'s
future are skipped, not masked, so causal attention does about half the work (among the
visited blocks the causal mask removes entries only on the diagonal, ``j = i``).

The forward keeps, per query row, a running max ``m``, normaliser ``ℓ`` and unnormalised
output ``A`` (the online softmax; ``m = −∞, ℓ = 0, A = 0`` at the start), and updates the
rows of block ``i`` at pair ``(i, j)``::

    m' = max(m, rowmax S_ij)     P̃_ij = exp(S_ij − m')     α = exp(m − m')
    ℓ' = α ℓ + rowsum P̃_ij       A' = α A + P̃_ij V_j
    O = A / ℓ                    L = m + log ℓ               (the row's log-sum-exp)

and caches only ``O`` and ``L`` (with the projected ``Q, K, V`` and the input). The
backward walks the same pairs key block by key block, recomputes each block of
probabilities from ``L`` and uses ``D = rowsum(dO ⊙ O)``, which equals ``rowsum(dP ⊙ P)``
because ``O = P V``::

    P_ij = exp(S_ij − L_i)       dV_j += P_ijᵀ dO_i       dS_ij = P_ij ⊙ (dO_i V_jᵀ − D_i)
    dQ_i += s dS_ij K_j          dK_j += s dS_ijᵀ Q_i

so ``dK_j``, ``dV_j`` sum over the query blocks that see key block ``j`` (``i ≥ j`` when
causal), and ``dQ_i`` over the key blocks query block ``i`` sees. Rows with no allowed key
(padding) keep ``ℓ = 0``: ``O = 0``, ``L = 0``, and ``P_ij = exp(−∞ − 0) = 0``.

**Masks.** Input ``(batch, T, features)`` or ``Masked(values, mask)`` (see
:mod:`jbp.layers.masking`): padded keys get no weight, padded query rows output zeros, and
the output is ``Masked`` again with the same mask. ``causal=True`` lets position ``t``
attend to keys ``≤ t`` only. A row with no key left (a padded query) gets ``P = 0``, never
NaN; its output and its gradients are zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jbp import initializers
from jbp.core import Array, Layer, PyTree, Sequential, layer_error
from jbp.layers import _per_example as _pe
from jbp.layers._window import _positive_int
from jbp.layers.activations import GELU
from jbp.layers.dense import Dense
from jbp.layers.masking import Masked, cotangent_values, split_masked
from jbp.layers.normalization import LayerNorm
from jbp.layers.residual import PositionWise, Residual

__all__ = ["MultiHeadAttention", "transformer_block"]

_NAMES = ("q", "k", "v")


def _allowed(q_mask, k_mask, q_pos, k_pos, causal):
    """Which (query, key) pairs may attend, broadcastable to ``(batch, heads, Tq, Tk)``;
    ``None`` when all may. ``q_mask``/``k_mask``: ``(batch, T)`` bool or ``None``;
    ``q_pos``/``k_pos``: positions ``(Tq,)``/``(Tk,)``, used when ``causal``."""
    allowed = None
    if k_mask is not None:
        allowed = k_mask[:, None, None, :]
    if q_mask is not None:
        q = q_mask[:, None, :, None]
        allowed = q if allowed is None else allowed & q
    if causal:
        c = (k_pos[None, :] <= q_pos[:, None])[None, None]
        allowed = c if allowed is None else allowed & c
    return allowed


def _scores(q, k, scale, allowed):
    """``S = s Q Kᵀ`` per head, ``(batch, heads, Tq, Tk)``; −∞ where not allowed."""
    s = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    return s if allowed is None else jnp.where(allowed, s, -jnp.inf)


def _finite(m):
    """A row max of ``−∞`` (nothing allowed yet) becomes 0, so ``exp(S − m)`` stays 0, not NaN."""
    return jnp.where(m == -jnp.inf, 0, m)


def _to_blocks(a, blk, nb):
    """``(batch, T, H, d) → (n, batch, H, b, d)``, zero-padded to ``n·b`` positions."""
    B, T = a.shape[:2]
    a = jnp.pad(a, ((0, 0), (0, nb * blk - T), (0, 0), (0, 0)))
    return jnp.transpose(a.reshape(B, nb, blk, *a.shape[2:]), (1, 0, 3, 2, 4))


def _from_blocks(a, T):
    """``(n, batch, H, b, d) → (batch, T, H, d)``, the padding dropped."""
    nb, B, H, blk, d = a.shape
    return jnp.transpose(a, (1, 0, 3, 2, 4)).reshape(B, nb * blk, H, d)[:, :T]


def _stats_to_blocks(a, blk, nb):
    """Per-row statistics ``(batch, H, T) → (n, batch, H, b)``, zero-padded."""
    B, H, T = a.shape
    a = jnp.pad(a, ((0, 0), (0, 0), (0, nb * blk - T)))
    return jnp.moveaxis(a.reshape(B, H, nb, blk), 2, 0)


def _stats_from_blocks(a, T):
    """``(n, batch, H, b) → (batch, H, T)``."""
    nb, B, H, blk = a.shape
    return jnp.moveaxis(a, 0, 2).reshape(B, H, nb * blk)[..., :T]


def _at(blocks, i):
    """Block ``i`` (traced) of blocks stacked on the leading axis."""
    return lax.dynamic_index_in_dim(blocks, i, 0, keepdims=False)


def _put(blocks, value, i):
    """``blocks`` with block ``i`` (traced) replaced by ``value`` (in place under jit)."""
    return lax.dynamic_update_index_in_dim(blocks, value, i, 0)


def _block_scores(qb, kb, mb, i, j, blk, pos, scale, causal):
    """``S_ij = s Q_i K_jᵀ``, ``(batch, H, b, b)``, −∞ where not allowed (padding, and the
    future within a diagonal block when ``causal``)."""
    s = jnp.einsum("bhtd,bhsd->bhts", _at(qb, i), _at(kb, j)) * scale
    qm = km = None
    if mb is not None:
        qm, km = _at(mb, i), _at(mb, j)
    allowed = _allowed(qm, km, i * blk + pos, j * blk + pos, causal)
    return s if allowed is None else jnp.where(allowed, s, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Multi-head self-attention, ``(batch, T, features) → (batch, T, features)``.

    The equations (forward, dense backward, blockwise forward and backward) are in the
    module docstring of :mod:`jbp.layers.attention`. Heads are split from the projected last
    axis in order (head ``h`` is columns ``h·d … (h+1)·d − 1``); scores are scaled by
    ``1/√d``.

    Args:
      num_heads: number of heads ``H`` (positive).
      head_dim: size ``d`` of each head; default ``features // num_heads`` (then
        ``features`` must be divisible by ``num_heads``).
      causal: position ``t`` attends to keys ``≤ t`` only.
      block_size: ``None`` for the dense path (caches ``P``, ``(batch, H, T, T)``), or a
        positive ``k``: blockwise over ``k × k`` blocks of (queries, keys), caching ``O``
        and the log-sum-exp ``L`` only, in ``O(T)`` memory; with ``causal`` the key blocks
        wholly in the future are skipped. ``k`` need not divide ``T``.
      use_bias: add ``b_q, b_k, b_v, b_o``.
      w_init: initializer (object or name) of the weights; default Glorot-uniform.
      b_init: initializer (object or name) of the biases; default zeros.

    ``params = {"Wq", "Wk", "Wv": (features, H·d), "Wo": (H·d, features), "bq", "bk", "bv":
    (H·d,), "bo": (features,)}`` (no biases when ``use_bias=False``). ``cache = {"x", "mask",
    "q", "k", "v", "o"}`` plus ``"P"`` (dense) or ``"L"`` (blockwise), all batch-first
    (``q, k, v, o``: ``(batch, T, H, d)``).
    """

    num_heads: int
    head_dim: int | None = None
    causal: bool = False
    block_size: int | None = None
    use_bias: bool = True
    w_init: Any = "glorot_uniform"
    b_init: Any = "zeros"

    def __post_init__(self):
        if not _positive_int(self.num_heads):
            raise ValueError(
                f"MultiHeadAttention: num_heads must be a positive integer, got {self.num_heads!r}"
            )
        if self.head_dim is not None and not _positive_int(self.head_dim):
            raise ValueError(
                f"MultiHeadAttention: head_dim must be None or a positive integer, "
                f"got {self.head_dim!r}"
            )
        if self.block_size is not None and not _positive_int(self.block_size):
            raise ValueError(
                f"MultiHeadAttention: block_size must be None or a positive integer, "
                f"got {self.block_size!r}"
            )
        for name in ("causal", "use_bias"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"MultiHeadAttention: {name} must be a bool, got {getattr(self, name)!r}"
                )
        initializers.get(self.w_init)
        initializers.get(self.b_init)

    # --- shapes and checks ------------------------------------------------------------
    def _head_dim(self, features):
        if self.head_dim is not None:
            return self.head_dim
        if features % self.num_heads:
            raise layer_error(
                self,
                f"features = {features} is not divisible by num_heads = "
                f"{self.num_heads}; pass head_dim explicitly",
            )
        return features // self.num_heads

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 2 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (time, features) without the batch axis, got {in_shape}",
            )
        f = in_shape[1]
        hd = self.num_heads * self._head_dim(f)
        w, b = initializers.get(self.w_init), initializers.get(self.b_init)
        keys = jax.random.split(key, 4)
        params = {f"W{n}": w(kk, (f, hd)) for n, kk in zip(_NAMES, keys)}
        params["Wo"] = w(keys[3], (hd, f))
        if self.use_bias:
            params.update({f"b{n}": b(kk, (hd,)) for n, kk in zip(_NAMES, keys)})
            params["bo"] = b(keys[3], (f,))
        return params, in_shape

    def _check_params(self, params):
        want = {"Wq", "Wk", "Wv", "Wo"} | ({"bq", "bk", "bv", "bo"} if self.use_bias else set())
        if not isinstance(params, dict) or set(params) != want:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise layer_error(
                self,
                f"expected params with keys {sorted(want)}, got {got}; were "
                f"they made by this layer's init?",
            )
        f, hd = params["Wq"].shape
        if self.head_dim is not None and hd != self.num_heads * self.head_dim:
            raise layer_error(
                self,
                f"params['Wq'] has {hd} columns, expected num_heads · head_dim "
                f"= {self.num_heads * self.head_dim}",
            )
        if hd % self.num_heads:
            raise layer_error(
                self,
                f"params['Wq'] has {hd} columns, not divisible by num_heads = {self.num_heads}",
            )
        shapes = {
            "Wk": (f, hd),
            "Wv": (f, hd),
            "Wo": (hd, f),
            "bq": (hd,),
            "bk": (hd,),
            "bv": (hd,),
            "bo": (f,),
        }
        for name, shape in shapes.items():
            if name in params and params[name].shape != shape:
                raise layer_error(
                    self,
                    f"params['{name}'] has shape {params[name].shape}, expected "
                    f"{shape} to match params['Wq'] {(f, hd)}",
                )

    def _inputs(self, params, x):
        xs, mask = split_masked(self, x, rank=3)
        self._check_params(params)
        f = params["Wq"].shape[0]
        if xs.shape[2] != f or xs.shape[1] == 0:
            raise layer_error(
                self,
                f"expected input of shape (batch, time ≥ 1, {f}) (features from "
                f"params['Wq'] of shape {params['Wq'].shape}), got {xs.shape}",
            )
        return xs, mask

    # --- forward ----------------------------------------------------------------------
    def forward(  # type: ignore[override]  # a Masked input gives a Masked output
        self,
        params: PyTree,
        x: Array | Masked,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array | Masked, PyTree]:
        xs, mask = self._inputs(params, x)
        dtype = jnp.result_type(xs.dtype, params["Wq"].dtype)
        B, T, _ = xs.shape
        hd = params["Wq"].shape[1]
        H, d = self.num_heads, hd // self.num_heads
        x_c = xs.astype(dtype)

        def project(n):
            z = jnp.matmul(x_c, params[f"W{n}"].astype(dtype))
            if self.use_bias:
                z = z + params[f"b{n}"].astype(dtype)
            return z.reshape(B, T, H, d)

        q, k, v = (project(n) for n in _NAMES)
        if self.block_size is None:
            o, core = self._dense_forward(q, k, v, mask)
        else:
            o, core = self._block_forward(q, k, v, mask)
        y = jnp.matmul(o.reshape(B, T, hd), params["Wo"].astype(dtype))
        if self.use_bias:
            y = y + params["bo"].astype(dtype)
        if mask is not None:
            y = jnp.where(mask[:, :, None], y, 0)
        cache = {"x": xs, "mask": mask, "q": q, "k": k, "v": v, "o": o, **core}
        return (y if mask is None else Masked(y, mask)), cache

    def _dense_forward(self, q, k, v, mask):
        """``P = softmax(s Q Kᵀ + mask)``, ``O = P V``; caches ``P``."""
        T = q.shape[1]
        pos = jnp.arange(T)
        s = _scores(q, k, 1 / math.sqrt(q.shape[-1]), _allowed(mask, mask, pos, pos, self.causal))
        e = jnp.exp(s - lax.stop_gradient(_finite(jnp.max(s, axis=-1, keepdims=True))))
        l = jnp.sum(e, axis=-1, keepdims=True)
        p = e / jnp.where(l > 0, l, 1)
        return jnp.einsum("bhts,bshd->bthd", p, v), {"P": p}

    def _block_layout(self, q, mask):
        """The blocking of a sequence of ``T``: block size ``b = min(k, T)``, ``n = ⌈T/b⌉``
        blocks, and the padding mask cut into blocks, ``(n, batch, b)`` (``None`` when no
        position is masked: no padding mask and ``b`` divides ``T``)."""
        B, T = q.shape[:2]
        blk = min(self.block_size, T)
        nb = -(-T // blk)
        pad = nb * blk - T
        if mask is None and not pad:
            return blk, nb, None
        base = jnp.ones((B, T), bool) if mask is None else mask
        mb = jnp.pad(base, ((0, 0), (0, pad)), constant_values=False)
        return blk, nb, jnp.moveaxis(mb.reshape(B, nb, blk), 1, 0)

    def _block_pairs(self, nb, key_major):
        """The visited ``(i, j)`` = (query block, key block) pairs in visiting order, as two
        int32 arrays: query block by query block (the forward) or, with ``key_major``, key
        block by key block (the backward). With ``causal`` only ``j ≤ i`` is listed: the
        ``n(n−1)/2`` pairs wholly in the future are never visited."""
        if self.causal:  # row-major (outer, inner) with j ≤ i
            outer, inner = np.triu_indices(nb) if key_major else np.tril_indices(nb)
        else:
            outer, inner = np.divmod(np.arange(nb * nb), nb)
        i, j = (inner, outer) if key_major else (outer, inner)
        return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)

    def _block_forward(self, q, k, v, mask):
        """Online softmax over ``(query block, key block)`` pairs (module docstring);
        caches ``L``, not ``P``."""
        B, T, H, d = q.shape
        scale = 1 / math.sqrt(d)
        blk, nb, mb = self._block_layout(q, mask)
        qb, kb, vb = (_to_blocks(a, blk, nb) for a in (q, k, v))  # (n, B, H, b, d)
        pos = jnp.arange(blk)

        def step(state, ij):
            i, j = ij
            m_all, l_all, a_all = state  # the running m, ℓ, A of every query row
            m, l, acc = _at(m_all, i), _at(l_all, i), _at(a_all, i)
            s = _block_scores(qb, kb, mb, i, j, blk, pos, scale, self.causal)
            m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(s, axis=-1)))
            m_fin = _finite(m_new)
            p = jnp.exp(s - m_fin[..., None])
            alpha = jnp.exp(m - m_fin)
            l = alpha * l + jnp.sum(p, axis=-1)
            acc = alpha[..., None] * acc + jnp.einsum("bhts,bhsd->bhtd", p, _at(vb, j))
            return (_put(m_all, m_new, i), _put(l_all, l, i), _put(a_all, acc, i)), None

        rows = jnp.zeros((nb, B, H, blk), q.dtype)
        init = (rows - jnp.inf, rows, jnp.zeros_like(qb))
        (m, l, acc), _ = lax.scan(step, init, self._block_pairs(nb, key_major=False))
        has = l > 0
        l1 = jnp.where(has, l, 1)
        o = _from_blocks(acc / l1[..., None], T)
        lse = jnp.where(has, _finite(m) + jnp.log(l1), 0)
        return o, {"L": _stats_from_blocks(lse, T)}

    # --- backward ---------------------------------------------------------------------
    def _projection_deltas(self, params, cache, dy):
        """The four projections as ``Dense`` layers on extra axes: ``{name: (a, δ)}`` with
        ``a`` the projection's input and ``δ`` the delta at its output, both
        ``(batch, T, ·)``: ``"o": (O, dy)``, ``"q": (x, dQ)``, ``"k": (x, dK)``,
        ``"v": (x, dV)``. Examples never mix, so for a per-example ``dy`` (row ``i`` = the
        delta of example ``i``'s own loss) every ``δ`` is per example too."""
        xs, mask, o = cache["x"], cache["mask"], cache["o"]
        B, T, H, d = o.shape
        dtype = o.dtype
        dy = cotangent_values(dy).astype(dtype)
        if mask is not None:
            dy = jnp.where(mask[:, :, None], dy, 0)
        do = jnp.matmul(dy, params["Wo"].T.astype(dtype)).reshape(B, T, H, d)
        if "P" in cache:
            dq, dk, dv = self._dense_backward(cache, do)
        else:
            dq, dk, dv = self._block_backward(cache, do)
        x_c = xs.astype(dtype)
        out = {"o": (o.reshape(B, T, H * d), dy)}
        for n, dz in zip(_NAMES, (dq, dk, dv)):
            out[n] = (x_c, dz.reshape(B, T, H * d))
        return out

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        """Output projection, attention core (dense or blockwise), input projections."""
        xs = cache["x"]
        deltas = self._projection_deltas(params, cache, dy)
        grads = {}
        dx = jnp.zeros(xs.shape, deltas["o"][1].dtype)
        for n, (a, dz) in deltas.items():
            grads[f"W{n}"] = jnp.einsum("btf,btk->fk", a, dz)
            if self.use_bias:
                grads[f"b{n}"] = jnp.sum(dz, axis=(0, 1))
            if n != "o":
                dx = dx + jnp.matmul(dz, params[f"W{n}"].T.astype(dz.dtype))
        grads = {name: g.astype(params[name].dtype) for name, g in grads.items()}
        return grads, dx.astype(xs.dtype)

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # Each projection is a Dense on the extra axis T: with ``(a, δ)`` from
    # ``_projection_deltas`` (``dy`` per example), ``∂ℓᵢ/∂W = Σₜ aᵢₜᵀ δᵢₜ`` and
    # ``∂ℓᵢ/∂b = Σₜ δᵢₜ``, computed by the helpers Dense uses (jbp.layers._per_example).

    def _closed_form(self, params, cache, dy, w_fn, b_fn):
        out = {}
        for n, (a, dz) in self._projection_deltas(params, cache, dy).items():
            out[f"W{n}"] = w_fn(a, dz)
            if self.use_bias:
                out[f"b{n}"] = b_fn(_pe.bias_grads(dz))
        return {name: g.astype(params[name].dtype) for name, g in out.items()}

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``∂ℓᵢ/∂W = Σₜ aᵢₜᵀ δᵢₜ`` ``(n, in, out)`` and ``∂ℓᵢ/∂b = Σₜ δᵢₜ`` ``(n, out)`` for
        each projection ``q, k, v, o``."""
        return self._closed_form(params, cache, dy, _pe.outer_grads, lambda g: g)

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖∂ℓᵢ/∂W‖²`` per example and projection without forming ``∂ℓᵢ/∂W`` when the Gram
        form ``Σₜₛ (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` is cheaper (``2T² ≤ in·out``,
        :func:`jbp.layers._per_example.use_gram`); ``‖Σₜ δᵢₜ‖²`` for the biases."""
        return self._closed_form(
            params, cache, dy, _pe.outer_sq_norms, lambda g: jnp.sum(jnp.square(g), axis=1)
        )

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ (∂ℓᵢ/∂W)²`` and ``Σᵢ (∂ℓᵢ/∂b)²`` elementwise, per projection."""
        return self._closed_form(
            params, cache, dy, _pe.outer_sum_sq, lambda g: jnp.sum(jnp.square(g), axis=0)
        )

    @staticmethod
    def _dense_backward(cache, do):
        """``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dS = P ⊙ (dP − rowsum(dP ⊙ P))``,
        ``dQ = s dS K``, ``dK = s dSᵀ Q``."""
        p, q, k, v = cache["P"], cache["q"], cache["k"], cache["v"]
        scale = 1 / math.sqrt(q.shape[-1])
        dv = jnp.einsum("bhts,bthd->bshd", p, do)
        dp = jnp.einsum("bthd,bshd->bhts", do, v)
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
        dq = jnp.einsum("bhts,bshd->bthd", ds, k) * scale
        dk = jnp.einsum("bhts,bthd->bshd", ds, q) * scale
        return dq, dk, dv

    def _block_backward(self, cache, do):
        """Over the same ``(i, j)`` pairs, key block by key block: ``P_ij = exp(S_ij − L_i)``,
        ``dV_j += P_ijᵀ dO_i``, ``dS_ij = P_ij ⊙ (dO_i V_jᵀ − D_i)`` with
        ``D = rowsum(dO ⊙ O)``, ``dK_j += dS_ijᵀ Q_i``, ``dQ_i += dS_ij K_j`` (then the
        factor ``s`` on ``dQ`` and ``dK``)."""
        q, k, v, o, lse, mask = (cache[n] for n in ("q", "k", "v", "o", "L", "mask"))
        B, T, H, d = q.shape
        blk, nb, mb = self._block_layout(q, mask)
        qb, kb, vb, dob = (_to_blocks(a, blk, nb) for a in (q, k, v, do))
        lb = _stats_to_blocks(lse, blk, nb)
        db = _stats_to_blocks(jnp.einsum("bthd,bthd->bht", do, o), blk, nb)
        pos = jnp.arange(blk)

        def step(grads, ij):
            i, j = ij
            dqb, dkb, dvb = grads
            s = _block_scores(qb, kb, mb, i, j, blk, pos, 1 / math.sqrt(d), self.causal)
            p = jnp.exp(s - _at(lb, i)[..., None])
            do_i = _at(dob, i)
            ds = p * (jnp.einsum("bhtd,bhsd->bhts", do_i, _at(vb, j)) - _at(db, i)[..., None])
            dv = _at(dvb, j) + jnp.einsum("bhts,bhtd->bhsd", p, do_i)
            dk = _at(dkb, j) + jnp.einsum("bhts,bhtd->bhsd", ds, _at(qb, i))
            dq = _at(dqb, i) + jnp.einsum("bhts,bhsd->bhtd", ds, _at(kb, j))
            return (_put(dqb, dq, i), _put(dkb, dk, j), _put(dvb, dv, j)), None

        zeros = jnp.zeros_like(qb)
        (dqb, dkb, dvb), _ = lax.scan(
            step, (zeros, zeros, zeros), self._block_pairs(nb, key_major=True)
        )
        scale = 1 / math.sqrt(d)
        return _from_blocks(dqb, T) * scale, _from_blocks(dkb, T) * scale, _from_blocks(dvb, T)


def transformer_block(
    features: int,
    num_heads: int,
    mlp_hidden: int,
    *,
    causal: bool = False,
    block_size: int | None = None,
) -> Sequential:
    """A pre-LayerNorm Transformer block, ``(batch, T, features) → (batch, T, features)``::

        x = x + MultiHeadAttention(LayerNorm(x))
        x = x + Dense(features)(GELU(Dense(mlp_hidden)(LayerNorm(x))))

    It is the composition (all backward passes are the layers' own)::

        Sequential([
            Residual(Sequential([PositionWise(LayerNorm()),
                                 MultiHeadAttention(num_heads, causal=causal,
                                                    block_size=block_size)])),
            Residual(PositionWise(Sequential([LayerNorm(), Dense(mlp_hidden), GELU(),
                                              Dense(features)]))),
        ])

    ``PositionWise`` hands a padding mask (``Masked`` input, e.g. from
    ``Embedding(pad_id=...)``) past the position-wise layers to the attention, which uses
    it; with a plain array input it changes nothing.

    Args:
      features: the model width (input and output features).
      num_heads: attention heads; ``features`` must be divisible by it.
      mlp_hidden: hidden width of the position-wise MLP.
      causal: causal attention (each position sees itself and the past).
      block_size: blockwise attention over (query, key) blocks of this size (``None``:
        dense).
    """
    for name, v in (("features", features), ("num_heads", num_heads), ("mlp_hidden", mlp_hidden)):
        if not _positive_int(v):
            raise ValueError(f"transformer_block: {name} must be a positive integer, got {v!r}")
    if features % num_heads:
        raise ValueError(
            f"transformer_block: features = {features} is not divisible by num_heads = {num_heads}"
        )
    attention = MultiHeadAttention(num_heads, causal=causal, block_size=block_size)
    mlp = Sequential([LayerNorm(), Dense(mlp_hidden), GELU(), Dense(features)])
    return Sequential(
        [
            Residual(Sequential([PositionWise(LayerNorm()), attention])),
            Residual(PositionWise(mlp)),
        ]
    )
