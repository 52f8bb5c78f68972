"""What the examples share: the ``--out DIR`` / ``--seed`` / ``--no-plot`` flags, where their
figures go, and a validation split carved from the training set (never the test set)."""

from __future__ import annotations

import argparse
import os

import numpy as np

DEFAULT_OUT = "out"


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
    from jbp.datasets.split import split_indices

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
