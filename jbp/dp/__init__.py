"""Differential privacy for jbp: the privacy accountant (DP-SGD's step comes later).

See :mod:`jbp.dp.accounting` for the formulas, the (ε, δ) conversion and the references.
"""
from jbp.dp.accounting import (CONVERSIONS, DEFAULT_ORDERS, epsilon, noise_multiplier_for, rdp,
                               rdp_to_epsilon)

__all__ = ["CONVERSIONS", "DEFAULT_ORDERS", "epsilon", "noise_multiplier_for", "rdp",
           "rdp_to_epsilon"]
