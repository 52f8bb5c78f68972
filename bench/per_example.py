"""Per-example gradient norms: from (input, delta) pairs vs materialising vs a Python loop.

MLP 784-512-512-10 (ReLU), softmax cross-entropy, float32, batches of 128 and 512.
Contenders, all jitted, in this process, interleaved round by round:

- ``norms (a, δ)``: :func:`jbp.per_example_grad_norms` — one batched forward and backward,
  ``‖∇Wᵢ‖² = ‖aᵢ‖²‖δᵢ‖²`` per Dense layer; nothing per-example is materialised.
- ``vmap materialise``: :func:`jbp.per_example_grads` (``vmap`` of the hand-written
  backward; ``batch × 670k`` floats) and then the norms.
- ``Python loop``: a jitted single-example gradient called once per example.
- for scale: ``batch gradient`` (one ``jbp.value_and_grad``), and per-example clipping
  ``clipped (a, δ)`` (:func:`jbp.per_example_clipped_grad`, a second backward) vs
  ``clipped vmap`` (materialise, clip, mean).

    python bench/per_example.py                  # batches 128 and 512
    python bench/per_example.py --batches 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.layers import Dense, ReLU
from jbp.per_example import per_example_clipped_grad, per_example_grad_norms, per_example_grads

LOSS = jbp.losses.softmax_cross_entropy


def contenders(model, clip):
    norms = jax.jit(per_example_grad_norms(model, LOSS))
    pe = per_example_grads(model, LOSS)

    @jax.jit
    def vmap_norms(params, x, y):
        g = pe(params, x, y)
        return jnp.sqrt(
            sum(jnp.sum(jnp.square(l.reshape(l.shape[0], -1)), axis=1) for l in jax.tree.leaves(g))
        )

    one = jax.jit(lambda p, xi, yi: jbp.value_and_grad(model, LOSS)(p, xi, yi)[1])

    @jax.jit
    def sq_norm(g):
        return sum(jnp.sum(jnp.square(l)) for l in jax.tree.leaves(g))

    def loop_norms(params, x, y):
        out = [sq_norm(one(params, x[i : i + 1], y[i : i + 1])) for i in range(x.shape[0])]
        return jnp.sqrt(jnp.stack(out))

    batch_grad = jax.jit(lambda p, x, y: jbp.value_and_grad(model, LOSS)(p, x, y)[1])
    clipped = jax.jit(lambda p, x, y: per_example_clipped_grad(model, LOSS, clip)(p, x, y)[0])

    @jax.jit
    def clipped_vmap(params, x, y):
        g = jax.lax.optimization_barrier(pe(params, x, y))  # materialise once, then reuse
        n = jnp.sqrt(
            sum(jnp.sum(jnp.square(l.reshape(l.shape[0], -1)), axis=1) for l in jax.tree.leaves(g))
        )
        s = jnp.minimum(1.0, clip / jnp.maximum(n, 1e-30))
        return jax.tree.map(lambda l: jnp.tensordot(s, l, axes=1) / l.shape[0], g)

    return {
        "norms (a, delta)": norms,
        "vmap materialise": vmap_norms,
        "Python loop": loop_norms,
        "batch gradient": batch_grad,
        "clipped (a, delta)": clipped,
        "clipped vmap": clipped_vmap,
    }


def timed(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-loop", action="store_true", help="skip the (slow) Python loop")
    args = ap.parse_args(argv)
    dev = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({dev.device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; "
        f"MLP 784-512-512-10 ReLU, softmax CE, float32; median of {args.repeats} after warm-up"
    )
    model = jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)])
    params, _ = model.init(jax.random.key(0), (784,))
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = jnp.asarray(rng.standard_normal((batch, 784)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
        fns = contenders(model, clip=1.0)
        if args.no_loop:
            fns.pop("Python loop")
        ref = np.asarray(fns["vmap materialise"](params, x, y))
        got = np.asarray(fns["norms (a, delta)"](params, x, y))
        err = float(np.max(np.abs(got - ref) / np.maximum(ref, 1e-12)))
        for f in fns.values():  # warm-up: compile
            timed(f, params, x, y)
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                times[k].append(timed(f, params, x, y))
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["norms (a, delta)"]
        print(f"\nbatch {batch}  (max rel. difference norms vs materialised: {err:.1e})")
        print(f"  {'contender':<22} {'median':>11} {'/ norms (a, delta)':>19}")
        for k, v in med.items():
            print(f"  {k:<22} {v * 1e3:>8.2f} ms {v / base:>18.1f}x")


if __name__ == "__main__":
    main()
