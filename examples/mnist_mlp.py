"""The classic: a multilayer perceptron on MNIST or Fashion-MNIST, from the IDX files.

``784 → Dense(128) → ReLU → Dense(10)`` (``--hidden`` sets the hidden layers), softmax
cross-entropy, minibatch Adam — every gradient from the hand-written backward pass, proven
first against ``jax.grad`` and finite differences on a small batch (float64).

Data: the four standard IDX files (``train-images-idx3-ubyte`` ..., raw or ``.gz``) of
``--dataset`` (``fashion_mnist``, the default, or ``mnist``), read from

1. ``--path DIR``, if given;
2. else, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` when present (Debian /
   Ubuntu: ``apt-get install dataset-fashion-mnist``);
3. else the cache directory (``$JBP_DATA_DIR`` or ``~/.cache/jbp``, then ``mnist/`` or
   ``fashion_mnist/``), downloading into it with ``--download`` (checksummed).

When none has the files the script says so and exits with code 2. The checksums of the
canonical files are verified (``--no-verify`` for other IDX files of the same layout).
Official split: 60,000 train / 10,000 test. Prints the gradient check, one line per epoch
with the test accuracy, and a final table (overall and per class). Offline here on the
Debian Fashion-MNIST files, ~10 s on a 2-core CPU::

    python examples/mnist_mlp.py                              # Fashion-MNIST, 10 epochs
    python examples/mnist_mlp.py --dataset mnist --path ~/data/mnist
    python examples/mnist_mlp.py --dataset mnist --download   # Colab
    python examples/mnist_mlp.py --hidden 256 128 --epochs 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.datasets import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    cache,
    fashion_mnist,
    mnist,
    prepare_images,
)
from jbp.layers import Dense, ReLU
from jbp.plotting import save_figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args, figure_path  # noqa: E402

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
LOADERS = {"mnist": (mnist, MNIST_CLASSES), "fashion_mnist": (fashion_mnist, FASHION_MNIST_CLASSES)}
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def build_model(hidden=(128,), classes: int = 10) -> jbp.Sequential:
    """784 → [Dense(h) → ReLU] for h in hidden → Dense(classes) (logits)."""
    layers = []
    for h in hidden:
        layers += [Dense(h, w_init="he_normal"), ReLU()]
    return jbp.Sequential(layers + [Dense(classes)])


def _has_files(directory) -> bool:
    d = Path(directory)
    return all((d / s).is_file() or (d / (s + ".gz")).is_file() for s in STEMS)


def find_data(dataset, path, download):
    """``(directory or None, why)`` per the rule of the module docstring; ``None`` with a
    message when the files are nowhere (and ``download`` is False)."""
    if path is not None:
        return Path(path).expanduser(), f"--path {path}"
    if dataset == "fashion_mnist" and _has_files(DEBIAN_DIR):
        return Path(DEBIAN_DIR), f"the Debian package's files in {DEBIAN_DIR}"
    cached = cache.dataset_dir(dataset)
    if _has_files(cached):
        return cached, f"the cache {cached}"
    if download:
        return cached, f"--download into {cached}"
    hint = (
        f" (on Debian/Ubuntu: apt-get install dataset-fashion-mnist, which provides {DEBIAN_DIR})"
        if dataset == "fashion_mnist"
        else ""
    )
    return None, (
        f"mnist_mlp.py: no {dataset} IDX files found: this example needs --path DIR "
        f"(a directory holding {', '.join(STEMS)}, raw or .gz), or --download to fetch "
        f"them into {cached}{hint}"
    )


def per_class_accuracy(model, params, x, y, classes: int) -> np.ndarray:
    pred = np.asarray(jnp.argmax(model.apply(params, x), axis=-1))
    y = np.asarray(y)
    return np.array(
        [np.mean(pred[y == c] == c) if np.any(y == c) else np.nan for c in range(classes)]
    ), pred


def plot(history, confusion, names, path, title):
    try:
        from jbp.plotting import require_matplotlib

        plt = require_matplotlib()
    except ImportError as e:
        print(f"no plot: {e}")
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    ep = history["epoch"]
    ax0.plot(ep, history["loss"], marker=".", label="train loss")
    ax0.plot(ep, history["test_loss"], marker=".", label="test loss")
    ax0.plot(ep, history["test_accuracy"], marker=".", label="test accuracy")
    ax0.set_xlabel("epoch")
    ax0.grid(alpha=0.3)
    ax0.legend(fontsize=8)
    ax1.imshow(confusion, cmap="Blues")
    ax1.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax1.set_yticks(range(len(names)), names, fontsize=7)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            if confusion[i, j]:
                ax1.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if confusion[i, j] > confusion.max() / 2 else "black",
                )
    ax1.set_title("test confusion matrix", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dataset",
        choices=tuple(LOADERS),
        default="fashion_mnist",
        help="which IDX set (default fashion_mnist)",
    )
    p.add_argument("--path", default=None, help="directory holding the four IDX files")
    p.add_argument(
        "--download", action="store_true", help="fetch missing files into the cache (checksummed)"
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksums (other IDX files of the same layout)",
    )
    p.add_argument(
        "--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes (default 128)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--test-limit", type=int, default=0, help="test on the first N images (0 = all)")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "mnist_mlp.png")
    if (
        args.epochs < 1
        or args.batch_size < 1
        or args.limit < 0
        or args.test_limit < 0
        or min(args.hidden) < 1
    ):
        p.error("--epochs, --batch-size and --hidden must be >= 1, --limit/--test-limit >= 0")
    t0 = time.perf_counter()

    directory, why = find_data(args.dataset, args.path, args.download)
    if directory is None:
        p.exit(2, why + "\n")
    loader, names = LOADERS[args.dataset]
    try:
        (x, y), (xt, yt) = loader(directory, download=args.download, verify=not args.no_verify)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"mnist_mlp.py: {e}\n")
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    if args.test_limit:
        xt, yt = xt[: args.test_limit], yt[: args.test_limit]
    x, xt = jnp.asarray(prepare_images(x)), jnp.asarray(prepare_images(xt))  # (n, 784) in [0, 1]
    y, yt = jnp.asarray(y, jnp.int32), jnp.asarray(yt, jnp.int32)
    print(f"{args.dataset}: {len(y)} train, {len(yt)} test images of {x.shape[1]} pixels [{why}]")

    model = build_model(tuple(args.hidden), len(names))
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params, _ = model.init(key_init, x.shape[1:])
    loss = jbp.losses.softmax_cross_entropy
    print(model)
    with jax.enable_x64(True):  # the proof: hand-written backward vs jax.grad vs finite diff.
        report = jbp.check_gradients(
            model, loss, jbp.cast(params, jnp.float64), jnp.asarray(x[:16], jnp.float64), y[:16]
        )
    print(report)

    def test_metrics(epoch, logs, params):  # adds test_loss / test_accuracy to each epoch
        m = jbp.evaluate(model, params, loss, (xt, yt))
        logs["test_loss"], logs["test_accuracy"] = m["loss"], m["accuracy"]

    params, history = jbp.fit(
        model,
        params,
        loss,
        jbp.optim.adam(args.lr),
        (x, y),
        batch_size=min(args.batch_size, len(y)),
        epochs=args.epochs,
        key=key_fit,
        callbacks=[test_metrics],
    )
    train = jbp.evaluate(model, params, loss, (x, y))
    test = jbp.evaluate(model, params, loss, (xt, yt))
    per_class, pred = per_class_accuracy(model, params, xt, yt, len(names))

    print()
    head = f"{'split':<8} {'images':>7} {'loss':>8} {'accuracy':>9}"
    print(
        "\n".join(
            [
                head,
                "-" * len(head),
                f"{'train':<8} {len(y):>7} {train['loss']:>8.4f} {train['accuracy']:>9.4f}",
                f"{'test':<8} {len(yt):>7} {test['loss']:>8.4f} {test['accuracy']:>9.4f}",
            ]
        )
    )
    print(
        "test accuracy per class: "
        + ", ".join(f"{n} {a:.2f}" for n, a in zip(names, per_class) if not np.isnan(a))
    )
    print(
        f"final test accuracy {test['accuracy']:.4f} ({args.dataset}, MLP "
        f"{'-'.join(str(h) for h in args.hidden)}, {len(history)} epochs)"
    )

    out = {
        "dataset": args.dataset,
        "source": why,
        "report": report,
        "history": history,
        "train": train,
        "test": test,
        "per_class": per_class.tolist(),
        "plot": None,
    }
    if not args.no_plot and args.out:
        confusion = np.zeros((len(names), len(names)), np.int64)
        np.add.at(confusion, (np.asarray(yt), pred), 1)
        out["plot"] = plot(
            history,
            confusion,
            names,
            args.out,
            f"{args.dataset}: MLP {'-'.join(str(h) for h in args.hidden)}, "
            f"test accuracy {test['accuracy']:.4f}",
        )
        if out["plot"]:
            print(f"plot saved to {args.out}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
