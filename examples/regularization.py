"""Regularization in practice: one small net, five ways to fight overfitting.

On a small training subset of the embedded 8×8 digits, the same network is trained with

  none          no regularization (the baseline that overfits)
  l2            + an L2 weight penalty, jbp.regularizers.l2 (½λ‖W‖², biases untouched)
  dropout       + Dropout(0.5) after the hidden layer (rate = probability of DROPPING)
  augment       + data augmentation: random 1-pixel translations and Gaussian pixel noise,
                  applied to every minibatch inside the compiled epoch
  early stop    the baseline, stopped when the validation loss stops improving
                  (patience 10), with the best epoch's parameters restored

and prints train accuracy, test accuracy and the gap between them, then saves the
train/validation curves to a PNG. Every configuration starts from the same initial
parameters (the baseline's Dropout(0.0) is the identity, so all nets share one parameter
structure) and sees the same data. Offline, well under a minute on 2 CPU cores::

    python examples/regularization.py                   # 150 epochs, out/regularization.png
    python examples/regularization.py --epochs 300 --n-train 200 --out curves.png
    python examples/regularization.py --only none dropout --dropout 0.3
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

import jbp
from jbp import augment as aug
from jbp import optim, regularizers
from jbp.callbacks import EarlyStopping
from jbp.datasets import digits
from jbp.layers import Dense, Flatten, ReLU
from jbp.layers.dropout import Dropout
from jbp.train import fit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args, figure_path  # noqa: E402


def make_model(dropout: float) -> jbp.Sequential:
    """Flatten → Dense(256) → ReLU → Dropout(dropout) → Dense(10): the same net for all."""
    return jbp.Sequential(
        [Flatten(), Dense(256, w_init="he_normal"), ReLU(), Dropout(dropout), Dense(10)]
    )


def load(n_train: int, n_val: int, seed: int):
    """A small training subset, a validation set (for curves / early stopping), the test set."""
    (x, y), (x_test, y_test) = digits(flatten=False)  # (n, 8, 8, 1) in [0, 1]
    if n_train + n_val > len(y):
        raise ValueError(f"--n-train + --n-val must be at most {len(y)}, got {n_train + n_val}")
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    return (x[tr], y[tr]), (x[va], y[va]), (x_test, y_test)


def configurations(l2: float, dropout: float, patience: int):
    """name -> keyword arguments of fit, plus the model's dropout rate."""
    return {
        "none": dict(rate=0.0),
        "l2": dict(rate=0.0, regularizer=regularizers.l2(l2)),
        "dropout": dict(rate=dropout),
        "augment": dict(
            rate=0.0, augment=aug.compose(aug.random_translation(1), aug.gaussian_noise(0.05))
        ),
        "early stop": dict(
            rate=0.0, early_stopping=EarlyStopping("val_loss", patience=patience, restore_best=True)
        ),
    }


def run(name, cfg, data, *, epochs, batch_size, lr, seed):
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
    cfg = dict(cfg)
    model = make_model(cfg.pop("rate"))
    params, _ = model.init(jax.random.key(seed), x_tr.shape[1:])  # same init for every config
    loss = jbp.losses.softmax_cross_entropy
    t0 = time.perf_counter()
    params, hist = fit(
        model,
        params,
        loss,
        optim.adam(lr),
        (x_tr, y_tr),
        batch_size=batch_size,
        epochs=epochs,
        key=jax.random.key(seed + 1),
        validation_data=(x_va, y_va),
        verbose=0,
        **cfg,
    )
    seconds = time.perf_counter() - t0
    # accuracies of the final (or restored) parameters, in evaluation mode, on clean data
    train = _evaluate(model, params, x_tr, y_tr)
    test = _evaluate(model, params, x_te, y_te)
    return {
        "name": name,
        "history": hist,
        "epochs_run": len(hist),
        "best_epoch": hist.best_epoch,
        "stopped_epoch": hist.stopped_epoch,
        "train_acc": train["accuracy"],
        "test_acc": test["accuracy"],
        "gap": train["accuracy"] - test["accuracy"],
        "test_loss": test["loss"],
        "seconds": seconds,
    }


@functools.partial(jax.jit, static_argnums=0)
def _eval(model, params, x, y):
    logits = model.apply(params, x, train=False)
    return {
        "loss": jbp.losses.softmax_cross_entropy(logits, y),
        "accuracy": jbp.losses.accuracy(logits, y),
    }


def _evaluate(model, params, x, y):
    """Loss and accuracy in evaluation mode (``jbp.train.evaluate`` does the same, in chunks;
    this one is jitted with the model static, so equal models share one compilation)."""
    return {k: float(v) for k, v in _eval(model, params, x, y).items()}


def table(results) -> str:
    head = f"{'regularization':<14} {'epochs':>6} {'train acc':>9} {'test acc':>8} {'gap':>7} {'test loss':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['name']:<14} {r['epochs_run']:>6} {r['train_acc']:>9.3f} "
            f"{r['test_acc']:>8.3f} {r['gap']:>7.3f} {r['test_loss']:>9.3f}"
            + (
                f"   stopped at {r['stopped_epoch']}, best epoch {r['best_epoch']} restored"
                if r["stopped_epoch"]
                else ""
            )
        )
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(results), figsize=(3.2 * len(results), 5.6), sharex=True, sharey="row", squeeze=False
    )
    for j, r in enumerate(results):
        h = r["history"]
        ep = h["epoch"]
        for i, (tr, va, label) in enumerate(
            [("loss", "val_loss", "loss"), ("accuracy", "val_accuracy", "accuracy")]
        ):
            ax = axes[i][j]
            ax.plot(ep, h[tr], label="train" + (" (data loss)" if tr == "loss" else ""), lw=1.4)
            ax.plot(ep, h[va], label="validation", lw=1.4)
            if r["best_epoch"] is not None:
                ax.axvline(r["best_epoch"], color="gray", ls=":", lw=1, label="best epoch")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(
                    f"{r['name']}\ntest acc {r['test_acc']:.3f}, gap {r['gap']:.3f}", fontsize=9
                )
                ax.set_yscale("log")
            else:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Same net, small digits subset: train vs validation (train curves are on "
        "augmented / dropped-out batches)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=150, help="epochs per configuration (default 150)")
    p.add_argument("--n-train", type=int, default=100, help="training examples (default 100)")
    p.add_argument("--n-val", type=int, default=300, help="validation examples (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch size (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 strength λ (default 1e-2)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout rate = drop probability")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these configurations (none, l2, dropout, augment, 'early stop')",
    )
    args = p.parse_args(argv)
    args.out = "" if args.no_plot else figure_path(args.out, "regularization.png")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")

    data = load(args.n_train, args.n_val, args.seed)
    cfgs = configurations(args.l2, args.dropout, args.patience)
    names = list(cfgs) if args.only is None else args.only
    unknown = [n for n in names if n not in cfgs]
    if unknown:
        p.error(f"--only: unknown configuration(s) {unknown}; known: {list(cfgs)}")
    print(
        f"digits: {args.n_train} train, {args.n_val} validation, {len(data[2][1])} test examples; "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}"
    )
    results = []
    for name in names:
        r = run(
            name,
            cfgs[name],
            data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
        print(f"  {name:<11} {r['epochs_run']:>4} epochs  {r['seconds']:.1f}s", flush=True)
        results.append(r)
    print()
    print(table(results))
    se = 100 * np.sqrt(0.88 * 0.12 / len(data[2][1]))
    print(
        f"(with {len(data[2][1])} test examples one standard error of an accuracy near 0.88 is "
        f"about {se:.1f} points: read the gap and the test loss, not the third decimal)"
    )
    if args.out:
        plot(results, args.out)
        print(f"\ncurves saved to {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
