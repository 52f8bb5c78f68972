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
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jbp._validate import check_batch, check_same_structure
from jbp.core import cast, named_leaves
from jbp.engine import backprop, value_and_grad

__all__ = ["check_gradients", "GradientReport", "LeafCheck", "GradientCheckError", "default_tolerance"]


class GradientCheckError(AssertionError):
    """Raised by :meth:`GradientReport.raise_if_failed` when a leaf disagrees."""


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One parameter leaf: errors of the hand-written gradient against each oracle.

    ``abs_err`` is ``max |manual − autodiff|``; ``rel_err`` divides it by
    ``max |autodiff|`` (a norm-wise relative error, stable when entries are near zero).
    ``fd_rel_err`` is the worst relative error of ``⟨manual, v⟩`` against the central
    difference over the random directions ``v`` (``None`` when not computed).
    """

    name: str
    shape: tuple
    abs_err: float
    rel_err: float
    ok_autodiff: bool
    fd_rel_err: Optional[float] = None
    ok_fd: Optional[bool] = None

    @property
    def ok(self) -> bool:
        return self.ok_autodiff and (self.ok_fd is not False)


@dataclasses.dataclass(frozen=True)
class GradientReport:
    leaves: tuple
    dtype: str
    rtol: float
    atol: float
    fd_rtol: Optional[float]
    loss_value: float

    @property
    def ok(self) -> bool:
        return all(l.ok for l in self.leaves)

    @property
    def failed(self) -> list:
        """Names of the leaves that disagree."""
        return [l.name for l in self.leaves if not l.ok]

    def raise_if_failed(self) -> "GradientReport":
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
        head += "  ok"
        lines = [f"gradient check ({self.dtype}; rtol={self.rtol:g}, atol={self.atol:g}"
                 + (f", finite differences in float64 rtol={self.fd_rtol:g}" if fd else "")
                 + f"); loss = {self.loss_value:.6g}", head, "-" * len(head)]
        for l in self.leaves:
            row = f"{l.name:<22} {str(l.shape):<14} {l.abs_err:>21.3e} {l.rel_err:>10.2e}"
            if fd:
                row += f" {l.fd_rel_err:>19.2e}" if l.fd_rel_err is not None else f" {'-':>19}"
            row += "  " + ("yes" if l.ok else "NO")
            lines.append(row)
        lines.append("all gradients agree" if self.ok else f"MISMATCH in {', '.join(self.failed)}")
        return "\n".join(lines)


def default_tolerance(dtype) -> tuple[float, float]:
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
    leaves = [l for l in jax.tree.leaves(params) if jnp.issubdtype(jnp.asarray(l).dtype, jnp.floating)]
    if not leaves:
        raise ValueError("params: the model has no floating-point parameters to check")
    return jnp.result_type(*leaves)


def check_gradients(model, loss, params, x, y, *, key=None, train=True, state=None,
                    regularizer=None,
                    finite_differences: bool = True, rtol: Optional[float] = None,
                    atol: Optional[float] = None, fd_rtol: float = 1e-5, fd_eps: float = 1e-6,
                    fd_directions: int = 3, seed: int = 0,
                    raise_on_failure: bool = False) -> GradientReport:
    """Compare the hand-written gradient with ``jax.grad`` and finite differences.

    Args:
      model, loss, params, x, y, key, train, state, regularizer: as for :func:`jbp.backprop`
        (the same ``key`` is used by every oracle, so dropout masks agree). The trees of
        the hand-written and the autodiff gradient must have the structure of ``params``:
        a backward that omits or adds a leaf fails with an error naming it.
      finite_differences: also check against central differences, in float64.
      rtol, atol: manual vs autodiff tolerance on ``max|manual − autodiff|``, passing when
        ``≤ atol + rtol·max|autodiff|``. Defaults depend on the params' dtype
        (float64: 1e-9/1e-12; float32: 2e-4/1e-6).
      fd_rtol, fd_eps, fd_directions, seed: the finite-difference check's relative
        tolerance, step, number of random directions per leaf, and their seed.
      raise_on_failure: raise :class:`GradientCheckError` instead of returning a failed report.

    Returns:
      A :class:`GradientReport`: ``report.ok``, ``report.failed``, ``str(report)``
      (a table with one row per parameter leaf, named like ``layers[2].W``).
    """
    x, y = check_batch(x, y)
    if state is None:
        state = model.init_state(tuple(x.shape[1:]))
    dtype = _param_dtype(params)
    d_rtol, d_atol = default_tolerance(dtype)
    rtol = d_rtol if rtol is None else float(rtol)
    atol = d_atol if atol is None else float(atol)

    def both(p, x, y, k, st):
        kw = dict(key=k, train=train, state=st)
        m = backprop(model, loss, regularizer=regularizer)(p, x, y, **kw)
        a = backprop(model, loss, regularizer=regularizer, grad_fn="autodiff")(p, x, y, **kw)
        return m.loss + m.penalty, m.grads, a.grads

    value, g_manual, g_auto = jax.jit(both)(params, x, y, key, state)
    check_same_structure("params", params, "the hand-written gradient", g_manual)
    check_same_structure("params", params, "the jax.grad gradient", g_auto)

    rows = []
    for (name, gm), (_, ga) in zip(named_leaves(g_manual), named_leaves(g_auto)):
        gm = np.asarray(gm, dtype=np.float64)
        ga = np.asarray(ga, dtype=np.float64)
        if gm.shape != ga.shape:
            rows.append(LeafCheck(name, tuple(ga.shape), float("inf"), float("inf"), False))
            continue
        abs_err = float(np.max(np.abs(gm - ga))) if gm.size else 0.0
        scale = float(np.max(np.abs(ga))) if ga.size else 0.0
        rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        ok = bool(np.isfinite(abs_err) and abs_err <= atol + rtol * scale)
        rows.append(LeafCheck(name, tuple(ga.shape), abs_err, rel, ok))

    if finite_differences:
        fd = _finite_differences(model, loss, regularizer, params, x, y, key, train, state,
                                 fd_eps, fd_directions, seed)
        rows = [dataclasses.replace(r, fd_rel_err=e, ok_fd=bool(e <= fd_rtol))
                for r, e in zip(rows, fd)]

    report = GradientReport(tuple(rows), str(jnp.dtype(dtype)), rtol, atol,
                            fd_rtol if finite_differences else None, float(value))
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _finite_differences(model, loss, regularizer, params, x, y, key, train, state, eps, n_dir,
                        seed):
    """Per leaf, the worst relative error of ⟨manual grad, v⟩ vs a central difference."""
    with _x64():
        p64 = cast(params, jnp.float64)
        x64 = cast(x, jnp.float64)
        y64 = cast(y, jnp.float64)

        s64 = cast(state, jnp.float64)

        def objective(p):
            value = loss.value(model.apply(p, x64, key=key, train=train, state=s64), y64)
            return value if regularizer is None else value + regularizer.value(p)

        _, g64 = jax.jit(lambda p: value_and_grad(model, loss, regularizer=regularizer)(
            p, x64, y64, key=key, train=train, state=s64))(p64)
        leaves, treedef = jax.tree.flatten(p64)
        g_leaves = jax.tree.leaves(g64)
        rng = np.random.default_rng(seed)
        f = jax.jit(objective)
        errors = []
        for i, (leaf, g) in enumerate(zip(leaves, g_leaves)):
            leaf = jnp.asarray(leaf)
            if not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.size == 0:
                errors.append(0.0)
                continue
            worst = 0.0
            for _ in range(n_dir):
                v = rng.standard_normal(leaf.shape)
                v /= np.linalg.norm(v)

                def shifted(s, v=v):
                    new = list(leaves)
                    new[i] = leaf + s * v
                    return jax.tree.unflatten(treedef, new)

                numeric = (float(f(shifted(eps))) - float(f(shifted(-eps)))) / (2 * eps)
                analytic = float(np.sum(np.asarray(g) * v))
                scale = max(abs(numeric), abs(analytic), float(np.linalg.norm(np.asarray(g))), 1e-12)
                worst = max(worst, abs(numeric - analytic) / scale)
            errors.append(worst)
        return errors
