"""Vanishing and exploding gradients, measured from the hand-written backward pass — on any
model: every leaf layer of a ``jbp.Sequential`` (nested or not) of any layers.

* :func:`speed_of_learning` — ``{layer: ‖∂C/∂bˡ‖}``, Nielsen's speed of learning per layer
  with a bias.
* :func:`layer_report` — per-layer ``‖δˡ‖``, ``‖∇Wˡ‖``, ``‖Wˡ‖``, ``‖∂C/∂bˡ‖``, update-to-weight
  ratio, per-parameter-leaf norms, saturated sigmoid/tanh fraction, dead-ReLU fraction;
  ``str()`` is a table.
* :func:`layer_deltas` — every layer's delta ``∂C/∂yˡ``.
* :func:`detect_gradient_problems` — names the layers whose gradients vanish or explode.
* :class:`GradientNormHistory` — an opt-in training callback recording the per-layer norms
  each epoch on a fixed probe batch (one compiled call per epoch); draw them with
  :func:`jbp.plotting.plot_gradient_norms`.
* :func:`gradient_stats_fn` — the jit-compiled core all of the above call.
* :class:`GradientStats` — the :mod:`jbp.extensions` extension that computes the rows in
  the engine's backward walk (``jbp.backprop(..., extensions=[GradientStats()])``).

Layers are named by their path in the params tree (``layers[2]``, nested
``layers[1].layers[0]``); the statistics are defined in :mod:`jbp.diagnostics.stats`.
"""

from ._model import in_model_order
from .detect import GradientProblem, detect_gradient_problems
from .extension import BIAS_LEAVES, GradientStats, LayerDeltas, LayerRow, rows_by_name
from .history import QUANTITIES, GradientNormHistory, GradientNormRecord
from .stats import (
    LayerReport,
    LayerStats,
    gradient_stats_fn,
    layer_deltas,
    layer_report,
    safe_norm,
    speed_of_learning,
)

__all__ = [
    "speed_of_learning",
    "layer_report",
    "layer_deltas",
    "gradient_stats_fn",
    "LayerReport",
    "LayerStats",
    "detect_gradient_problems",
    "GradientProblem",
    "GradientNormHistory",
    "GradientNormRecord",
    "QUANTITIES",
    "safe_norm",
    "in_model_order",
    "GradientStats",
    "LayerDeltas",
    "LayerRow",
    "rows_by_name",
    "BIAS_LEAVES",
]
