"""Plots for jbp's diagnostics (matplotlib, an optional extra: ``pip install jbp[examples]``).

matplotlib is imported inside the functions, so ``import jbp.plotting`` works without it;
calling a plot without it raises an ``ImportError`` that says how to install it.
"""

from __future__ import annotations

import math
import os
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_gradient_norms", "require_matplotlib"]


class EpochRecord(Protocol):
    """What :func:`plot_gradient_norms` draws: a per-epoch, per-layer record such as
    :class:`jbp.diagnostics.GradientNormRecord` (or ``jbp.rules.AlignmentRecord``)."""

    epochs: list
    layers: list

    def quantity(self, quantity: str) -> dict: ...


_LABELS = {
    "grad_W_norm": "‖∂C/∂Wˡ‖",
    "bias_grad_norm": "speed of learning ‖∂C/∂bˡ‖",
    "delta_norm": "mean ‖δˡ‖",
    "W_norm": "‖Wˡ‖",
    "grad_norm": "‖∂C/∂θˡ‖",
    "param_norm": "‖θˡ‖",
    "saturated": "saturated fraction",
    "dead": "dead-unit fraction",
}


def require_matplotlib() -> ModuleType:
    """Import matplotlib (its own backend choice: inline in notebooks, Agg when headless);
    returns ``matplotlib.pyplot``, or raises ``ImportError`` naming the ``examples`` extra."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "jbp.plotting needs matplotlib, an optional dependency: install it "
            "with `pip install 'jbp[examples]'` (or `pip install matplotlib`)"
        ) from e
    del matplotlib  # its default backend falls back to Agg on a machine without a display
    import matplotlib.pyplot as plt

    return plt


def plot_gradient_norms(
    record: EpochRecord,
    path: str | os.PathLike[str] | None = None,
    *,
    quantity: str = "grad_W_norm",
    title: str | None = None,
    ax: Axes | None = None,
    log: bool | None = None,
) -> Figure:
    """Draw a per-layer quantity over epochs, one line per layer, log scale.

    Args:
      record: a :class:`jbp.diagnostics.GradientNormRecord` (``GradientNormHistory.record``),
        or anything with ``.epochs``, ``.layers`` and ``.quantity(name)``.
      path: save the figure there (PNG, or any extension matplotlib knows); ``None``: don't.
      quantity: ``"grad_W_norm"`` (default), ``"bias_grad_norm"`` (speed of learning),
        ``"delta_norm"``, ``"W_norm"``, ``"grad_norm"``, ``"param_norm"``, ``"saturated"``
        or ``"dead"``. One line per layer that has the quantity (``record.present``).
      title: the axes' title (default: the quantity).
      ax: draw into these axes instead of a new figure.
      log: log-scale y axis; default True for norms, False for fractions.

    Returns:
      The matplotlib ``Figure``. Non-finite points (an exploded run) are left out of
        the lines and marked with an ``x`` at the top of the axes.

    """
    if not hasattr(record, "epochs") or not hasattr(record, "quantity"):
        raise TypeError(
            f"plot_gradient_norms: expected a GradientNormRecord, got {type(record).__name__}"
        )
    if not record.epochs:
        raise ValueError("plot_gradient_norms: the record is empty (no epoch recorded)")
    series = record.quantity(quantity)
    present = getattr(record, "present", None)
    if isinstance(present, dict) and quantity in present:  # leave out the layers that lack it
        series = {name: v for name, v in series.items() if name in present[quantity]}
    plt = require_matplotlib()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    else:
        fig = ax.figure
    if log is None:
        log = quantity not in ("saturated", "dead")
    epochs = list(record.epochs)
    n = len(series)
    cmap = plt.get_cmap("viridis")
    bad_epochs: set[int] = set()
    for k, (name, values) in enumerate(series.items()):
        if all(math.isnan(v) for v in values):
            continue
        pts = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v) and (v > 0 or not log)]
        bad_epochs.update(e for e, v in zip(epochs, values) if not math.isfinite(v))
        color = cmap(k / max(n - 1, 1) * 0.9)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, color=color, label=name)
    if log:
        ax.set_yscale("log")
    if bad_epochs:
        top = ax.get_ylim()[1]
        ax.scatter(
            sorted(bad_epochs),
            [top] * len(bad_epochs),
            marker="x",
            color="red",
            label="inf / nan",
            clip_on=False,
            zorder=5,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(_LABELS.get(quantity, quantity))
    ax.set_title(title if title is not None else f"{_LABELS.get(quantity, quantity)} per layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, close=False)
    return fig


def save_figure(
    fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110, close: bool = True
) -> str:
    """Write ``fig`` to ``path`` (its folder created as needed); close it unless asked not to."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
