"""Exploding gradients in a house-price regression, and two fixes.

The seed's example: a small ReLU network predicting house prices (the embedded Ames data,
12 numeric features, standardized price) with weights initialized too large, N(0, 1).
Forward, each layer multiplies the signal by about ``σ_w·√(fan_in/2) ≈ 5.7``; backward,
the deltas grow the same way, so the first SGD steps are enormous and the loss goes to
inf/NaN within a few steps. ``jbp.diagnostics.detect_gradient_problems`` flags it at
initialization. Two fixes:

* ``optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(lr))``: the same bad start,
  but every step is capped — training stays finite (and slowly recovers);
* Glorot or He initialization: gradients of order one from the start; the detector is
  quiet and plain SGD trains.

    python examples/exploding_gradients.py --epochs 20 --out out/exploding_gradients.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import diagnostics, initializers, optim
from jbp.layers import Dense, ReLU
from jbp.plotting import save_figure
from jbp.train import fit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args, figure_path, validation_split  # noqa: E402

LOSS = jbp.losses.mse


def regression_net(w_init, hidden=64) -> jbp.Sequential:
    return jbp.Sequential(
        [
            Dense(hidden, w_init=w_init),
            ReLU(),
            Dense(hidden, w_init=w_init),
            ReLU(),
            Dense(1, w_init=w_init),
        ]
    )


def configs(lr, clip):
    """(name, w_init, optimizer) of the four runs."""
    big = initializers.normal(1.0)
    return [
        ("N(0,1) init, SGD", big, optim.sgd(lr)),
        (
            f"N(0,1) init, clip {clip:g} + SGD",
            big,
            optim.chain(optim.clip_by_global_norm(clip), optim.sgd(lr)),
        ),
        ("Glorot init, SGD", "glorot_normal", optim.sgd(lr)),
        ("He init, SGD", "he_normal", optim.sgd(lr)),
    ]


def load_data(synthetic: bool, seed: int):
    if synthetic:  # a smooth nonlinear target of 12 standardized features
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((3000, 12)).astype(np.float32)
        w = rng.standard_normal(12) / math.sqrt(12)
        y = np.tanh(x @ w) + 0.3 * np.sin(x[:, 0] * x[:, 1]) + 0.1 * rng.standard_normal(3000)
        y = ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
        return (x[:2400], y[:2400]), (x[2400:], y[2400:]), "synthetic regression (3000 x 12)"
    from jbp.datasets import ames

    (x, y), (xt, yt) = ames(target="standardized")
    return (
        (np.asarray(x, np.float32), np.asarray(y, np.float32)[:, None]),
        (np.asarray(xt, np.float32), np.asarray(yt, np.float32)[:, None]),
        "Ames house prices (12 features, standardized price, embedded)",
    )


def first_steps(model, params, optimizer, x, y, batch, steps):
    """Loss and global gradient norm over the first ``steps`` SGD steps (one jitted step)."""
    vg = jbp.value_and_grad(model, LOSS)

    @jax.jit
    def step(p, s, xb, yb):
        value, g = vg(p, xb, yb)
        u, s = optimizer.update(g, s, p)
        return optim.apply_updates(p, u), s, value, optim.global_norm(g)

    state = optimizer.init(params)
    out = []
    for k in range(steps):
        xb, yb = x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]
        params, state, value, gnorm = step(params, state, xb, yb)
        out.append((k, float(value), float(gnorm)))
    return out


def _fmt(v):
    return f"{v:.3e}" if math.isfinite(v) else str(v)


def table(head, rows, left=1):
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(head)]
    fmt = lambda cells: "  ".join(
        c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    p.add_argument("--clip", type=float, default=1.0, help="max global norm (default 1.0)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--exploding-norm",
        type=float,
        default=1e3,
        help="the detector's threshold on ‖∂C/∂W‖ (default 1e3)",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="a synthetic regression target instead of the Ames house prices",
    )
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "exploding_gradients.png")
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    (x, y), (xt, yt), data_name = load_data(args.synthetic, args.seed)
    # validation: 10% of the training set (the val_loss column); the test set is not used here
    (x, y), (xv, yv) = validation_split(np.asarray(x), np.asarray(y), 0.1, args.seed)
    probe = (jnp.asarray(x[:512]), jnp.asarray(y[:512]))
    print(
        f"data: {data_name}; {len(x)} train / {len(xv)} validation / {len(xt)} test; loss: MSE (½ mean squared error)"
    )
    print(f"net: 12 → 64 ReLU → 64 ReLU → 1; SGD lr {args.lr}, batch {args.batch_size}\n")

    key = jax.random.key(args.seed)
    runs = {}
    for i, (name, w_init, opt) in enumerate(configs(args.lr, args.clip)):
        model = regression_net(w_init)
        params, _ = model.init(jax.random.fold_in(key, 0 if "N(0,1)" in name else i), (x.shape[1],))
        report = diagnostics.layer_report(model, LOSS, params, *probe, train=False)
        found = diagnostics.detect_gradient_problems(report, exploding_norm=args.exploding_norm)
        runs[name] = dict(model=model, params=params, opt=opt, report=report, found=found)

    print(
        "at initialization: ‖∂C/∂Wˡ‖ per layer on a probe batch of 512, and the detector "
        f"(exploding_norm={args.exploding_norm:g})"
    )
    grad_w = runs[next(iter(runs))]["report"].column("grad_W_norm")
    names = [n for n, v in grad_w.items() if v is not None]  # the Dense layers (ReLUs: no W)
    rows = []
    for name, r in runs.items():
        if "clip" in name:
            continue  # same init as the first run
        g = r["report"].column("grad_W_norm")
        rows.append(
            [name.rsplit(",", 1)[0]]
            + [_fmt(g[n]) for n in names]
            + [_fmt(r["report"].loss)]
            + [", ".join(sorted({f.layer for f in r["found"]})) or "quiet"]
        )
    print(table(["init"] + [f"‖∇W‖ {n}" for n in names] + ["loss", "detector: exploding"], rows))
    big = runs[next(iter(runs))]
    print()
    print(big["report"])
    print("\n".join(f"  detector: {f}" for f in big["found"]))

    print(f"\nthe first SGD steps from the N(0,1) init (lr {args.lr}, batch {args.batch_size}):")
    steps = {
        name: first_steps(r["model"], r["params"], r["opt"], x, y, args.batch_size, 6)
        for name, r in list(runs.items())[:2]
    }
    head = ["step"] + [h for name in steps for h in (f"loss [{name}]", "‖g‖")]
    rows = [
        [str(k)] + [c for name in steps for c in (_fmt(steps[name][k][1]), _fmt(steps[name][k][2]))]
        for k in range(6)
    ]
    print(table(head, rows, left=0))

    print(f"\ntraining {args.epochs} epochs with jbp.fit (GradientNormHistory on the probe batch):")
    rows = []
    for name, r in runs.items():
        hist = diagnostics.GradientNormHistory(r["model"], LOSS, probe)
        hist(0, r["params"])
        _, history = fit(
            r["model"],
            r["params"],
            LOSS,
            r["opt"],
            (x, y),
            batch_size=args.batch_size,
            epochs=args.epochs,
            key=jax.random.fold_in(key, 100),
            validation_data=(xv, yv),
            metrics=("loss",),
            callbacks=[hist],
            verbose=0,
        )
        losses, vals = history["loss"], history["val_loss"]
        bad = next((e for e, v in zip(history["epoch"], losses) if not math.isfinite(v)), None)
        end = diagnostics.detect_gradient_problems(hist.record, exploding_norm=args.exploding_norm)
        r.update(record=hist.record, history=history, first_nonfinite=bad, found_end=end)
        rows.append(
            [
                name,
                _fmt(losses[0]),
                _fmt(losses[-1]),
                _fmt(vals[-1]),
                str(bad) if bad is not None else "—",
                "exploding" if any(f.kind == "exploding" for f in end) else "quiet",
            ]
        )
    print(
        table(
            [
                "run",
                "loss epoch 1",
                f"loss epoch {args.epochs}",
                "val_loss",
                "first inf/nan epoch",
                "detector at end",
            ],
            rows,
        )
    )

    results = {
        name: {
            "first_nonfinite_epoch": r["first_nonfinite"],
            "final_loss": r["history"]["loss"][-1],
            "final_val_loss": r["history"]["val_loss"][-1],
            "findings_at_init": [str(f) for f in r["found"]],
            "findings_at_end": [str(f) for f in r["found_end"]],
            "record": r["record"].to_dict(),
        }
        for name, r in runs.items()
    }

    if not args.no_plot:
        from jbp.plotting import plot_gradient_norms, require_matplotlib

        plt = require_matplotlib()
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
        ax = axes[0]
        for name, r in runs.items():
            h = r["history"]
            pts = [(e, v) for e, v in zip(h["epoch"], h["loss"]) if math.isfinite(v)]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
            if r["first_nonfinite"] is not None:
                ax.axvline(r["first_nonfinite"], color="red", ls=":", label=f"{name}: inf/nan")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss (MSE)")
        ax.set_title("loss per epoch")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        clipped = list(runs)[1]
        plot_gradient_norms(
            runs[clipped]["record"], None, ax=axes[1], title=f"‖∂C/∂Wˡ‖ — {clipped}"
        )
        plot_gradient_norms(
            runs["He init, SGD"]["record"], None, ax=axes[2], title="‖∂C/∂Wˡ‖ — He init, SGD"
        )
        fig.suptitle(f"Exploding gradients — {data_name}")
        fig.tight_layout()
        save_figure(fig, args.out)
        print(f"\nplot saved to {args.out}")
        results["plot"] = args.out
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
