"""Per-example sums of outer products: the closed forms shared by the weight layers.

``Dense`` (on inputs with extra axes), ``Conv2D`` (on patches), ``Embedding`` (one-hot rows)
and the recurrent layers (over time) all have weights whose per-example gradient is a sum of
outer products over positions ``t = 1 … T`` (tokens, output pixels, time steps)::

    Gᵢ = Σ_t aᵢₜᵀ δᵢₜ            aᵢₜ ∈ ℝᵈ (input / patch / h_{t−1}),  δᵢₜ ∈ ℝᵖ (delta)

so, for the first-order extensions (``jbp.extensions``), with ``a`` of shape ``(n, T, d)`` and
``δ`` of shape ``(n, T, p)`` (row ``i`` = example ``i``'s own delta):

- ``batch_grad``: ``Gᵢ`` itself, ``(n, d, p)`` (one batched matrix product);
- ``batch_l2``: ``‖Gᵢ‖² = Σ_{t,s} (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` — the *Gram form*, two ``T × T``
  matrices per example, never ``Gᵢ`` — or ``Σ ‖Gᵢ‖²`` from ``Gᵢ`` when that is cheaper
  (:func:`use_gram`); for ``T = 1`` it is ``‖aᵢ‖² ‖δᵢ‖²``;
- ``sum_grad_squared``: ``Σᵢ Gᵢ ⊙ Gᵢ``; for ``T = 1`` it is ``(a²)ᵀ(δ²)`` (one matrix product,
  nothing per-example formed), otherwise from ``Gᵢ``.

A bias with ``∂ℓᵢ/∂b = Σ_t δᵢₜ`` uses :func:`bias_grads`. ``Dense`` and the recurrent layers
use these functions as they are; ``Conv2D`` and ``Embedding`` use the same switch
(:func:`use_gram`) and :func:`gram`, with ``Gᵢ`` formed their own way (a grouped
correlation; a scatter by id).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "use_gram",
    "gram",
    "outer_grads",
    "outer_sq_norms",
    "outer_sum_sq",
    "bias_grads",
    "CHUNK_BYTES",
    "example_chunks",
    "over_chunks",
]


def use_gram(T: int, d: int, p: int) -> bool:
    """The switch between the Gram form and the per-example gradient, from static shapes.

    Per example the Gram form keeps two ``T × T`` matrices (``2T²`` numbers, ``T²(d + p)``
    multiply-adds); the per-example gradient is ``d × p`` (``d·p`` numbers, ``T·d·p``
    multiply-adds). The Gram form is used when ``2T² ≤ d·p``: long sequences / large
    feature maps on narrow layers form ``Gᵢ``, short ones on wide layers never do.
    """
    return 2 * T * T <= d * p


def gram(a):
    """``(n, T, d) -> (n, T, T)``: ``aᵢₜ · aᵢₛ`` for every example."""
    return jnp.einsum("ntd,nsd->nts", a, a)


def outer_grads(a, d):
    """``Gᵢ = Σ_t aᵢₜᵀ δᵢₜ``: ``(n, T, d), (n, T, p) -> (n, d, p)``."""
    return jnp.einsum("ntd,ntp->ndp", a, d)


def outer_sq_norms(a, d):
    """``‖Gᵢ‖²``, ``(n,)``: ``‖aᵢ‖²‖δᵢ‖²`` for ``T = 1``; else the Gram form
    ``Σ_{t,s} (aᵢₜ·aᵢₛ)(δᵢₜ·δᵢₛ)`` or ``Σ Gᵢ²``, whichever :func:`use_gram` picks."""
    T, n_a, n_d = a.shape[1], a.shape[2], d.shape[2]
    if T == 1:
        return jnp.sum(jnp.square(a[:, 0]), axis=1) * jnp.sum(jnp.square(d[:, 0]), axis=1)
    if use_gram(T, n_a, n_d):
        return jnp.sum(gram(a) * gram(d), axis=(1, 2))
    return jnp.sum(jnp.square(outer_grads(a, d)), axis=(1, 2))


def outer_sum_sq(a, d):
    """``Σᵢ Gᵢ ⊙ Gᵢ``, ``(d, p)``: ``(a²)ᵀ(δ²)`` for ``T = 1``, else from ``Gᵢ``."""
    if a.shape[1] == 1:
        return jnp.matmul(jnp.square(a[:, 0]).T, jnp.square(d[:, 0]))
    return jnp.sum(jnp.square(outer_grads(a, d)), axis=0)


def bias_grads(d):
    """``∂ℓᵢ/∂b = Σ_t δᵢₜ``: ``(n, T, p) -> (n, p)``."""
    return jnp.sum(d, axis=1)


# --- chunks of examples -----------------------------------------------------------------
# A closed form that stacks copies of its input (Conv2D's patches: ``kh·kw`` shifted copies)
# is taken over chunks of examples so that the stacked temporary stays small. glibc's malloc
# hands allocations above 32 MiB (its largest dynamic mmap threshold) to ``mmap`` afresh on
# every call, so a jitted CPU program whose temporaries outgrow that pays a page fault per
# 4 KiB page on every call (``perf``: 18–37% of the time of bench/curvature.py's CNN).


# The budget of a chunk's stacked temporary on XLA CPU (measured on Conv2D's patches at batch
# 256: 8 MiB chunks ran its per-example norms 3× and its kernel gradient 2.8× faster than one
# batch; smaller chunks were slower again).
CHUNK_BYTES = 8 * 2**20


def example_chunks(n: int, per_example_bytes: int, budget: int | None = None) -> int:
    """The fewest chunks, a divisor of ``n``, whose ``(n / chunks) · per_example_bytes`` fit
    in ``budget`` bytes (``n`` chunks of one example when even one does not).

    ``budget=None``: :data:`CHUNK_BYTES` on XLA CPU, where the page faults above are paid;
    elsewhere one chunk (a GPU runs the whole batch's product at once)."""
    if budget is None:
        if jax.default_backend() != "cpu":
            return 1
        budget = CHUNK_BYTES
    for chunks in range(1, n + 1):
        if n % chunks == 0 and (n // chunks) * per_example_bytes <= budget:
            return chunks
    return n


def over_chunks(fn, chunks: int, *arrays):
    """``fn`` of each chunk of examples (the arrays' leading axis split into ``chunks``),
    stacked on a new leading axis: one ``lax.map``, or a plain call when ``chunks == 1``."""
    if chunks == 1:
        return jax.tree.map(lambda r: r[None], fn(*arrays))
    split = tuple(a.reshape((chunks, a.shape[0] // chunks) + a.shape[1:]) for a in arrays)
    return jax.lax.map(lambda args: fn(*args), split)
