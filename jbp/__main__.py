"""The main job: train an MLP with hand-written backprop on the embedded digits.

    python -m jbp                      # 64-64-10 ReLU MLP, minibatch SGD, ~96% test accuracy
    python -m jbp --hidden 128 64 --activation tanh --optimizer adam --lr 1e-3
    python -m jbp --batch-size gd      # full-batch gradient descent (sgd = one example a step)
    python -m jbp --dataset fashion-mnist --path /usr/share/datasets/fashion-mnist

    python -m jbp --checkpoint-dir ckpt --resume --save model.jbp   # resumable; keep the model
    python -m jbp --evaluate model.jbp                                 # test a saved model

It first proves the hand-written gradient of the initial network against jax.grad and
finite differences, then trains (one compiled lax.scan per epoch), printing one line per
epoch, and ends with the test accuracy.

Exit status: 0 on success; 1 when the gradient check fails; 2 for bad arguments or data
(the message, no traceback); 3 when training diverged (a NaN/Inf loss: training stops and
the last finite parameters are kept, and saved with --save).
"""
from __future__ import annotations

import argparse
import sys
import time

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
        raise argparse.ArgumentTypeError(f"expected 'gd', 'sgd' or a positive integer, got {text!r}")
    return size


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jbp", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=_positive(int), nargs="*", default=[64], metavar="UNITS",
                   help="hidden layer widths (default: 64; none for a linear model)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                   help="hidden activation (default: relu)")
    p.add_argument("--init", default=None, metavar="NAME",
                   help="weight initializer by name, e.g. he_normal, glorot_uniform "
                        "(default: he_normal for ReLU-like, glorot_uniform otherwise)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd, momentum (0.9), nesterov, adagrad, rmsprop, adam, adamw (default: sgd)")
    p.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate (default: 0.3 for sgd, 0.05 for momentum/nesterov, 0.1 for "
                        "adagrad, 1e-3 for rmsprop/adam/adamw)")
    p.add_argument("--clip", type=_positive(float), default=None, metavar="MAX_NORM",
                   help="clip gradients by global norm before the optimizer")
    p.add_argument("--epochs", type=_positive(int), default=30, help="training epochs (default: 30)")
    p.add_argument("--batch-size", type=_batch_size, default=32, metavar="K|gd|sgd",
                   help="minibatch size; 'gd' = full batch (gradient descent), 'sgd' = 1 (default: 32)")
    p.add_argument("--early-stopping", type=_positive(int), default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs "
                        "(10%% of the training set is held out for validation)")
    p.add_argument("--history", default=None, metavar="PATH", help="write the training history as JSON")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for init, shuffling (default: 0)")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits (embedded, default), or fashion-mnist / mnist IDX files from --path")
    p.add_argument("--path", default=None, help="directory of IDX files for --dataset fashion-mnist/mnist")
    p.add_argument("--no-check", action="store_true", help="skip the initial gradient check")
    p.add_argument("--autodiff", action="store_true",
                   help="train with jax.grad instead of the hand-written backward (for comparison)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save a checkpoint (params, optimizer state, history, epoch) after every "
                        "epoch in DIR, keeping the newest 3")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --checkpoint-dir "
                        "(bit-identical to an uninterrupted run with the same flags)")
    p.add_argument("--save", default=None, metavar="PATH",
                   help="save the final parameters (and the model's description) to PATH")
    p.add_argument("--evaluate", default=None, metavar="PATH",
                   help="evaluate a model saved with --save on the test set; no training")
    return p


def load_data(args):
    from jbp import datasets
    if args.dataset == "digits":
        return datasets.digits()
    loader = datasets.fashion_mnist if args.dataset == "fashion-mnist" else datasets.mnist
    (xtr, ytr), (xte, yte) = loader(args.path)
    return ((datasets.prepare_images(xtr), np.asarray(ytr, np.int32)),
            (datasets.prepare_images(xte), np.asarray(yte, np.int32)))


def build_model(args, n_classes: int):
    from jbp import layers
    act = {"relu": layers.ReLU, "leaky_relu": layers.LeakyReLU, "elu": layers.ELU,
           "gelu": layers.GELU, "sigmoid": layers.Sigmoid, "tanh": layers.Tanh,
           "softplus": layers.Softplus}[args.activation]
    w_init = args.init or ("he_normal" if args.activation in ("relu", "leaky_relu", "elu", "gelu")
                           else "glorot_uniform")
    stack = []
    for units in args.hidden:
        stack += [layers.Dense(units, w_init=w_init), act()]
    stack.append(layers.Dense(n_classes, w_init="glorot_uniform"))
    return layers.Sequential(stack)


def build_optimizer(args):
    from jbp import optim
    lr = args.lr or {"sgd": 0.3, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.1}.get(args.optimizer, 1e-3)
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
    optimizer, lr = build_optimizer(args)
    bs = args.batch_size
    print(f"jbp {jbp.__version__} | jax {jax.__version__} on {jax.default_backend()} | "
          f"{args.dataset}: {len(x_train)} train, {len(x_test)} test, {x_train.shape[1]} features, "
          f"{n_classes} classes")
    print(f"model: {model}")
    print(f"training: {args.optimizer} lr={lr:g}{f' clip={args.clip:g}' if args.clip else ''}, "
          f"batch size {'n (full-batch GD)' if bs is None else bs}, {args.epochs} epochs, "
          f"{'jax.grad' if args.autodiff else 'hand-written backward'}")

    if not args.no_check:
        m = min(64, len(x_train))
        report = jbp.check_gradients(model, loss, params, x_train[:m], y_train[:m])
        print()
        print(report)
        print()
        if not report.ok:
            print("gradient check FAILED: the hand-written backward disagrees with autodiff",
                  file=sys.stderr)
            return 1

    params, history = jbp.fit(
        model, params, loss, optimizer, (x_train, y_train), batch_size=bs, epochs=args.epochs,
        key=key_fit, validation_data=validation, metrics=("loss", "accuracy"),
        early_stopping=args.early_stopping, verbose=1,
        grad_fn="autodiff" if args.autodiff else "manual",
        callbacks=[_TestAccuracy(model, (x_test, y_test))],
        checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    test = jbp.evaluate(model, params, loss, (x_test, y_test), metrics=("loss", "accuracy"))
    if args.history:
        history.to_json(args.history)
        print(f"history written to {args.history}")
    if args.save:
        jbp.checkpoint.save(args.save, params, metadata={
            "kind": _SAVED_KIND, "model": model_description(args, n_classes, x_train.shape[1:]),
            "epochs": len(history), "test_accuracy": float(test["accuracy"])})
        print(f"parameters written to {args.save}")
    print(f"test accuracy: {float(test['accuracy']):.4f} (test loss {float(test['loss']):.4f}) "
          f"after {len(history)} epochs, {time.perf_counter() - t_start:.1f} s in all")
    if history.diverged is not None:
        kept = (f"the parameters of epoch {history.diverged - 1}" if history.diverged > 1
                else "the initial parameters")
        print(f"training DIVERGED at epoch {history.diverged} (non-finite loss); kept {kept}; "
              f"try a smaller --lr or --clip", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def model_description(args, n_classes: int, in_shape) -> dict:
    """What ``--evaluate`` needs to rebuild the model of a ``--save`` file."""
    return {"hidden": list(args.hidden), "activation": args.activation, "init": args.init,
            "n_classes": int(n_classes), "in_shape": [int(d) for d in in_shape],
            "dataset": args.dataset}


def evaluate_saved(args) -> int:
    """``--evaluate PATH``: rebuild the saved model, restore its parameters (verified: a
    corrupt, truncated or foreign file is refused), report the test accuracy."""
    import jbp

    meta = jbp.checkpoint.read_metadata(args.evaluate)
    desc = meta.get("model") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and meta.get("kind") == _SAVED_KIND and isinstance(desc, dict)):
        raise jbp.checkpoint.CheckpointError(
            f"{args.evaluate}: not a model saved by `python -m jbp --save` (no model description "
            f"in its metadata)")
    margs = argparse.Namespace(**{**vars(args), "hidden": desc["hidden"],
                                  "activation": desc["activation"], "init": desc["init"]})
    model = build_model(margs, desc["n_classes"])
    in_shape = tuple(desc["in_shape"])
    like = jax.eval_shape(lambda k: model.init(k, in_shape)[0], jax.random.key(0))
    params = jbp.checkpoint.restore(args.evaluate, like=like)
    _, (x_test, y_test) = load_data(args)
    if tuple(x_test.shape[1:]) != in_shape:
        raise ValueError(f"--evaluate: {args.evaluate} holds a model for inputs of shape "
                         f"{in_shape}, the {args.dataset} test set has {tuple(x_test.shape[1:])}")
    test = jbp.evaluate(model, params, jbp.losses.softmax_cross_entropy, (x_test, y_test),
                        metrics=("loss", "accuracy"))
    print(f"model: {model} from {args.evaluate}")
    print(f"test accuracy: {float(test['accuracy']):.4f} (test loss {float(test['loss']):.4f}) "
          f"on {len(x_test)} {args.dataset} test examples")
    return 0


class _TestAccuracy:
    """Adds the test accuracy to each epoch's line (reported, never used for decisions)."""

    def __init__(self, model, data):
        import jbp
        self._eval = lambda params: jbp.evaluate(model, params, jbp.losses.softmax_cross_entropy,
                                                 data, metrics=("accuracy",))["accuracy"]

    def __call__(self, epoch, logs, params):
        logs["test_accuracy"] = float(self._eval(params))


if __name__ == "__main__":
    sys.exit(main())
