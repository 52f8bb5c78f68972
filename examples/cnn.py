"""A small CNN with augmentation: hand-written conv, pooling and BatchNorm backward passes.

On the embedded UCI digits (8x8, offline) by default, or on Fashion-MNIST when given the
directory of its IDX files::

    python examples/cnn.py                       # digits, ~0.1 s per epoch on a 2-core CPU
    python examples/cnn.py --path ~/data/fashion-mnist --epochs 3 --limit 20000

Prints the gradient-check report (hand-written backward vs jax.grad and finite
differences, in float64, on a few examples), trains with ``jbp.fit`` (minibatch Adam,
random rotations/translations applied inside the compiled epoch), and prints the test
accuracy. The BatchNorm layer makes the model *stateful*: ``fit`` threads its running
statistics and returns them as ``history.state``, which evaluation then uses.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import augment
from jbp.layers import Dense, Flatten, ReLU
from jbp.layers.conv import Conv2D
from jbp.layers.normalization import BatchNorm
from jbp.layers.pooling import MaxPool2D

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/_common.py
from _common import (  # noqa: E402
    add_common_args,
    check_gradients_f64,
    example_parser,
    fit_and_evaluate,
    validation_split,
)


def build_model(n_classes: int = 10) -> jbp.Sequential:
    """conv16 → ReLU → maxpool → conv32 (no bias) → BatchNorm → ReLU → maxpool → dense."""
    return jbp.Sequential(
        [
            Conv2D(16, 3, w_init="he_normal"),
            ReLU(),
            MaxPool2D(2),
            Conv2D(32, 3, use_bias=False, w_init="he_normal"),
            BatchNorm(momentum=0.9),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dense(n_classes),
        ]
    )


def load(path, limit, verify=True):
    if path is None:
        (x_tr, y_tr), (x_te, y_te) = jbp.datasets.digits(flatten=False)
        aug = augment.compose(augment.random_rotation(10.0), augment.random_translation(1))
        name = "UCI digits 8x8"
    else:
        from jbp.datasets.idx import fashion_mnist, prepare_images

        (x_tr, y_tr), (x_te, y_te) = fashion_mnist(path, verify=verify)
        x_tr = prepare_images(x_tr, flatten=False, channels_last=True)
        x_te = prepare_images(x_te, flatten=False, channels_last=True)
        aug = augment.compose(augment.random_flip(), augment.random_translation(2))
        name = "Fashion-MNIST 28x28"
    if limit:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    as_jnp = lambda a, d: jnp.asarray(np.asarray(a), d)  # noqa: E731
    return (
        name,
        (as_jnp(x_tr, jnp.float32), as_jnp(y_tr, jnp.int32)),
        (as_jnp(x_te, jnp.float32), as_jnp(y_te, jnp.int32)),
        aug,
    )


def main(argv=None):
    ap = example_parser(__doc__)
    ap.add_argument("--path", default=None, help="directory with the Fashion-MNIST IDX files")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training examples")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksums of the IDX files (your own IDX files)",
    )
    add_common_args(ap, out=False, plot=False, val_fraction=0.1)  # --seed, --val-fraction
    args = ap.parse_args(argv)

    name, (x_tr, y_tr), (x_te, y_te), aug = load(args.path, args.limit, not args.no_verify)
    # validation: a held-out slice of the training set; the test set is used once at the end
    (x_tr, y_tr), (x_va, y_va) = validation_split(x_tr, y_tr, args.val_fraction, args.seed)
    model = build_model()
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params, _ = model.init(key_init, x_tr.shape[1:])
    loss = jbp.losses.softmax_cross_entropy
    print(
        f"{name}: {x_tr.shape[0]} train, {x_va.shape[0]} validation, {x_te.shape[0]} test, input {tuple(x_tr.shape[1:])}"
    )
    print(model)

    # 1. the proof: hand-written backward vs jax.grad and finite differences, in float64.
    #    Biases get small random values first: with zero biases the ReLU of a blank image
    #    region sits exactly on its kink, where finite differences mean nothing.
    with jax.enable_x64(True):
        leaves, tree = jax.tree.flatten(jbp.cast(params, jnp.float64))
        keys = jax.random.split(jax.random.key(args.seed + 1), len(leaves))
        leaves = [
            l + 0.05 * jax.random.normal(k, l.shape, l.dtype) if l.ndim == 1 else l
            for l, k in zip(leaves, keys)
        ]
        params64 = jax.tree.unflatten(tree, leaves)
    report = check_gradients_f64(model, loss, params64, x_tr[:8], y_tr[:8])
    print(report)

    # 2. training: BatchNorm's running statistics come back as history.state
    params, history, result = fit_and_evaluate(
        model,
        params,
        loss,
        (x_tr, y_tr),
        (x_te, y_te),
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        key=key_fit,
        validation=(x_va, y_va),
        augment=None if args.no_augment else aug,
    )
    print(f"test accuracy {result['accuracy']:.4f} (loss {result['loss']:.4f})")
    return {"report": report, "history": history, "test": result}


if __name__ == "__main__":
    main()
