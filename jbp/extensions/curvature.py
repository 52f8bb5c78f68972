"""Curvature from the hand-written backward: GGN diagonals, the Hessian diagonal, Kronecker
factors (BackPACK's second-order extensions, in JAX).

Notation. ``n`` examples, ``ℓᵢ`` the loss of example ``i`` alone, ``L = (1/n) Σᵢ ℓᵢ`` the
mean loss, ``Jᵢ = ∂predᵢ/∂θ``, ``Hᵢ = ∂²ℓᵢ/∂predᵢ²``. The generalized Gauss-Newton matrix of
the mean loss is ::

    G = (1/n) Σᵢ Jᵢᵀ Hᵢ Jᵢ

Each loss factors its Hessian by hand, ``Hᵢ = Σ_c sᵢ,c sᵢ,cᵀ`` (``loss.hessian_factor``:
``C`` columns, the identity for ``mse``, ``√(σ(1−σ))`` for binary cross-entropy,
``√p_c (e_c − p)`` for softmax cross-entropy), or samples gradients at targets drawn from
the model's predictive distribution, ``E[g gᵀ] = Hᵢ`` (``loss.sampled_grads``). The seeded
extensions backpropagate those columns through the same hand-written backward (one walk per
column for up to 10 columns, more columns ``vmap``-ed in 10 groups); a layer visited with column ``c`` sees ``δᵢ,c = ∂z/∂…ᵀ``-backpropagated
``sᵢ,c``, and its parameter "gradient" from that delta is ``Jᵢᵀ sᵢ,c`` restricted to the
layer. Hence, per leaf:

==================================  ===================  ========================================
extension                           ``extras`` key       leaves
==================================  ===================  ========================================
``DiagGGN()``                       ``"diag_ggn"``       ``diag(G)``: ``(1/n) Σ_c Σᵢ (Jᵢᵀsᵢ,c)²``
``DiagGGNMC(samples=1)``            ``"diag_ggn_mc"``    unbiased estimate of ``diag(G)`` (key)
``BatchDiagGGN()``                  ``"batch_diag_ggn"`` ``(n, *shape)``: ``diag(JᵢᵀHᵢJᵢ)``
``DiagHessian()``                   ``"diag_hessian"``   ``diag(∇²L)``, exact (see the class)
``KFLR()``                          ``"kflr"``           ``KronFactors(A, B)``: ``G_leaf ≈ A ⊗ B``
``KFAC(samples=1)``                 ``"kfac"``           the same from sampled columns (key)
==================================  ===================  ========================================

The diagonals reuse the first-order closed forms: for one column, ``Σᵢ (Jᵢᵀsᵢ,c)²`` is the
``sum_grad_squared`` of that column's deltas, so ``diag_ggn = (1/n) Σ_c sum_grad_squared``
(the layer's method when it has one — ``Dense``: ``(a²)ᵀ(δ_c²)`` — else the generic ``vmap``
of its own backward). Cost: one backward per column (``C`` = the number of outputs for the
exact variants, ``samples`` for the Monte-Carlo ones) on top of the gradient.

**Kronecker factors.** For a weight ``W`` used as ``z = a W`` (``W.reshape(-1)`` row-major),
``Jᵢᵀsᵢ,c = aᵢ ⊗ δᵢ,c`` and K-FAC approximates the GGN block by ::

    G_W ≈ A ⊗ B,      A = (1/n) Σᵢ aᵢaᵢᵀ,      B = (1/n) Σᵢ Σ_c δᵢ,c δᵢ,cᵀ

exact for one example (``n = 1``) — then ``G_W = aaᵀ ⊗ Σ_c δ_cδ_cᵀ``. Every parameter leaf
gets a :class:`KronFactors` ``(A, B)`` with ``A`` of size ``prod(shape[:-1])`` and ``B`` of
size ``shape[-1]`` (``A = [[1]]`` for a 1-D leaf), so ``kron(A, B)`` approximates the GGN
block of ``leaf.reshape(-1)``. Conventions:

- ``Dense`` (``kron_factors`` method): as above. With extra axes ``(n, T, in)`` the
  positions count as more examples ("expand"/KFC): ``A = (1/(nT)) Σᵢₜ aᵢₜaᵢₜᵀ``,
  ``B = (1/n) Σᵢ Σ_c Σₜ δᵢₜ,c δᵢₜ,cᵀ``.
- ``Conv2D``: ``aᵢₚ`` is the input patch of output position ``p`` flattened in the kernel's
  ``(kh, kw, C)`` order (zero padding included), ``W.reshape(kh·kw·C, F)``: ``A`` averages
  ``aᵢₚaᵢₚᵀ`` over examples and positions, ``B`` sums ``δᵢₚδᵢₚᵀ`` over positions and
  averages over examples (Grosse & Martens' KFC).
- ``Embedding``: ``aᵢₜ`` is the one-hot of the token, so ``A = diag(token counts)/N``
  (``N`` real tokens; ``pad_id`` tokens do not count), stored dense ``(vocab, vocab)``.
- ``SimpleRNN``/``LSTM``: summed over the time steps like ``Dense`` with extra axes, ``W_x``
  from the inputs ``x_t`` and ``W_h`` from the previous states ``h_{t−1}``, both with the
  pre-activation deltas ``δ_t`` (all gates); padded steps are left out of ``A``.
- **Biases and every other 1-D leaf** (``LayerNorm``/``BatchNorm`` scales and offsets, ...)
  get their exact GGN block: ``A = [[1]]``, ``B = (1/n) Σᵢ Σ_c gᵢ,c gᵢ,cᵀ`` with ``gᵢ,c`` the
  leaf's per-example gradient from column ``c`` (a ``Dense`` bias: ``Σₜ δᵢₜ,c``).
- A leaf of rank ≥ 2 of any other layer raises a ``ValueError`` naming the layer (give the
  layer a ``kron_factors(params, cache, dy)`` method, see ``Dense.kron_factors``: per leaf
  ``(A, R)``, ``A`` and the rows ``R`` whose Gram matrix ``RᵀR`` is column ``dy``'s share of
  ``n·B``; the extension forms ``Σ_c R_cᵀR_c`` in one product over all columns).

Cross-leaf blocks (``W`` with ``b``, layer with layer) are dropped, as in K-FAC.

**Layer methods consulted** (each receives one column's delta, per example, as ``dy``):
``sum_grad_squared(params, cache, dy)`` (DiagGGN, DiagGGNMC, DiagHessian),
``batch_grad(params, cache, dy)`` (BatchDiagGGN, the 1-D blocks), ``kron_factors(params,
cache, dy)`` (KFAC, KFLR) and, on element-wise activations, ``second_derivative(z, a)``
(DiagHessian). Without them the generic ``vmap`` of the layer's own ``backward`` runs
(Conv2D, Embedding and the recurrent layers get their Kronecker factors from this module).
``Conv2D``'s per-example gradients and their squares are its own batched patch product
(``Conv2D._per_example_product``) taken here in chunks of examples, so the patches stay
small (``_PATCH_CHUNK_BYTES``); the values of its ``batch_grad``/``sum_grad_squared``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from jbp.extensions.base import Extension, _values, generic_batch_grad
from jbp.layers import _per_example as _pe
from jbp.losses import _check_samples

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree
    from jbp.engine import LayerCall, SeedContext


__all__ = [
    "DiagGGN",
    "DiagGGNMC",
    "BatchDiagGGN",
    "DiagHessian",
    "KFAC",
    "KFLR",
    "KronFactors",
    "kron_factor_shapes",
]


class KronFactors(NamedTuple):
    """``G_leaf ≈ kron(A, B)`` for ``leaf.reshape(-1)``: ``A`` ``(p, p)`` with
    ``p = prod(shape[:-1])`` (1 for a 1-D leaf), ``B`` ``(shape[-1], shape[-1])``."""

    A: jax.Array
    B: jax.Array


def kron_factor_shapes(shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(A.shape, B.shape)`` of the :class:`KronFactors` of a leaf of ``shape``."""
    shape = tuple(shape)
    a = math.prod(shape[:-1]) if len(shape) >= 2 else 1
    b = shape[-1] if shape else 1
    return (a, a), (b, b)


def _loss_method(loss, method, who):
    fn = getattr(loss, method, None)
    if not callable(fn):
        raise TypeError(
            f"{who}: the loss {loss!r} has no {method}(...); the curvature "
            f"extensions need it (jbp.losses.mse, binary_cross_entropy and "
            f"softmax_cross_entropy have it)"
        )
    return fn


def _exact_columns(ctx, who):
    """``(C, *pred.shape)``: the loss's Hessian factor, per example."""
    return _loss_method(ctx.loss, "hessian_factor", who)(ctx.pred, ctx.y)


def _sampled_columns(ctx, who, samples):
    """``(samples, *pred.shape)``: sampled per-example gradients scaled by ``1/√samples``, so
    that the sum over columns of their outer products is the sample mean."""
    g = _loss_method(ctx.loss, "sampled_grads", who)(ctx.key, ctx.pred, ctx.y, samples)
    return g / jnp.sqrt(jnp.asarray(samples, g.dtype))


# ------------------------------------------------------------------------------------------
# One layer, one column: per-example gradients and their squares from (cache, δ_c)
# ------------------------------------------------------------------------------------------


# Conv2D's per-example quantities are its batched patch product (``kh·kw`` copies of the
# input side by side: ``Conv2D._per_example_product``), formed here in chunks of examples
# so that the patches stay small (the page faults of :mod:`jbp.layers._per_example`'s chunk
# note: the DiagGGNMC/KFAC programs of bench/curvature.py's CNN spent about as long in those
# as in the products themselves).
_PATCH_CHUNK_BYTES = 4 * 2**20


class _Chunking(threading.local):
    on = True


_chunking = _Chunking()


@contextlib.contextmanager
def _no_chunks():
    """Trace the ``Conv2D`` rules without chunks (in a walk of several column groups the
    temporaries are large anyway, and XLA CPU ran the chunk loops of ten walks slower)."""
    old, _chunking.on = _chunking.on, False
    try:
        yield
    finally:
        _chunking.on = old


def _example_chunks(n, per_example_bytes):
    """The fewest chunks, a divisor of ``n``, whose patches fit in ``_PATCH_CHUNK_BYTES``
    (1 inside :func:`_no_chunks`)."""
    if not _chunking.on:
        return 1
    return _pe.example_chunks(n, per_example_bytes, _PATCH_CHUNK_BYTES)


_over_chunks = _pe.over_chunks


def _conv2d_patches(layer, x, out):
    """``(n, Ho·Wo, kh·kw·C)``: the input patch of every output position of a ``Conv2D``,
    flattened in the kernel's ``(kh, kw, C)`` order (zero padding included), so that
    ``patches @ W.reshape(kh·kw·C, F)`` is the convolution (without bias)."""
    n, c = x.shape[0], x.shape[3]
    patches = jnp.stack(layer._offset_slices(x, out), axis=2)  # (n, Ho·Wo, kh·kw, C)
    return patches.reshape(n, out[0] * out[1], patches.shape[2] * c)


def _conv2d_inputs(layer, params, cache, dy):
    x, d = layer._per_example_inputs(params, cache, dy)
    return x, d, _example_chunks(d.shape[0], layer._patch_bytes(x, d, bias_row=False))


def _conv2d_kernel_products(layer, chunks, x, d):
    """``Conv2D._per_example_product`` without the bias row (the bias is read from ``d``
    directly here), in ``chunks`` of examples: ``(chunks, n/chunks, kh·kw·C, F)``."""
    return _over_chunks(
        lambda xc, dc: layer._per_example_product(xc, dc, bias_row=False), chunks, x, d
    )


def _conv2d_batch_grad(layer, params, cache, dy):
    """``Conv2D``'s per-example gradients ``∂ℓᵢ/∂K = Σ_t aᵢₜᵀ δᵢₜ`` ``(n, kh, kw, C, F)``
    (its batched patch product, in chunks of examples) and ``∂ℓᵢ/∂b = Σ_t δᵢₜ``: the
    values of ``Conv2D.batch_grad``."""
    W = params["W"]
    x, d, chunks = _conv2d_inputs(layer, params, cache, dy)
    g = _conv2d_kernel_products(layer, chunks, x, d)
    out = {"W": g.reshape((d.shape[0],) + W.shape).astype(W.dtype)}
    if layer.use_bias:
        out["b"] = jnp.sum(d, axis=(1, 2)).astype(params["b"].dtype)
    return layer.rule_grads(out)


def _conv2d_sum_squares(layer, params, cache, dy):
    """``Conv2D``'s ``Σᵢ (∂ℓᵢ/∂K)²`` and ``Σᵢ (∂ℓᵢ/∂b)²``, summed chunk by chunk (never all
    per-example kernel gradients at once): the values of ``Conv2D.sum_grad_squared``."""
    W = params["W"]
    x, d, chunks = _conv2d_inputs(layer, params, cache, dy)

    def part(xc, dc):
        g = layer._per_example_product(xc, dc, bias_row=False)
        return jnp.sum(g * g, axis=0)

    sq = jnp.sum(_over_chunks(part, chunks, x, d), axis=0)
    out = {"W": sq.reshape(W.shape).astype(W.dtype)}
    if layer.use_bias:
        out["b"] = jnp.sum(jnp.square(jnp.sum(d, axis=(1, 2))), axis=0).astype(params["b"].dtype)
    return layer.rule_grads(out)


def _conv_rules(layer):
    """``(batch_grad, sum_squares)`` of this module for ``layer`` (``Conv2D``), else ``None``."""
    from jbp.layers import Conv2D  # noqa: PLC0415

    return (_conv2d_batch_grad, _conv2d_sum_squares) if isinstance(layer, Conv2D) else None


def _column_batch_grad(layer, params, cache, dy):
    """Per-example parameter gradients ``(n, *leaf)`` of one column ``dy``: this module's
    ``Conv2D`` rule, the layer's ``batch_grad``, or the generic ``vmap`` of its backward."""
    rules = _conv_rules(layer)
    if rules is not None:
        return rules[0](layer, params, cache, dy)
    method = getattr(layer, "batch_grad", None)
    if callable(method):
        return method(params, cache, dy)
    return generic_batch_grad(layer, params, cache, dy)


def _column_sum_squares(layer, params, cache, dy):
    """``Σᵢ gᵢ ⊙ gᵢ`` of one column: this module's ``Conv2D`` rule, the layer's
    ``sum_grad_squared`` when it has one, else the squares of the generic per-example
    gradients."""
    rules = _conv_rules(layer)
    if rules is not None:
        return rules[1](layer, params, cache, dy)
    method = getattr(layer, "sum_grad_squared", None)
    if callable(method):
        return method(params, cache, dy)
    g = generic_batch_grad(layer, params, cache, dy)
    return jax.tree.map(lambda a: jnp.sum(a * a, axis=0), g)


# At most this many backward walks are traced per seeded extension (more columns: vmapped
# in this many groups).
_MAX_WALKS = 10


def _walk_in_groups(ext, model, params, cache, ctx):
    """The seeded walk of ``ext``: the engine's (``vmap`` of ``model.backward_ext`` over the
    columns, then ``ext.reduce``), but over ``⌈C / _MAX_WALKS⌉`` columns at a time — one
    column per walk for ``C ≤ 10`` — with the groups' reduced results combined by
    ``ext._combine``. The same values; on XLA CPU separate walks ran the benchmark CNN's
    ``DiagGGN`` 1.3–1.5× faster than one ``vmap`` over its 10 columns (whose temporaries,
    187 MiB, were page-faulted afresh on every call) and left the MLP's unchanged; a
    ``lax.scan`` over the columns was 4× slower. With several groups the ``Conv2D`` rules run
    without example chunks (:func:`_no_chunks`). Costs compile time: the CNN's ``DiagGGN``
    program compiled in 1.3 s instead of 0.4 s."""
    from jbp.engine import LayerCall  # noqa: PLC0415 - jbp.engine imports the extensions

    seeds = ext.seed(ctx)
    cols = seeds.shape[0]
    group = -(-cols // _MAX_WALKS)

    def visit(layer, p, c, dy, grads):
        if ext.params_only and not jax.tree.leaves(p):
            return {ext.name: p}
        return {ext.name: ext.compute(LayerCall(layer, p, c, dy, grads, ctx.n))}

    def column(s):
        return model.backward_ext(params, cache, s, visit)[2].get(ext.name, params)

    acc = None
    with contextlib.nullcontext() if group == cols else _no_chunks():
        for start in range(0, cols, group):
            part = ext.reduce(jax.vmap(column)(seeds[start : start + group]))
            acc = part if acc is None else ext._combine(acc, part)
    return acc


class _Columns(Extension):
    """Seeded curvature extensions: the seeds are per-example columns (``Hᵢ``'s factor or
    sampled gradients), so a layer's closed forms receive the column's delta as it is.
    Their walk is :func:`_walk_in_groups` (the engine calls ``walk`` when there is one)."""

    per_example = True
    seeded = True

    def walk(self, model: Layer, params: PyTree, cache: PyTree, ctx: SeedContext) -> PyTree:
        return _walk_in_groups(self, model, params, cache, ctx)

    def _combine(self, a: PyTree, b: PyTree) -> PyTree:
        """Two groups of columns' reduced results into one (``reduce`` sums: add)."""
        return jax.tree.map(jnp.add, a, b)


def _mean_over_examples(result, n):
    return jax.tree.map(lambda r: r / n, result)


# ------------------------------------------------------------------------------------------
# Diagonals of the GGN
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiagGGN(_Columns):
    """``"diag_ggn"``: the exact diagonal of ``G = (1/n) Σᵢ JᵢᵀHᵢJᵢ``, leaves ``leaf.shape``.

    Seeds the loss's Hessian factor (``C`` columns: the number of outputs); per column, each
    layer returns ``Σᵢ (Jᵢᵀsᵢ,c)²`` — its ``sum_grad_squared`` of the column's deltas (generic
    ``vmap`` of its backward without one); summed over the columns, divided by ``n``.
    """

    name = "diag_ggn"

    def seed(self, ctx: SeedContext) -> Array:
        return _exact_columns(ctx, "DiagGGN")

    def compute(self, call: LayerCall) -> PyTree:
        return _column_sum_squares(call.layer, call.params, call.cache, _values(call.dy))

    def finalize(self, result: PyTree, n: int) -> PyTree:
        return _mean_over_examples(result, n)


@dataclasses.dataclass(frozen=True)
class DiagGGNMC(_Columns):
    """``"diag_ggn_mc"``: an unbiased Monte-Carlo estimate of ``diag(G)``, leaves ``leaf.shape``.

    Seeds ``samples`` gradients ``gᵢ = ∂ℓᵢ(predᵢ, ŷᵢ)/∂predᵢ`` at targets ``ŷᵢ`` drawn from
    the model's predictive distribution (``loss.sampled_grads``: Gaussian for ``mse``,
    Bernoulli, categorical), for which ``E[gᵢgᵢᵀ] = Hᵢ``; so
    ``E[(1/n) Σᵢ (Jᵢᵀgᵢ)²] = diag(G)``. One backward per sample instead of one per output.
    Needs ``key`` in the call of ``jbp.backprop``'s function.

    Args:
      samples: sampled targets per example (the estimate averages over them).
    """

    samples: int = 1
    name = "diag_ggn_mc"
    needs_key = True

    def __post_init__(self):
        _check_samples("DiagGGNMC", self.samples)

    def seed(self, ctx: SeedContext) -> Array:
        return _sampled_columns(ctx, "DiagGGNMC", self.samples)

    def compute(self, call: LayerCall) -> PyTree:
        return _column_sum_squares(call.layer, call.params, call.cache, _values(call.dy))

    def finalize(self, result: PyTree, n: int) -> PyTree:
        return _mean_over_examples(result, n)

    def __repr__(self):
        return f"DiagGGNMC(samples={self.samples})"


@dataclasses.dataclass(frozen=True)
class BatchDiagGGN(_Columns):
    """``"batch_diag_ggn"``: ``diag(JᵢᵀHᵢJᵢ)`` for every example, leaves ``(n, *leaf.shape)``
    (their mean over the batch is ``diag_ggn``). Per column, the squares of the per-example
    gradients (the layer's ``batch_grad`` or the generic ``vmap``), summed over the columns."""

    name = "batch_diag_ggn"

    def seed(self, ctx: SeedContext) -> Array:
        return _exact_columns(ctx, "BatchDiagGGN")

    def compute(self, call: LayerCall) -> PyTree:
        g = _column_batch_grad(call.layer, call.params, call.cache, _values(call.dy))
        return jax.tree.map(lambda a: a * a, g)


# ------------------------------------------------------------------------------------------
# The exact Hessian diagonal
# ------------------------------------------------------------------------------------------


def _linear_layers():
    """Layers whose output is linear in their input and in their parameters (a.e.): they add
    no second-order term of their own, ``∇²_in = Jᵀ ∇²_out J``."""
    from jbp.layers import AvgPool2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D  # noqa: PLC0415

    return (Dense, Conv2D, Flatten, Dropout, AvgPool2D, MaxPool2D, GlobalAvgPool2D)


def _piecewise_linear():
    from jbp.layers import Identity, LeakyReLU, ReLU  # noqa: PLC0415

    return (Identity, ReLU, LeakyReLU)


def _diag_columns(r):
    """``(D, n, *shape)``: the factor of a per-example diagonal ``diag(r²)`` — column ``d``
    is ``r[:, d] e_d`` — with ``D = prod(shape)``."""
    n, shape = r.shape[0], r.shape[1:]
    d = math.prod(shape)
    eye = jnp.eye(d, dtype=r.dtype)[:, None, :]
    return (eye * r.reshape(n, d)[None]).reshape((d, n) + shape)


def _concat(a, b):
    return b if a is None else jnp.concatenate([a, b], axis=0)


def _hessian_walk(layer, params, cache, dy, pos, neg, n, where):
    """The backward walk of :class:`DiagHessian`: ``(result, dx, pos, neg)``.

    ``dy`` is the main-walk delta ``∂L/∂out`` of the mean loss; ``pos``/``neg`` hold columns
    ``(C, n, *out)`` with ``∇²_out ℓᵢ = Σ pos pos ᵀ − Σ neg negᵀ`` per example.
    """
    from jbp.core import Sequential  # noqa: PLC0415 - jbp.core imports the engine

    if isinstance(layer, Sequential):
        layer._check_params(params)
        results = [None] * len(layer.layers)
        for i in reversed(range(len(layer.layers))):
            results[i], dy, pos, neg = _hessian_walk(
                layer.layers[i],
                params[i],
                cache[i],
                dy,
                pos,
                neg,
                n,
                f"{where}layers[{i}]" if not where else f"{where}.layers[{i}]",
            )
        return tuple(results), dy, pos, neg

    second = getattr(layer, "second_derivative", None)
    if not (isinstance(layer, _linear_layers()) or callable(second)):
        at = f"{where} " if where else ""
        raise ValueError(
            f"DiagHessian: {at}({layer!r}) is not supported: the exact diagonal Hessian is "
            f"implemented for Dense, Conv2D, Flatten, Dropout, the 2-D poolings and element-wise "
            f"activations with a second_derivative(z, a) method; got {type(layer).__name__} "
            f"(DiagGGN is defined for every layer)"
        )
    _, dx = layer.backward(params, cache, dy)
    if jax.tree.leaves(params):

        def sq(cols):
            return jax.tree.map(
                lambda a: jnp.sum(a, axis=0),
                jax.vmap(lambda s: _column_sum_squares(layer, params, cache, s))(cols),
            )

        result = sq(pos)
        if neg is not None:
            result = jax.tree.map(jnp.subtract, result, sq(neg))
    else:
        result = params

    def back(cols):
        if cols is None:
            return None
        return jax.vmap(lambda s: layer.backward(params, cache, s)[1])(cols)

    pos, neg = back(pos), back(neg)
    if callable(second) and not isinstance(layer, _piecewise_linear()):
        # a = f(z): ∇²_z ℓᵢ = diag(f') ∇²_a ℓᵢ diag(f') + diag(f''(z) ⊙ ∂ℓᵢ/∂a), ∂ℓᵢ/∂a = n·dy
        r = n * _values(dy) * second(cache["x"], cache["y"])
        pos = _concat(pos, _diag_columns(jnp.sqrt(jnp.maximum(r, 0))))
        neg = _concat(neg, _diag_columns(jnp.sqrt(jnp.maximum(-r, 0))))
    return result, dx, pos, neg


@dataclasses.dataclass(frozen=True)
class DiagHessian(_Columns):
    """``"diag_hessian"``: the exact diagonal of the Hessian ``∇²L`` of the mean loss, leaves
    ``leaf.shape``, for networks of ``Dense``, ``Conv2D``, ``Flatten``, ``Dropout``, the 2-D
    poolings and element-wise activations (BackPACK's ``DiagHessian``).

    The Hessian of ``ℓᵢ`` w.r.t. each layer's output is carried down the network as signed
    symmetric factors, ``∇²_out ℓᵢ = Σ P Pᵀ − Σ N Nᵀ``, starting from the loss's
    ``hessian_factor``. A linear layer maps them with its own backward
    (``∇²_in = Jᵀ ∇²_out J``) and its parameters' diagonal is ``Σ (Jᵢᵀp)² − Σ (Jᵢᵀν)²``
    (``sum_grad_squared`` per column). An element-wise activation ``a = f(z)`` adds its
    second-order residual ::

        ∇²_z ℓᵢ = diag(f'(z)) ∇²_a ℓᵢ diag(f'(z)) + diag(f''(z) ⊙ ∂ℓᵢ/∂a)

    as one new column per unit, ``√max(±r, 0) e_d`` into ``P`` or ``N``
    (``r = f''(z) ⊙ ∂ℓᵢ/∂a``; none for ReLU/LeakyReLU/Identity, whose ``f'' = 0``). That makes
    the walk cost grow with the activations' width (``D`` columns per activation layer, as
    in BackPACK): meant for small networks and for checking. Any other layer raises a
    ``ValueError`` naming it. The engine calls :meth:`walk` (its own walk over the model: the
    residual columns appear mid-way, so one seed at the output cannot carry them).
    """

    name = "diag_hessian"

    def seed(self, ctx: SeedContext) -> Array:
        return _exact_columns(ctx, "DiagHessian")

    def walk(self, model: Layer, params: PyTree, cache: PyTree, ctx: SeedContext) -> PyTree:
        result, _, _, _ = _hessian_walk(
            model, params, cache, ctx.dpred, self.seed(ctx), None, ctx.n, ""
        )
        return result

    def finalize(self, result: PyTree, n: int) -> PyTree:
        return _mean_over_examples(result, n)


# ------------------------------------------------------------------------------------------
# Kronecker factors
# ------------------------------------------------------------------------------------------


def _outer_sum(v):
    """``Σ_rows v vᵀ`` of ``v`` reshaped to ``(-1, last)``."""
    v2 = v.reshape(-1, v.shape[-1])
    return jnp.matmul(v2.T, v2)


def _rows(v):
    """``v`` as rows ``(-1, last)``: their Gram matrix is a column's share of ``B``."""
    return v.reshape(-1, v.shape[-1])


def _one(dtype):
    return jnp.ones((1, 1), dtype)


def _conv2d_factors(layer, params, cache, dy):
    """``Conv2D``: ``A`` from the input patches ``(kh·kw·C)`` of every output position
    (averaged over examples and positions), rows ``δᵢₚ``; exact bias block (rows ``Σₚ δᵢₚ``)."""
    n, ho, wo, f = dy.shape
    x = cache["x"].astype(dy.dtype)
    chunks = _example_chunks(n, layer._patch_bytes(x, dy, bias_row=False))

    def gram(xc):
        return _outer_sum(_conv2d_patches(layer, xc, (ho, wo)))

    A = jnp.sum(_over_chunks(gram, chunks, x), axis=0)
    out = {"W": (A / (n * ho * wo), _rows(dy))}
    if layer.use_bias:
        out["b"] = (_one(dy.dtype), jnp.sum(dy, axis=(1, 2)))
    return out


def _embedding_factors(layer, params, cache, dy):
    """``Embedding``: ``A = diag(count of each token)/N`` over the ``N`` real (non-pad)
    tokens, rows ``δᵢₜ``."""
    from jbp.layers.masking import cotangent_values  # noqa: PLC0415

    ids = cache["x"].reshape(-1)
    d = cotangent_values(dy)
    real = (
        jnp.ones(ids.shape, d.dtype)
        if layer.pad_id is None
        else (ids != layer.pad_id).astype(d.dtype)
    )
    counts = jnp.zeros((layer.vocab_size,), d.dtype).at[ids].add(real, mode="clip")
    A = jnp.diag(counts / jnp.maximum(jnp.sum(real), 1))
    return {"W": (A, _rows(d))}


def _recurrent_factors(layer, params, cache, dy):
    """``SimpleRNN``/``LSTM``: the per-step pre-activation deltas ``δ_t`` come from the layer's
    own backward with ``W_x`` replaced by the identity (its ``∂L/∂x_t = δ_t W_xᵀ`` is then
    ``δ_t``); ``W_x``: ``A`` from ``x_t``, ``W_h``: ``A`` from ``h_{t−1}`` (``h_0 = 0``), both
    averaged over the real steps, rows ``δᵢₜ``; exact bias block (rows ``Σₜ δᵢₜ``)."""
    g = params["W_h"].shape[1]
    xs, mask, hs = cache["x"], cache["mask"], cache["h"]
    eye = jnp.eye(g, dtype=params["W_x"].dtype)
    delta = layer.backward({**params, "W_x": eye}, cache, dy)[1].astype(hs.dtype)  # (n, T, g)
    m = (jnp.ones(xs.shape[:2], hs.dtype) if mask is None else mask.astype(hs.dtype))[..., None]
    steps = jnp.maximum(jnp.sum(m), 1)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:, :1]), hs[:, :-1]], axis=1)
    xs = xs.astype(hs.dtype)
    rows = _rows(delta)
    return {
        "W_x": (_outer_sum(xs * m) / steps, rows),
        "W_h": (_outer_sum(h_prev * m) / steps, rows),
        "b": (_one(hs.dtype), jnp.sum(delta, axis=1)),
    }


def _kron_rules():
    from jbp.layers import LSTM, Conv2D, Embedding, SimpleRNN  # noqa: PLC0415

    return (
        (Conv2D, _conv2d_factors),
        (Embedding, _embedding_factors),
        (SimpleRNN, _recurrent_factors),
        (LSTM, _recurrent_factors),
    )


def _layer_kron_factors(layer, params, cache, dy):
    """``{leaf: KronFactors(A, R_c)}`` (params' structure) of one column: ``A`` and the rows
    ``R_c`` whose Gram matrix is the column's share of ``n·B``; from the layer's
    ``kron_factors`` method, the rules above, or — for the 1-D leaves of any layer — the
    exact block, rows = the per-example gradients."""
    method = getattr(layer, "kron_factors", None)
    rule = next((r for cls, r in _kron_rules() if isinstance(layer, cls)), None)
    if callable(method):
        pairs = method(params, cache, dy)
    elif rule is not None:
        pairs = rule(layer, params, cache, dy)
    else:
        named = jax.tree_util.tree_flatten_with_path(params)[0]
        big = [jax.tree_util.keystr(p) for p, leaf in named if jnp.ndim(leaf) >= 2]
        if big:
            raise ValueError(
                f"KFAC/KFLR: layer {layer!r} has parameters of rank ≥ 2 ({', '.join(big)}) and no "
                f"Kronecker factors: supported are Dense, Conv2D, Embedding, SimpleRNN and LSTM "
                f"(1-D parameters of any layer get their exact block); give the layer a "
                f"kron_factors(params, cache, dy) method (see Dense.kron_factors)"
            )
        grads = _column_batch_grad(layer, params, cache, dy)
        return jax.tree.map(
            lambda gr: KronFactors(_one(gr.dtype), gr.reshape(gr.shape[0], -1)), grads
        )
    treedef = jax.tree.structure(params)
    try:
        flat = treedef.flatten_up_to(pairs)
    except (ValueError, TypeError) as e:
        shapes = jax.tree.map(jnp.shape, pairs)
        raise ValueError(
            f"KFAC/KFLR: {layer!r}: Kronecker factors {shapes} do not have the "
            f"structure of its params {treedef}: {e}"
        ) from e
    return treedef.unflatten([KronFactors(*pair) for pair in flat])


def _is_factors(x):
    return isinstance(x, KronFactors)


class _Kron(_Columns):
    """Shared by :class:`KFAC` and :class:`KFLR`: per column, each layer's ``(A, R_c)``;
    ``reduce`` keeps ``A`` (the same in every column) and forms ``Σ_c R_cᵀR_c`` in one
    matrix product over all columns' rows; ``finalize`` divides ``B`` by ``n``."""

    def compute(self, call: LayerCall) -> PyTree:
        return _layer_kron_factors(call.layer, call.params, call.cache, _values(call.dy))

    def reduce(self, stacked: PyTree) -> PyTree:
        # (C, m, k) rows -> (C·m, k), one GEMM (an einsum contracting two axes is ~10× slower
        # on CPU)
        return jax.tree.map(
            lambda f: KronFactors(f.A[0], _outer_sum(f.B)), stacked, is_leaf=_is_factors
        )

    def _combine(self, a: PyTree, b: PyTree) -> PyTree:
        # A is every column's; the column groups' B add up
        return jax.tree.map(lambda f, g: KronFactors(f.A, f.B + g.B), a, b, is_leaf=_is_factors)

    def finalize(self, result: PyTree, n: int) -> PyTree:
        return jax.tree.map(lambda f: KronFactors(f.A, f.B / n), result, is_leaf=_is_factors)


@dataclasses.dataclass(frozen=True)
class KFLR(_Kron):
    """``"kflr"``: Kronecker factors ``(A, B)`` per leaf from the exact loss-Hessian factor
    (Botev et al.'s KFLR: ``C`` = outputs columns). See the module docstring for the
    conventions; for one example and one ``Dense`` layer, ``kron(A, B)`` is the exact GGN
    block of ``W.reshape(-1)``."""

    name = "kflr"

    def seed(self, ctx: SeedContext) -> Array:
        return _exact_columns(ctx, "KFLR")


@dataclasses.dataclass(frozen=True)
class KFAC(_Kron):
    """``"kfac"``: Kronecker factors ``(A, B)`` per leaf with ``B`` estimated from
    ``samples`` gradients at targets drawn from the model's predictive distribution
    (Martens & Grosse's K-FAC; ``E[B]`` is :class:`KFLR`'s ``B``). Needs ``key``.

    Args:
      samples: sampled targets per example.
    """

    samples: int = 1
    name = "kfac"
    needs_key = True

    def __post_init__(self):
        _check_samples("KFAC", self.samples)

    def seed(self, ctx: SeedContext) -> Array:
        return _sampled_columns(ctx, "KFAC", self.samples)

    def __repr__(self):
        return f"KFAC(samples={self.samples})"
