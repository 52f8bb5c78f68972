"""Conv2D's kernel gradient on this backend: XLA's convolution form vs the patch product.

``∂L/∂K[i, j, c, f] = Σ_{n, p, q} x̃[n, p·s + i, q·s + j, c] · δ[n, p, q, f]`` two ways
(:meth:`jbp.layers.conv.Conv2D._kernel_correlation`):

- ``convolution``: one ``lax.conv_general_dilated`` with the batch axis contracted
  (dimension numbers CHWN / IHWO -> HWNC) — what jbp runs on GPU/TPU;
- ``patches``: ``δᵀ A`` with the patches ``A`` (the kernel offsets' strided slices side by
  side, ``(n·Ho·Wo, kh·kw·C)``), over chunks of examples within 8 MiB of patches — what jbp
  runs on XLA CPU.

Both jitted, in this process, warmed up, interleaved round by round (median), on random
float32 input and delta, 3×3 kernels, SAME padding, stride 1; the results are compared.

    python bench/conv_kernel_grad.py
    python bench/conv_kernel_grad.py --batch 128 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp.layers.conv as conv
from jbp.layers.conv import Conv2D

# (H = W, C, F): the two layers of bench/layers.py's CNN, a CIFAR-like first layer, and
# deeper, wider layers.
SHAPES = [(28, 1, 16), (14, 16, 32), (32, 3, 32), (16, 32, 64), (8, 64, 128), (7, 128, 128)]


def compiled(layer, by_patches, x, dy):
    """The compiled kernel gradient in one form (chosen when it is traced)."""
    old = conv._kernel_grad_by_patches
    conv._kernel_grad_by_patches = lambda: by_patches
    try:
        return jax.jit(lambda x, dy: layer._kernel_correlation(x, dy)).lower(x, dy).compile()
    finally:
        conv._kernel_grad_by_patches = old


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.default_backend()}; {platform.machine()}; float32; "
        f"batch {args.batch}; 3x3 SAME; median of {args.repeats} interleaved rounds x "
        f"{args.iters} calls"
    )
    print(
        f"{'layer':<24}{'GFLOP':>7}{'convolution':>14}{'patches':>11}{'speed-up':>10}  max rel diff"
    )
    rng = np.random.default_rng(0)
    n = args.batch
    for h, c, f in SHAPES:
        layer = Conv2D(f, 3)
        x = jnp.asarray(rng.standard_normal((n, h, h, c)), jnp.float32)
        dy = jnp.asarray(rng.standard_normal((n, h, h, f)), jnp.float32)
        fns = {"conv": compiled(layer, False, x, dy), "patches": compiled(layer, True, x, dy)}
        ref, got = (np.asarray(fns[k](x, dy)) for k in ("conv", "patches"))
        diff = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
        for fn in fns.values():
            jax.block_until_ready(fn(x, dy))
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    out = fn(x, dy)
                jax.block_until_ready(out)
                times[k].append((time.perf_counter() - t0) / args.iters)
        tc, tp = (statistics.median(times[k]) * 1e3 for k in ("conv", "patches"))
        gflop = 2 * n * h * h * 9 * c * f / 1e9
        name = f"{h}x{h}x{c} -> {f}"
        print(f"{name:<24}{gflop:>7.2f}{tc:>11.2f} ms{tp:>8.2f} ms{tc / tp:>9.2f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
