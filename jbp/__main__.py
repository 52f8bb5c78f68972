"""The main job: train an MLP with hand-written backprop on the embedded digits.

    python -m jbp                      # 64-64-10 ReLU MLP, minibatch SGD, ~96% test accuracy
    python -m jbp --hidden 128 64 --activation tanh --optimizer adam --lr 1e-3
    python -m jbp --batch-size gd      # full-batch gradient descent (sgd = one example a step)
    python -m jbp --x64 --plot out/main.png   # float64 check and training; curves + grad norms
    python -m jbp --dataset fashion-mnist --path /usr/share/datasets/fashion-mnist

    python -m jbp --checkpoint-dir ckpt --resume --save model.jbp   # resumable; keep the model
    python -m jbp --evaluate model.jbp                                 # test a saved model

It prints the model's summary (layers, output shapes, parameter counts), proves the
hand-written gradient of the initial network against jax.grad and finite differences, then
trains (one compiled lax.scan per epoch), printing one line per epoch, and ends with the test
accuracy. The default learning rate depends on the optimizer and on the --batch-size mode
(a step on one example needs a smaller one than a step on a minibatch or the full batch); a
warning says when the training loss rose over the epochs.

Exit status: 0 on success; 1 when the gradient check fails; 2 for bad arguments or data
(the message, no traceback); 3 when training diverged (a NaN/Inf loss: training stops and
the last finite parameters are kept, and saved with --save).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus")
DATASETS = ("digits", "fashion-mnist", "mnist")
EXIT_DIVERGED = 3
_SAVED_KIND = "jbp.__main__ model"


def _batch_size(text: str):
    from jbp.train import parse_batch_size

    try:
        size = parse_batch_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size is not None and size <= 0:
        raise argparse.ArgumentTypeError(
            f"expected 'gd', 'sgd' or a positive integer, got {text!r}"
        )
    return size


def _positive(kind, allow_zero: bool = False):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if allow_zero and v < 0:
            raise argparse.ArgumentTypeError(f"expected 0 or a positive number, got {text}")
        if not allow_zero and not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jbp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--hidden",
        type=_positive(int),
        nargs="*",
        default=[64],
        metavar="UNITS",
        help="hidden layer widths (default: 64; none for a linear model)",
    )
    p.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default="relu",
        help="hidden activation (default: relu)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="NAME",
        help="weight initializer by name, e.g. he_normal, glorot_uniform "
        "(default: he_normal for ReLU-like, glorot_uniform otherwise)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd, momentum (0.9), nesterov, adagrad, rmsprop, adam, adamw (default: sgd)",
    )
    p.add_argument(
        "--lr",
        type=_positive(float),
        default=None,
        help="learning rate (default: by optimizer and --batch-size mode; for sgd: 0.3 "
        "with minibatches, 0.02 with --batch-size sgd, 1.0 with gd; the run's first "
        "lines say which)",
    )
    p.add_argument(
        "--clip",
        type=_positive(float),
        default=None,
        metavar="MAX_NORM",
        help="clip gradients by global norm before the optimizer",
    )
    p.add_argument(
        "--epochs",
        type=_positive(int),
        default=None,
        help="training epochs (default: 30; 300 with --batch-size gd, one step each)",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=32,
        metavar="K|gd|sgd",
        help="minibatch size; 'gd' = full batch (gradient descent), 'sgd' = 1 (default: 32)",
    )
    p.add_argument(
        "--progress-every",
        type=_positive(int, allow_zero=True),
        default=None,
        metavar="STEPS",
        help="also print a line every STEPS steps inside an epoch (default: five lines per "
        "epoch when an epoch has 10,000 steps or more, as with --batch-size sgd; 0: never)",
    )
    p.add_argument(
        "--early-stopping",
        type=_positive(int),
        default=None,
        metavar="PATIENCE",
        help="stop when the validation loss has not improved for PATIENCE epochs "
        "(10%% of the training set is held out for validation)",
    )
    p.add_argument(
        "--history", default=None, metavar="PATH", help="write the training history as JSON"
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for init, shuffling (default: 0)")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="digits (embedded, default), or fashion-mnist / mnist IDX files from --path",
    )
    p.add_argument(
        "--path", default=None, help="directory of IDX files for --dataset fashion-mnist/mnist"
    )
    p.add_argument("--no-check", action="store_true", help="skip the initial gradient check")
    p.add_argument(
        "--x64",
        action="store_true",
        help="enable jax_enable_x64 first: float64 data, parameters, gradient check and training",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="save one figure to PATH: loss and accuracy curves, and the per-layer "
        "gradient norms ‖∂C/∂Wˡ‖ over epochs (needs matplotlib)",
    )
    p.add_argument(
        "--autodiff",
        action="store_true",
        help="train with jax.grad instead of the hand-written backward (for comparison)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="save a checkpoint (params, optimizer state, history, epoch) after every "
        "epoch in DIR, keeping the newest 3",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --checkpoint-dir "
        "(bit-identical to an uninterrupted run with the same flags)",
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="PATH",
        help="save the final parameters (and the model's description) to PATH",
    )
    p.add_argument(
        "--evaluate",
        default=None,
        metavar="PATH",
        help="evaluate a model saved with --save on the test set; no training",
    )
    return p


def load_data(args):
    from jbp import datasets

    if args.dataset == "digits":
        return datasets.digits()
    loader = datasets.fashion_mnist if args.dataset == "fashion-mnist" else datasets.mnist
    (xtr, ytr), (xte, yte) = loader(args.path)
    return (
        (datasets.prepare_images(xtr), np.asarray(ytr, np.int32)),
        (datasets.prepare_images(xte), np.asarray(yte, np.int32)),
    )


def build_model(args, n_classes: int):
    from jbp import layers

    act = {
        "relu": layers.ReLU,
        "leaky_relu": layers.LeakyReLU,
        "elu": layers.ELU,
        "gelu": layers.GELU,
        "sigmoid": layers.Sigmoid,
        "tanh": layers.Tanh,
        "softplus": layers.Softplus,
    }[args.activation]
    w_init = args.init or (
        "he_normal"
        if args.activation in ("relu", "leaky_relu", "elu", "gelu")
        else "glorot_uniform"
    )
    stack = []
    for units in args.hidden:
        stack += [layers.Dense(units, w_init=w_init), act()]
    stack.append(layers.Dense(n_classes, w_init="glorot_uniform"))
    return layers.Sequential(stack)


# Default learning rates by optimizer and --batch-size mode ("k": minibatches, "sgd": one
# example a step, "gd": the full batch), measured on digits (docs/cli.md).
DEFAULT_LR = {
    "k": {
        "sgd": 0.3,
        "momentum": 0.05,
        "nesterov": 0.05,
        "adagrad": 0.1,
        "rmsprop": 1e-3,
        "adam": 1e-3,
        "adamw": 1e-3,
    },
    "sgd": {
        "sgd": 0.02,
        "momentum": 2e-3,
        "nesterov": 2e-3,
        "adagrad": 0.01,
        "rmsprop": 1e-4,
        "adam": 1e-4,
        "adamw": 1e-4,
    },
    "gd": {
        "sgd": 1.0,
        "momentum": 0.1,
        "nesterov": 0.1,
        "adagrad": 0.05,
        "rmsprop": 3e-3,
        "adam": 1e-2,
        "adamw": 1e-2,
    },
}


def batch_mode(batch_size) -> str:
    """``"gd"`` (full batch), ``"sgd"`` (one example a step) or ``"k"`` (minibatches)."""
    return "gd" if batch_size is None else "sgd" if batch_size == 1 else "k"


def build_optimizer(args):
    from jbp import optim

    lr = args.lr or DEFAULT_LR[batch_mode(args.batch_size)][args.optimizer]
    opt = {
        "sgd": lambda: optim.sgd(lr),
        "momentum": lambda: optim.momentum(lr, beta=0.9),
        "nesterov": lambda: optim.sgd(lr, momentum=0.9, nesterov=True),
        "adagrad": lambda: optim.adagrad(lr),
        "rmsprop": lambda: optim.rmsprop(lr),
        "adam": lambda: optim.adam(lr),
        "adamw": lambda: optim.adamw(lr),
    }[args.optimizer]()
    if args.clip is not None:
        opt = optim.chain(optim.clip_by_global_norm(args.clip), opt)
    return opt, lr


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    was_x64 = bool(jax.config.jax_enable_x64)  # type: ignore[attr-defined]  # set dynamically
    if args.x64:  # before any array is made
        jax.config.update("jax_enable_x64", True)
    try:
        return _main(parser, args)
    finally:  # main() may be called in-process (tests, notebooks): restore the flag
        jax.config.update("jax_enable_x64", was_x64)


def _main(parser: argparse.ArgumentParser, args) -> int:
    if args.dataset != "digits" and args.path is None:
        parser.error(f"--dataset {args.dataset} needs --path (a directory of IDX files)")
    if args.resume and args.checkpoint_dir is None:
        parser.error("--resume needs --checkpoint-dir (where the checkpoints are)")
    try:
        if args.evaluate is not None:
            return evaluate_saved(args)
        return run(args)
    except (ValueError, TypeError, OSError) as e:  # bad data or arguments: say so, no traceback
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def run(args) -> int:
    import jbp

    t_start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_data(args)
    if args.plot is not None:
        jbp.plotting.require_matplotlib()  # fail now, not after training
    if args.x64:
        x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    validation = None
    if args.early_stopping is not None:  # hold out 10% of the training set
        perm = np.random.default_rng(args.seed).permutation(len(x_train))
        n_val = max(1, len(x_train) // 10)
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
        validation = (x_train[val_idx], y_train[val_idx])
        x_train, y_train = x_train[tr_idx], y_train[tr_idx]

    model = build_model(args, n_classes)
    loss = jbp.losses.softmax_cross_entropy
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params, _ = model.init(key_init, x_train.shape[1:])
    if args.x64:
        params = jbp.cast(params, jax.numpy.float64)
    optimizer, lr = build_optimizer(args)
    bs = args.batch_size
    if args.epochs is None:
        args.epochs = 300 if bs is None else 30
    print(
        f"jbp {jbp.__version__} | jax {jax.__version__} on {jax.default_backend()} | "
        f"{args.dataset}: {len(x_train)} train, {len(x_test)} test, {x_train.shape[1]} features, "
        f"{n_classes} classes"
    )
    print()
    print(jbp.summary(model, x_train.shape[1:], params=params, dtype=x_train.dtype))
    print()
    print(
        f"training: {args.optimizer} lr={lr:g}{f' clip={args.clip:g}' if args.clip else ''}, "
        f"batch size {'n (full-batch GD)' if bs is None else bs}, {args.epochs} epochs, "
        f"{'float64, ' if args.x64 else ''}"
        f"{'jax.grad' if args.autodiff else 'hand-written backward'}"
    )

    if not args.no_check:
        m = min(64, len(x_train))
        report = jbp.check_gradients(model, loss, params, x_train[:m], y_train[:m])
        print()
        print(report)
        print()
        if not report.ok:
            print(
                "gradient check FAILED: the hand-written backward disagrees with autodiff",
                file=sys.stderr,
            )
            return 1

    # Many short epochs (full-batch GD): print every stride-th line instead of all of them.
    stride = 1 if args.epochs <= 100 or args.early_stopping is not None else -(-args.epochs // 30)
    callbacks: list[Callable[..., Any]] = [  # fit callbacks (jbp.callbacks.as_callback)
        _TestAccuracy(
            model, (x_test, y_test), print_every=stride if stride > 1 else 0, epochs=args.epochs
        )
    ]
    grad_norms = None
    if args.plot is not None:
        m = min(256, len(x_train))
        grad_norms = jbp.diagnostics.GradientNormHistory(model, loss, (x_train[:m], y_train[:m]))
        grad_norms(0, params)
        callbacks.append(grad_norms)
    params, history = jbp.fit(
        model,
        params,
        loss,
        optimizer,
        (x_train, y_train),
        batch_size=bs,
        epochs=args.epochs,
        key=key_fit,
        validation_data=validation,
        metrics=("loss", "accuracy"),
        early_stopping=args.early_stopping,
        verbose=int(stride == 1),
        grad_fn="autodiff" if args.autodiff else "manual",
        callbacks=callbacks,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        progress_every=_progress_every(args.progress_every, len(x_train), bs),
    )
    test = jbp.evaluate(model, params, loss, (x_test, y_test), metrics=("loss", "accuracy"))
    _warn_if_loss_rose(history)
    if args.plot is not None:
        print(f"figure written to {plot_run(history, grad_norms, args.plot)}")
    if args.history:
        history.to_json(args.history)
        print(f"history written to {args.history}")
    if args.save:
        jbp.checkpoint.save(
            args.save,
            params,
            metadata={
                "kind": _SAVED_KIND,
                "model": model_description(args, n_classes, x_train.shape[1:]),
                "epochs": len(history),
                "test_accuracy": float(test["accuracy"]),
            },
        )
        print(f"parameters written to {args.save}")
    print(
        f"test accuracy: {float(test['accuracy']):.4f} (test loss {float(test['loss']):.4f}) "
        f"after {len(history)} epochs, {time.perf_counter() - t_start:.1f} s in all"
    )
    if history.diverged is not None:
        kept = (
            f"the parameters of epoch {history.diverged - 1}"
            if history.diverged > 1
            else "the initial parameters"
        )
        print(
            f"training DIVERGED at epoch {history.diverged} (non-finite loss); kept {kept}; "
            f"try a smaller --lr or --clip",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    return 0


def _progress_every(flag: int | None, n: int, batch_size: int | None) -> int | None:
    """``--progress-every``: 0 → never; unset → five lines per epoch for epochs of 10,000
    steps or more (SGD on the training set), none for shorter epochs."""
    if flag is not None:
        return flag or None
    from jbp.train import batch_plan

    _, nb, rem = batch_plan(n, batch_size)
    steps = nb + (1 if rem else 0)
    return -(-steps // 5) if steps >= 10_000 else None


def _warn_if_loss_rose(history) -> bool:
    """Warn (stderr) when the training loss ended above where it started, or rose well above
    its best epoch: usually a learning rate too large for the batch-size mode."""
    losses = [v for v in history["loss"] if np.isfinite(v)] if len(history) else []
    if len(losses) < 2:
        return False
    first, last, best = losses[0], losses[-1], min(losses)
    rises = sum(b > a for a, b in zip(losses, losses[1:]))
    if last > first or last > 1.5 * best or (len(losses) >= 6 and rises >= len(losses) / 3):
        print(
            f"warning: the training loss rose over the epochs (in {rises} of {len(losses) - 1}; "
            f"{first:.4g} at epoch 1, best {best:.4g}, {last:.4g} at the end): try a smaller "
            f"--lr",
            file=sys.stderr,
        )
        return True
    return False


def plot_run(history, grad_norms, path) -> str:
    """One figure: loss, accuracy (train / validation / test) and per-layer ‖∂C/∂Wˡ‖."""
    import jbp

    plt = jbp.plotting.require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    epochs = history["epoch"]
    for ax, what in zip(axes[:2], ("loss", "accuracy")):
        for key, label in (
            (what, "train"),
            (f"val_{what}", "validation"),
            (f"test_{what}", "test"),
        ):
            if key in history.keys():
                ax.plot(epochs, history[key], marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    if grad_norms is not None and grad_norms.record.epochs:
        jbp.plotting.plot_gradient_norms(grad_norms.record, ax=axes[2])
    fig.tight_layout()
    return jbp.plotting.save_figure(fig, path)


def model_description(args, n_classes: int, in_shape) -> dict:
    """What ``--evaluate`` needs to rebuild the model of a ``--save`` file."""
    return {
        "hidden": list(args.hidden),
        "activation": args.activation,
        "init": args.init,
        "n_classes": int(n_classes),
        "in_shape": [int(d) for d in in_shape],
        "dataset": args.dataset,
    }


def evaluate_saved(args) -> int:
    """``--evaluate PATH``: rebuild the saved model, restore its parameters (verified: a
    corrupt, truncated or foreign file is refused), report the test accuracy."""
    import jbp

    meta = jbp.checkpoint.read_metadata(args.evaluate)
    desc = meta.get("model") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and meta.get("kind") == _SAVED_KIND and isinstance(desc, dict)):
        raise jbp.checkpoint.CheckpointError(
            f"{args.evaluate}: not a model saved by `python -m jbp --save` (no model description "
            f"in its metadata)"
        )
    margs = argparse.Namespace(
        **{
            **vars(args),
            "hidden": desc["hidden"],
            "activation": desc["activation"],
            "init": desc["init"],
        }
    )
    model = build_model(margs, desc["n_classes"])
    in_shape = tuple(desc["in_shape"])
    like = jax.eval_shape(lambda k: model.init(k, in_shape)[0], jax.random.key(0))
    params = jbp.checkpoint.restore(args.evaluate, like=like)
    _, (x_test, y_test) = load_data(args)
    if tuple(x_test.shape[1:]) != in_shape:
        raise ValueError(
            f"--evaluate: {args.evaluate} holds a model for inputs of shape "
            f"{in_shape}, the {args.dataset} test set has {tuple(x_test.shape[1:])}"
        )
    test = jbp.evaluate(
        model,
        params,
        jbp.losses.softmax_cross_entropy,
        (x_test, y_test),
        metrics=("loss", "accuracy"),
    )
    print(f"model: {model} from {args.evaluate}")
    print(
        f"test accuracy: {float(test['accuracy']):.4f} (test loss {float(test['loss']):.4f}) "
        f"on {len(x_test)} {args.dataset} test examples"
    )
    return 0


class _TestAccuracy:
    """Adds the test accuracy to each epoch's line (reported, never used for decisions)."""

    def __init__(self, model, data, *, print_every: int = 0, epochs: int = 0):
        import jbp

        self._every, self._epochs = print_every, epochs
        self._eval = lambda params: jbp.evaluate(
            model, params, jbp.losses.softmax_cross_entropy, data, metrics=("accuracy",)
        )["accuracy"]

    def __call__(self, epoch, logs, params):
        logs["test_accuracy"] = float(self._eval(params))
        if self._every and (epoch == 1 or epoch % self._every == 0 or epoch == self._epochs):
            from jbp.callbacks import format_epoch

            shown = {k: v for k, v in logs.items() if k not in ("epoch", "time", "compile_time")}
            print(format_epoch(epoch, self._epochs, shown), flush=True)


if __name__ == "__main__":
    sys.exit(main())
