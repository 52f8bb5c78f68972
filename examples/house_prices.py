"""House prices: an MLP regression with the seed's MSE, against closed-form linear regression.

The embedded Ames, Iowa sales (De Cock 2011; ``jbp.datasets.ames``): 12 numeric features
(living area, lot area, year built, garage, baths, ...), standardized with the training
split's statistics; 2,344 train / 586 test houses. The network
``12 → Dense(64) → ReLU → Dense(64) → ReLU → Dense(1)`` is trained with the seed's
``L = 1/(2n) Σ (y − ŷ)²`` (``jbp.losses.mse``) and Adam, on a sensibly scaled target:
the natural log of the price by default (``--target log``; prices are skewed and errors
scale with the price), or the standardized price (``--target standardized``). A
validation slice of the training split (``--val-fraction``) picks the epoch to keep
(early stopping, best epoch restored); the test split is only used for the final table.

Baselines, on the same standardized features, all in closed form (numpy least squares
with an intercept column):

  mean price          predict the training mean for every house
  linear (dollars)    ordinary least squares on the price in dollars
  linear (log price)  least squares on the log price, mapped back with exp (--target log;
                      for --target standardized it would equal "linear (dollars)")

Every prediction is converted back to dollars (``AmesData.price_dollars``) and scored by
test RMSE and MAE in dollars, and R². Offline, ~5 s on a 2-core CPU::

    python examples/house_prices.py                      # ≤ 300 epochs, out/house_prices.png
    python examples/house_prices.py --target standardized --hidden 128 --epochs 500
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
from jbp.callbacks import EarlyStopping
from jbp.layers import Dense, ReLU
from jbp.plotting import save_figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples' shared flags
from _common import add_common_args, figure_path  # noqa: E402


def build_model(hidden: int = 64) -> jbp.Sequential:
    """12 → Dense(hidden) → ReLU → Dense(hidden) → ReLU → Dense(1)."""
    return jbp.Sequential(
        [
            Dense(hidden, w_init="he_normal"),
            ReLU(),
            Dense(hidden, w_init="he_normal"),
            ReLU(),
            Dense(1),
        ]
    )


def least_squares(x_train, y_train, x_eval):
    """Closed-form linear regression with an intercept: ``w = argmin ‖[1 X] w − y‖²``
    (``numpy.linalg.lstsq``, float64); returns the predictions ``[1 X_eval] w``."""
    a = np.c_[np.ones(len(x_train)), np.asarray(x_train, np.float64)]
    w, *_ = np.linalg.lstsq(a, np.asarray(y_train, np.float64), rcond=None)
    return np.c_[np.ones(len(x_eval)), np.asarray(x_eval, np.float64)] @ w


def scores(pred_dollars, true_dollars) -> dict:
    """Test RMSE and MAE in dollars, and R² (1 − SSE/SST on the test set)."""
    err = np.asarray(pred_dollars, np.float64) - np.asarray(true_dollars, np.float64)
    sst = np.sum((true_dollars - np.mean(true_dollars)) ** 2)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / sst),
    }


def table(rows) -> str:
    head = f"{'model':<28} {'test RMSE $':>12} {'test MAE $':>11} {'R²':>6}"
    lines = [head, "-" * len(head)]
    for name, s in rows:
        lines.append(f"{name:<28} {s['rmse']:>12,.0f} {s['mae']:>11,.0f} {s['r2']:>6.3f}")
    return "\n".join(lines)


def plot(history, pred, true, lin_pred, path, title):
    try:
        from jbp.plotting import require_matplotlib

        plt = require_matplotlib()
    except ImportError as e:
        print(f"no plot: {e}")
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.4))
    ep = history["epoch"]
    ax0.plot(ep, history["loss"], label="train (½·mean sq. error)")
    ax0.plot(ep, history["val_loss"], label="validation")
    if history.best_epoch:
        ax0.axvline(history.best_epoch, color="gray", ls=":", label="best epoch (kept)")
    ax0.set_yscale("log")
    ax0.set_xlabel("epoch")
    ax0.set_ylabel("MSE loss on the training target")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    k = 1e-3
    ax1.scatter(true * k, lin_pred * k, s=6, alpha=0.45, label="linear (least squares)")
    ax1.scatter(true * k, pred * k, s=6, alpha=0.6, label="MLP")
    lo, hi = float(true.min()) * k, float(true.max()) * k
    ax1.plot([lo, hi], [lo, hi], color="black", lw=1)
    ax1.set_xlabel("true price (k$)")
    ax1.set_ylabel("predicted price (k$)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=300, help="maximum epochs (default 300)")
    p.add_argument(
        "--target",
        choices=("log", "standardized"),
        default="log",
        help="what the MLP regresses: log price (default) or standardized price",
    )
    p.add_argument("--hidden", type=int, default=64, help="units per hidden layer (default 64)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="slice of the training split used to pick the epoch (default 0.15)",
    )
    p.add_argument("--patience", type=int, default=30, help="early-stopping patience (epochs)")
    p.add_argument("--limit", type=int, default=0, help="use only N training houses (smoke tests)")
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "house_prices.png")
    if args.epochs < 1 or args.hidden < 1 or args.batch_size < 1 or args.patience < 1:
        p.error("--epochs, --hidden, --batch-size and --patience must be >= 1")
    if not 0.0 < args.val_fraction < 0.5:
        p.error("--val-fraction must lie in (0, 0.5)")
    t0 = time.perf_counter()

    data = jbp.datasets.ames(seed=args.seed, target=args.target)
    (x_all, y_all), (x_te, y_te) = data
    if args.limit:
        x_all, y_all = x_all[: args.limit], y_all[: args.limit]
    perm = np.random.default_rng(args.seed).permutation(len(y_all))
    n_val = max(1, int(round(args.val_fraction * len(y_all))))
    va, tr = perm[:n_val], perm[n_val:]
    x_tr, y_tr, x_va, y_va = x_all[tr], y_all[tr], x_all[va], y_all[va]
    # the network sees the target centred and scaled by the training houses' statistics
    # (for "log", log-prices sit near 12 ± 0.4: without centring the output bias would
    # spend the first epochs walking there); predictions are mapped back before scoring
    mu, sd = float(np.mean(y_tr)), float(np.std(y_tr))
    scale = lambda y: (np.asarray(y, np.float64) - mu) / sd  # noqa: E731
    unscale = lambda z: np.asarray(z, np.float64) * sd + mu  # noqa: E731
    true = data.price_dollars(y_te)
    print(
        f"Ames house prices: {len(tr)} train, {n_val} validation, {len(y_te)} test houses; "
        f"{x_tr.shape[1]} standardized features; MLP target: {args.target} price"
    )

    # closed-form baselines (fit on the same training houses the MLP trains on)
    dollars_tr = data.price_dollars(y_tr)
    rows = [
        ("mean price", scores(np.full(len(true), dollars_tr.mean()), true)),
        ("linear (dollars)", scores(least_squares(x_tr, dollars_tr, x_te), true)),
    ]
    lin_pred = data.price_dollars(least_squares(x_tr, y_tr, x_te))
    if args.target == "log":  # least squares on the standardized price = on dollars
        rows.append(("linear (log price)", scores(lin_pred, true)))

    model = build_model(args.hidden)
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params, _ = model.init(key_init, x_tr.shape[1:])
    loss = jbp.losses.mse
    print(model)
    with jax.enable_x64(True):  # the proof, in float64, on a few houses
        report = jbp.check_gradients(
            model,
            loss,
            jbp.cast(params, jnp.float64),
            jnp.asarray(x_tr[:16], jnp.float64),
            jnp.asarray(scale(y_tr[:16, None]), jnp.float64),
        )
    print(report)

    to = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    stop = EarlyStopping("val_loss", patience=args.patience, restore_best=True)
    every = max(1, min(10, args.epochs // 10))
    params, history = jbp.fit(
        model,
        params,
        loss,
        jbp.optim.adam(args.lr),
        (to(x_tr), to(scale(y_tr)[:, None])),
        batch_size=min(args.batch_size, len(tr)),
        epochs=args.epochs,
        key=key_fit,
        validation_data=(to(x_va), to(scale(y_va)[:, None])),
        metrics=("loss",),
        early_stopping=stop,
        verbose=0,
        callbacks=[
            lambda e, logs, _p: (
                print(f"epoch {e:>4}  loss {logs['loss']:.5f}  val_loss {logs['val_loss']:.5f}")
                if e % every == 0 or e == 1
                else None
            )
        ],
    )
    print(
        f"kept epoch {history.best_epoch} of {len(history)} (validation loss {stop.best_value:.5f})"
    )
    pred = data.price_dollars(unscale(np.asarray(model.apply(params, to(x_te)))[:, 0]))
    mlp = scores(pred, true)
    rows.append((f"MLP {args.hidden}-{args.hidden} ({args.target} price)", mlp))

    print()
    print(table(rows))
    best_linear = min(s["rmse"] for name, s in rows if name.startswith("linear"))
    diff = best_linear - mlp["rmse"]
    verdict = (
        "beats"
        if diff > 0.01 * best_linear
        else "matches"
        if diff > -0.01 * best_linear
        else "does NOT beat"
    )
    print(
        f"MLP {verdict} the best linear baseline: test RMSE ${mlp['rmse']:,.0f} vs "
        f"${best_linear:,.0f} ({100 * diff / best_linear:+.1f}%)"
    )

    out = {
        "report": report,
        "history": history,
        "test": mlp,
        "baselines": dict(rows[:-1]),
        "best_linear_rmse": best_linear,
        "verdict": verdict,
        "best_epoch": history.best_epoch,
        "plot": None,
    }
    if not args.no_plot and args.out:
        out["plot"] = plot(
            history,
            pred,
            true,
            lin_pred,
            args.out,
            f"Ames house prices — MLP vs least squares (test RMSE "
            f"\\${mlp['rmse']:,.0f} vs \\${best_linear:,.0f})",
        )  # \$: no mathtext
        if out["plot"]:
            print(f"plot saved to {args.out}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
