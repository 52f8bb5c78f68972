"""Name the layers whose gradients vanish or explode."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .history import GradientNormRecord
    from .stats import LayerReport

__all__ = ["detect_gradient_problems", "GradientProblem"]


@dataclasses.dataclass(frozen=True)
class GradientProblem:
    """One finding: ``kind`` is ``"vanishing"`` or ``"exploding"``; ``layer`` names the
    layer (``"loss"`` for a non-finite loss); ``value`` is the offending norm (or ratio, for
    ``"vanishing"``) and ``threshold`` the bound it crossed; ``message`` says it in words."""

    kind: str
    layer: str
    quantity: str
    value: float
    threshold: float
    message: str
    epoch: int | None = None

    def __str__(self) -> str:
        return self.message


def _as_norms(obj, quantity, epoch):
    """``(norms {layer: float}, extra [(layer, quantity, label, value)] checked for
    finiteness, quantity, epoch)``."""
    from ._model import in_model_order
    from .history import GradientNormRecord
    from .stats import LayerReport

    if isinstance(obj, LayerReport):
        q = quantity or "grad_W_norm"
        norms = {k: v for k, v in obj.column(q).items() if v is not None}
        extra = [("loss", "loss", "loss", obj.loss)]
        extra += [(r.name, "param_norm", f"{r.name} ‖θ‖", r.param_norm) for r in obj.layers]
        return norms, extra, q, None
    if isinstance(obj, GradientNormRecord):
        if not obj.epochs:
            raise ValueError(
                "detect_gradient_problems: the record is empty (no epoch recorded yet)"
            )
        q = quantity or "grad_W_norm"
        i = -1 if epoch is None else obj.epochs.index(epoch) if epoch in obj.epochs else None
        if i is None:
            raise ValueError(
                f"detect_gradient_problems: epoch {epoch!r} was not recorded; "
                f"recorded: {obj.epochs}"
            )
        norms = {name: vals[i] for name, vals in obj.quantity(q, present_only=True).items()}
        extra = [("loss", "loss", "loss", obj.loss[i])]
        return norms, extra, q, obj.epochs[i]
    if isinstance(obj, Mapping) and "layers" in obj and isinstance(obj["layers"], Mapping):
        # the raw output of gradient_stats_fn
        q = quantity or "grad_W_norm"
        rows = in_model_order(obj["layers"])
        norms = {k: float(v[q]) for k, v in rows.items() if q in v}
        extra = [("loss", "loss", "loss", float(obj["loss"]))] if "loss" in obj else []
        extra += [
            (k, "param_norm", f"{k} ‖θ‖", float(v["param_norm"]))
            for k, v in rows.items()
            if "param_norm" in v
        ]
        return norms, extra, q, epoch
    if isinstance(obj, Mapping):
        norms = {}
        for k, v in obj.items():
            try:
                norms[str(k)] = float(v)
            except (TypeError, ValueError):
                raise TypeError(
                    f"detect_gradient_problems: expected a number for layer {k!r}, "
                    f"got {type(v).__name__}"
                ) from None
        return norms, [], quantity or "norm", epoch
    raise TypeError(
        "detect_gradient_problems: expected a LayerReport, a GradientNormRecord, the "
        "output of gradient_stats_fn, or a mapping {layer name: gradient norm} "
        f"(e.g. speed_of_learning's), got {type(obj).__name__}"
    )


def _check_threshold(name, v, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise ValueError(
            f"detect_gradient_problems: {name} must be a positive finite number, got {v!r}"
        )
    return float(v)


def detect_gradient_problems(
    report_or_norms: LayerReport | GradientNormRecord | Mapping[str, Any],
    *,
    vanishing_ratio: float = 1e-3,
    exploding_norm: float = 1e3,
    min_norm: float | None = None,
    quantity: str | None = None,
    epoch: int | None = None,
) -> list[GradientProblem]:
    """Find vanishing and exploding gradients; an empty list means nothing was found.

    Args:
      report_or_norms: a :class:`LayerReport`; a :class:`GradientNormRecord` (its last
        epoch, or ``epoch``); the output of :func:`gradient_stats_fn`; or a mapping
        ``{layer name: gradient norm}`` ordered from input to output (e.g. the output of
        :func:`speed_of_learning`). Layers that lack the quantity (no parameters, for
        ``grad_W_norm``) are left out.
      vanishing_ratio: a layer is reported ``"vanishing"`` when its norm divided by the
        *last* layer's norm is below this (default ``1e-3``: the layer learns a thousand
        times slower than the output layer). With the first layer lowest this is the
        classic first/last ratio test.
      exploding_norm: a layer is reported ``"exploding"`` when its norm exceeds this
        (default ``1e3``) or is not finite (``inf``/``nan``). A non-finite loss (or, for a
        report or stats, a non-finite parameter norm ``‖θ‖``) is reported as
        ``"exploding"`` too.
      min_norm: optional absolute floor; a layer whose norm is below it is reported
        ``"vanishing"`` whatever the last layer does (e.g. every ReLU dead).
      quantity: which per-layer norm to test: ``"grad_W_norm"`` (default for reports and
        records: every layer with weights), ``"grad_norm"`` (every layer with parameters),
        ``"bias_grad_norm"`` (speed of learning) or ``"delta_norm"`` (every layer).
      epoch: for a record, the epoch to test (default: the last recorded).

    Returns:
      A list of :class:`GradientProblem`, in layer order, exploding before vanishing.
    """
    vanishing_ratio = _check_threshold("vanishing_ratio", vanishing_ratio)
    exploding_norm = _check_threshold("exploding_norm", exploding_norm)
    min_norm = _check_threshold("min_norm", min_norm, allow_none=True)
    norms, extra, q, epoch = _as_norms(report_or_norms, quantity, epoch)
    if not norms:
        raise ValueError(f"detect_gradient_problems: no layer has the quantity {q!r}")
    found = []
    when = f" (epoch {epoch})" if epoch is not None else ""

    for layer, what, label, v in extra:
        if v is not None and not math.isfinite(v):
            found.append(
                GradientProblem(
                    "exploding",
                    layer,
                    what,
                    v,
                    exploding_norm,
                    f"{layer}: exploding — {label} is {v}{when}",
                    epoch,
                )
            )
    for name, v in norms.items():
        if not math.isfinite(v) or v > exploding_norm:
            found.append(
                GradientProblem(
                    "exploding",
                    name,
                    q,
                    v,
                    exploding_norm,
                    f"{name}: exploding gradient — {q} = {v:.3e} "
                    + (
                        "is not finite"
                        if not math.isfinite(v)
                        else f"> exploding_norm = {exploding_norm:g}"
                    )
                    + when,
                    epoch,
                )
            )

    names = list(norms)
    last_name, last = names[-1], norms[names[-1]]
    for name in names:
        v = norms[name]
        if not math.isfinite(v):
            continue
        if min_norm is not None and v < min_norm:
            found.append(
                GradientProblem(
                    "vanishing",
                    name,
                    q,
                    v,
                    min_norm,
                    f"{name}: vanishing gradient — {q} = {v:.3e} < min_norm = {min_norm:g}{when}",
                    epoch,
                )
            )
            continue
        if name == last_name or not math.isfinite(last) or last <= 0:
            continue
        ratio = v / last
        if ratio < vanishing_ratio:
            found.append(
                GradientProblem(
                    "vanishing",
                    name,
                    f"{q} ratio",
                    ratio,
                    vanishing_ratio,
                    f"{name}: vanishing gradient — {q} = {v:.3e} is {ratio:.2e} of the last layer's "
                    f"({last_name}: {last:.3e}) < vanishing_ratio = {vanishing_ratio:g}{when}",
                    epoch,
                )
            )
    return found
