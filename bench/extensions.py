"""First-order extensions: their cost next to a plain gradient and next to vmap(jax.grad).

Every contender is one ``jax.jit``-ed function of ``(params, x, y)``, float32, softmax
cross-entropy; all run in this process on the same data: compile and warm up, then
``--repeats`` rounds, the contenders alternating round by round (so drifting machine load
hits them alike), each round timing ``--iters`` calls; medians are reported, with ratios.

1. **Overhead** (MLP 784-512-512-10 and CNN conv16-pool-conv32-pool-dense, batch 128): the
   plain hand-written gradient (``jbp.backprop`` without extensions) vs the same pass with
   ``BatchL2 + SumGradSquared + Variance`` (target ≤ 1.5×) vs ``BatchGrad`` alone, which
   must write ``batch × parameters`` floats: it is also compared with that memory floor (a
   jitted function that writes the same ``(batch, *leaf.shape)`` arrays and nothing else).
2. **vs vmap(jax.grad)** (MLP batch 256; CNN batch 128): each extension against the same
   quantity computed from ``jax.vmap(jax.grad(ℓᵢ))`` over single examples (target ≥ 10×
   faster, BatchGrad excepted: both materialise the same per-example gradients). On the CNN
   also the compiled temporary memory (``memory_analysis().temp_size_in_bytes``).
3. **Wide CNN** conv64-pool-conv128-pool-dense: per-example gradient norms (``BatchL2``)
   vs ``vmap(jax.grad)``, time and temporary memory.

The results of each extension are checked against the ``vmap(jax.grad)`` values first (max
relative difference printed).

    python bench/extensions.py
    python bench/extensions.py --iters 2 --repeats 3 --wide-batch 32     # brief
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's jbp, not an install
import jbp  # noqa: E402
from jbp.extensions import BatchGrad, BatchL2, ClippedGrad, SumGradSquared, Variance  # noqa: E402
from jbp.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU  # noqa: E402

LOSS = jbp.losses.softmax_cross_entropy
CLIP = 1.0
EXTS = {
    "batch_grad": BatchGrad(),
    "batch_l2": BatchL2(),
    "sum_grad_squared": SumGradSquared(),
    "variance": Variance(),
    "clipped_grad": ClippedGrad(CLIP),
}


def mlp():
    return jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)]), (784,)


def cnn(c1=16, c2=32):
    return jbp.Sequential(
        [
            Conv2D(c1, 3),
            ReLU(),
            MaxPool2D(2),
            Conv2D(c2, 3),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dense(10),
        ]
    ), (28, 28, 1)


# --- contenders -------------------------------------------------------------------------


def engine(model, exts, pick):
    run = jbp.backprop(model, LOSS, extensions=exts)
    return jax.jit(lambda p, x, y: pick(run(p, x, y)))


def plain_grad(model):
    return engine(model, (), lambda out: out.grads)


def from_vmap_grad(model, name):
    """The quantity ``name`` from the per-example gradients of ``vmap(jax.grad)``."""

    def one(p, xi, yi):
        return LOSS.value(model.apply(p, xi[None]), yi[None])

    per_example = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))

    def sq_norms(g):
        return jax.tree.map(lambda a: jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1), g)

    @jax.jit
    def f(p, x, y):
        g = per_example(p, x, y)
        if name == "batch_grad":
            return g
        if name == "batch_l2":
            return sq_norms(g)
        if name == "sum_grad_squared":
            return jax.tree.map(lambda a: jnp.sum(jnp.square(a), axis=0), g)
        if name == "variance":
            return jax.tree.map(lambda a: jnp.var(a, axis=0), g)
        norms = jnp.sqrt(sum(jax.tree.leaves(sq_norms(g))))
        s = jnp.minimum(1.0, CLIP / jnp.maximum(norms, 1e-30))
        return jax.tree.map(lambda a: jnp.tensordot(s, a, axes=1) / a.shape[0], g)

    return f


def write_floor(params, n):
    """Writes ``(n, *leaf.shape)`` for every leaf (reads the parameters once): the least any
    per-example gradient must cost."""

    def f(p, x, y):
        s = x.reshape(-1)[0]  # data-dependent: nothing is constant-folded
        return jax.tree.map(lambda a: jnp.broadcast_to(a * s, (n,) + a.shape), p)

    return jax.jit(f)


# --- measuring --------------------------------------------------------------------------


def race(fns, args, iters, repeats):
    """Median seconds per call of each function: warm-up, then alternating rounds."""
    for f in fns.values():
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                out = f(*args)
            jax.block_until_ready(out)
            samples[k].append((time.perf_counter() - t0) / iters)
            del out  # free a large result now, not inside the next contender's timed round
    return {k: statistics.median(v) for k, v in samples.items()}


def temp_mb(f, *args):
    """Compiled temporary memory of ``f`` (a ``jax.jit`` function), in MB."""
    return f.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def max_rel_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(
        float(jnp.max(jnp.abs(u - v))) / max(float(jnp.max(jnp.abs(v))), 1e-30)
        for u, v in zip(la, lb)
    )


def data(in_shape, n, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n,) + in_shape), jnp.float32)
    return x, jnp.asarray(rng.integers(0, 10, n), jnp.int32)


def n_params(params):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


# --- the three sections -------------------------------------------------------------------


def overhead(name, model, in_shape, batch, iters, repeats):
    params, _ = model.init(jax.random.key(0), in_shape)
    x, y = data(in_shape, batch)
    P = n_params(params)
    fns = {
        "gradient": plain_grad(model),
        "BatchL2+SGS+Variance": engine(
            model, (BatchL2(), SumGradSquared(), Variance()), lambda out: (out.grads, out.extras)
        ),
        "BatchGrad": engine(model, (BatchGrad(),), lambda out: (out.grads, out.extras)),
        "write floor": write_floor(params, batch),
    }
    med = race(fns, (params, x, y), iters, repeats)
    t0, floor = med["gradient"], med["write floor"]
    gb = batch * P * 4 / 1e9
    print(
        f"\n{name}, batch {batch}: {P:,} parameters; BatchGrad writes {batch} × {P:,} floats "
        f"= {gb:.2f} GB"
    )
    print(f"  {'contender':<24} {'median':>11} {'/ gradient':>11} {'/ write floor':>14}")
    for k, v in med.items():
        print(f"  {k:<24} {v * 1e3:>8.2f} ms {v / t0:>10.2f}x {v / floor:>13.2f}x")
    print(
        f"  (write floor: {gb / floor:.1f} GB/s; target BatchL2+SGS+Variance ≤ 1.5× gradient: "
        f"{med['BatchL2+SGS+Variance'] / t0:.2f}×)"
    )


def versus_vmap(name, model, in_shape, batch, iters, repeats, memory=False, only=None):
    params, _ = model.init(jax.random.key(0), in_shape)
    x, y = data(in_shape, batch)
    args = (params, x, y)
    print(f"\n{name}, batch {batch}: each extension vs the same quantity from vmap(jax.grad)")
    head = (
        f"  {'extension':<18} {'jbp':>11} {'vmap(grad)':>12} {'speed-up':>9} {'max rel diff':>13}"
    )
    if memory:
        head += f" {'temp jbp':>10} {'temp vmap':>10}"
    print(head)
    for ext_name in only or EXTS:
        ext = EXTS[ext_name]
        fns = {
            "jbp": engine(model, (ext,), lambda out, k=ext_name: out.extras[k]),
            "vmap": from_vmap_grad(model, ext_name),
        }
        diff = max_rel_diff(fns["jbp"](*args), fns["vmap"](*args))
        med = race(fns, args, iters, repeats)
        row = (
            f"  {ext_name:<18} {med['jbp'] * 1e3:>8.2f} ms {med['vmap'] * 1e3:>9.2f} ms "
            f"{med['vmap'] / med['jbp']:>8.1f}x {diff:>13.1e}"
        )
        if memory:
            row += f" {temp_mb(fns['jbp'], *args):>7.1f} MB {temp_mb(fns['vmap'], *args):>7.1f} MB"
        print(row, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=5, help="calls per timed round")
    ap.add_argument(
        "--repeats", type=int, default=7, help="rounds per contender; the median is kept"
    )
    ap.add_argument("--batch", type=int, default=128, help="batch of the overhead and CNN sections")
    ap.add_argument("--mlp-batch", type=int, default=256, help="batch of the MLP vs vmap section")
    ap.add_argument("--wide-batch", type=int, default=128, help="batch of the wide CNN")
    ap.add_argument("--only", choices=["overhead", "vmap", "wide"], default=None)
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({dev.device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; float32; "
        f"median of {args.repeats} alternating rounds of {args.iters} calls; jbp from "
        f"{Path(jbp.__file__).parent}"
    )
    it, rep = args.iters, args.repeats
    if args.only in (None, "overhead"):
        overhead("MLP 784-512-512-10", *mlp(), args.batch, it, rep)
        overhead("CNN conv16-pool-conv32-pool-dense", *cnn(), args.batch, it, rep)
    if args.only in (None, "vmap"):
        versus_vmap("MLP 784-512-512-10", *mlp(), args.mlp_batch, it, rep)
        versus_vmap("CNN conv16-pool-conv32-pool-dense", *cnn(), args.batch, it, rep, memory=True)
    if args.only in (None, "wide"):
        versus_vmap(
            "wide CNN conv64-pool-conv128-pool-dense",
            *cnn(64, 128),
            args.wide_batch,
            it,
            rep,
            memory=True,
            only=("batch_l2",),
        )


if __name__ == "__main__":
    main()
