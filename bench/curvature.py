"""Curvature from the hand-written backward: cost relative to a plain jitted gradient.

For each network (the MLP 784-512-512-10 of bench/step.py and the CNN of bench/layers.py,
batch 128, softmax cross-entropy over 10 classes) every contender is one ``jax.jit``-ed
call of ``jbp.backprop`` returning the gradient plus the extension's result:

- ``grad``: the gradient alone (the baseline);
- ``DiagGGNMC``, ``KFAC``: one sampled column backpropagated (targets ≤ 2×);
- ``DiagGGN``: the exact loss-Hessian factor, one column per output (target ≤ outputs + 1 = 11×);
- ``KFLR``: the same columns, Kronecker factors.

Then two training steps (``jbp.make_train_step``, jitted): K-FAC (``optim.kfac``,
inverses refreshed every 10 steps inside the step, so rounds are multiples of 10 steps) vs
Adam (target ≤ 1.5×), with XLA's count of the floating-point operations of each piece: the
Adam step, the pass with the ``KFAC`` extension, the preconditioning ``Ā G B̄`` of every leaf
and one refresh of all damped inverses. Their ratio, ``(pass + preconditioning + refresh / 10)
/ Adam``, bounds the time ratio from below when both steps run at the same FLOP rate (the
MLP: all matrix products); the CNN's Adam step runs its convolutions at a lower rate than the
K-FAC step's products, so there the time ratio can be lower.

Where the CNN's time went (XLA CPU, jax 0.10.2; jbp/extensions/curvature.py): ``Conv2D``'s
per-example kernel gradients as a correlation grouped by example ran 2.5–5× slower than
batched matrix products of the input patches with the deltas; a program whose temporaries
exceed 32 MiB (glibc malloc's largest dynamic mmap threshold) gets them from a fresh ``mmap``
on every call and page-faults through all of them (the one-column programs crossed it with
the patches: they are now formed in chunks of examples); and one ``vmap`` over DiagGGN's 10
columns (187 MiB of temporaries) ran slower than 10 separate walks. Check a program's
temporaries with ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``.

All contenders run in this process on the same data: compile and warm up, then ``--repeats``
rounds in which the contenders alternate, each timing ``--iters`` calls; the median per-call
time and its ratio to the baseline are printed (and the ratio of the fastest rounds, steadier
on a loaded machine).

    python bench/curvature.py                       # both networks, batch 128
    python bench/curvature.py --only mlp --iters 10 --repeats 5
    python bench/curvature.py --steps-only --iters 2 --repeats 5   # the training steps only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import models as bench_models  # bench/models.py: the benchmarks' CNN
import numpy as np

import jbp
from jbp import losses, optim
from jbp.extensions import KFAC, KFLR, DiagGGN, DiagGGNMC, KronFactors
from jbp.layers import Dense, ReLU


def grad_call(model, loss, ext):
    run = jbp.backprop(model, loss, extensions=() if ext is None else (ext,))

    @jax.jit
    def f(params, x, y, key):
        out = run(params, x, y, key=key)
        return out.grads, out.extras

    return lambda carry, x, y, key: (carry, f(carry, x, y, key))


def step_call(model, loss, opt):
    step = jax.jit(jbp.make_train_step(model, loss, opt))

    def f(carry, x, y, key):
        params, state = carry
        params, state, logs, _ = step(params, state, x, y, key)
        return (params, state), logs

    return f


def xla_gflop(fn, *args):
    """XLA's count of floating-point operations of ``jax.jit(fn)(*args)``, in GFLOP."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9


def kfac_flop_count(model, loss, params, x, y, every=10):
    """GFLOP of the Adam step and of the K-FAC step's pieces; prints them and the bound."""
    from jbp.optim.kfac import _damped_inverses  # noqa: PLC0415

    key = jax.random.key(0)
    adam = optim.adam(1e-3)
    step = jbp.make_train_step(model, loss, adam)
    run = jbp.backprop(model, loss, extensions=(KFAC(),))
    out = jax.jit(run)(params, x, y, key=key)
    factors = jax.tree.leaves(out.extras["kfac"], is_leaf=lambda f: isinstance(f, KronFactors))
    grads = jax.tree.leaves(out.grads)

    def precondition(gs, fs):
        return [
            jnp.matmul(jnp.matmul(f.A, g.reshape(f.A.shape[0], f.B.shape[0])), f.B)
            for g, f in zip(gs, fs)
        ]

    count = {
        "Adam step": xla_gflop(lambda p, s: step(p, s, x, y, key), params, adam.init(params)),
        "pass + KFAC": xla_gflop(lambda p: run(p, x, y, key=key), params),
        "precondition": xla_gflop(precondition, grads, factors),
        "refresh": xla_gflop(lambda fs: _damped_inverses(fs, 1e-2), factors),
    }
    kfac = count["pass + KFAC"] + count["precondition"] + count["refresh"] / every
    print(
        "XLA FLOP count (GFLOP): "
        + ", ".join(f"{k} {v:.3f}" for k, v in count.items())
        + f"; K-FAC step {kfac:.3f} = {kfac / count['Adam step']:.1f}x the Adam step's FLOPs"
    )
    return count


def timed(fn, carry, x, y, key, iters):
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
        carry, out = fn(carry, x, y, key)
    jax.block_until_ready((carry, out))
    return (time.perf_counter() - t0) / iters, carry


def compare(title, contenders, baseline, x, y, iters, repeats):
    """``contenders``: name -> (fn, initial carry, iterations multiplier)."""
    key = jax.random.key(0)
    carries = {}
    for name, (fn, carry, _mult) in contenders.items():  # compile + warm up
        for _ in range(2):
            carry, out = fn(carry, x, y, key)
        jax.block_until_ready((carry, out))
        carries[name] = carry
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (fn, _, mult) in contenders.items():
            dt, carries[name] = timed(fn, carries[name], x, y, key, iters * mult)
            samples[name].append(dt)
    med = {k: statistics.median(v) for k, v in samples.items()}
    best = {k: min(v) for k, v in samples.items()}
    print(f"\n{title}")
    print(f"{'contender':<26} {'per call':>12} {'ratio':>8} {'min ratio':>10}")
    for name in contenders:
        print(
            f"{name:<26} {med[name] * 1e3:>9.2f} ms {med[name] / med[baseline]:>7.2f}x "
            f"{best[name] / best[baseline]:>9.2f}x",
            flush=True,
        )
    return {k: med[k] / med[baseline] for k in contenders}


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10, help="calls per timed round (steps: ×10)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per contender")
    ap.add_argument("--only", choices=["mlp", "cnn"], default=None)
    ap.add_argument(
        "--steps-only", action="store_true", help="only the K-FAC vs Adam training steps"
    )
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; float32; "
        f"batch {args.batch}; median of {args.repeats} alternating rounds"
    )
    rng = np.random.default_rng(0)
    loss = losses.softmax_cross_entropy
    nets = {}
    if args.only in (None, "mlp"):
        nets["mlp"] = (
            "MLP 784-512-512-10 (ReLU)",
            jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)]),
            rng.standard_normal((args.batch, 784)),
        )
    if args.only in (None, "cnn"):
        nets["cnn"] = (
            "CNN conv16-pool-conv32-pool-dense, 28x28",
            bench_models.cnn(),
            rng.standard_normal((args.batch, 28, 28, 1)),
        )
    ratios = {}
    for tag, (title, model, x) in nets.items():
        x = jnp.asarray(x, jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, args.batch))
        params, _ = model.init(jax.random.key(0), x.shape[1:])
        if not args.steps_only:
            exts = {
                "grad": None,
                "DiagGGNMC(samples=1)": DiagGGNMC(),
                "KFAC(samples=1)": KFAC(),
                "DiagGGN (10 columns)": DiagGGN(),
                "KFLR (10 columns)": KFLR(),
            }
            ratios[tag] = compare(
                f"{title}: one pass, gradient + extension",
                {k: (grad_call(model, loss, e), params, 1) for k, e in exts.items()},
                "grad",
                x,
                y,
                args.iters,
                args.repeats,
            )
        kfac, adam = optim.kfac(1e-2, damping=1e-2, inverse_every=10), optim.adam(1e-3)
        ratios[tag + "_step"] = compare(
            f"{title}: training step (K-FAC inverses every 10 steps)",
            {
                "Adam step": (step_call(model, loss, adam), (params, adam.init(params)), 10),
                "K-FAC step": (step_call(model, loss, kfac), (params, kfac.init(params)), 10),
            },
            "Adam step",
            x,
            y,
            args.iters,
            args.repeats,
        )
        ratios[tag + "_flops"] = kfac_flop_count(model, loss, params, x, y)
    return ratios


if __name__ == "__main__":
    main()
