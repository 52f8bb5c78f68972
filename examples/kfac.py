"""K-FAC vs SGD (momentum) vs Adam on Fashion-MNIST: epochs and seconds to a target accuracy.

K-FAC (``jbp.optim.kfac``) preconditions each layer's gradient with the inverse of a
Kronecker-factored approximation of its block of the Gauss-Newton matrix,
``(A ⊗ B)⁻¹ vec(∇W) = vec(A⁻¹ ∇W B⁻¹)``, where ``A`` is the second moment of the layer's
inputs and ``B`` that of its output deltas backpropagated from targets *sampled* from the
model's own predictive distribution — both read from the same hand-written backward pass as
the gradient (``jbp.extensions.KFAC``). The factors are averaged over steps and their damped
inverses refreshed every ``--inverse-every`` steps inside the compiled epoch.

The three optimizers train the same MLP (``784 → 128 ReLU → 10``, ``--hidden``) from the
same initial parameters, with minibatches of ``--batch-size``; after every epoch the test
accuracy is measured. The table gives, per optimizer, the first epoch at which the test
accuracy reaches ``--target`` and the training seconds spent until then (compilation and
evaluation excluded), the time per epoch and the final accuracy; the plot (``--out DIR``,
``kfac.png``) draws test accuracy against epochs and against seconds.

Data: the Fashion-MNIST IDX files in ``--path`` (default ``/usr/share/datasets/fashion-mnist``,
Debian's ``apt-get install dataset-fashion-mnist``); when they are absent the embedded UCI
digits are used instead (8×8 images, target 0.95), and the script says so::

    python examples/kfac.py                          # Fashion-MNIST, 10 epochs, target 0.85
    python examples/kfac.py --epochs 20 --target 0.87 --out out/
    python examples/kfac.py --dataset digits          # offline, seconds

Expect, on a CPU, K-FAC to need fewer epochs than Adam and SGD to reach the target and more
seconds per epoch (its factor products and inversions cost several gradients at this batch
size); on an accelerator, the per-epoch gap narrows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.layers import Dense, ReLU
from jbp.plotting import save_figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args  # noqa: E402

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _has_files(directory) -> bool:
    d = Path(directory)
    return all((d / s).is_file() or (d / (s + ".gz")).is_file() for s in STEMS)


def load(dataset: str, path):
    """``(name, (x, y), (xt, yt), note)``: Fashion-MNIST from ``path`` when its files are
    there, else the embedded digits (with a note saying why)."""
    if dataset == "fashion_mnist":
        directory = Path(path or DEBIAN_DIR)
        if _has_files(directory):
            (x, y), (xt, yt) = jbp.datasets.fashion_mnist(directory)
            prep = jbp.datasets.prepare_images
            return "fashion_mnist", (prep(x), y), (prep(xt), yt), f"IDX files in {directory}"
        note = (
            f"no Fashion-MNIST IDX files in {directory} (apt-get install "
            f"dataset-fashion-mnist, or --path DIR): using the embedded digits instead"
        )
    else:
        note = "the embedded UCI digits"
    (x, y), (xt, yt) = jbp.datasets.digits()
    return "digits", (x, y), (xt, yt), note


def build_model(hidden, classes=10):
    layers = []
    for h in hidden:
        layers += [Dense(h, w_init="he_normal"), ReLU()]
    return jbp.Sequential(layers + [Dense(classes)])


def reached(history, target):
    """``(epoch, seconds)`` at which the test accuracy first reaches ``target``, or Nones."""
    seconds = np.cumsum(history["seconds"])
    for e, acc in enumerate(history["test_accuracy"]):
        if acc >= target:
            return e + 1, float(seconds[e])
    return None, None


def plot(results, target, path, title):
    try:
        plt = jbp.plotting.require_matplotlib()
    except ImportError as e:
        print(f"no plot: {e}")
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, h in results.items():
        acc = h["test_accuracy"]
        ax0.plot(h["epoch"], acc, marker=".", label=name)
        ax1.plot(np.cumsum(h["seconds"]), acc, marker=".", label=name)
    for ax, xlabel in ((ax0, "epoch"), (ax1, "training seconds (compilation excluded)")):
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=("fashion_mnist", "digits"), default="fashion_mnist")
    p.add_argument(
        "--path", default=None, help=f"Fashion-MNIST IDX directory (default {DEBIAN_DIR})"
    )
    p.add_argument("--hidden", type=int, nargs="+", default=[128])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--target",
        type=float,
        default=None,
        help="test accuracy to reach (default 0.85 on Fashion-MNIST, 0.95 on digits)",
    )
    p.add_argument("--lr-kfac", type=float, default=0.3)
    p.add_argument("--damping", type=float, default=1e-2, help="K-FAC damping λ")
    p.add_argument("--norm-constraint", type=float, default=1e-2, help="K-FAC's cap on η²vᵀg")
    p.add_argument("--inverse-every", type=int, default=10)
    p.add_argument("--lr-adam", type=float, default=1e-3)
    p.add_argument("--lr-sgd", type=float, default=0.1, help="SGD with momentum 0.9")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--test-limit", type=int, default=0, help="test on the first N images (0 = all)")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    args = p.parse_args(argv)
    if (
        args.epochs < 1
        or args.batch_size < 1
        or min(args.hidden) < 1
        or args.limit < 0
        or args.test_limit < 0
        or args.inverse_every < 1
    ):
        p.error("--epochs, --batch-size, --hidden, --inverse-every must be >= 1, --limit >= 0")
    if args.target is not None and not 0 < args.target <= 1:
        p.error("--target must be in (0, 1]")

    try:
        name, (x, y), (xt, yt), note = load(args.dataset, args.path)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"kfac.py: {e}\n")
    target = args.target if args.target is not None else (0.85 if name == "fashion_mnist" else 0.95)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    if args.test_limit:
        xt, yt = xt[: args.test_limit], yt[: args.test_limit]
    x, xt = jnp.asarray(x, jnp.float32), jnp.asarray(xt, jnp.float32)
    y, yt = jnp.asarray(y, jnp.int32), jnp.asarray(yt, jnp.int32)
    print(f"{name}: {len(y)} train, {len(yt)} test examples of {x.shape[1]} features [{note}]")

    model = build_model(tuple(args.hidden))
    loss = jbp.losses.softmax_cross_entropy
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params0, _ = model.init(key_init, x.shape[1:])
    optimizers = {
        "K-FAC": jbp.optim.kfac(
            args.lr_kfac,
            damping=args.damping,
            norm_constraint=args.norm_constraint,
            inverse_every=args.inverse_every,
        ),
        "Adam": jbp.optim.adam(args.lr_adam),
        "SGD+momentum": jbp.optim.sgd(args.lr_sgd, momentum=0.9),
    }

    def test_accuracy(epoch, logs, params):
        logs["test_accuracy"] = jbp.evaluate(model, params, loss, (xt, yt))["accuracy"]

    results = {}
    for opt_name, opt in optimizers.items():
        print(f"-- {opt_name}")
        _, history = jbp.fit(
            model,
            params0,
            loss,
            opt,
            (x, y),
            batch_size=min(args.batch_size, len(y)),
            epochs=args.epochs,
            key=key_fit,
            metrics=("loss",),
            callbacks=[test_accuracy],
        )
        results[opt_name] = history

    head = (
        f"{'optimizer':<14} {'epochs to ' + format(target, '.3f'):>16} "
        f"{'seconds to it':>14} {'s/epoch':>9} {'final test acc':>15}"
    )
    lines = [head, "-" * len(head)]
    summary = {}
    for opt_name, h in results.items():
        e, s = reached(h, target)
        per_epoch = float(np.median(h["seconds"]))
        summary[opt_name] = {
            "epochs": e,
            "seconds": s,
            "seconds_per_epoch": per_epoch,
            "final_accuracy": float(h["test_accuracy"][-1]),
        }
        lines.append(
            f"{opt_name:<14} {('not reached' if e is None else str(e)):>16} "
            f"{('-' if s is None else f'{s:.2f}'):>14} {per_epoch:>9.3f} "
            f"{h['test_accuracy'][-1]:>15.4f}"
        )
    print()
    print("\n".join(lines))

    out = {
        "dataset": name,
        "note": note,
        "target": target,
        "summary": summary,
        "histories": results,
        "plot": None,
    }
    if not args.no_plot and args.out:
        os.makedirs(args.out, exist_ok=True)
        title = f"{name}: MLP {'-'.join(map(str, args.hidden))}, batch {args.batch_size}"
        out["plot"] = plot(results, target, os.path.join(args.out, "kfac.png"), title)
        if out["plot"]:
            print(f"plot: {out['plot']}")
    return out


if __name__ == "__main__":
    main()
