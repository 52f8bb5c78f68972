"""DP-SGD on Fashion-MNIST: an MLP trained at ε ≈ 1, 3, 8 and without privacy.

Each private run uses ``jbp.fit(..., privacy=jbp.dp.DPConfig(...))``: Poisson-sampled
batches (expected size ``--batch``, padded to a fixed shape, one compiled ``lax.scan`` per
epoch), per-example clipping to ``--max-norm`` and Gaussian noise ``σ·C`` on the clipped
sum (:mod:`jbp.dp.sgd`). For each target ε the noise multiplier σ is the smallest that
keeps ε(δ) at or below the target after all the epochs
(:func:`jbp.dp.noise_multiplier_for`); the ε reported each epoch comes from
:func:`jbp.dp.epsilon`. The non-private baseline is the same MLP and optimizer on shuffled
minibatches of ``--batch`` without clipping or noise.

Prints a table: target ε, σ, ε reached, test accuracy, seconds per epoch (median, compile
excluded); ``--out DIR`` (default ``out/``) saves ``DIR/dp_sgd.png`` (validation accuracy per epoch,
on a 10% slice of the training set; the test set is evaluated once at the end) and
``DIR/dp_sgd.json``.

Data: Fashion-MNIST IDX files from ``--path`` or ``/usr/share/datasets/fashion-mnist``
(``apt-get install dataset-fashion-mnist``); without them, the embedded UCI digits
(``--dataset digits``, said so on the first line)::

    python examples/dp_sgd.py --out /tmp/dp                       # 60k examples, 5 epochs
    python examples/dp_sgd.py --epsilons 2 --epochs 3 --train-size 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys  # noqa: E402  (the examples' shared flags live next to this file)
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.layers import Dense, ReLU

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_args, validation_split  # noqa: E402

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def load(dataset: str, path, train_size):
    """``((x, y), (x_test, y_test), name)``; Fashion-MNIST if found, else digits."""
    if dataset == "fashion_mnist":
        d = path or DEBIAN_DIR
        if Path(d).is_dir() and any(Path(d).glob("train-images-idx3-ubyte*")):
            (x, y), (xt, yt) = jbp.datasets.fashion_mnist(path=d)
            x = jbp.datasets.prepare_images(x)
            xt = jbp.datasets.prepare_images(xt)
            name = "Fashion-MNIST"
        else:
            print(f"dp_sgd.py: no Fashion-MNIST files in {d}; falling back to the digits")
            dataset = "digits"
    if dataset == "digits":
        (x, y), (xt, yt) = jbp.datasets.digits()
        name = "UCI digits"
    x, y, xt, yt = (np.asarray(a) for a in (x, y, xt, yt))
    if train_size:
        x, y = x[:train_size], y[:train_size]
    return (
        (jnp.asarray(x, jnp.float32), jnp.asarray(y)),
        (jnp.asarray(xt, jnp.float32), jnp.asarray(yt)),
        name,
    )


def build_model(hidden) -> jbp.Sequential:
    layers = []
    for h in hidden:
        layers += [Dense(h, w_init="he_normal"), ReLU()]
    return jbp.Sequential(layers + [Dense(10)])


def run(args) -> list[dict]:
    (x, y), (xt, yt), name = load(args.dataset, args.path, args.train_size)
    # validation: a held-out slice of the training set; the test set is used once at the end
    (x, y), (xv, yv) = validation_split(x, y, args.val_fraction, args.seed)
    n = int(x.shape[0])
    q = args.batch / n
    model = build_model(args.hidden)
    params, _ = model.init(jax.random.key(args.seed), tuple(x.shape[1:]))
    loss = jbp.losses.softmax_cross_entropy
    print(
        f"{name}: {n} train / {xv.shape[0]} validation / {xt.shape[0]} test examples, MLP {x.shape[1]}-"
        f"{'-'.join(map(str, args.hidden))}-10, expected batch {args.batch} (q = {q:.5f}), "
        f"C = {args.max_norm}, δ = {args.delta:g}, {args.epochs} epochs"
    )
    rows, curves = [], {}
    settings = [("non-private", None)] + [(f"ε ≤ {e:g}", e) for e in args.epsilons]
    for label, target in settings:
        opt = jbp.optim.sgd(args.lr, momentum=args.momentum)
        if target is None:
            p_end, h = jbp.fit(
                model,
                params,
                loss,
                opt,
                (x, y),
                batch_size=min(args.batch, n),
                epochs=args.epochs,
                key=jax.random.key(args.seed + 1),
                validation_data=(xv, yv),
                verbose=args.verbose,
            )
            sigma, eps = 0.0, float("inf")
        else:
            steps = max(1, round(1 / q)) * args.epochs
            sigma = jbp.dp.noise_multiplier_for(target, q, steps, args.delta)
            cfg = jbp.dp.DPConfig(
                noise_multiplier=sigma, max_norm=args.max_norm, sample_rate=q, delta=args.delta
            )
            p_end, h = jbp.fit(
                model,
                params,
                loss,
                opt,
                (x, y),
                epochs=args.epochs,
                key=jax.random.key(args.seed + 1),
                validation_data=(xv, yv),
                privacy=cfg,
                verbose=args.verbose,
            )
            eps = h["epsilon"][-1]
        curves[label] = h["val_accuracy"]
        test = jbp.evaluate(model, p_end, loss, (xt, yt), metrics=("accuracy",))
        rows.append(
            {
                "setting": label,
                "sigma": sigma,
                "epsilon": eps,
                "val_accuracy": h["val_accuracy"][-1],
                "test_accuracy": float(test["accuracy"]),
                "seconds_per_epoch": float(np.median(h["seconds"])),
            }
        )
    print(
        f"\n{'setting':<13} {'σ':>7} {'ε reached':>10} {'val acc':>8} {'test acc':>9} "
        f"{'s/epoch':>8}"
    )
    for r in rows:
        print(
            f"{r['setting']:<13} {r['sigma']:7.3f} {r['epsilon']:10.3f} {r['val_accuracy']:8.4f} "
            f"{r['test_accuracy']:9.4f} {r['seconds_per_epoch']:8.3f}"
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "dp_sgd.json"), "w") as f:
            json.dump({"dataset": name, "rows": rows, "curves": curves}, f, indent=2)
        if not args.no_plot:
            from jbp.plotting import require_matplotlib, save_figure  # noqa: PLC0415

            plt = require_matplotlib()
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, acc in curves.items():
                ax.plot(range(1, len(acc) + 1), acc, marker="o", label=label)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation accuracy")
            ax.set_title(f"DP-SGD on {name} (δ = {args.delta:g}, C = {args.max_norm})")
            ax.legend()
            save_figure(fig, os.path.join(args.out, "dp_sgd.png"))
            print(f"saved {os.path.join(args.out, 'dp_sgd.png')}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("fashion_mnist", "digits"), default="fashion_mnist")
    p.add_argument("--path", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--train-size", type=int, default=None, help="use the first N examples")
    p.add_argument("--hidden", type=int, nargs="*", default=[256])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=256, help="expected (Poisson) batch size")
    p.add_argument("--max-norm", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--verbose", type=int, default=1)
    add_common_args(p, val_fraction=0.1)  # --out DIR (dp_sgd.png, dp_sgd.json), --seed, --no-plot
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
