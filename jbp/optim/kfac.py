"""K-FAC: gradient steps preconditioned by Kronecker-factored curvature (Martens & Grosse, 2015).

Each parameter leaf ``θ`` (reshaped to a matrix ``(p, q)``, ``q`` = its last axis, ``p = 1``
for a 1-D leaf) has its block of the GGN approximated as ``kron(A, B)`` by the
:class:`jbp.extensions.KFAC` (or ``KFLR``) extension, computed in the same hand-written
backward as the gradient. The step, with ``t`` the step count (0 first)::

    A ← ε_t A + (1 − ε_t) A_batch        B ← ε_t B + (1 − ε_t) B_batch
        ε_0 = 0 (the first batch's factors), ε_t = decay after
    every inverse_every steps (t mod k = 0), factored Tikhonov damping λ:
        π = sqrt((tr A / p) / (tr B / q))
        Ā = (A + π √λ I)⁻¹           B̄ = (B + (√λ / π) I)⁻¹
    v = Ā G B̄                       (G = ∇θ as a (p, q) matrix: (A ⊗ B)⁻¹ vec(G), damped)
    v ← ν v,  ν = min(1, sqrt(c / (η_t² Σ_leaves v·G)))      (norm_constraint c, optional)
    m ← μ m + v                      (momentum μ, optional)
    u = −η_t m

The inverses are refreshed inside the compiled step with ``lax.cond`` (only on refresh
steps is the branch that computes them executed), by Cholesky: ``M⁻¹ = L⁻ᵀL⁻¹``, with
``L⁻¹`` built by 2 × 2 blocks from matrix products above 64 rows and by loops of rank-one
updates below (no LAPACK call); between refreshes the last ones are reused with the new
gradients.

**How the factors arrive.** ``kfac(...)`` returns a :class:`CurvatureOptimizer`: the optax
pair ``init``/``update`` plus ``extensions = (KFAC(samples),)``. Its ``update`` takes the
extension's result as a keyword, ``update(grads, state, params, extras=out.extras)``;
``jbp.make_train_step`` (hence ``jbp.fit``) sees ``optimizer.extensions``, adds them to the
engine's pass and hands ``extras`` to ``update``. By hand::

    opt = jbp.optim.kfac(0.1)
    run = jbp.backprop(model, loss, extensions=opt.extensions)
    out = run(params, x, y, key=key)                     # the K-FAC extension samples: key
    updates, state = opt.update(out.grads, state, params, extras=out.extras)

It cannot sit inside ``chain`` (whose ``update`` has no ``extras``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jbp.extensions.curvature import KFAC, KFLR, KronFactors, kron_factor_shapes

from .base import check_learning_rate, check_real, increment, zero_count

__all__ = ["kfac", "KFACState", "CurvatureOptimizer"]


class CurvatureOptimizer(NamedTuple):
    """An optimizer that needs curvature from the backward pass: ``init(params)``,
    ``update(grads, state, params=None, *, extras)`` and the ``extensions`` whose results
    ``extras`` must hold (``make_train_step`` and ``fit`` request them)."""

    init: Callable
    update: Callable
    extensions: tuple


class KFACState(NamedTuple):
    """``count`` (int32), the moving averages ``factors`` and the damped ``inverses`` (both
    :class:`KronFactors` per leaf, in the structure of params), and the momentum buffer
    ``velocity`` (params' structure; ``()`` without momentum)."""

    count: jax.Array  # type: ignore[assignment]  # the field shadows tuple.count
    factors: Any
    inverses: Any
    velocity: Any


def _is_factors(x):
    return isinstance(x, KronFactors)


def _factor_dtype(leaf):
    return jnp.promote_types(jnp.result_type(leaf), jnp.float32)


# Up to this size a block's inverse Cholesky factor comes from two loops of rank-one and
# row updates (_small_inverse_cholesky); above it, from the 2 × 2 recursion of
# _inverse_cholesky, whose work is matrix products. No LAPACK call: on a CPU shared with
# other jobs, LAPACK's threaded potrf/trsm of a few hundred rows ran 5–10× slower than their
# single-thread time, while XLA's own products and loops did not.
_BLOCK = 64


def _small_inverse_cholesky(m):
    """``L⁻¹`` with ``L Lᵀ = m`` (lower), ``m`` ``b × b``: right-looking Cholesky (column ``j``
    of ``L`` is column ``j`` of the trailing matrix over ``√m_jj``, then a rank-one update),
    then forward substitution on the identity, row by row."""
    b = m.shape[0]
    rows = jnp.arange(b)

    def cholesky_column(j, carry):
        rest, low = carry
        col = jnp.where(rows >= j, rest[:, j] / jnp.sqrt(rest[j, j]), 0)
        return rest - jnp.outer(col, col), low.at[:, j].set(col)

    _, low = lax.fori_loop(0, b, cholesky_column, (m, jnp.zeros_like(m)))
    eye = jnp.eye(b, dtype=m.dtype)

    def inverse_row(j, inv):  # rows ≥ j of inv are still 0, so low[j] @ inv uses rows < j
        return inv.at[j].set((eye[j] - jnp.matmul(low[j], inv)) / low[j, j])

    return lax.fori_loop(0, b, inverse_row, jnp.zeros_like(m))


def _inverse_cholesky(m):
    """``L⁻¹`` with ``L Lᵀ = m`` (lower), by 2 × 2 blocks: for ``m = [[P, Q], [Qᵀ, R]]``,
    ``L₁₁⁻¹`` of ``P``, ``L₂₁ = Qᵀ L₁₁⁻ᵀ``, ``L₂₂⁻¹`` of the Schur complement
    ``R − L₂₁L₂₁ᵀ`` and ``(L⁻¹)₂₁ = −L₂₂⁻¹ L₂₁ L₁₁⁻¹`` — the blocked algorithm of LAPACK's
    ``potrf``/``trtri``, the same rounding behaviour as a Cholesky solve."""
    n = m.shape[0]
    if n <= _BLOCK:
        return _small_inverse_cholesky(m)
    k = n // 2
    p, q, r = m[:k, :k], m[:k, k:], m[k:, k:]
    li11 = _inverse_cholesky(p)
    l21 = jnp.matmul(q.T, li11.T)
    s = r - jnp.matmul(l21, l21.T)
    li22 = _inverse_cholesky(0.5 * (s + s.T))
    li21 = -jnp.matmul(jnp.matmul(li22, l21), li11)
    zero = jnp.zeros((k, n - k), m.dtype)
    return jnp.concatenate(
        [jnp.concatenate([li11, zero], axis=1), jnp.concatenate([li21, li22], axis=1)], axis=0
    )


def _spd_inverse(m):
    """``m⁻¹ = L⁻ᵀ L⁻¹`` of a symmetric positive-definite matrix (Cholesky), symmetrised."""
    m = 0.5 * (m + m.T)
    if m.shape[0] == 1:
        return 1 / m
    li = _inverse_cholesky(m)
    inv = jnp.matmul(li.T, li)
    return 0.5 * (inv + inv.T)


def _damped(f: KronFactors, damping) -> KronFactors:
    """``(A + π√λ I, B + √λ/π I)`` with ``π = sqrt((tr A/p)/(tr B/q))`` (Martens & Grosse's
    factored Tikhonov damping; ``π = 1`` when a trace vanishes)."""
    p, q = f.A.shape[0], f.B.shape[0]
    ta, tb = jnp.trace(f.A) / p, jnp.trace(f.B) / q
    ok = (ta > 0) & (tb > 0)
    pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, ta, 1) / jnp.where(ok, tb, 1)), 1)
    pi = jnp.clip(pi, 1e-6, 1e6)
    root = jnp.sqrt(jnp.asarray(damping, f.A.dtype))
    return KronFactors(
        f.A + pi * root * jnp.eye(p, dtype=f.A.dtype),
        f.B + root / pi * jnp.eye(q, dtype=f.B.dtype),
    )


def _damped_inverses(factors: list, damping) -> list:
    """The inverses of every leaf's damped factors (:func:`_damped`), as ``KronFactors``.
    Matrices of the same size and dtype are inverted together (``vmap``): one compiled
    recursion per size instead of one per matrix."""
    mats = [m for f in factors for m in _damped(f, damping)]
    groups: dict = {}
    for i, m in enumerate(mats):
        groups.setdefault((m.shape, jnp.dtype(m.dtype)), []).append(i)
    inv: list = [None] * len(mats)
    for idx in groups.values():
        if len(idx) == 1:
            inv[idx[0]] = _spd_inverse(mats[idx[0]])
        else:
            stacked = jax.vmap(_spd_inverse)(jnp.stack([mats[i] for i in idx]))
            for j, i in enumerate(idx):
                inv[i] = stacked[j]
    return [KronFactors(inv[2 * k], inv[2 * k + 1]) for k in range(len(factors))]


def kfac(
    learning_rate,
    *,
    damping: float = 1e-3,
    decay: float = 0.95,
    inverse_every: int = 10,
    momentum: float = 0.0,
    norm_constraint: float | None = None,
    curvature=None,
) -> CurvatureOptimizer:
    """K-FAC on the optax protocol (see the module docstring for the equations).

    Args:
      learning_rate: ``η``, a number > 0 or a schedule ``step -> η``.
      damping: ``λ > 0``, Tikhonov damping shared between the two factors.
      decay: ``ε ∈ [0, 1)``, the factors' moving-average decay.
      inverse_every: recompute the damped inverses every ``k ≥ 1`` steps (at steps
        0, k, 2k, ...).
      momentum: ``μ ∈ [0, 1)`` on the preconditioned step (0: none).
      norm_constraint: ``c > 0`` to cap ``η² vᵀG`` at ``c`` (K-FAC's "KL clipping"); ``None``
        for no cap.
      curvature: the extension that supplies the factors, ``jbp.extensions.KFAC(samples)``
        (default, one sampled target per example; the pass then needs a key) or
        ``jbp.extensions.KFLR()`` (exact loss Hessian, one backward per output).

    Returns:
      A :class:`CurvatureOptimizer` ``(init, update, extensions)``.
    """
    where = "kfac: "
    check_learning_rate(learning_rate, where=where)
    check_real("damping", damping, low=0.0, low_open=True, where=where)
    check_real("decay", decay, low=0.0, high=1.0, high_open=True, where=where)
    check_real("momentum", momentum, low=0.0, high=1.0, high_open=True, where=where)
    if norm_constraint is not None:
        check_real("norm_constraint", norm_constraint, low=0.0, low_open=True, where=where)
    if (
        isinstance(inverse_every, bool)
        or not isinstance(inverse_every, numbers.Integral)
        or inverse_every < 1
    ):
        raise ValueError(f"{where}inverse_every must be a positive integer, got {inverse_every!r}")
    if curvature is None:
        curvature = KFAC()
    if not isinstance(curvature, (KFAC, KFLR)):
        raise TypeError(
            f"{where}curvature must be jbp.extensions.KFAC(samples) or KFLR(), got {curvature!r}"
        )
    name = curvature.name
    use_momentum = float(momentum) > 0

    def init(params):
        def factors(leaf, fill):
            (a, _), (b, _) = kron_factor_shapes(jnp.shape(leaf))
            dt = _factor_dtype(leaf)
            return KronFactors(fill(a, dt), fill(b, dt))

        zeros = jax.tree.map(lambda l: factors(l, lambda k, dt: jnp.zeros((k, k), dt)), params)
        eyes = jax.tree.map(lambda l: factors(l, lambda k, dt: jnp.eye(k, dtype=dt)), params)
        velocity = jax.tree.map(jnp.zeros_like, params) if use_momentum else ()
        return KFACState(zero_count(), zeros, eyes, velocity)

    def update(grads, state, params=None, *, extras=None):
        if not isinstance(state, KFACState):
            raise ValueError(
                f"{where}state must be the KFACState of this optimizer's init, "
                f"got {type(state).__name__}"
            )
        if not isinstance(extras, dict) or name not in extras:
            got = (
                "nothing"
                if extras is None
                else (sorted(extras) if isinstance(extras, dict) else type(extras).__name__)
            )
            raise ValueError(
                f"{where}update needs the Kronecker factors: extras={{'{name}': ...}} from "
                f"jbp.backprop(model, loss, extensions=opt.extensions); make_train_step and fit "
                f"pass them (got {got})"
            )
        g_leaves, treedef = jax.tree.flatten(grads)
        try:
            new = treedef.flatten_up_to(extras[name])
            old = treedef.flatten_up_to(state.factors)
            inv = treedef.flatten_up_to(state.inverses)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{where}the factors in extras[{name!r}] or the state do not have "
                f"the structure of grads ({treedef}): {e}"
            ) from e
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
        for path, g, f, o in zip(paths, g_leaves, new, old):
            want = kron_factor_shapes(jnp.shape(g))
            got = (f.A.shape, f.B.shape) if _is_factors(f) else type(f).__name__
            held = (o.A.shape, o.B.shape)
            if got != want or held != want:
                raise ValueError(
                    f"{where}leaf {path or '<root>'} of shape {jnp.shape(g)} needs "
                    f"factors of shapes {want}, got {got} (state {held})"
                )

        count = state.count
        eps = jnp.where(count == 0, 0.0, decay)
        factors = [
            KronFactors(*(eps * o_ + (1 - eps) * n_.astype(o_.dtype) for o_, n_ in zip(o, f)))
            for o, f in zip(old, new)
        ]
        inverses = lax.cond(
            count % inverse_every == 0,
            lambda fs, _: _damped_inverses(fs, damping),
            lambda _, old_inv: old_inv,
            factors,
            inv,
        )

        def precondition(g, i):
            G = g.reshape(i.A.shape[0], i.B.shape[0]).astype(i.A.dtype)
            if i.A.shape[0] == 1:  # a 1-D leaf: Ā is a number
                return (i.A[0, 0] * jnp.matmul(G, i.B)).reshape(g.shape)
            return jnp.matmul(jnp.matmul(i.A, G), i.B).reshape(g.shape)

        v = [precondition(g, i) for g, i in zip(g_leaves, inverses)]
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        if norm_constraint is not None:
            vg = sum(jnp.sum(a * g.astype(a.dtype)) for a, g in zip(v, g_leaves))
            nu = jnp.minimum(1.0, jnp.sqrt(norm_constraint / jnp.maximum(lr * lr * vg, 1e-30)))
            v = [a * nu for a in v]
        velocity = state.velocity
        if use_momentum:
            vel = [
                momentum * m.astype(a.dtype) + a for m, a in zip(treedef.flatten_up_to(velocity), v)
            ]
            velocity = treedef.unflatten([m.astype(g.dtype) for m, g in zip(vel, g_leaves)])
            v = vel
        updates = treedef.unflatten(
            [(-lr * a).astype(jnp.result_type(g)) for a, g in zip(v, g_leaves)]
        )
        return updates, KFACState(
            increment(count), treedef.unflatten(factors), treedef.unflatten(inverses), velocity
        )

    return CurvatureOptimizer(init, update, (curvature,))
