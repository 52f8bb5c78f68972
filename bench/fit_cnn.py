"""``fit``'s compiled epoch on the CNN of bench/layers.py vs a Python loop of the jitted step.

One epoch = ``--steps`` minibatches of ``--batch`` random 28x28x1 images (softmax
cross-entropy, SGD lr 0.01, no shuffling, loss only). Contenders:

- ``fit (manual)``: :func:`jbp.fit`, one ``lax.scan`` over the epoch, hand-written backward;
  its own per-epoch ``seconds`` (History), median over ``--epochs`` after the first (compile);
- ``Python loop``: :func:`jbp.make_train_step` jitted once, called once per minibatch;
- ``fit (autodiff)``: ``fit(..., grad_fn="autodiff")``, ``jax.value_and_grad`` of the same
  forward inside the scan (what XLA emits for ``jax.grad`` of a convolution).

This is where XLA CPU's convolution forms inside a loop show: a kernel gradient with the batch
axis contracted, or an input gradient whose kernel has the dimension numbers HWOI, ran 10–40×
slower inside ``lax.scan`` than in a jitted step on its own (see ``Conv2D``'s notes).

    python bench/fit_cnn.py
    python bench/fit_cnn.py --batch 128 --steps 10 --epochs 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import models as bench_models  # bench/models.py: the benchmarks' CNN
import numpy as np

import jbp

LOSS = jbp.losses.softmax_cross_entropy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--skip-autodiff", action="store_true")
    args = ap.parse_args(argv)
    model = bench_models.cnn()
    params = model.init(jax.random.key(0), (28, 28, 1))[0]
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = rng.standard_normal((n, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, n)
    opt = jbp.optim.sgd(0.01)
    print(
        f"jax {jax.__version__} on {jax.default_backend()}; {platform.machine()}; float32; "
        f"CNN c16-p-c32-p-d 28x28, batch {args.batch}, {args.steps} steps an epoch"
    )

    def fit_epoch(grad_fn):
        _, hist = jbp.fit(
            model,
            params,
            LOSS,
            opt,
            (x, y),
            epochs=args.epochs,
            batch_size=args.batch,
            key=jax.random.key(0),
            metrics=("loss",),
            shuffle=False,
            verbose=0,
            grad_fn=grad_fn,
        )[:2]
        return statistics.median(hist["seconds"][1:])

    step = jax.jit(jbp.make_train_step(model, LOSS, opt))
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    def loop_epoch():
        p, s = params, opt.init(params)
        t0 = time.perf_counter()
        for i in range(args.steps):
            sl = slice(i * args.batch, (i + 1) * args.batch)
            p, s, _, _ = step(p, s, xs[sl], ys[sl], jax.random.key(i))
        jax.block_until_ready(p)
        return time.perf_counter() - t0

    loop_epoch()  # compile
    rows = [
        ("fit (manual)", fit_epoch("manual")),
        ("Python loop of the jitted step", statistics.median(loop_epoch() for _ in range(3))),
    ]
    if not args.skip_autodiff:
        rows.append(("fit (autodiff)", fit_epoch("autodiff")))
    base = rows[0][1]
    print(f"{'contender':<34}{'epoch':>10}{'per step':>12}{'ratio':>9}")
    for name, t in rows:
        print(f"{name:<34}{t:>9.3f}s{t / args.steps * 1e3:>9.1f} ms{t / base:>8.2f}x")


if __name__ == "__main__":
    main()
