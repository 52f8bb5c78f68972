"""``check_layer``: prove one layer the way jbp's own suite proves every layer.

::

    report = jbp.testing.check_layer(MyLayer(8), (5,))
    print(report)             # one row per check, dtype and what decided it
    report.raise_if_failed()

For a layer and an input shape it checks, in float64 and in float32:

1. **backward vs ``jax.vjp``** of the layer's own forward — parameter gradients and ``dx``
   (integer inputs: ``dx`` must be ``float0``) — on random, non-uniform inputs and
   cotangents, at a batch of ``batch`` examples and at batch size 1, inside ``jax.jit``;
2. **under ``jax.vmap``**: the backward vmapped over a stack of batches equals the backward
   of each batch;
3. **inside ``lax.scan``**: forward + backward scanned over a stack of batches equals the
   batches one by one;
4. **every extension** (``BatchGrad``, ``BatchL2``, ``SumGradSquared``, ``Variance``,
   ``ClippedGrad``) against its definition from ``vmap(jax.grad)`` over single examples of
   the per-example loss ``ℓᵢ = ⟨yᵢ, cᵢ⟩`` (``cᵢ`` a random cotangent), skipped for layers
   that mix examples;
5. **finite differences** (float64 only): central differences of ``Σ ⟨y, c⟩`` along random
   directions of every parameter leaf and of the input, against the hand-written gradient.

Tolerances (norm-wise, ``max|manual − reference| ≤ rtol · max|reference| + atol``) are
:data:`TOLERANCES`; a comparison of two jbp computations of the same quantity (vmap, scan)
uses them too. It is a superset of ``torch.autograd.gradcheck`` and
``jax.test_util.check_grads`` for the layer protocol: those check a function's derivative;
this checks a hand-written backward, its batching, and every quantity derived from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jbp.core import unmasked as _values

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree


__all__ = ["check_layer", "LayerCheckReport", "CheckRow", "TOLERANCES", "assert_trees_close"]

#: (rtol, atol) by dtype for manual vs reference comparisons.
TOLERANCES = {"float64": (1e-10, 1e-13), "float32": (1e-4, 1e-6)}
#: relative tolerance of the float64 finite-difference check (central differences, eps 1e-6).
FD_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One comparison: ``check`` in ``dtype``; ``err`` is ``max|got − want|`` over all leaves,
    ``scale`` the largest ``|want|``; passes when ``err ≤ rtol·scale + atol``."""

    check: str
    dtype: str
    err: float
    scale: float
    rtol: float
    atol: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.err) and self.err <= self.rtol * self.scale + self.atol)


@dataclasses.dataclass(frozen=True)
class LayerCheckReport:
    """Every check of :func:`check_layer`: ``ok``, ``failed`` (names), ``str()`` a table."""

    layer: str
    rows: tuple

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> list:
        return [f"{r.check} [{r.dtype}]" for r in self.rows if not r.ok]

    def __bool__(self) -> bool:
        return self.ok

    def raise_if_failed(self) -> LayerCheckReport:
        if not self.ok:
            raise AssertionError(f"check_layer({self.layer}) failed: {self.failed}\n{self}")
        return self

    def __str__(self) -> str:
        head = f"{'check':<34} {'dtype':<8} {'max err':>10} {'scale':>10} {'bound':>10}  ok"
        lines = [f"check_layer: {self.layer}", head, "-" * len(head)]
        for r in self.rows:
            bound = r.rtol * r.scale + r.atol
            lines.append(
                f"{r.check:<34} {r.dtype:<8} {r.err:>10.2e} {r.scale:>10.2e} "
                f"{bound:>10.2e}  {'yes' if r.ok else 'NO'}" + (f"  {r.detail}" if r.detail else "")
            )
        lines.append("all checks pass" if self.ok else f"FAILED: {', '.join(self.failed)}")
        return "\n".join(lines)


def _err_scale(got, want):
    """Norm-wise error over two trees of the same structure (checked by the caller)."""
    err, scale = 0.0, 0.0
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g64.shape != w64.shape:
            return float("inf"), 0.0
        if g64.size:
            err = max(err, float(np.max(np.abs(g64 - w64))))
            scale = max(scale, float(np.max(np.abs(w64))))
    return err, scale


def _row(check, dtype, got, want, detail=""):
    rtol, atol = TOLERANCES[dtype]
    if jax.tree.structure(got) != jax.tree.structure(want):
        return CheckRow(
            check,
            dtype,
            float("inf"),
            0.0,
            rtol,
            atol,
            f"structure differs: {jax.tree.structure(got)} vs {jax.tree.structure(want)}",
        )
    err, scale = _err_scale(got, want)
    return CheckRow(check, dtype, err, scale, rtol, atol, detail)


def assert_trees_close(
    got: PyTree, want: PyTree, *, dtype: str | None = None, what: str = ""
) -> None:
    """Assert two pytrees match in structure, shapes, dtypes and values within
    :data:`TOLERANCES` (``dtype``: which row; default from ``want``'s leaves)."""
    assert jax.tree.structure(got) == jax.tree.structure(want), (  # type: ignore[operator]
        f"{what}: structure {jax.tree.structure(got)} != {jax.tree.structure(want)}"
    )
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        assert np.shape(g) == np.shape(w), f"{what} leaf {i}: shape {np.shape(g)} != {np.shape(w)}"
        assert jnp.result_type(g) == jnp.result_type(w), (
            f"{what} leaf {i}: dtype {jnp.result_type(g)} != {jnp.result_type(w)}"
        )
    if dtype is None:
        leaves = jax.tree.leaves(want)
        dtype = str(jnp.result_type(*leaves)) if leaves else "float64"
    row = _row(what or "trees", dtype if dtype in TOLERANCES else "float32", got, want)
    assert row.ok, (
        f"{what}: max err {row.err:.3e}, scale {row.scale:.3e} (rtol {row.rtol}, atol {row.atol})"
    )


class _Linear:
    """The loss ``L = (1/n) Σᵢ ⟨predᵢ, cᵢ⟩`` (targets = cotangents): its per-example gradient is
    the layer's vjp with ``cᵢ``, so every extension of a single layer has a plain reference."""

    name = "linear"

    @staticmethod
    def value(pred, c):
        pred = pred.values if hasattr(pred, "mask") else pred
        return jnp.sum(pred * c) / pred.shape[0]

    @staticmethod
    def grad(pred, c):
        pred = pred.values if hasattr(pred, "mask") else pred
        return (c / pred.shape[0]).astype(pred.dtype)


def check_layer(
    layer: Layer,
    in_shape: Sequence[int],
    *,
    batch: int = 3,
    params: PyTree = None,
    state: PyTree = None,
    train: bool = False,
    key: Array | None = None,
    mask: str | None = None,
    vocab: int | None = None,
    dtypes: Sequence[str] = ("float64", "float32"),
    extensions: bool = True,
    finite_differences: bool = True,
    fd_directions: int = 2,
    seed: int = 0,
) -> LayerCheckReport:
    """Check a layer's hand-written backward and everything derived from it.

    Args:
      layer: the layer (any :class:`jbp.Layer`, ``Sequential`` included).
      in_shape: the input shape without the batch axis (tuple of ints).
      batch: examples per batch (batch size 1 is always checked too).
      params: parameters to check at (default: ``layer.init`` perturbed by noise, so no
        gradient is trivially symmetric); cast to each dtype.
      state: the layer's non-trainable state (default ``layer.init_state``), cast likewise.
      train: forward in training mode (dropout masks depend on ``key``).
      key: the forward key (layers that need one, e.g. Dropout with ``train=True``).
      mask: ``"random"`` to feed ``Masked(x, mask)`` with a random padding mask (every
        sequence keeps at least one real step), or ``None``.
      vocab: integer inputs in ``[0, vocab)`` instead of floats (Embedding); ``dx`` must then
        be ``float0``.
      dtypes: which of ``"float64"``, ``"float32"`` to run (float64 needs ``jax_enable_x64``).
      extensions: also check every first-order extension against ``vmap(jax.grad)``.
      finite_differences: also run the float64 finite-difference spot check.
      fd_directions: random directions per parameter leaf (and for the input).
      seed: seeds the random data.

    Returns:
      A :class:`LayerCheckReport`.
    """
    from jbp.engine import backprop  # noqa: PLC0415
    from jbp.extensions import BatchGrad, BatchL2, ClippedGrad, SumGradSquared, Variance  # noqa: PLC0415
    from jbp.layers.masking import Masked  # noqa: PLC0415

    in_shape = tuple(int(d) for d in in_shape)
    rng = np.random.default_rng(seed)
    if params is None:
        p0, _ = layer.init(jax.random.key(seed), in_shape)
        p0 = jax.tree.map(
            lambda a: np.asarray(a, np.float64) + 0.3 * rng.standard_normal(np.shape(a)), p0
        )
    else:
        p0 = params
    s0 = layer.init_state(in_shape) if state is None else state
    rows = []
    do_ext = extensions and not layer.mixes_examples(train) and bool(jax.tree.leaves(p0))
    exts = (BatchGrad(), BatchL2(), SumGradSquared(), Variance(), ClippedGrad(1.0))
    # _Linear is a duck-typed loss (value, grad), not a jbp.losses.Loss subclass
    run = backprop(layer, _Linear(), extensions=exts) if do_ext else None  # type: ignore[arg-type]

    for dtype in dtypes:
        # config options are attributes that jax sets dynamically
        if dtype == "float64" and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            raise ValueError(
                "check_layer: dtype float64 needs jax.config.update('jax_enable_x64', True)"
            )
        dt = jnp.dtype(dtype)

        def cast(t, dt=dt):
            return jax.tree.map(
                lambda a: (
                    jnp.asarray(np.asarray(a, dt))
                    if np.issubdtype(np.asarray(a).dtype, np.floating)
                    else jnp.asarray(a)
                ),
                t,
            )

        P, S = cast(p0), cast(s0)

        def data(n, stack=(), dt=dt):
            shape = stack + (n,) + in_shape
            if vocab is not None:
                x = jnp.asarray(rng.integers(0, vocab, shape), jnp.int32)
            else:
                x = jnp.asarray(
                    np.asarray(rng.standard_normal(shape) * rng.uniform(0.5, 1.5, shape), dt)
                )
            m = None
            if mask == "random":
                lengths = rng.integers(1, in_shape[0] + 1, stack + (n,))
                m = jnp.asarray(np.arange(in_shape[0]) < lengths[..., None])
            return x, m

        def feed(x, m):
            return x if m is None else Masked(x, m)

        def fwd(p, x, m, S=S):
            return layer.forward_with_state(p, S, feed(x, m), key=key, train=train)

        def cot(x, m, P=P):
            o = jax.eval_shape(lambda p, v: _values(fwd(p, v, m)[0]), P, x)
            return jnp.asarray(
                np.asarray(rng.standard_normal(o.shape) * rng.uniform(0.5, 1.5, o.shape), o.dtype)
            )

        def fb(p, x, m, dy):
            _, cache, _ = fwd(p, x, m)
            grads, dx = layer.backward(p, cache, dy)
            return grads if vocab is not None else (grads, dx)  # float0 dx is not stackable

        def vjp_ref(p, x, m, dy):
            if vocab is not None:
                return jax.vjp(lambda q: _values(fwd(q, x, m)[0]), p)[1](dy)[0]
            return jax.vjp(lambda q, v: _values(fwd(q, v, m)[0]), p, x)[1](dy)

        def single_grads(p, x, m, c, S=S):
            def one(xi, mi, ci):
                def li(q):
                    mb = None if mi is None else mi[None]
                    y = layer.forward_with_state(q, S, feed(xi[None], mb), key=key, train=train)[0]
                    return jnp.sum(_values(y) * ci[None])

                return jax.grad(li)(p)

            return jax.vmap(one, in_axes=(0, None if m is None else 0, 0))(x, m, c)

        # every input drawn up front; then ONE compiled function per dtype computes it all
        sizes = sorted({batch, 1}, reverse=True)
        inputs = {}
        for n in sizes:
            x, m = data(n)
            inputs[n] = (x, m, cot(x, m))
        xs, ms = data(batch, (2,))
        x0 = np.asarray(xs)[0]
        m0 = None if ms is None else np.asarray(ms)[0]
        dys = jnp.asarray(np.stack([cot(x0, m0) for _ in range(2)]))
        xe, me = data(batch)
        ce = cot(xe, me)

        @jax.jit
        def everything(p, inputs, xs, ms, dys, xe, me, ce):
            out = {"direct": {n: (fb(p, *v), vjp_ref(p, *v)) for n, v in inputs.items()}}
            in_m = None if ms is None else 0
            out["vmap"] = jax.vmap(fb, in_axes=(None, 0, in_m, 0))(p, xs, ms, dys)
            out["scan"] = jax.lax.scan(lambda c, inp: (c, fb(p, *inp)), None, (xs, ms, dys))[1]
            out["each"] = [fb(p, xs[i], None if ms is None else ms[i], dys[i]) for i in range(2)]
            if run is not None:
                out["extras"] = run(p, feed(xe, me), ce, key=key, state=S, train=train).extras
                out["single"] = single_grads(p, xe, me, ce)
            return out

        res = everything(P, inputs, xs, ms, dys, xe, me, ce)
        for n in sizes:
            got, ref = res["direct"][n]
            if vocab is not None:
                rows.append(_row(f"params vs jax.vjp (batch {n})", dtype, got, ref))
            else:
                rows.append(_row(f"params vs jax.vjp (batch {n})", dtype, got[0], ref[0]))
                rows.append(_row(f"dx vs jax.vjp (batch {n})", dtype, got[1], ref[1]))
        if vocab is not None:
            x1, m1, c1 = inputs[sizes[0]]
            dx = jax.eval_shape(
                lambda p, x, m, c: layer.backward(p, fwd(p, x, m)[1], c)[1], P, x1, m1, c1
            )
            ok = dx.dtype == jax.dtypes.float0 and dx.shape == x1.shape
            rows.append(
                CheckRow(
                    "dx is float0 for integer input",
                    dtype,
                    0.0 if ok else float("inf"),
                    0.0,
                    0.0,
                    0.0,
                    "" if ok else f"got {dx.dtype} {dx.shape}",
                )
            )
        ref = jax.tree.map(lambda *a: np.stack(a), *res["each"])
        rows.append(_row("under vmap == per batch", dtype, res["vmap"], ref))
        rows.append(_row("inside lax.scan == per batch", dtype, res["scan"], ref))

        if run is not None:
            # the definitions, in numpy float64, from the per-example gradients of jax.grad
            g = jax.tree.map(lambda a: np.asarray(a, np.float64), res["single"])
            n = xe.shape[0]
            sq = jax.tree.map(lambda a: np.sum(np.square(a), axis=tuple(range(1, a.ndim))), g)
            norms = np.sqrt(sum(jax.tree.leaves(sq)))
            scale = np.minimum(1.0, 1.0 / np.maximum(norms, 1e-300))
            want = {
                "batch_grad": g,
                "batch_l2": sq,
                "sum_grad_squared": jax.tree.map(lambda a: np.sum(np.square(a), 0), g),
                "variance": jax.tree.map(lambda a: np.var(a, axis=0), g),
                "clipped_grad": jax.tree.map(lambda a: np.tensordot(scale, a, 1) / n, g),
            }
            for name, w in want.items():
                rows.append(_row(f"extension {name} vs vmap(grad)", dtype, res["extras"][name], w))

        if finite_differences and dtype == "float64":
            x, m, c = inputs[batch]
            got = res["direct"][batch][0]
            grads, dx = (got, None) if vocab is not None else got
            rows.extend(_finite_difference_rows(fwd, P, x, m, c, grads, dx, rng, fd_directions))
    return LayerCheckReport(repr(layer), tuple(rows))


def _finite_difference_rows(fwd, P, x, m, c, grads, dx, rng, n_dir):
    """Central differences of ``Σ⟨y, c⟩`` along random unit directions, per leaf and input."""
    f = jax.jit(lambda p, v: jnp.sum(_values(fwd(p, v, m)[0]) * c))
    eps = 1e-6
    x = np.asarray(x)
    rows = []
    leaves, treedef = jax.tree.flatten(P)
    g_leaves = jax.tree.leaves(grads)
    leaves = [np.asarray(a) for a in leaves]
    targets = [(f"leaf {i}", i) for i in range(len(leaves))] + (
        [] if dx is None else [("input", None)]
    )
    worst_err, worst_scale = 0.0, 0.0
    for _label, i in targets:
        base = x if i is None else leaves[i]
        if not np.issubdtype(base.dtype, np.floating) or base.size == 0:
            continue
        g = dx if i is None else g_leaves[i]
        for _ in range(n_dir):
            v = rng.standard_normal(base.shape)
            v /= np.linalg.norm(v)

            def at(s):
                if i is None:
                    return f(P, base + s * v)
                new = list(leaves)
                new[i] = base + s * v
                return f(jax.tree.unflatten(treedef, new), x)

            numeric = (float(at(eps)) - float(at(-eps))) / (2 * eps)
            analytic = float(np.sum(np.asarray(g, np.float64) * v))
            scale = max(abs(analytic), float(np.linalg.norm(np.asarray(g, np.float64))))
            if abs(numeric - analytic) - FD_RTOL * scale > worst_err - FD_RTOL * worst_scale:
                worst_err, worst_scale = abs(numeric - analytic), scale
    rows.append(
        CheckRow(
            "finite differences (directional)", "float64", worst_err, worst_scale, FD_RTOL, 1e-9
        )
    )
    return rows
