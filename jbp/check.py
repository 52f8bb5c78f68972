"""Gradient checks: the hand-written backward against two independent oracles.

1. ``jax.grad`` of the forward pass (autodiff through ``model.apply`` and ``loss.value``).
2. Central finite differences in float64, along random directions restricted to one
   parameter leaf at a time: ``(L(θ + εv) − L(θ − εv)) / 2ε ≈ ⟨∇L, v⟩``. Two forward
   passes per direction, so it scales to real networks and still names the wrong leaf.

Use it whenever you write a new layer::

    report = jbp.check_gradients(model, jbp.losses.mse, params, x, y)
    print(report)            # a table, one row per parameter leaf
    report.raise_if_failed()  # or assert report.ok
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jbp._validate import (
    check_batch,
    check_key,
    check_model_and_loss,
    check_model_input,
    check_params,
    check_regularizer,
    check_same_structure,
    check_state,
    check_targets,
)
from jbp.core import Array, Layer, PyTree, cast, named_leaves
from jbp.engine import backprop, value_and_grad

if TYPE_CHECKING:
    from jbp.losses import Loss
    from jbp.regularizers import Regularizer


__all__ = [
    "check_gradients",
    "GradientReport",
    "LeafCheck",
    "GradientCheckError",
    "default_tolerance",
]


class GradientCheckError(AssertionError):
    """Raised by :meth:`GradientReport.raise_if_failed` when a leaf disagrees."""


#: Every comparison is relative to the larger of the leaf's own gradient scale and this
#: fraction of the largest leaf's: a leaf whose true gradient is 0 (a bias before
#: BatchNorm) holds rounding noise of the other leaves' size, not of its own.
FLOOR = 1e-2
#: Finite differences also allow the rounding noise of the two loss evaluations,
#: ``FD_NOISE · ε₆₄ · |L| / fd_eps`` (ε₆₄ the float64 machine epsilon).
FD_NOISE = 16.0


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One parameter leaf: errors of the hand-written gradient against each oracle.

    ``abs_err`` is ``max |manual − autodiff|``; ``rel_err`` divides it by
    ``max |autodiff|`` (a norm-wise relative error, stable when entries are near zero).
    ``fd_rel_err`` is the worst error of ``⟨manual, v⟩`` against the central difference
    over the random directions ``v``, relative to the bound of the comparison (``None``
    when not computed).

    ``bound`` and ``fd_bound`` say which scale decided each tolerance: ``"leaf"`` (the
    leaf's own gradient), ``"others"`` (:data:`FLOOR` times the largest leaf's gradient:
    the floor for leaves whose true gradient is 0), ``"atol"`` (the absolute tolerance) or,
    for finite differences, ``"loss"`` (the rounding noise of evaluating the loss).
    """

    name: str
    shape: tuple
    abs_err: float
    rel_err: float
    ok_autodiff: bool
    fd_rel_err: float | None = None
    ok_fd: bool | None = None
    bound: str = "leaf"
    fd_bound: str | None = None

    @property
    def ok(self) -> bool:
        return self.ok_autodiff and (self.ok_fd is not False)


@dataclasses.dataclass(frozen=True)
class GradientReport:
    leaves: tuple
    dtype: str
    rtol: float
    atol: float
    fd_rtol: float | None
    loss_value: float
    scale: float = 0.0  # max |autodiff| over all leaves (the "others" floor / FLOOR)
    fd_noise: float | None = None  # the "loss" floor of the finite differences

    @property
    def ok(self) -> bool:
        return all(l.ok for l in self.leaves)

    @property
    def failed(self) -> list:
        """Names of the leaves that disagree."""
        return [l.name for l in self.leaves if not l.ok]

    def raise_if_failed(self) -> GradientReport:
        if not self.ok:
            raise GradientCheckError(f"hand-written gradient disagrees for {self.failed}\n{self}")
        return self

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        fd = self.fd_rtol is not None
        head = f"{'leaf':<22} {'shape':<14} {'max|manual-autodiff|':>21} {'rel':>10}"
        if fd:
            head += f" {'rel vs finite diff':>19}"
        head += f"  {'bound':<13}  ok"
        lines = [
            f"gradient check ({self.dtype}; rtol={self.rtol:g}, atol={self.atol:g}"
            + (f", finite differences in float64 rtol={self.fd_rtol:g}" if fd else "")
            + f"); loss = {self.loss_value:.6g}",
            head,
            "-" * len(head),
        ]
        for l in self.leaves:
            row = f"{l.name:<22} {str(l.shape):<14} {l.abs_err:>21.3e} {l.rel_err:>10.2e}"
            if fd:
                row += f" {l.fd_rel_err:>19.2e}" if l.fd_rel_err is not None else f" {'-':>19}"
            bound = l.bound + (f"/{l.fd_bound}" if l.fd_bound else "")
            row += f"  {bound:<13}  " + ("yes" if l.ok else "NO")
            lines.append(row)
        floors = (
            f"bounds: leaf = its own gradient; others = {FLOOR:g} x the largest leaf's "
            f"({FLOOR * self.scale:.2e})"
        )
        if fd and self.fd_noise is not None:
            floors += f"; loss = rounding noise of the loss ({self.fd_noise:.2e})"
        lines.append(floors)
        lines.append("all gradients agree" if self.ok else f"MISMATCH in {', '.join(self.failed)}")
        return "\n".join(lines)


def default_tolerance(dtype: DTypeLike) -> tuple[float, float]:
    """(rtol, atol) for manual vs autodiff: tight in float64, float32-sized otherwise."""
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-9, 1e-12
    if jnp.dtype(dtype) == jnp.float32:
        return 2e-4, 1e-6
    return 2e-2, 1e-3  # bfloat16 / float16


def _x64():
    """A context in which float64 is available (jax.enable_x64 or its older spelling)."""
    if hasattr(jax, "enable_x64"):
        try:
            return jax.enable_x64(True)
        except TypeError:  # pragma: no cover - very old jax
            pass
    from jax.experimental import enable_x64  # pragma: no cover

    return enable_x64()  # pragma: no cover


def _param_dtype(params):
    leaves = [
        l for l in jax.tree.leaves(params) if jnp.issubdtype(jnp.asarray(l).dtype, jnp.floating)
    ]
    if not leaves:
        raise ValueError("params: the model has no floating-point parameters to check")
    return jnp.result_type(*leaves)


def check_gradients(
    model: Layer,
    loss: Loss,
    params: PyTree,
    x: Array | np.ndarray,
    y: Array | np.ndarray,
    *,
    key: Array | None = None,
    train: bool = True,
    state: PyTree = None,
    regularizer: Regularizer | None = None,
    finite_differences: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    fd_rtol: float = 1e-5,
    fd_eps: float = 1e-6,
    fd_directions: int = 3,
    seed: int = 0,
    raise_on_failure: bool = False,
) -> GradientReport:
    """Compare the hand-written gradient with ``jax.grad`` and finite differences.

    Args:
      model: the model, as for :func:`jbp.backprop`.
      loss: the loss, as for :func:`jbp.backprop`.
      params: the parameters to check the gradient at. The trees of the hand-written and
        the autodiff gradient must have the structure of ``params``: a backward that omits
        or adds a leaf fails with an error naming it.
      x: a batch of inputs (leading batch axis).
      y: the batch's targets.
      key: the forward pass's PRNG key, as for :func:`jbp.backprop` (the same ``key`` is
        used by every oracle, so dropout masks agree).
      train: training behaviour of the forward pass, as for :func:`jbp.backprop`.
      state: the model's non-trainable state, as for :func:`jbp.backprop`.
      regularizer: an optional regularizer, as for :func:`jbp.backprop`.
      finite_differences: also check against central differences, in float64.
        Before anything is compiled, ``params`` are checked against ``model.init``'s shapes
        (:func:`jbp.check_params`), ``y`` against the loss (``loss.check_targets``: label
        ranges, shapes) and ``x`` against the input layer (``Embedding`` ids).
      rtol: relative tolerance of manual vs autodiff on ``max|manual − autodiff|``, passing
        when ``≤ max(atol, rtol·max|autodiff of the leaf|, rtol·FLOOR·max|autodiff of any
        leaf|)`` with ``FLOOR = 1e-2``: the last term keeps a leaf whose true gradient is 0
        (a bias before BatchNorm) from failing on rounding noise. The default depends on
        the params' dtype (float64: 1e-9; float32: 2e-4).
      atol: absolute tolerance of manual vs autodiff (see ``rtol``); default by dtype
        (float64: 1e-12; float32: 1e-6).
      fd_rtol: the finite-difference check's relative tolerance. The error along each
        direction is relative to the largest of the leaf's scale, ``FLOOR`` times the
        largest leaf gradient norm, and the loss's rounding noise ``16·ε₆₄·|L|/fd_eps``
        over ``fd_rtol``. Each row of the report says which bound decided (``bound``).
      fd_eps: the finite-difference step.
      fd_directions: number of random directions per leaf.
      seed: seed of the random directions.

      raise_on_failure: raise :class:`GradientCheckError` instead of returning a failed report.

    Returns:
      A :class:`GradientReport`: ``report.ok``, ``report.failed``, ``str(report)``
      (a table with one row per parameter leaf, named like ``layers[2].W``).
    """
    x, y = check_batch(x, y)
    check_model_and_loss(model, loss, regularizer)
    if key is not None:
        check_key(key)
    in_shape = tuple(x.shape[1:])
    out_shape = check_params(model, params, in_shape)
    check_model_input(model, x, name="x")
    check_targets(loss, y, out_shape, name="y")
    if regularizer is not None:
        check_regularizer(regularizer, params)
    if state is None:
        state = model.init_state(in_shape)
    else:
        check_state(model, state, in_shape)
    dtype = _param_dtype(params)
    d_rtol, d_atol = default_tolerance(dtype)
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)

    def both(p, x, y, k, st):
        kw = dict(key=k, train=train, state=st)
        m = backprop(model, loss, regularizer=regularizer)(p, x, y, **kw)
        a = backprop(model, loss, regularizer=regularizer, grad_fn="autodiff")(p, x, y, **kw)
        return m.loss + m.penalty, m.grads, a.grads

    traced = jax.jit(both).trace(params, x, y, key, state)
    _, g_manual, g_auto = traced.out_info  # structures, before anything is compiled
    check_same_structure("params", params, "the hand-written gradient", g_manual)
    check_same_structure("params", params, "the jax.grad gradient", g_auto)
    value, g_manual, g_auto = traced.lower().compile()(params, x, y, key, state)

    pairs = [
        (name, np.asarray(gm, dtype=np.float64), np.asarray(ga, dtype=np.float64))
        for (name, gm), (_, ga) in zip(named_leaves(g_manual), named_leaves(g_auto))
    ]
    # the "others" floor: the largest autodiff gradient entry over all leaves
    top = max((float(np.max(np.abs(ga))) for _, _, ga in pairs if ga.size), default=0.0)
    rows = []
    for name, gm, ga in pairs:
        if gm.shape != ga.shape:
            rows.append(LeafCheck(name, tuple(ga.shape), float("inf"), float("inf"), False))
            continue
        abs_err = float(np.max(np.abs(gm - ga))) if gm.size else 0.0
        scale = float(np.max(np.abs(ga))) if ga.size else 0.0
        rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        bounds = {"atol": atol, "leaf": rtol * scale, "others": rtol * FLOOR * top}
        decided = max(bounds, key=bounds.__getitem__)
        ok = bool(np.isfinite(abs_err) and abs_err <= bounds[decided])
        rows.append(LeafCheck(name, tuple(ga.shape), abs_err, rel, ok, bound=decided))

    fd_noise = None
    if finite_differences:
        fd, fd_bounds, fd_noise = _fd_compare(
            model,
            loss,
            regularizer,
            params,
            x,
            y,
            key,
            train,
            state,
            fd_eps,
            fd_directions,
            seed,
            fd_rtol,
        )
        rows = [
            dataclasses.replace(r, fd_rel_err=e, ok_fd=bool(e <= fd_rtol), fd_bound=b)
            for r, e, b in zip(rows, fd, fd_bounds)
        ]

    report = GradientReport(
        tuple(rows),
        str(jnp.dtype(dtype)),
        rtol,
        atol,
        fd_rtol if finite_differences else None,
        float(value),
        scale=top,
        fd_noise=fd_noise,
    )
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _finite_differences(
    model, loss, regularizer, params, x, y, key, train, state, eps, n_dir, seed
):
    """Per leaf, the worst relative error of ⟨manual grad, v⟩ vs a central difference."""
    return _fd_compare(model, loss, regularizer, params, x, y, key, train, state, eps, n_dir, seed)[
        0
    ]


def _fd_compare(
    model, loss, regularizer, params, x, y, key, train, state, eps, n_dir, seed, fd_rtol=1e-5
):
    """``(errors, bounds, noise)`` of the finite-difference check, per leaf.

    For each of ``n_dir`` random unit directions ``v`` within a leaf, the error
    ``|numeric − ⟨manual grad, v⟩|`` is divided by the largest of

    - ``"leaf"``: the leaf's own scale ``max(|numeric|, |analytic|, ‖g_leaf‖)``;
    - ``"others"``: :data:`FLOOR` times the largest leaf gradient norm ``max_l ‖g_l‖``;
    - ``"loss"``: ``noise / fd_rtol`` where ``noise = FD_NOISE·ε₆₄·|L|/ε`` is the rounding
      noise of the two loss evaluations of a central difference (so that an error within
      that noise passes at ``fd_rtol``).

    ``errors`` holds the worst ratio per leaf, ``bounds`` the scale that decided it.
    """
    with _x64():
        p64 = cast(params, jnp.float64)
        x64 = cast(x, jnp.float64)
        y64 = cast(y, jnp.float64)

        s64 = cast(state, jnp.float64)

        def objective(p):
            value = loss.value(model.apply(p, x64, key=key, train=train, state=s64), y64)
            return value if regularizer is None else value + regularizer.value(p)

        value64, g64 = jax.jit(
            lambda p: value_and_grad(model, loss, regularizer=regularizer)(
                p, x64, y64, key=key, train=train, state=s64
            )
        )(p64)
        check_same_structure("params", p64, "the hand-written gradient (float64)", g64)
        leaves, treedef = jax.tree.flatten(p64)
        g_leaves = [np.asarray(g) for g in jax.tree.leaves(g64)]
        others = FLOOR * max((float(np.linalg.norm(g)) for g in g_leaves), default=0.0)
        noise = FD_NOISE * float(np.finfo(np.float64).eps) * abs(float(value64)) / eps
        rng = np.random.default_rng(seed)
        f = jax.jit(objective)
        errors, bounds = [], []
        for i, (leaf, g) in enumerate(zip(leaves, g_leaves)):
            leaf = jnp.asarray(leaf)
            if not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.size == 0:
                errors.append(0.0)
                bounds.append("leaf")
                continue
            worst, decided = -1.0, "leaf"
            for _ in range(n_dir):
                v = rng.standard_normal(leaf.shape)
                v /= np.linalg.norm(v)

                def shifted(s, v=v):
                    new = list(leaves)
                    new[i] = leaf + s * v
                    return jax.tree.unflatten(treedef, new)

                numeric = (float(f(shifted(eps))) - float(f(shifted(-eps)))) / (2 * eps)
                analytic = float(np.sum(g * v))
                scales = {
                    "leaf": max(abs(numeric), abs(analytic), float(np.linalg.norm(g))),
                    "others": others,
                    "loss": noise / fd_rtol,
                }
                which = max(scales, key=scales.get)
                err = abs(numeric - analytic) / max(scales[which], 1e-300)
                if err > worst:
                    worst, decided = err, which
            errors.append(max(worst, 0.0))
            bounds.append(decided)
        return errors, bounds, noise
