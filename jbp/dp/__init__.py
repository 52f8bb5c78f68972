"""Differential privacy for jbp: the privacy accountant and DP-SGD.

See :mod:`jbp.dp.accounting` for the formulas, the (ε, δ) conversion and the references, and
:mod:`jbp.dp.sgd` for the private step (clip, sum, noise), Poisson sampling and
``jbp.fit(..., privacy=DPConfig(...))``.
"""

from jbp.dp.accounting import (
    CONVERSIONS,
    DEFAULT_ORDERS,
    epsilon,
    noise_multiplier_for,
    rdp,
    rdp_to_epsilon,
)
from jbp.dp.sgd import (
    CLIPPINGS,
    DPConfig,
    PerLayerClippedGrad,
    default_max_batch_size,
    make_private_epoch,
    make_private_step,
    poisson_batch,
    private_grad,
)

__all__ = [
    "CONVERSIONS",
    "DEFAULT_ORDERS",
    "epsilon",
    "noise_multiplier_for",
    "rdp",
    "rdp_to_epsilon",
    "CLIPPINGS",
    "DPConfig",
    "PerLayerClippedGrad",
    "default_max_batch_size",
    "make_private_epoch",
    "make_private_step",
    "poisson_batch",
    "private_grad",
]
