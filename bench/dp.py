"""DP-SGD step (clip + noise) vs the non-private step; per-example norms vs materialising.

Networks (float32, batch 256, softmax cross-entropy, SGD):

- MLP 784-512-512-10 (ReLU);
- the CNN of bench/layers.py: conv16-pool-conv32-pool-dense on 28x28x1.

Contenders, all jitted, in this process, warmed up, interleaved round by round (median):

- ``step``: :func:`jbp.train.make_train_step` (one forward, one backward);
- ``dp flat``: :func:`jbp.dp.make_private_step`, flat clipping (one forward, one backward
  with ``BatchL2`` and the book-keeping ``ClippedGrad``: each layer's clipped gradient from
  its own delta, no second pass), Gaussian noise σ = 1; target ≤ 1.3× ``step``;
- ``dp per-layer``: the same with ``clipping="per_layer"``;
- ``grad``: the batch gradient alone (:func:`jbp.value_and_grad`);
- ``norms (a, δ)``: :func:`jbp.per_example_grad_norms` (target ≤ 1.3× ``grad``), vs
  ``vmap materialise`` (:func:`jbp.per_example_grads`, then the norms): time and XLA's
  compiled temporary memory
  (``jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``).

    python bench/dp.py                       # both networks
    python bench/dp.py --repeats 3 --iters 3 --only mlp
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
from jbp.layers import Dense, ReLU
from jbp.per_example import per_example_grad_norms, per_example_grads

LOSS = jbp.losses.softmax_cross_entropy


def networks(rng, batch):
    mlp = jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)])
    cnn = bench_models.cnn()
    y = jnp.asarray(rng.integers(0, 10, batch))
    return {
        "mlp": (
            "MLP 784-512-512-10",
            mlp,
            jnp.asarray(rng.standard_normal((batch, 784)), jnp.float32),
            y,
        ),
        "cnn": (
            "CNN conv16-pool-conv32-pool-dense 28x28",
            cnn,
            jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), jnp.float32),
            y,
        ),
    }


def temp_bytes(fn, *args):
    try:
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 - not every backend reports it
        return float("nan")


def bench(name, model, x, y, iters, repeats):
    params, _ = model.init(jax.random.key(0), tuple(x.shape[1:]))
    opt = jbp.optim.sgd(0.01)
    s0 = opt.init(params)
    b = x.shape[0]
    steps = {
        "step": jax.jit(jbp.train.make_train_step(model, LOSS, opt)),
        "dp flat": jax.jit(
            jbp.dp.make_private_step(
                model, LOSS, opt, max_norm=1.0, noise_multiplier=1.0, expected_batch_size=float(b)
            )
        ),
        "dp per-layer": jax.jit(
            jbp.dp.make_private_step(
                model,
                LOSS,
                opt,
                max_norm=1.0,
                noise_multiplier=1.0,
                expected_batch_size=float(b),
                clipping="per_layer",
            )
        ),
    }
    norms = jax.jit(per_example_grad_norms(model, LOSS))
    grad = jax.jit(jbp.value_and_grad(model, LOSS))
    pe = per_example_grads(model, LOSS)

    def vmap_norms(p, xx, yy):
        g = pe(p, xx, yy)
        return jnp.sqrt(
            sum(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1) for a in jax.tree.leaves(g))
        )

    funcs = {k: (lambda f=f: _run_steps(f, params, s0, x, y, iters)) for k, f in steps.items()}
    funcs["grad"] = lambda: _run_calls(grad, params, x, y, iters)
    funcs["norms (a, delta)"] = lambda: _run_calls(norms, params, x, y, iters)
    vm = jax.jit(vmap_norms)
    funcs["vmap materialise"] = lambda: _run_calls(vm, params, x, y, iters)
    for f in funcs.values():  # compile + warm up
        f()
        f()
    samples = {k: [] for k in funcs}
    for _ in range(repeats):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            samples[k].append((time.perf_counter() - t0) / iters)
    med = {k: statistics.median(v) for k, v in samples.items()}
    mem = {
        "norms (a, delta)": temp_bytes(per_example_grad_norms(model, LOSS), params, x, y),
        "vmap materialise": temp_bytes(vmap_norms, params, x, y),
    }
    print(f"\n{name}, batch {b}")
    for k in steps:
        print(f"  {k:<18} {med[k] * 1e3:9.2f} ms   {med[k] / med['step']:6.2f}x step")
    print(f"  {'grad':<18} {med['grad'] * 1e3:9.2f} ms   {med['grad'] / med['step']:6.2f}x step")
    for k in mem:
        print(
            f"  {k:<18} {med[k] * 1e3:9.2f} ms   {med[k] / med['grad']:6.2f}x grad   "
            f"temp {mem[k] / 2**20:9.2f} MiB"
        )
    print(
        f"  norms: materialise / (a, delta) = {med['vmap materialise'] / med['norms (a, delta)']:.2f}x "
        f"time, {mem['vmap materialise'] / max(mem['norms (a, delta)'], 1):.1f}x temp memory"
    )
    return med


def _run_steps(step, params, s, x, y, iters):
    key = jax.random.key(1)
    for i in range(iters):
        params, s, m, _ = step(params, s, x, y, jax.random.fold_in(key, i))
    jax.block_until_ready(params)


def _run_calls(f, params, x, y, iters):
    for _ in range(iters):
        out = f(params, x, y)
    jax.block_until_ready(out)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5, help="calls per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is kept")
    ap.add_argument("--only", choices=["mlp", "cnn"], default=None)
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; float32; "
        f"median of {args.repeats} rounds x {args.iters} calls"
    )
    for key, (name, model, x, y) in networks(np.random.default_rng(0), args.batch).items():
        if args.only in (None, key):
            bench(name, model, x, y, args.iters, args.repeats)


if __name__ == "__main__":
    main()
