"""Vanishing gradients: each earlier sigmoid layer learns slower (Nielsen, ch. 5).

The *speed of learning* of a layer is ‖∂C/∂bˡ‖, the norm of the gradient of the cost with
respect to its biases, read off the hand-written deltas (``jbp.diagnostics``). This
script

1. prints it at initialization for sigmoid networks with 1 to 4 hidden layers of 30 units
   (Nielsen's initialization: weights N(0, 1/fan_in), biases N(0, 1)), and for the same
   shapes with ReLU + He initialization;
2. trains the 4-hidden-layer sigmoid net and the 4-hidden-layer ReLU + He net with
   ``jbp.fit`` (minibatch SGD), recording the speed of learning of every layer each
   epoch on a fixed probe batch (``GradientNormHistory``), prints how it evolves and
   saves a plot of it per layer over epochs.

Runs offline on the embedded UCI digits (8×8); ``--path DIR`` reads MNIST or
Fashion-MNIST IDX files instead (``--dataset``)::

    python examples/vanishing_gradients.py --epochs 30 --out out/vanishing.png
    python examples/vanishing_gradients.py --path ~/data/fashion --dataset fashion_mnist
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import diagnostics, initializers, optim
from jbp.layers import Dense, ReLU, Sigmoid
from jbp.plotting import save_figure
from jbp.train import fit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args, figure_path, validation_split  # noqa: E402

LOSS = jbp.losses.softmax_cross_entropy
HIDDEN = 30


def sigmoid_net(depth: int) -> jbp.Sequential:
    """``depth`` hidden sigmoid layers of 30 units, Nielsen's initialization."""
    layers = []
    for _ in range(depth):
        layers += [Dense(HIDDEN, w_init="lecun_normal", b_init=initializers.normal(1.0)), Sigmoid()]
    return jbp.Sequential(
        layers + [Dense(10, w_init="lecun_normal", b_init=initializers.normal(1.0))]
    )


def relu_he_net(depth: int) -> jbp.Sequential:
    """``depth`` hidden ReLU layers of 30 units, He initialization, zero biases."""
    layers = []
    for _ in range(depth):
        layers += [Dense(HIDDEN, w_init="he_normal"), ReLU()]
    return jbp.Sequential(layers + [Dense(10, w_init="he_normal")])


def layer_labels(names) -> dict:
    """``layers[0]`` → ``hidden 1``, ..., the last → ``output``."""
    labels = {n: f"hidden {i + 1}" for i, n in enumerate(names[:-1])}
    labels[names[-1]] = "output"
    return labels


def load_data(args):
    if args.path is None:
        from jbp.datasets import digits

        (x, y), (xt, yt) = digits()
        name = "UCI digits (8x8, embedded)"
    else:
        from jbp.datasets import fashion_mnist, mnist, prepare_images

        loader = fashion_mnist if args.dataset == "fashion_mnist" else mnist
        (x, y), (xt, yt) = loader(args.path, verify=not args.no_verify)
        x, xt = prepare_images(x), prepare_images(xt)
        x, y = x[: args.n_train], y[: args.n_train]
        name = f"{args.dataset} from {args.path} ({len(x)} train examples)"
    x, xt = (
        np.asarray(x, np.float32).reshape(len(x), -1),
        np.asarray(xt, np.float32).reshape(len(xt), -1),
    )
    return (x, np.asarray(y, np.int32)), (xt, np.asarray(yt, np.int32)), name


def speed_table(title, rows, max_depth) -> str:
    """rows: [(depth, {label: speed})] → a text table, one row per network."""
    cols = [f"hidden {i + 1}" for i in range(max_depth)] + ["output", "hidden 1 / output"]
    head = ["net"] + cols
    body = []
    for depth, sol in rows:
        vals = list(sol.values())
        cells = [f"{depth} hidden"]
        cells += [f"{sol[c]:.4f}" if c in sol else "" for c in cols[:-1]]
        cells.append(f"{vals[0] / vals[-1]:.2e}")
        body.append(cells)
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([title, fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def evolution_table(title, record, labels, every) -> str:
    speeds = record.speed_of_learning()
    names = list(speeds)
    head = ["epoch"] + [labels[n] for n in names] + ["probe loss"]
    body = []
    for k, e in enumerate(record.epochs):
        if e % every and k != len(record.epochs) - 1:
            continue
        body.append([str(e)] + [f"{speeds[n][k]:.2e}" for n in names] + [f"{record.loss[k]:.4f}"])
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([title, fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    p.add_argument(
        "--path",
        default=None,
        help="directory of MNIST/Fashion-MNIST IDX files (default: the embedded UCI digits)",
    )
    p.add_argument(
        "--dataset",
        choices=("mnist", "fashion_mnist"),
        default="mnist",
        help="which IDX set --path holds (default mnist)",
    )
    p.add_argument("--n-train", type=int, default=10000, help="IDX examples to train on")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the IDX files' checksums (other sets of the same layout)",
    )
    p.add_argument("--max-depth", type=int, default=4, help="hidden layers, 1..N (default 4)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--probe", type=int, default=1000, help="probe batch size (default 1000)")
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "vanishing_gradients.png")
    if args.epochs < 1 or args.max_depth < 1 or args.probe < 1:
        p.error("--epochs, --max-depth and --probe must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    (x, y), (xt, yt), data_name = load_data(args)
    # validation: 10% of the training set; the test set is evaluated once after training
    (x, y), (xv, yv) = validation_split(np.asarray(x), np.asarray(y), 0.1, args.seed)
    probe = (jnp.asarray(x[: args.probe]), jnp.asarray(y[: args.probe]))
    n_in = x.shape[1]
    print(f"data: {data_name}; probe batch: {len(probe[0])} examples; loss: softmax cross-entropy")
    print("speed of learning of a layer = ‖∂C/∂b‖, from the hand-written deltas\n")

    key = jax.random.key(args.seed)
    results = {"init": {}, "train": {}}
    for kind, make in (("sigmoid", sigmoid_net), ("relu_he", relu_he_net)):
        rows = []
        for depth in range(1, args.max_depth + 1):
            model = make(depth)
            params, _ = model.init(jax.random.fold_in(key, depth), (n_in,))
            sol = diagnostics.speed_of_learning(model, LOSS, params, *probe, train=False)
            labels = layer_labels(list(sol))
            rows.append((depth, {labels[k]: v for k, v in sol.items()}))
        results["init"][kind] = rows
        title = (
            "Sigmoid, Nielsen init (W ~ N(0, 1/fan_in), b ~ N(0, 1))"
            if kind == "sigmoid"
            else "ReLU + He init (W ~ N(0, 2/fan_in), b = 0)"
        )
        print(speed_table(f"speed of learning at initialization — {title}", rows, args.max_depth))
        print()

    depth = args.max_depth
    every = max(1, args.epochs // 10)
    records = {}
    for kind, make, title in (
        ("sigmoid", sigmoid_net, f"{depth} hidden sigmoid layers"),
        ("relu_he", relu_he_net, f"{depth} hidden ReLU + He layers"),
    ):
        model = make(depth)
        params, _ = model.init(jax.random.fold_in(key, depth), (n_in,))
        report = diagnostics.layer_report(model, LOSS, params, *probe, train=False)
        findings = diagnostics.detect_gradient_problems(report, vanishing_ratio=1e-2)
        hist = diagnostics.GradientNormHistory(model, LOSS, probe)
        hist(0, params)
        params, history = fit(
            model,
            params,
            LOSS,
            optim.sgd(args.lr),
            (x, y),
            batch_size=args.batch_size,
            epochs=args.epochs,
            key=jax.random.fold_in(key, 100 + depth),
            validation_data=(xv, yv),
            callbacks=[hist],
            verbose=0,
        )
        labels = layer_labels(list(hist.record.speed_of_learning()))  # the Dense layers
        print(f"per-layer report at initialization — {title}")
        print(report)
        print(
            "detector (vanishing_ratio=1e-2): "
            + ("; ".join(str(f) for f in findings) if findings else "nothing found")
        )
        print()
        print(
            evolution_table(
                f"speed of learning during training (SGD, lr {args.lr}, batch "
                f"{args.batch_size}) — {title}",
                hist.record,
                labels,
                every,
            )
        )
        acc = float(jbp.evaluate(model, params, LOSS, (xt, yt), metrics=("accuracy",))["accuracy"])
        print(f"test accuracy after {args.epochs} epochs: {acc:.4f}\n")
        records[kind] = (hist.record, labels, title)
        results["train"][kind] = {
            "record": hist.record.to_dict(),
            "test_accuracy": acc,
            "findings_at_init": [str(f) for f in findings],
        }

    if not args.no_plot:
        from jbp.plotting import plot_gradient_norms, require_matplotlib

        plt = require_matplotlib()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        for ax, (_kind, (record, labels, title)) in zip(axes, records.items()):
            plot_gradient_norms(record, None, quantity="bias_grad_norm", ax=ax, title=title)
            handles, names = ax.get_legend_handles_labels()
            ax.legend(handles, [labels.get(n, n) for n in names], fontsize=8)
        fig.suptitle(f"Speed of learning ‖∂C/∂bˡ‖ per layer over epochs — {data_name}")
        fig.tight_layout()
        save_figure(fig, args.out)
        print(f"plot saved to {args.out}")
        results["plot"] = args.out
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
