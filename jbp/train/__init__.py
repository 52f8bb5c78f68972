"""Training: the step, batching (shared by ``fit`` and ``evaluate``), the fit loop.

- :func:`make_train_step` — ``step(params, opt_state, x, y, key, state=()) ->
  (params, opt_state, metrics, state)``, one reader of :func:`jbp.backprop` and the optimizer.
- :func:`fit` — epochs, each one compiled ``lax.scan`` over the batches.
- :func:`evaluate` — loss and metrics in compiled chunks.
- :mod:`jbp.train.batching` — the one knob ``batch_size`` and the one scan over batches.
"""

from jbp.train.batching import batch_plan, parse_batch_size, scan_batches
from jbp.train.evaluate import evaluate
from jbp.train.fit import DivergenceError, fit
from jbp.train.step import make_train_step

__all__ = [
    "make_train_step",
    "fit",
    "DivergenceError",
    "evaluate",
    "parse_batch_size",
    "batch_plan",
    "scan_batches",
]
