"""One training step, hand-written backward vs jax.value_and_grad, side by side.

A step is forward, loss, backward and a plain SGD update, all inside one ``jax.jit``.
Both contenders run in this process on the same data: warm-up (compile), then
``--repeats`` rounds of ``--iters`` steps each, alternating between the contenders; the
median per-step time is reported with the ratio manual / autodiff (< 1 means the
hand-written backward is faster).

    python bench/step.py            # MLP 784-512-512-10 and a deep narrow sigmoid net, batch 128
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
from jbp import losses
from jbp.layers import Dense, ReLU, Sigmoid


def make_step(model, loss, manual: bool, lr: float = 0.1):
    grad_fn = (jbp.value_and_grad if manual else jbp.autodiff_value_and_grad)(model, loss)

    @jax.jit
    def step(params, x, y):
        value, grads = grad_fn(params, x, y)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), value

    return step


def warm(step, params, x, y):
    p, v = step(params, x, y)  # compile
    for _ in range(3):
        p, v = step(p, x, y)
    jax.block_until_ready(p)
    return p


def one_round(step, p, x, y, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        p, _ = step(p, x, y)
    jax.block_until_ready(p)
    return (time.perf_counter() - t0) / iters, p


def bench(name, model, in_dim, n_classes, batch, iters, repeats):
    params, _ = model.init(jax.random.key(0), (in_dim,))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, in_dim)), jnp.float32)
    y = jnp.asarray(rng.integers(0, n_classes, batch))
    loss = losses.softmax_cross_entropy
    steps = {"manual": make_step(model, loss, True), "autodiff": make_step(model, loss, False)}
    state = {k: warm(f, params, x, y) for k, f in steps.items()}
    samples = {k: [] for k in steps}
    # Rounds alternate between the contenders so drifting machine load hits both alike.
    for _ in range(repeats):
        for k, f in steps.items():
            t, state[k] = one_round(f, state[k], x, y, iters)
            samples[k].append(t)
    tm, ta = statistics.median(samples["manual"]), statistics.median(samples["autodiff"])
    print(f"{name:<34} {tm * 1e6:>10.1f} us {ta * 1e6:>12.1f} us {tm / ta:>8.3f}x")
    return tm / ta


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=50, help="steps per timed round")
    ap.add_argument(
        "--repeats", type=int, default=15, help="timed rounds per contender; the median is kept"
    )
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; float32; "
        f"batch {args.batch}; median of {args.repeats} alternating rounds of {args.iters} steps"
    )
    print(f"{'network':<34} {'manual':>13} {'jax.grad':>15} {'ratio':>9}")
    mlp = jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)])
    bench("MLP 784-512-512-10 (ReLU)", mlp, 784, 10, args.batch, args.iters, args.repeats)
    deep = jbp.Sequential([l for _ in range(10) for l in (Dense(32), Sigmoid())] + [Dense(10)])
    bench("deep narrow sigmoid 10x32", deep, 64, 10, args.batch, args.iters * 4, args.repeats)


if __name__ == "__main__":
    main()
