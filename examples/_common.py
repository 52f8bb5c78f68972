"""What the examples share: their argument parser and the ``--out DIR`` / ``--seed`` /
``--no-plot`` flags, where their figures go (and the "plot saved to" line), a validation split
carved from the training set (never the test set), the float64 gradient check, the Adam
training run followed by its evaluation, and the result table."""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.callbacks import EarlyStopping
from jbp.datasets.split import split_indices
from jbp.plotting import require_matplotlib

DEFAULT_OUT = "out"


def example_parser(doc: str, *, summary: bool = False) -> argparse.ArgumentParser:
    """The example's argument parser: its module docstring ``doc`` (``summary=True``: only its
    first paragraph) as the ``--help`` description, line breaks kept."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0] if summary else doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    out: bool = True,
    seed: bool = True,
    plot: bool = True,
    val_fraction: float | None = None,
) -> argparse.ArgumentParser:
    """Add ``--out DIR`` (default ``out/``; ``out=False`` for an example without figures),
    ``--seed``, ``--no-plot`` and, when ``val_fraction`` is given, ``--val-fraction`` (the
    share of the training set held out for validation)."""
    if out:
        parser.add_argument(
            "--out",
            default=DEFAULT_OUT,
            metavar="DIR",
            help=f"folder for the figures and results (default {DEFAULT_OUT}/)",
        )
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    if plot:
        parser.add_argument("--no-plot", action="store_true", help="write no figure")
    if val_fraction is not None:
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=val_fraction,
            help=f"share of the training set held out for validation "
            f"(default {val_fraction:g}); the test set is only used at the end",
        )
    return parser


def out_path(args, filename: str) -> str | None:
    """``DIR/filename`` for ``--out DIR`` (the folder is created), or ``None`` with ``--no-plot``."""
    if getattr(args, "no_plot", False) or not getattr(args, "out", None):
        return None
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, filename)


def validation_split(x, y, fraction: float, seed: int):
    """``((x_train, y_train), (x_val, y_val))``: a stratified split of the TRAINING data
    (``jbp.datasets.split.split_indices``), so the test set stays unseen until the end."""
    labels = np.asarray(y)
    strat = labels if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) else None
    tr, va = split_indices(len(labels), fraction, seed, labels=strat)
    return (x[tr], y[tr]), (x[va], y[va])


_IMAGE_EXTS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def figure_path(out: str, filename: str) -> str:
    """Where an example's figure goes: ``DIR/filename`` for ``--out DIR``; a path that already
    names an image (``--out curves.png``, kept for compatibility) as is; ``""`` stays ``""``
    (no figure)."""
    if not out or out.lower().endswith(_IMAGE_EXTS):
        return out
    return os.path.join(out, filename)


def results_table(rows) -> str:
    """The examples' result table: one row per ``(name, test accuracy, test loss)``; a loss of
    ``None`` (a baseline without one) is shown as ``—``."""
    head = f"{'model':<40} {'test accuracy':>13} {'test loss':>9}"
    lines = [head, "-" * len(head)]
    for name, acc, loss in rows:
        shown = f"{loss:>9.4f}" if loss is not None else f"{'—':>9}"
        lines.append(f"{name:<40} {acc:>13.4f} {shown}")
    return "\n".join(lines)


def pyplot_or_none():
    """``matplotlib.pyplot`` (``jbp.plotting.require_matplotlib``), or ``None`` after printing
    ``no plot: <why>`` when matplotlib is not installed."""
    try:
        return require_matplotlib()
    except ImportError as e:
        print(f"no plot: {e}")
        return None


def save_plot(args, path: str, plot) -> str | None:
    """``plot(path)`` (a function that writes the figure and returns its path, or ``None``
    when it could not), unless ``--no-plot`` or an empty ``--out``; prints ``plot saved to
    PATH`` when a figure was written. Returns what ``plot`` returned (``None`` when skipped)."""
    if getattr(args, "no_plot", False) or not getattr(args, "out", None):
        return None
    saved = plot(path)
    if saved:
        print(f"plot saved to {path}")
    return saved


def check_gradients_f64(model, loss, params, x, y, *, key=None):
    """``jbp.check_gradients`` in float64 (the proof printed before training): the parameters
    and any floating ``x``, ``y`` cast to float64, integer ids and labels kept as they are;
    ``key`` drives dropout. Returns the report."""

    def f64(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    with jax.enable_x64(True):
        return jbp.check_gradients(
            model, loss, jbp.cast(params, jnp.float64), f64(x), f64(y), key=key
        )


def fit_and_evaluate(
    model,
    params,
    loss,
    train,
    test,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    key,
    validation=None,
    patience: int | None = None,
    metrics=("loss", "accuracy"),
    **fit_kwargs,
):
    """Train with ``jbp.fit`` and Adam(``lr``) on ``train = (x, y)``, then score ``test`` with
    ``jbp.evaluate`` (on the model state ``fit`` returns: BatchNorm's running statistics).

    Args:
      model, params, loss: what ``jbp.fit`` takes.
      train, test: ``(x, y)`` pairs; ``test`` may be a validation set (the character LM).
      lr: Adam's learning rate.
      batch_size, epochs, key: passed to ``jbp.fit`` as they are.
      validation: ``(x, y)`` scored after every epoch (``validation_data``), or ``None``.
      patience: early stopping on ``val_loss`` with this patience, the best epoch restored;
        ``None``: no early stopping.
      metrics: for ``fit`` and ``evaluate`` both.
      **fit_kwargs: anything else for ``jbp.fit`` (``augment``, ``verbose``).

    Returns:
      ``(params, history, result)``: the trained parameters, ``fit``'s history and
      ``evaluate``'s ``{metric: value}`` on ``test``.
    """
    stop = None
    if patience is not None:
        stop = EarlyStopping("val_loss", patience=patience, restore_best=True)
    params, history = jbp.fit(
        model,
        params,
        loss,
        jbp.optim.adam(lr),
        train,
        batch_size=batch_size,
        epochs=epochs,
        key=key,
        validation_data=validation,
        early_stopping=stop,
        metrics=metrics,
        **fit_kwargs,
    )
    result = jbp.evaluate(model, params, loss, test, metrics=metrics, state=history.state)
    return params, history, result
