"""``History``: what ``fit`` returns next to the parameters — one record per epoch."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["History"]


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/Inf
    return v


class History:
    """Per-epoch results of a training run.

    ``records`` is a list of dicts, one per epoch, with keys ``epoch`` (1-based),
    ``loss`` (the data loss, averaged over the epoch's batches by example count),
    ``penalty`` (the regularizer's value, when one is used), the other train metrics
    (``accuracy``, ...), ``val_loss``/``val_<metric>`` (on ``validation_data``, with the
    parameters at the end of the epoch) and ``seconds`` (wall time of the epoch; the
    one-off compilation is reported separately in ``compile_seconds``).

    ``history["loss"]`` is the column as a list; :meth:`to_dict` gives all columns,
    :meth:`as_table` a text table, :meth:`to_json` a JSON string/file, :meth:`plot` a
    matplotlib figure. ``state`` is the model's final non-trainable state (stateful models;
    ``()`` otherwise), ``stopped_epoch``/``best_epoch`` are set by early stopping,
    ``diverged`` (the epoch whose loss became NaN/Inf) by ``fit(on_nonfinite="stop")``,
    ``resumed_from`` (epochs restored from a checkpoint) by ``fit(resume=True)``.
    """

    def __init__(
        self, records: Iterable[dict[str, Any]] | None = None, *, epochs: int | None = None
    ) -> None:
        self.records: list[dict[str, Any]] = list(records or [])
        self.epochs = epochs  # epochs asked for
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.interrupted = False
        self.diverged: int | None = None  # epoch whose loss became NaN/Inf (fit stopped)
        self.resumed_from: int | None = None  # epochs restored from a checkpoint
        self.compile_seconds = 0.0
        self.state: Any = ()

    # --- access ------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def keys(self) -> list[str]:
        keys: list[str] = []
        for r in self.records:
            keys.extend(k for k in r if k not in keys)
        return keys

    def __getitem__(self, key: str) -> list:
        if key not in self.keys():
            raise KeyError(f"History: no column {key!r}; columns: {', '.join(self.keys())}")
        return [r.get(key, math.nan) for r in self.records]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    @property
    def last(self) -> dict:
        return dict(self.records[-1]) if self.records else {}

    def __repr__(self) -> str:
        return (
            f"History({len(self)} epochs, columns={self.keys()}, "
            f"stopped_epoch={self.stopped_epoch}, best_epoch={self.best_epoch})"
        )

    # --- export ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        """Columns: ``{"epoch": [1, 2, ...], "loss": [...], ...}`` (``pandas.DataFrame``-ready)."""
        return {k: self[k] for k in self.keys()}

    def info(self) -> dict:
        return {
            "epochs": self.epochs,
            "epochs_run": len(self),
            "stopped_epoch": self.stopped_epoch,
            "best_epoch": self.best_epoch,
            "interrupted": self.interrupted,
            "diverged": self.diverged,
            "resumed_from": self.resumed_from,
            "compile_seconds": self.compile_seconds,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """``{"history": {column: [...]}, "info": {...}}`` as JSON (NaN/Inf become ``null``);
        written to ``path`` as well when given."""
        cols = {k: [_json_value(v) for v in vs] for k, vs in self.to_dict().items()}
        text = json.dumps({"history": cols, "info": self.info()}, indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> History:
        """Read back what :meth:`to_json` wrote (a JSON string or a file path)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        data = json.loads(text)
        cols = data["history"]
        n = max((len(v) for v in cols.values()), default=0)
        records = [
            {k: (math.nan if v[i] is None else v[i]) for k, v in cols.items()} for i in range(n)
        ]
        info = data.get("info", {})
        h = cls(records, epochs=info.get("epochs"))
        h.stopped_epoch = info.get("stopped_epoch")
        h.best_epoch = info.get("best_epoch")
        h.interrupted = bool(info.get("interrupted", False))
        h.diverged = info.get("diverged")
        h.resumed_from = info.get("resumed_from")
        h.compile_seconds = float(info.get("compile_seconds") or 0.0)
        return h

    def as_table(self, keys: Iterable[str] | None = None, *, precision: int = 4) -> str:
        """A plain-text table, one row per epoch."""
        keys = list(keys) if keys is not None else self.keys()
        rows = [[_fmt(r.get(k, math.nan), k, precision) for k in keys] for r in self.records]
        widths = [max([len(k)] + [len(row[j]) for row in rows]) for j, k in enumerate(keys)]
        line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
        out = [line(keys), line(["-" * w for w in widths])] + [line(r) for r in rows]
        return "\n".join(out)

    def plot(self, keys: Iterable[str] | None = None, *, ax: Axes | None = None) -> Axes:
        """Plot columns against epoch with matplotlib (imported only here).

        Default: ``loss`` and ``val_loss``. Returns the axes.
        """
        import matplotlib.pyplot as plt

        keys = list(keys) if keys is not None else [k for k in ("loss", "val_loss") if k in self]
        if ax is None:
            _, ax = plt.subplots()
        epochs = self["epoch"]
        for k in keys:
            ax.plot(epochs, self[k], marker="o", label=k)
        if self.best_epoch is not None:
            ax.axvline(self.best_epoch, color="gray", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.legend()
        return ax


def _fmt(v, key: str = "", precision: int = 4) -> str:
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if key == "seconds":
            return f"{v:.2f}s"
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 10 ** -(precision - 1) or abs(v) >= 1e5):
            return f"{v:.{precision - 1}e}"
        return f"{v:.{precision}f}"
    return str(v)
