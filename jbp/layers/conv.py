"""The 2-D convolution, with its backward written as two more convolutions (on XLA CPU the
kernel gradient as a product on the patches)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jbp import initializers
from jbp.core import Array, PyTree, check_array, check_floating, layer_error
from jbp.layers import _per_example as _pe
from jbp.layers import _window
from jbp.layers._feedback import RuleLayer, rule_field, seed_field

__all__ = ["Conv2D"]

_FORWARD_DN = ("NHWC", "HWIO", "NHWC")
# dx: the delta is the "image", the kernel with its in/out axes swapped is the filter. The
# swap is an explicit transpose to HWIO rather than the dimension numbers HWOI: inside a
# ``lax.scan`` (``fit``'s compiled epoch) XLA CPU ran the HWOI convolution 33× slower than
# the same one on an HWIO kernel (1.5 s vs 48 ms for 20 steps of the 16 -> 32 layer of
# bench/layers.py's CNN at batch 256); outside a loop the two run alike.
# dW: the batch axis is contracted (plays the role of channels) and the input channels
# play the role of the batch; the result comes out directly in HWIO.
_KERNEL_GRAD_DN = ("CHWN", "IHWO", "HWNC")


def _kernel_grad_by_patches() -> bool:
    """Whether ``Conv2D``'s kernel gradient is taken as a product on the patches (XLA CPU,
    where the convolution form ran 1.7–2.8× slower, and 40× slower inside ``lax.scan``)
    rather than as one convolution (GPU/TPU, not measured here: cuDNN's and XLA TPU's own
    kernel-gradient convolutions)."""
    return jax.default_backend() == "cpu"


@dataclasses.dataclass(frozen=True, repr=False)
class Conv2D(RuleLayer):
    """2-D convolution (cross-correlation, as in every deep-learning library) on NHWC input.

    Input ``x`` of shape ``(batch, H, W, C)``, kernel ``K`` of shape ``(kh, kw, C, F)``
    (HWIO), strides ``s``, dilation ``d``, padding ``(lo, hi)`` per spatial axis; write
    ``x̃`` for the zero-padded input. Forward, for every output position ``(p, q)``::

        z[n, p, q, f] = Σ_{i, j, c} x̃[n, p·s_h + i·d_h, q·s_w + j·d_w, c] · K[i, j, c, f] + b[f]

    Backward, given ``δ = ∂L/∂z`` of shape ``(batch, Ho, Wo, F)``::

        ∂L/∂K[i, j, c, f] = Σ_{n, p, q} x̃[n, p·s_h + i·d_h, q·s_w + j·d_w, c] · δ[n, p, q, f]
            — a correlation of the input with the delta: the delta is the filter, dilated
              by the strides (rhs_dilation = s), slid with step d over the input
              (window_strides = d), the batch axis contracted (dimension numbers
              CHWN / IHWO -> HWNC).
        ∂L/∂b[f] = Σ_{n, p, q} δ[n, p, q, f]
        ∂L/∂x = δ ⋆ rot180(K)ᵀ
            — a transposed convolution: δ dilated by the strides (lhs_dilation = s,
              i.e. s − 1 zeros between entries), padded by ``k_eff − 1 − lo`` before and
              ``k_eff − 1 − hi + r`` after, convolved (stride 1, rhs_dilation = d) with the
              kernel flipped in both spatial axes and its in/out channels swapped
              (transposed to HWIO).
              ``k_eff = (k − 1)·d + 1``; ``r = (H + lo + hi − k_eff) mod s`` counts the
              bottom/right input rows that no window reached: their gradient is zero.

    All three are ``lax.conv_general_dilated`` calls; no ``jax.vjp``. On XLA CPU the kernel
    gradient is instead the same sum written as a matrix product, ``δᵀ A`` with the patches
    ``A`` (``(n·Ho·Wo, kh·kw·C)``), taken in chunks of examples
    (:meth:`_kernel_correlation`): XLA CPU runs the convolution form 1.7–2.8× slower.

    Per-example extensions (``jbp.extensions``; closed forms below ``backward``): with
    ``T = Ho·Wo`` output positions, the patch ``aᵢₜ`` (``d = kh·kw·C`` input pixels under
    the window at ``t``) and ``δᵢₜ`` (``p = F``), example ``i``'s kernel gradient is
    ``Gᵢ = Σ_t aᵢₜᵀ δᵢₜ`` and its bias gradient ``Σ_t δᵢₜ``. ``Gᵢ`` for every example at once
    is one batched matrix product of the patches ``(n, T, d)`` with the delta ``(n, T, p)``;
    the patches are the strided slices of the padded input that each kernel offset sees at
    every output position, side by side (``batch_grad``, ``sum_grad_squared``).
    ``batch_l2`` uses the Gram form ``‖Gᵢ‖² = Σ_{t,s} (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` while
    ``2T² ≤ d·p`` (small feature maps, wide layers: two ``T × T`` matrices per example are
    smaller than ``Gᵢ``) and ``Σ Gᵢ²`` otherwise (large maps, narrow layers); the switch is
    per layer, from static shapes (:func:`jbp.layers._per_example.use_gram`). The patch Gram
    is the sum over kernel offsets of the Grams of the slices, so there the patches are
    never stacked. Slices measured 2–4× faster on CPU than
    ``lax.conv_general_dilated_patches`` (a convolution with a ``d × d`` identity kernel);
    inside the CNN of ``bench/dp.py`` (CPU, batch 256) the batched product on the patches
    made ``batch_l2`` about 1.7× faster than the per-example kernel correlation as one
    grouped convolution (``feature_group_count = n``, which also needs a transpose of the
    delta that XLA fuses with the max-pool backward producing it) and than ``vmap`` of the
    kernel correlation. ``scaled_grad_sum`` (DP-SGD's clipped sum, ``Σᵢ sᵢ Gᵢ``) weights
    the same ``Gᵢ``, which XLA computes once for both.

    Args:
      features: number of output channels ``F``.
      kernel_size: ``k`` or ``(kh, kw)``.
      strides: ``s`` or ``(sh, sw)`` (default 1).
      padding: ``"SAME"`` (default; output ``ceil(H / s)``), ``"VALID"``, an int, a pair
        ``(ph, pw)`` or ``((top, bottom), (left, right))``.
      dilation: ``d`` or ``(dh, dw)`` (default 1; "atrous" convolution).
      use_bias: add ``b`` (default True).
      w_init: initializer or name of the kernel; default Glorot-uniform (fans of an HWIO
        kernel: ``fan_in = kh·kw·C``, ``fan_out = kh·kw·F``), as for ``Dense``. For deep
        ReLU networks ``w_init="he_normal"`` is the usual choice.
      b_init: initializer or name of the bias; default zeros.

      rule: the backward rule (default ``"bp"``): ``"fa"``, ``"sign"`` or
        ``"kolen_pollack"`` put a feedback kernel ``B`` (shape of ``K``) in place of ``K``
        in ``∂L/∂x`` only; ``∂L/∂K`` and ``∂L/∂b`` keep their form. See
        :mod:`jbp.layers._feedback`.
      feedback_seed: seed of feedback alignment's fixed ``B`` (``rule="fa"``).

    ``params = {"W": (kh, kw, C, F), "b": (F,)}``; ``cache = {"x": x}``.
    """

    features: int
    kernel_size: Any
    strides: Any = 1
    padding: Any = "SAME"
    dilation: Any = 1
    use_bias: bool = True
    w_init: Any = "glorot_uniform"
    b_init: Any = "zeros"
    rule: str = rule_field()
    feedback_seed: int = seed_field()

    def __post_init__(self):
        if not _window._positive_int(self.features):
            raise ValueError(f"Conv2D: features must be a positive integer, got {self.features!r}")
        object.__setattr__(
            self, "kernel_size", _window.pair(self.kernel_size, "kernel_size", "Conv2D")
        )
        object.__setattr__(self, "strides", _window.pair(self.strides, "strides", "Conv2D"))
        object.__setattr__(self, "dilation", _window.pair(self.dilation, "dilation", "Conv2D"))
        object.__setattr__(self, "padding", _window.padding_spec(self.padding, "Conv2D"))
        initializers.get(self.w_init)
        initializers.get(self.b_init)
        self.check_rule()

    # --- geometry -------------------------------------------------------------------
    def _geometry(self, size):
        k_eff = _window.effective(self.kernel_size, self.dilation)
        pads = _window.explicit_pads(self.padding, size, k_eff, self.strides)
        _window.check_fits(self, "kernel", size, pads, k_eff)
        return k_eff, pads

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 3 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (height, width, channels) without the "
                f"batch axis, got {in_shape}",
            )
        k_eff, pads = self._geometry(in_shape[:2])
        ho, wo = _window.out_size(in_shape[:2], pads, k_eff, self.strides)
        kh, kw = self.kernel_size
        params = {"W": initializers.get(self.w_init)(key, (kh, kw, in_shape[2], self.features))}
        if self.use_bias:
            params["b"] = initializers.get(self.b_init)(key, (self.features,))
        return self.rule_params(key, params), (ho, wo, self.features)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        W = params["W"]
        if x.ndim != 4:
            raise layer_error(
                self,
                f"expected NHWC input of rank 4 (batch, height, width, channels), "
                f"got shape {x.shape} (rank {x.ndim})",
            )
        if x.shape[-1] != W.shape[2]:
            raise layer_error(
                self,
                f"expected {W.shape[2]} input channels (kernel {W.shape}), got input "
                f"of shape {x.shape}",
            )
        _, pads = self._geometry(x.shape[1:3])
        dtype = jnp.result_type(x.dtype, W.dtype)
        z = lax.conv_general_dilated(
            x.astype(dtype),
            W.astype(dtype),
            self.strides,
            pads,
            rhs_dilation=self.dilation,
            dimension_numbers=_FORWARD_DN,
        )
        if self.use_bias:
            z = z + params["b"]
        return z, {"x": x}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x = cache["x"]
        W = params["W"]
        size = x.shape[1:3]
        k_eff, pads = self._geometry(size)
        # r: rows/columns at the bottom/right that no window reached (stride remainder).
        rem = [(n + lo + hi - k) % s for n, (lo, hi), k, s in zip(size, pads, k_eff, self.strides)]
        dtype = jnp.result_type(x.dtype, W.dtype, dy.dtype)
        xd, dyd = x.astype(dtype), dy.astype(dtype)
        Fd = self.feedback(params, cache, "W").astype(dtype)  # the kernel K itself for rule="bp"

        dW = self._kernel_correlation(xd, dyd)
        dx = lax.conv_general_dilated(
            dyd,
            jnp.swapaxes(Fd[::-1, ::-1], 2, 3),  # HWOI -> HWIO
            window_strides=(1, 1),
            padding=[(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(k_eff, pads, rem)],
            lhs_dilation=self.strides,
            rhs_dilation=self.dilation,
            dimension_numbers=_FORWARD_DN,
        )

        grads = {"W": dW.astype(W.dtype)}
        if self.use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2)).astype(params["b"].dtype)
        return self.rule_grads(grads), dx.astype(x.dtype)

    def _kernel_correlation(self, x, dy):
        """``∂L/∂K``: the correlation of the input with the delta (class docstring), summed
        over the batch, ``(kh, kw, C, F)``. ``x`` and ``dy`` share a dtype.

        On XLA CPU it is ``δᵀ A`` with the patches ``A`` (``(n·T, kh·kw·C)``, the offset
        slices of :meth:`_offset_slices` side by side), taken over chunks of examples whose
        patches fit in 8 MiB (:func:`jbp.layers._per_example.example_chunks`) and summed:
        ``python bench/conv_kernel_grad.py`` measured it 1.7–2.8× faster than XLA CPU's
        convolution on six layer shapes at batch 256 (7.2 vs 17.4 ms for the 16→32 layer of
        bench/layers.py's CNN), and inside ``lax.scan`` (``fit``'s epoch) the convolution
        form ran another 40× slower. Elsewhere it is one ``lax.conv_general_dilated``
        (dimension numbers CHWN / IHWO -> HWNC)."""
        if _kernel_grad_by_patches():
            n, ho, wo, f = dy.shape
            kh, kw = self.kernel_size
            k = kh * kw * x.shape[3]

            def part(xc, dc):
                m = xc.shape[0] * ho * wo
                a = jnp.stack(self._offset_slices(xc, (ho, wo)), axis=2).reshape(m, k)
                return dc.reshape(m, f).T @ a  # (F, kh·kw·C)

            chunks = _pe.example_chunks(n, self._patch_bytes(x, d=dy, bias_row=False))
            g = jnp.sum(_pe.over_chunks(part, chunks, x, dy), axis=0)
            return g.T.reshape(kh, kw, x.shape[3], f)
        size = x.shape[1:3]
        k_eff, pads = self._geometry(size)
        rem = [(m + lo + hi - k) % s for m, (lo, hi), k, s in zip(size, pads, k_eff, self.strides)]
        return lax.conv_general_dilated(
            x,
            dy,
            window_strides=self.dilation,
            padding=[(lo, hi - r) for (lo, hi), r in zip(pads, rem)],
            rhs_dilation=self.strides,
            dimension_numbers=_KERNEL_GRAD_DN,
        )

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # ``dy`` here is per example: row i is the delta of example i's own loss. The rule does
    # not change the parameter gradients; Kolen–Pollack's B gets K's (``rule_grads``).

    def _per_example_inputs(self, params, cache, dy):
        x, W = cache["x"], params["W"]
        dtype = jnp.result_type(x.dtype, W.dtype, dy.dtype)
        return x.astype(dtype), dy.astype(dtype)

    def _offset_slices(self, x, out, *, channels_first=False):
        """For each kernel offset ``(i, j)`` in row-major order, ``(n, T, C)``: the pixel of
        the padded input that offset sees at every output position (one strided slice).
        ``channels_first``: ``x`` is ``(n, C, H, W)`` and each slice ``(n, C, T)``."""
        sp = (2, 3) if channels_first else (1, 2)
        _, pads = self._geometry(tuple(x.shape[a] for a in sp))
        widths = [(0, 0)] * 4
        widths[sp[0]], widths[sp[1]] = tuple(pads[0]), tuple(pads[1])
        xp = jnp.pad(x, widths)
        (kh, kw), (dh, dw), n = self.kernel_size, self.dilation, x.shape[0]
        T = out[0] * out[1]
        if not channels_first:
            return [
                _window.strided_window(xp, (i * dh, j * dw), self.strides, out).reshape(
                    n, T, x.shape[3]
                )
                for i in range(kh)
                for j in range(kw)
            ]
        (sh, sw), c = self.strides, x.shape[1]
        return [
            lax.slice(
                xp,
                (0, 0, i * dh, j * dw),
                (n, c, i * dh + (out[0] - 1) * sh + 1, j * dw + (out[1] - 1) * sw + 1),
                (1, 1, sh, sw),
            ).reshape(n, c, T)
            for i in range(kh)
            for j in range(kw)
        ]

    def _per_example_product(self, x, d, *, bias_row=True):
        """``(n, kh·kw·C [+ 1], F)``: every example's own ``Σ_t aᵢₜᵀ δᵢₜ`` as one batched
        matrix product ``(n, kh·kw·C [+ 1], T) @ (n, T, F)`` of the transposed patches — the
        offset slices (:meth:`_offset_slices`) of the channels-first input stacked in the
        kernel's ``(kh, kw, C)`` order, plus a row of ones when there is a bias (its row of
        the product is ``Σ_t δᵢₜ``, so the delta is read once; ``bias_row=False`` leaves it
        out) — with the delta. With ``T`` the patches' minor axis no operand is transposed
        for the product (XLA CPU ran the correlation grouped by example 2.5–5× slower).
        ``x`` and ``d`` share a dtype."""
        n, ho, wo, f = d.shape
        xt = jnp.transpose(x, (0, 3, 1, 2))
        a = jnp.stack(self._offset_slices(xt, (ho, wo), channels_first=True), axis=1)
        a = a.reshape(n, a.shape[1] * a.shape[2], ho * wo)  # (n, kh·kw·C, T)
        if self.use_bias and bias_row:
            a = jnp.concatenate([a, jnp.ones((n, 1, ho * wo), x.dtype)], axis=1)
        return jnp.einsum("nkt,ntf->nkf", a, d.reshape(n, ho * wo, f))

    def _patch_bytes(self, x, d, *, bias_row):
        """Bytes of one example's patches ``(kh·kw·C [+ 1], Ho·Wo)`` in ``x``'s dtype, for the
        delta ``d`` ``(n, Ho, Wo, F)`` (the chunk budgets count these)."""
        _, ho, wo, _ = d.shape
        kh, kw = self.kernel_size
        rows = kh * kw * x.shape[3] + int(bias_row and self.use_bias)
        return rows * ho * wo * jnp.dtype(x.dtype).itemsize

    def _chunks(self, x, d):
        """How many chunks of examples :meth:`_product_chunks` takes (patches with the bias
        row within 8 MiB a chunk on XLA CPU; :func:`jbp.layers._per_example.example_chunks`)."""
        return _pe.example_chunks(d.shape[0], self._patch_bytes(x, d, bias_row=True))

    def _product_chunks(self, fn, x, d, *rest):
        """``fn(Gc, *rest_c)`` of each chunk of examples' :meth:`_per_example_product` ``Gc``
        (with the bias row), stacked on a new leading axis; ``rest``: arrays with a leading
        example axis. In chunks (:meth:`_chunks`) the patches stay small: on the CNN of
        bench/dp.py at batch 256 that made the 16→32 layer's per-example norms 3× faster
        (9 vs 27 ms) than one batched product, whose 29 MiB of patches were page-faulted
        afresh on every call."""
        return _pe.over_chunks(
            lambda xc, dc, *r: fn(self._per_example_product(xc, dc), *r),
            self._chunks(x, d),
            x,
            d,
            *rest,
        )

    def _per_example_grads(self, x, d):
        """``(n, kh·kw·C [+ 1], F)``: every example's gradient (:meth:`_per_example_product`,
        in chunks). ``batch_grad``, and ``batch_l2``/``scaled_grad_sum`` when they fit
        (:meth:`_keeps_per_example`), call it alike, so XLA forms them once for all three."""
        g = self._product_chunks(lambda g: g, x, d)
        return g.reshape((-1,) + g.shape[2:])

    def _keeps_per_example(self, x, d):
        """Whether the per-example gradients fit in 8 MiB
        (:data:`jbp.layers._per_example.CHUNK_BYTES`, on every backend): then ``batch_l2`` and ``scaled_grad_sum`` read them rather than forming the product
        once each (bench/dp.py's CNN at batch 256: the 16→32 layer's 4.6k parameters, 4.8 MB
        for 256 examples)."""
        n, _, _, f = d.shape
        kh, kw = self.kernel_size
        rows = kh * kw * x.shape[3] + 1
        return n * rows * f * jnp.dtype(x.dtype).itemsize <= _pe.CHUNK_BYTES

    def _split_product(self, params, g):
        """``(..., kh·kw·C [+ 1], F)`` rows -> ``{"W": (..., kh, kw, C, F), "b": (..., F)}``."""
        kh, kw, c, f = params["W"].shape
        lead = g.shape[:-2]
        out = {
            "W": g[..., : kh * kw * c, :].reshape(lead + (kh, kw, c, f)).astype(params["W"].dtype)
        }
        if self.use_bias:
            out["b"] = g[..., -1, :].astype(params["b"].dtype)
        return out

    def _patch_gram(self, x, out):
        """``(n, T, T)``: ``aᵢₜ·aᵢₛ`` of the patches, as the sum over kernel offsets of the
        Grams of the offset slices (:meth:`_offset_slices`): the patches are never stacked."""
        return sum(_pe.gram(s) for s in self._offset_slices(x, out))

    def _bias_rows(self, params, d):
        """``∂ℓᵢ/∂b = Σ_t δᵢₜ``, ``(n, F)``."""
        return jnp.sum(d, axis=(1, 2)).astype(params["b"].dtype)

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``∂ℓᵢ/∂K = Σ_t aᵢₜᵀ δᵢₜ`` ``(n, kh, kw, C, F)`` (one batched product on the
        patches) and ``∂ℓᵢ/∂b = Σ_t δᵢₜ`` ``(n, F)``."""
        x, d = self._per_example_inputs(params, cache, dy)
        return self.rule_grads(self._split_product(params, self._per_example_grads(x, d)))

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖∂ℓᵢ/∂K‖²`` and ``‖∂ℓᵢ/∂b‖²``, ``(n,)`` each: the Gram form
        ``Σ_{t,s} (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` when ``2T² ≤ d·p``, else from ``Gᵢ`` (see the class
        docstring)."""
        x, d = self._per_example_inputs(params, cache, dy)
        n, ho, wo, f = d.shape
        kh, kw, c, _ = params["W"].shape
        if not _pe.use_gram(ho * wo, kh * kw * c, f):

            def sq_norms(g):
                return {
                    k: jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)))
                    for k, v in self._split_product(params, g).items()
                }

            if self._keeps_per_example(x, d):
                return self.rule_grads(sq_norms(self._per_example_grads(x, d)))
            sq = self._product_chunks(sq_norms, x, d)
            return self.rule_grads({k: v.reshape(n) for k, v in sq.items()})
        sq = jnp.sum(
            self._patch_gram(x, (ho, wo)) * _pe.gram(d.reshape(n, ho * wo, f)), axis=(1, 2)
        )
        out = {"W": sq.astype(params["W"].dtype)}
        if self.use_bias:
            out["b"] = jnp.sum(jnp.square(self._bias_rows(params, d)), axis=1)
        return self.rule_grads(out)

    def scaled_grad_sum(self, params: PyTree, cache: PyTree, dy: Array, scale: Array) -> PyTree:
        """``Σᵢ sᵢ ∂ℓᵢ/∂θ`` (``s = scale``, ``(n,)``; ``dy`` per example): the clipped sum of
        DP-SGD (``jbp.extensions.ClippedGrad``). Where ``batch_l2`` reads the per-example
        gradients (``2T² > d·p`` and they fit: :meth:`_keeps_per_example`), the same ones
        weighted by ``sᵢ`` and summed over the batch (XLA forms them once for both: the
        DP-SGD step of bench/dp.py's CNN at batch 256 went from 61 to 53 ms); else the
        backward's kernel correlation (:meth:`_kernel_correlation`) on the delta with row
        ``i`` scaled by ``sᵢ``."""
        x, d = self._per_example_inputs(params, cache, dy)
        n, ho, wo, f = d.shape
        kh, kw, c, _ = params["W"].shape
        if not _pe.use_gram(ho * wo, kh * kw * c, f) and self._keeps_per_example(x, d):
            g = jnp.tensordot(scale.astype(x.dtype), self._per_example_grads(x, d), 1)
            return self.rule_grads(self._split_product(params, g))
        ds = d * scale.astype(d.dtype)[:, None, None, None]
        out = {"W": self._kernel_correlation(x, ds).astype(params["W"].dtype)}
        if self.use_bias:
            out["b"] = jnp.sum(ds, axis=(0, 1, 2)).astype(params["b"].dtype)
        return self.rule_grads(out)

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ (∂ℓᵢ/∂K)²`` and ``Σᵢ (∂ℓᵢ/∂b)²`` elementwise: from the per-example gradients
        when they fit (:meth:`_keeps_per_example`), else summed chunk by chunk (never all
        of them at once)."""
        x, d = self._per_example_inputs(params, cache, dy)
        if self._keeps_per_example(x, d):
            sq = jnp.sum(jnp.square(self._per_example_grads(x, d)), axis=0)
        else:
            sq = jnp.sum(self._product_chunks(lambda g: jnp.sum(g * g, axis=0), x, d), axis=0)
        return self.rule_grads(self._split_product(params, sq))
