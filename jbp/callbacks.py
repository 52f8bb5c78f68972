"""Callbacks for ``fit``: the protocol, ``EarlyStopping`` and the one-line progress.

The protocol is tiny. After every epoch ``fit`` calls each callback with the epoch's
results; a callback that returns ``True`` stops training after that epoch.

- a plain function ``callback(epoch, logs, params) -> bool | None``, or
- an object with ``on_epoch_end(epoch, logs, params, state) -> bool | None`` and, if it
  likes, ``on_train_begin()`` and ``on_train_end(params, state) -> (params, state) | None``
  (returning a pair replaces what ``fit`` returns — that is how ``EarlyStopping`` restores
  the best parameters). Subclass :class:`Callback` for the no-op defaults.

``epoch`` is 1-based; ``logs`` is the epoch's history record (``loss``, metrics,
``val_*``, ``seconds``) as Python floats — a callback may add entries, which then appear in
the history and the progress line; ``params`` the parameters after the epoch;
``state`` the model's non-trainable state (``()`` for stateless models).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from jbp.history import _fmt

__all__ = ["Callback", "EarlyStopping", "as_callback", "format_epoch", "infer_mode"]


class Callback:
    """Base class with no-op hooks."""

    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, params: Any, state: Any = ()) -> bool | None:
        return None

    def on_train_end(self, params: Any, state: Any = ()) -> tuple[Any, Any] | None:
        return None


class _FunctionCallback(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, epoch, logs, params, state=()):
        return self.fn(epoch, logs, params)

    def __repr__(self):
        return f"callback({getattr(self.fn, '__name__', self.fn)!r})"


def as_callback(obj: Callback | Callable[..., Any], where: str = "callbacks") -> Callback:
    """A :class:`Callback` from a callback object or a plain function."""
    if hasattr(obj, "on_epoch_end"):
        return obj  # type: ignore[return-value]  # any object with on_epoch_end
    if callable(obj):
        return _FunctionCallback(obj)
    raise TypeError(
        f"{where}: expected a function callback(epoch, logs, params) or an object "
        f"with on_epoch_end(epoch, logs, params, state), got {type(obj).__name__}"
    )


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; restore the best.

    An epoch *improves* when its value beats the best so far by more than ``min_delta``
    (``mode="min"``: ``value < best − min_delta``; ``mode="max"``: ``value > best +
    min_delta``); NaN never improves. After ``patience`` consecutive epochs without
    improvement training stops, i.e. at epoch ``best_epoch + patience``. With
    ``restore_best=True`` ``fit`` returns the parameters (and model state) of the best
    epoch — also when all epochs ran. Afterwards ``best_epoch``, ``best_value`` and
    ``stopped_epoch`` (``None`` if it never stopped training) tell what happened.

    ``monitor`` names a history column: ``"val_loss"`` (needs ``validation_data``),
    ``"val_accuracy"``, ``"loss"``, ... ``fit`` checks it before compiling. A single
    object can be reused across ``fit`` calls (it resets in ``on_train_begin``).

    ``mode=None`` (the default) infers the direction from the monitored name (without its
    ``val_``/``test_`` prefix): accuracy-like names (``accuracy``, ``acc``, ``auc``,
    ``precision``, ``recall``, ``f1``, ...) are maximised, losses and errors (``loss``,
    ``penalty``, ``mse``, ``rmse``, ``mae``, ...) minimised; any other name needs an explicit
    ``mode="min"`` or ``"max"`` (``ValueError`` otherwise). An explicit ``mode`` always wins.

    With ``fit(..., checkpoint_dir=...)`` the stopper's progress (best value and epoch,
    epochs waited, best parameters) is saved with every checkpoint and restored on resume
    (:meth:`state_dict` / :meth:`load_state_dict`).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str | None = None,
        restore_best: bool = True,
    ):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(
                f"EarlyStopping: monitor must be a column name such as 'val_loss', got {monitor!r}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, (int, float))
            or not math.isfinite(min_delta)
            or min_delta < 0
        ):
            raise ValueError(
                f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}"
            )
        if mode is None:
            mode = infer_mode(monitor)
        elif mode not in ("min", "max"):
            raise ValueError(
                f"EarlyStopping: mode must be 'min', 'max' or None (inferred from "
                f"the monitor), got {mode!r}"
            )
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.mode = mode
        self.restore_best = bool(restore_best)
        self.on_train_begin()

    def __repr__(self):
        return (
            f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
            f"min_delta={self.min_delta}, mode={self.mode!r}, restore_best={self.restore_best})"
        )

    def on_train_begin(self) -> None:
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self.best_params = None
        self.best_state = None

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict, params: Any, state: Any = ()) -> bool | None:
        if self.monitor not in logs:
            raise ValueError(
                f"EarlyStopping: monitor {self.monitor!r} is not among the epoch's "
                f"results {sorted(logs)}"
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_params, self.best_state = params, state
            return None
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return None

    def on_train_end(self, params: Any, state: Any = ()) -> tuple[Any, Any] | None:
        if self.restore_best and self.best_params is not None:
            return self.best_params, self.best_state
        return None

    # --- checkpoints (fit's checkpoint_dir / resume) -------------------------------------
    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(metadata, arrays)``: the progress as JSON-able numbers and the best
        parameters/state as a pytree (``None`` when not kept)."""
        meta = {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "wait": self.wait,
        }
        arrays = None
        if self.best_params is not None:
            arrays = {"params": self.best_params, "state": self.best_state}
        return meta, arrays

    def load_state_dict(self, meta: dict[str, Any], arrays: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
          meta: the JSON-able progress (best value and epoch, epochs waited, ...).
          arrays: ``{"params": ..., "state": ...}`` of the best epoch, or ``None``.

        Raises:
          ValueError: the progress is of another monitored column or direction.
        """
        if meta.get("monitor") != self.monitor or meta.get("mode") != self.mode:
            raise ValueError(
                f"EarlyStopping: the checkpoint monitored {meta.get('monitor')!r} "
                f"({meta.get('mode')}), this one monitors {self.monitor!r} "
                f"({self.mode})"
            )
        self.best_value = float(meta["best_value"])
        self.best_epoch = meta["best_epoch"]
        self.stopped_epoch = meta["stopped_epoch"]
        self.wait = int(meta["wait"])
        if arrays is not None:
            self.best_params, self.best_state = arrays["params"], arrays["state"]


_MAX_WORDS = (
    "accuracy",
    "acc",
    "auc",
    "precision",
    "recall",
    "f1",
    "top_k",
    "top5",
    "top1",
    "r2",
    "iou",
    "dice",
    "map",
)
_MIN_WORDS = (
    "loss",
    "penalty",
    "mse",
    "rmse",
    "mae",
    "error",
    "err",
    "nll",
    "perplexity",
    "ppl",
    "cross_entropy",
    "entropy",
)


def infer_mode(monitor: str) -> str:
    """``"max"`` for accuracy-like columns, ``"min"`` for losses and errors (see
    :class:`EarlyStopping`); ``ValueError`` for a name it cannot tell.

    Args:
      monitor: a history column such as ``"val_accuracy"`` or ``"loss"``.
    """
    base = monitor.lower()
    for prefix in ("val_", "test_", "train_"):
        if base.startswith(prefix):
            base = base[len(prefix) :]
            break
    words = base.replace("-", "_").split("_")
    for word in reversed(words):  # the last word decides: "loss_of_accuracy" is a loss
        if word in _MAX_WORDS:
            return "max"
        if word in _MIN_WORDS:
            return "min"
    raise ValueError(
        f"EarlyStopping: cannot tell whether {monitor!r} should go up or down; "
        f"pass mode='min' or mode='max'"
    )


def format_epoch(epoch: int, epochs: int, logs: dict, compile_seconds: float = 0.0) -> str:
    """The progress line: ``epoch  3/10  loss 0.4123  accuracy 0.8750  val_loss ...  0.41s``."""
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}"]
    for k, v in logs.items():
        if k in ("epoch", "seconds"):
            continue
        parts.append(f"{k} {_fmt(v, k)}")
    secs = f"{logs.get('seconds', 0.0):.2f}s"
    if compile_seconds:
        secs += f" (+{compile_seconds:.2f}s compile)"
    parts.append(secs)
    return "  ".join(parts)
