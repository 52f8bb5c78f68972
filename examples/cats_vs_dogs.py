"""Cats vs dogs: binary image classification with one logit and binary cross-entropy.

The seed's example, on the best data this machine has (the script prints which one ran):

  cifar10        CIFAR-10 "cat" (0) vs "dog" (1), 32×32 colour — 10,000 train / 2,000 test.
                 Used when ``--path`` (the ``cifar-10-python.tar.gz`` tarball or its
                 extracted directory) or ``--download`` is given, or when the tarball is
                 already in the cache (``$JBP_DATA_DIR`` or ``~/.cache/jbp``, ``cifar10/``).
  fashion_mnist  otherwise, Fashion-MNIST "T-shirt/top" (0) vs "Shirt" (1), 28×28 grey —
                 12,000 train / 2,000 test — from the IDX files in ``--fashion-path``
                 (default ``/usr/share/datasets/fashion-mnist``, the Debian/Ubuntu package
                 ``dataset-fashion-mnist``). Why this pair: like cats and dogs, they are the
                 two classes of their set that look most alike (the pair a 10-way Fashion-MNIST
                 classifier confuses most), so the task is not trivially separable.
  digits         otherwise, the embedded 8×8 UCI digits "3" (0) vs "8" (1) — about 290
                 train / 72 test — two digits whose strokes overlap.

``--source`` forces one of them (an error, exit code 2, when it is not available); an
explicit ``--path`` or ``--download`` means CIFAR-10, and a ``--path`` that holds no
CIFAR-10 data is an error, never a silent fallback. ``--classes A B`` picks another pair.

Model (``--model cnn``, the default): Conv2D(8, 3×3) → ReLU → MaxPool 2 → Conv2D(16, 3×3)
→ ReLU → MaxPool 2 → Flatten → Dense(64) → ReLU → Dropout(0.3) → Dense(1); ``--model mlp``:
Flatten → Dense(128) → ReLU → Dropout(0.3) → Dense(1). One output logit ``z``;
``jbp.losses.binary_cross_entropy`` (``softplus(z) − t·z``, gradient ``(σ(z) − t)/n``);
``P(class 1) = σ(z)``, predicted class 1 when ``z > 0``. ``--limit`` subsamples the
training set (default 4,000) to keep an epoch short on a CPU. Offline; on the Fashion-MNIST
pair ~20 s on a 2-core CPU::

    python examples/cats_vs_dogs.py                              # whatever is available
    python examples/cats_vs_dogs.py --path ~/data/cifar-10-python.tar.gz --limit 0
    python examples/cats_vs_dogs.py --download                   # Colab: fetch CIFAR-10
    python examples/cats_vs_dogs.py --source digits --model mlp
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
from jbp.datasets import cache, cifar10, digits, fashion_mnist, prepare_images
from jbp.datasets.cifar import TARBALL
from jbp.layers import Dense, Dropout, Flatten, ReLU
from jbp.layers.conv import Conv2D
from jbp.layers.pooling import MaxPool2D
from jbp.plotting import save_figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import (  # noqa: E402
    add_common_args,
    figure_path,
    results_table,
    validation_split,
)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SOURCES = ("auto", "cifar10", "fashion_mnist", "digits")
DEFAULT_CLASSES = {
    "cifar10": ("cat", "dog"),
    "fashion_mnist": ("T-shirt/top", "Shirt"),
    "digits": ("3", "8"),
}
TITLES = {
    "cifar10": "CIFAR-10 32×32 colour",
    "fashion_mnist": "Fashion-MNIST 28×28 grey",
    "digits": "UCI digits 8×8 (embedded)",
}


class DataUnavailable(Exception):
    """The requested source cannot be loaded; the message says why and what to do."""


def build_model(kind: str = "cnn", dropout: float = 0.3) -> jbp.Sequential:
    """A small CNN (or MLP) with one output logit."""
    if kind == "mlp":
        return jbp.Sequential(
            [Flatten(), Dense(128, w_init="he_normal"), ReLU(), Dropout(dropout), Dense(1)]
        )
    return jbp.Sequential(
        [
            Conv2D(8, 3, w_init="he_normal"),
            ReLU(),
            MaxPool2D(2),
            Conv2D(16, 3, w_init="he_normal"),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dense(64, w_init="he_normal"),
            ReLU(),
            Dropout(dropout),
            Dense(1),
        ]
    )


def _fashion_files_present(directory) -> bool:
    d = Path(directory)
    return d.is_dir() and all(
        any((d / (stem + gz)).is_file() for gz in ("", ".gz"))
        for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    )


def choose_source(source, path, download, fashion_path):
    """``(source, reason)``: which data set runs, and why (the fallback rule of the module
    docstring). Raises :class:`DataUnavailable` when a requested source cannot be had."""
    if source == "auto":
        if path is not None or download:
            return "cifar10", ("--download given" if path is None else f"--path {path}")
        cached = cache.dataset_dir("cifar10") / TARBALL
        if cached.is_file():
            return "cifar10", f"found {cached}"
        if _fashion_files_present(fashion_path):
            return "fashion_mnist", (
                f"no CIFAR-10 (no --path/--download, nothing in {cached}); "
                f"Fashion-MNIST IDX files found in {fashion_path}"
            )
        return "digits", (
            f"no CIFAR-10 (no --path/--download, nothing in {cached}) and no "
            f"Fashion-MNIST files in {fashion_path}: the embedded digits"
        )
    if source == "fashion_mnist" and not _fashion_files_present(fashion_path):
        raise DataUnavailable(
            f"--source fashion_mnist: no Fashion-MNIST IDX files in {fashion_path}; install "
            f"them (apt-get install dataset-fashion-mnist) or pass --fashion-path DIR"
        )
    return source, f"--source {source}"


def load(source, classes, *, path, download, fashion_path, verify=True):
    """``((x_train, y_train), (x_test, y_test))``: float32 NHWC images in [0, 1], labels 0/1."""
    try:
        if source == "cifar10":
            (x, y), (xt, yt) = cifar10(path, download=download, classes=classes, verify=verify)
            x, xt = prepare_images(x, flatten=False), prepare_images(xt, flatten=False)
        elif source == "fashion_mnist":
            (x, y), (xt, yt) = fashion_mnist(fashion_path, classes=classes, verify=verify)
            x = prepare_images(x, flatten=False, channels_last=True)
            xt = prepare_images(xt, flatten=False, channels_last=True)
        else:
            (x, y), (xt, yt) = digits(flatten=False)
            want = [int(c) for c in classes]
            if len(set(want)) != 2 or not all(0 <= c <= 9 for c in want):
                raise ValueError(f"classes: two different digits 0..9 expected, got {classes}")
            keep, keep_t = np.isin(y, want), np.isin(yt, want)
            x, y = x[keep], (y[keep] == want[1]).astype(np.int32)
            xt, yt = xt[keep_t], (yt[keep_t] == want[1]).astype(np.int32)
    except FileNotFoundError as e:
        raise DataUnavailable(str(e)) from None
    return (x, y), (xt, yt)


def plot(history, x_test, y_test, prob, classes, path, title):
    try:
        from jbp.plotting import require_matplotlib

        plt = require_matplotlib()
    except ImportError as e:
        print(f"no plot: {e}")
        return None
    fig = plt.figure(figsize=(12, 4.8))
    grid = fig.add_gridspec(2, 6)
    ax = fig.add_subplot(grid[:, :2])
    ep = history["epoch"]
    ax.plot(ep, history["loss"], marker=".", label="train loss (dropout on)")
    ax.plot(ep, history["val_loss"], marker=".", label="test loss")
    ax.plot(ep, history["val_accuracy"], marker=".", label="test accuracy")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for i in range(min(8, len(x_test))):
        a = fig.add_subplot(grid[i // 4, 2 + i % 4])
        img = np.asarray(x_test[i])
        grey = img.shape[-1] == 1
        a.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None)
        guess = int(prob[i] > 0.5)
        a.set_title(
            f"{classes[guess]}  P={max(prob[i], 1 - prob[i]):.2f}",
            fontsize=8,
            color="black" if guess == int(y_test[i]) else "red",
        )
        a.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="data set: auto (CIFAR-10 → Fashion-MNIST → digits, the default) or one",
    )
    p.add_argument(
        "--path",
        default=None,
        help="CIFAR-10: the cifar-10-python.tar.gz tarball or its extracted directory",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10 (170 MB, checksummed) into the cache if missing",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksums (your own CIFAR-10 / Fashion-MNIST-layout files)",
    )
    p.add_argument(
        "--fashion-path",
        default=FASHION_DIR,
        help=f"directory of the Fashion-MNIST IDX files (default {FASHION_DIR})",
    )
    p.add_argument(
        "--classes",
        nargs=2,
        default=None,
        metavar=("CLASS0", "CLASS1"),
        help="the pair (names for CIFAR-10 / Fashion-MNIST, digits 0..9 for digits)",
    )
    p.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--limit", type=int, default=4000, help="train on at most N images (default 4000; 0 = all)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--dropout", type=float, default=0.3)
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "cats_vs_dogs.png")
    if args.epochs < 1 or args.batch_size < 1 or args.limit < 0:
        p.error("--epochs and --batch-size must be >= 1, --limit >= 0")
    if args.source not in ("auto", "cifar10") and (args.path or args.download):
        p.error(f"--path/--download are for CIFAR-10, but --source is {args.source}")
    t0 = time.perf_counter()

    try:
        source, reason = choose_source(args.source, args.path, args.download, args.fashion_path)
        classes = tuple(args.classes) if args.classes else DEFAULT_CLASSES[source]
        (x, y), (xt, yt) = load(
            source,
            classes,
            path=args.path,
            download=args.download,
            fashion_path=args.fashion_path,
            verify=not args.no_verify,
        )
    except (DataUnavailable, ValueError) as e:
        p.error(str(e))  # exit code 2, the message names the file or argument
    print(
        f"data: {source} — {TITLES[source]}, {classes[0]!r} (0) vs {classes[1]!r} (1)  [{reason}]"
    )
    if args.limit and args.limit < len(y):
        idx = np.random.default_rng(args.seed).permutation(len(y))[: args.limit]
        x, y = x[np.sort(idx)], y[np.sort(idx)]
    x, xt = jnp.asarray(x, jnp.float32), jnp.asarray(xt, jnp.float32)
    y, yt = jnp.asarray(y, jnp.float32)[:, None], jnp.asarray(yt, jnp.float32)[:, None]
    print(
        f"{len(y)} train images (class 1: {float(jnp.mean(y)):.1%}), {len(yt)} test images "
        f"(class 1: {float(jnp.mean(yt)):.1%}), input {tuple(x.shape[1:])}"
    )

    model = build_model(args.model, args.dropout)
    key_init, key_check, key_fit = jax.random.split(jax.random.key(args.seed), 3)
    params, _ = model.init(key_init, x.shape[1:])
    loss = jbp.losses.binary_cross_entropy
    print(model)
    # the proof, in float64, on a few images, dropout on. Biases get small random values
    # first: with zero biases a ReLU of a blank image region sits exactly on its kink,
    # where finite differences mean nothing.
    with jax.enable_x64(True):
        rng = np.random.default_rng(args.seed + 1)
        leaves, tree = jax.tree.flatten(jbp.cast(params, jnp.float64))
        leaves = [l + 0.05 * rng.standard_normal(l.shape) if l.ndim == 1 else l for l in leaves]
        report = jbp.check_gradients(
            model,
            loss,
            jax.tree.unflatten(tree, leaves),
            jnp.asarray(x[:6], jnp.float64),
            jnp.asarray(y[:6], jnp.float64),
            key=key_check,
        )
    print(report)

    # validation: 10% of the training images; the test set is evaluated once at the end
    (x, y), (xv, yv) = validation_split(x, y, 0.1, args.seed)
    params, history = jbp.fit(
        model,
        params,
        loss,
        jbp.optim.adam(args.lr),
        (x, y),
        batch_size=min(args.batch_size, len(y)),
        epochs=args.epochs,
        key=key_fit,
        validation_data=(xv, yv),
    )
    test = jbp.evaluate(model, params, loss, (xt, yt))
    train = jbp.evaluate(model, params, loss, (x, y))
    majority = float(jnp.mean(y)) >= 0.5
    base = float(jnp.mean((yt[:, 0] > 0.5) == majority))
    name = f"{args.model.upper()} ({source})"
    print()
    print(
        results_table(
            [
                (f"majority class (always {classes[int(majority)]!r})", base, None),
                (name, test["accuracy"], test["loss"]),
            ]
        )
    )
    print(
        f"ran on: {source} ({classes[0]} vs {classes[1]}); train accuracy "
        f"{train['accuracy']:.4f}, test accuracy {test['accuracy']:.4f}"
    )

    out = {
        "source": source,
        "reason": reason,
        "classes": classes,
        "report": report,
        "history": history,
        "test": test,
        "train": train,
        "baseline_accuracy": base,
        "plot": None,
    }
    if not args.no_plot and args.out:
        prob = np.asarray(jax.nn.sigmoid(model.apply(params, xt[:8])))[:, 0]
        out["plot"] = plot(
            history,
            xt[:8],
            np.asarray(yt[:8, 0]),
            prob,
            classes,
            args.out,
            f"{classes[0]} vs {classes[1]} ({TITLES[source]}), {args.model}: "
            f"test accuracy {test['accuracy']:.3f}",
        )
        if out["plot"]:
            print(f"plot saved to {args.out}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
