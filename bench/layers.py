"""Conv and recurrent training steps: hand-written backward vs jax.value_and_grad.

A step is forward, loss (softmax cross-entropy), backward and a plain SGD update, all in
one ``jax.jit``; the manual step uses ``jbp.value_and_grad`` (the layers' own backward:
transposed convolutions, argmax routing, backpropagation through time), the reference
``jbp.autodiff_value_and_grad`` (``jax.value_and_grad`` of the same forward). Both run in
this process on the same data: compile and warm up, then ``--repeats`` rounds, the two
contenders alternating round by round so drifting machine load hits both alike; each
round times ``--iters`` steps; the median per-step time is reported with the ratio
manual / autodiff (< 1: the hand-written backward is faster), and the ratio of the
fastest rounds ("min ratio"), the steadier number on a shared, loaded machine.

    python bench/layers.py                  # CNN batch 128 on 28x28x1; RNNs batch 64, length 50
    python bench/layers.py --iters 5 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import jax
import jax.numpy as jnp
import models as bench_models  # bench/models.py: the benchmarks' CNN
import numpy as np
from step import make_step, one_round  # bench/step.py: the same jitted step and timed round

import jbp
from jbp import losses
from jbp.layers import Dense, ReLU
from jbp.layers.conv import Conv2D
from jbp.layers.embedding import Embedding
from jbp.layers.normalization import BatchNorm
from jbp.layers.pooling import AvgPool2D, GlobalAvgPool2D
from jbp.layers.recurrent import LSTM, SimpleRNN


def bench(name, model, x, y, iters, repeats):
    params, _ = model.init(jax.random.key(0), x.shape[1:])
    loss = losses.softmax_cross_entropy
    steps = {
        "manual": make_step(model, loss, True, lr=0.05),
        "autodiff": make_step(model, loss, False, lr=0.05),
    }
    state = {}
    for k, step in steps.items():  # compile + warm up
        p = params
        for _ in range(3):
            p, v = step(p, x, y)
        jax.block_until_ready(p)
        state[k] = p
    samples = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            dt, state[k] = one_round(step, state[k], x, y, iters)
            samples[k].append(dt)
    tm, ta = (statistics.median(samples[k]) for k in ("manual", "autodiff"))
    bm, ba = (min(samples[k]) for k in ("manual", "autodiff"))
    print(
        f"{name:<44} {tm * 1e3:>9.2f} ms {ta * 1e3:>11.2f} ms {tm / ta:>8.3f}x {bm / ba:>10.3f}x",
        flush=True,
    )
    return tm / ta


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=10, help="steps per timed round")
    ap.add_argument(
        "--repeats", type=int, default=7, help="timed rounds per contender; the median is kept"
    )
    ap.add_argument("--only", choices=["cnn", "rnn"], default=None, help="run one family only")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; float32; "
        f"median of {args.repeats} rounds x {args.iters} steps"
    )
    print(f"{'network':<44} {'manual':>12} {'jax.grad':>14} {'ratio':>9} {'min ratio':>11}")
    ratios = {}
    if args.only in (None, "cnn"):
        x = jnp.asarray(rng.standard_normal((128, 28, 28, 1)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, 128))
        cnn = bench_models.cnn()
        ratios["cnn"] = bench(
            "CNN conv16-pool-conv32-pool-dense, b128 28x28", cnn, x, y, args.iters, args.repeats
        )
        bn = jbp.Sequential(
            [
                Conv2D(16, 3, strides=2, use_bias=False),
                BatchNorm(),
                ReLU(),
                Conv2D(32, 3, use_bias=False),
                BatchNorm(),
                ReLU(),
                AvgPool2D(2),
                GlobalAvgPool2D(),
                Dense(10),
            ]
        )
        ratios["cnn_bn"] = bench(
            "CNN stride-2 + BatchNorm + avg pools, b128", bn, x, y, args.iters, args.repeats
        )
    if args.only in (None, "rnn"):
        x = jnp.asarray(rng.standard_normal((64, 50, 32)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, 64))
        ratios["rnn"] = bench(
            "SimpleRNN(128)-dense, b64 T50 in32",
            jbp.Sequential([SimpleRNN(128), Dense(10)]),
            x,
            y,
            args.iters,
            args.repeats,
        )
        ratios["lstm"] = bench(
            "LSTM(128)-dense, b64 T50 in32",
            jbp.Sequential([LSTM(128), Dense(10)]),
            x,
            y,
            args.iters,
            args.repeats,
        )
        lengths = rng.integers(10, 51, 64)
        ids = np.where(np.arange(50)[None] < lengths[:, None], rng.integers(1, 1000, (64, 50)), 0)
        model = jbp.Sequential([Embedding(1000, 32, pad_id=0), SimpleRNN(128), Dense(10)])
        ratios["emb_rnn"] = bench(
            "Embedding(pad)+masked SimpleRNN(128), b64 T50",
            model,
            jnp.asarray(ids),
            y,
            args.iters,
            args.repeats,
        )
    return ratios


if __name__ == "__main__":
    main()
