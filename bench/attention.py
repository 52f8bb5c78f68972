"""Attention benchmarks: a Transformer training step, and blockwise vs dense attention memory.

1. **Training step** (``--batch 32``, ``T = 128``, 4 heads, 128 features, MLP 512): a
   pre-LayerNorm Transformer block, mean-pooled, then ``Dense(10)`` and softmax
   cross-entropy; forward, loss, backward and an SGD update in one ``jax.jit`` (the step of
   ``bench/step.py``). Hand-written backward (``jbp.value_and_grad``) vs
   ``jax.value_and_grad`` of the same forward, for the dense and the blockwise attention.
2. **Attention at long T** (``--lengths 1024 4096``, batch 1): forward + backward of one
   ``MultiHeadAttention`` layer w.r.t. its parameters and input, for three contenders:
   the blockwise hand-written path (``block_size=--block``), the dense hand-written path
   (caches ``P``, ``(batch, H, T, T)``), and ``jax.grad`` of a naive attention (softmax of
   the full score matrix). Reported: the compiled temporary memory,
   ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`` (what XLA
   allocates besides arguments and outputs), and the time per call.
3. **Causal block skipping** (``--causal-lengths 1024 2048``, ``--causal-batch 2``): the
   blockwise path with and without ``causal=True``. The causal one visits only the key
   blocks ``j ≤ i`` of each query block ``i`` (``n(n+1)/2`` of the ``n²`` block pairs, so
   about half the work); both keep ``(batch, H, k, k)`` temporaries per step, so the
   compiled temporary memory per position (``temp/T``) stays flat as ``T`` doubles.

Contenders run side by side in this process: compile and warm up, then ``--repeats``
rounds, alternating between contenders round by round so drifting machine load hits all
alike; each round times ``--iters`` calls; the median is reported with ratios.

    python bench/attention.py                             # full run
    python bench/attention.py --iters 2 --repeats 3       # a quick look
    python bench/attention.py --skip-step --skip-long     # only causal vs not (3)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from step import make_step, one_round  # bench/step.py: the same jitted step and timed round

import jbp
from jbp import losses
from jbp.layers import Dense, MeanPool1D, MultiHeadAttention, transformer_block


def interleaved(contenders, run_round, repeats):
    """``{name: median seconds}``; ``run_round(name)`` times one round of one contender."""
    samples = {k: [] for k in contenders}
    for _ in range(repeats):
        for k in contenders:
            samples[k].append(run_round(k))
    return {k: statistics.median(v) for k, v in samples.items()}


# --- 1. training step ------------------------------------------------------------------


def bench_step(args):
    print(
        f"\n1. Transformer block training step: batch {args.batch}, T = {args.seq}, "
        f"{args.heads} heads, {args.features} features, MLP {4 * args.features}; float32"
    )
    print(f"{'attention':<26} {'manual':>12} {'jax.grad':>14} {'ratio':>9}")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, args.seq, args.features)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    for name, block_size in (
        ("dense", None),
        (f"blockwise (block {args.step_block})", args.step_block),
    ):
        model = jbp.Sequential(
            [
                transformer_block(
                    args.features, args.heads, 4 * args.features, block_size=block_size
                ),
                MeanPool1D(),
                Dense(10),
            ]
        )
        params, _ = model.init(jax.random.key(0), x.shape[1:])
        steps = {
            "manual": make_step(model, losses.softmax_cross_entropy, True, lr=0.01),
            "autodiff": make_step(model, losses.softmax_cross_entropy, False, lr=0.01),
        }
        state = {}
        for k, step in steps.items():  # compile + warm up
            p = params
            for _ in range(3):
                p, _ = step(p, x, y)
            state[k] = jax.block_until_ready(p)

        def run_round(k):
            dt, state[k] = one_round(steps[k], state[k], x, y, args.iters)
            return dt

        t = interleaved(steps, run_round, args.repeats)
        print(
            f"{name:<26} {t['manual'] * 1e3:>9.2f} ms {t['autodiff'] * 1e3:>11.2f} ms "
            f"{t['manual'] / t['autodiff']:>8.3f}x",
            flush=True,
        )


# --- 2. attention memory and time at long T ----------------------------------------------


def naive_attention(params, x, num_heads):
    """Full-matrix attention, written for autodiff: ``softmax(Q Kᵀ/√d) V``."""
    B, T, _ = x.shape
    q, k, v = (x @ params[f"W{n}"] + params[f"b{n}"] for n in "qkv")
    d = q.shape[-1] // num_heads
    split = lambda a: a.reshape(B, T, num_heads, d)
    s = jnp.einsum("bthd,bshd->bhts", split(q), split(k)) / math.sqrt(d)
    o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), split(v))
    return o.reshape(B, T, -1) @ params["Wo"] + params["bo"]


def manual(layer):
    """Forward + hand-written backward of one layer: ``(params, x, dy) → (grads, dx)``."""

    def f(params, x, dy):
        _, cache = layer.forward(params, x)
        return layer.backward(params, cache, dy)

    return f


def attention_contenders(heads, block):
    blockwise, dense = MultiHeadAttention(heads, block_size=block), MultiHeadAttention(heads)

    def autodiff(params, x, dy):
        return jax.grad(lambda p, v: jnp.sum(naive_attention(p, v, heads) * dy), argnums=(0, 1))(
            params, x
        )

    return {
        f"blockwise {block}": manual(blockwise),
        "dense (hand)": manual(dense),
        "jax.grad naive": autodiff,
    }


def bench_long(args):
    print(
        f"\n2. MultiHeadAttention forward + backward at long T: batch 1, {args.heads} heads, "
        f"{args.features} features; float32. temp = compiled temporary memory"
    )
    names = list(attention_contenders(args.heads, args.block))
    print(
        f"{'T':>6} "
        + " ".join(f"{n + ' temp':>22} {'time':>9}" for n in names)
        + f" {'time dense/block':>17} {'time grad/block':>16}"
    )
    layer = MultiHeadAttention(args.heads)
    rng = np.random.default_rng(1)
    for T in args.lengths:
        params, _ = layer.init(jax.random.key(0), (T, args.features))
        x = jnp.asarray(rng.standard_normal((1, T, args.features)), jnp.float32)
        dy = jnp.asarray(rng.standard_normal((1, T, args.features)), jnp.float32)
        fns = {}
        temp = {}
        for name, f in attention_contenders(args.heads, args.block).items():
            compiled = jax.jit(f).lower(params, x, dy).compile()
            temp[name] = compiled.memory_analysis().temp_size_in_bytes
            fns[name] = compiled
            jax.block_until_ready(compiled(params, x, dy))  # warm up

        def run_round(k):
            t0 = time.perf_counter()
            for _ in range(args.long_iters):
                out = fns[k](params, x, dy)
            jax.block_until_ready(out)
            return (time.perf_counter() - t0) / args.long_iters

        t = interleaved(fns, run_round, args.repeats)
        b = names[0]
        print(
            f"{T:>6} "
            + " ".join(f"{temp[n] / 2**20:>18.1f} MiB {t[n] * 1e3:>6.0f} ms" for n in names)
            + f" {t[names[1]] / t[b]:>16.2f}x {t[names[2]] / t[b]:>15.2f}x",
            flush=True,
        )


# --- 3. causal block skipping -------------------------------------------------------------


def bench_causal(args):
    print(
        f"\n3. Blockwise forward + backward, causal (key blocks j ≤ i only) vs not: batch "
        f"{args.causal_batch}, {args.heads} heads, {args.features} features, block "
        f"{args.block}; float32. pairs = (query block, key block) pairs visited; "
        f"temp/T = compiled temporary memory per position"
    )
    print(
        f"{'T':>6} {'pairs':>11} {'pairs c/n':>10} {'temp':>10} {'temp causal':>12} "
        f"{'temp/T':>10} {'time':>9} {'time causal':>12} {'time c/n':>9}"
    )
    layers = {
        "full": MultiHeadAttention(args.heads, block_size=args.block),
        "causal": MultiHeadAttention(args.heads, causal=True, block_size=args.block),
    }
    rng = np.random.default_rng(2)
    for T in args.causal_lengths:
        params, _ = layers["full"].init(jax.random.key(0), (T, args.features))
        shape = (args.causal_batch, T, args.features)
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        fns, temp = {}, {}
        for name, layer in layers.items():
            compiled = jax.jit(manual(layer)).lower(params, x, dy).compile()
            temp[name] = compiled.memory_analysis().temp_size_in_bytes
            fns[name] = compiled
            jax.block_until_ready(compiled(params, x, dy))  # warm up

        def run_round(k):
            t0 = time.perf_counter()
            for _ in range(args.long_iters):
                out = fns[k](params, x, dy)
            jax.block_until_ready(out)
            return (time.perf_counter() - t0) / args.long_iters

        t = interleaved(fns, run_round, args.repeats)
        nb = -(-T // min(args.block, T))
        pairs = {"full": nb * nb, "causal": nb * (nb + 1) // 2}
        print(
            f"{T:>6} {pairs['causal']:>5}/{pairs['full']:<5} "
            f"{pairs['causal'] / pairs['full']:>10.2f} {temp['full'] / 2**20:>6.1f} MiB "
            f"{temp['causal'] / 2**20:>8.1f} MiB {temp['full'] / T / 2**10:>6.1f} KiB "
            f"{t['full'] * 1e3:>6.0f} ms {t['causal'] * 1e3:>9.0f} ms "
            f"{t['causal'] / t['full']:>8.2f}x",
            flush=True,
        )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128, help="T of the training-step benchmark")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--step-block", type=int, default=32, help="block size of the blockwise step")
    ap.add_argument("--block", type=int, default=128, help="block size at long T")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--iters", type=int, default=10, help="steps per timed round (training step)")
    ap.add_argument("--long-iters", type=int, default=1, help="calls per timed round (long T)")
    ap.add_argument(
        "--repeats", type=int, default=7, help="timed rounds per contender; median kept"
    )
    ap.add_argument(
        "--causal-lengths", type=int, nargs="+", default=[1024, 2048], help="T of part 3"
    )
    ap.add_argument("--causal-batch", type=int, default=2, help="batch of part 3")
    ap.add_argument("--skip-step", action="store_true", help="skip the training step (1)")
    ap.add_argument("--skip-long", action="store_true", help="skip attention at long T (2)")
    ap.add_argument("--skip-causal", action="store_true", help="skip causal vs not (3)")
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; "
        f"median of {args.repeats} alternating rounds"
    )
    if not args.skip_step:
        bench_step(args)
    if not args.skip_long:
        bench_long(args)
    if not args.skip_causal:
        bench_causal(args)


if __name__ == "__main__":
    main()
