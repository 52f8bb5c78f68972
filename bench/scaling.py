"""Data-parallel scaling: examples/second of ``fit`` vs the number of devices on the mesh.

One epoch of ``jbp.fit(..., mesh=jbp.distributed.data_mesh(devices[:d]))`` for d = 1, 2,
4, 8, for the MLP of bench/step.py (784-512-512-10) and the CNN of bench/layers.py
(conv16-pool-conv32-pool-dense on 28x28x1). Each (model, d) is compiled and warmed up
first (one epoch), then ``--repeats`` rounds alternate over every d so drifting machine
load hits all alike; the median epoch time gives examples/second, with the ratio to d = 1.

On CPU this script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself:
the "devices" are then threads sharing the same cores, so the numbers measure the
overhead of sharding and the all-reduce, not a speed-up. On a multi-GPU host or a TPU
the real devices are used.

    python bench/scaling.py                    # n 2048, batch 256, 5 rounds
    python bench/scaling.py --n 512 --repeats 3
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import models as bench_models  # noqa: E402 - bench/models.py: the benchmarks' CNN
import numpy as np  # noqa: E402

import jbp  # noqa: E402
from jbp import losses  # noqa: E402
from jbp.layers import Dense, ReLU  # noqa: E402


def mlp():
    """bench/step.py's MLP (built inline in its ``main``; same layers)."""
    return jbp.Sequential([Dense(512), ReLU(), Dense(512), ReLU(), Dense(10)])


def one_epoch(model, params, x, y, batch_size, mesh):
    t0 = time.perf_counter()
    p, hist = jbp.fit(
        model,
        params,
        losses.softmax_cross_entropy,
        jbp.optim.sgd(0.05),
        (x, y),
        batch_size=batch_size,
        epochs=1,
        key=jax.random.key(1),
        verbose=0,
        mesh=mesh,
    )
    jax.block_until_ready(p)
    wall = time.perf_counter() - t0
    return hist["seconds"][-1], wall - hist["seconds"][-1]


def bench(name, model, x, y, batch_size, counts, repeats):
    params, _ = model.init(jax.random.key(0), x.shape[1:])
    meshes = {d: jbp.distributed.data_mesh(jax.devices()[:d]) for d in counts}
    # fit compiles per call (the epoch is built per call): time only the compiled epoch,
    # which fit reports apart from compile time in history["seconds"].
    for d in counts:
        one_epoch(model, params, x, y, batch_size, meshes[d])  # warm-up
    samples = {d: [] for d in counts}
    for _ in range(repeats):
        for d in counts:
            samples[d].append(one_epoch(model, params, x, y, batch_size, meshes[d])[0])
    base = None
    for d in counts:
        t = statistics.median(samples[d])
        rate = x.shape[0] / t
        base = base or rate
        print(
            f"{name:<38} {d:>7} {t * 1e3:>10.1f} ms {rate:>12.0f} {rate / base:>8.2f}x", flush=True
        )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2048, help="examples per epoch")
    ap.add_argument("--batch", type=int, default=256, help="global batch (a multiple of 8)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; the median is kept")
    args = ap.parse_args(argv)
    counts = [d for d in (1, 2, 4, 8) if d <= jax.device_count()]
    backend = jax.default_backend()
    print(
        f"jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind}); "
        f"{jax.device_count()} devices; {os.cpu_count()} CPU cores; "
        f"{platform.processor() or platform.machine()}; float32; n {args.n}, "
        f"global batch {args.batch}; median of {args.repeats} alternating rounds"
    )
    if backend == "cpu":
        print(
            "CPU: the devices are XLA host-platform devices sharing the same cores, so this "
            "measures the overhead of sharding + all-reduce, not a speed-up"
        )
    print(f"{'network':<38} {'devices':>7} {'epoch':>13} {'examples/s':>12} {'vs 1':>9}")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, args.n)
    x = rng.standard_normal((args.n, 784)).astype(np.float32)
    bench("MLP 784-512-512-10 (bench/step.py)", mlp(), x, y, args.batch, counts, args.repeats)
    x = rng.standard_normal((args.n, 28, 28, 1)).astype(np.float32)
    bench(
        "CNN conv16-conv32 28x28 (layers.py)",
        bench_models.cnn(),
        x,
        y,
        args.batch,
        counts,
        args.repeats,
    )


if __name__ == "__main__":
    main()
