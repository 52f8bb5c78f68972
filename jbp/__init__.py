"""jbp: backpropagation written by hand in JAX, proven against autodiff.

A layer is three pure functions — ``init``, ``forward``, ``backward`` — over a pytree of
parameters; ``Sequential`` composes them; ``value_and_grad`` runs forward, loss and the
hand-written backward; ``check_gradients`` proves it against ``jax.grad`` and finite
differences.
"""
from jbp import initializers, layers, losses
from jbp.check import GradientCheckError, GradientReport, check_gradients
from jbp.core import Layer, Sequential, autodiff_value_and_grad, cast, named_leaves, value_and_grad
from jbp.layers import Dense, Flatten

__version__ = "0.1.0"

__all__ = [
    "Layer", "Sequential", "Dense", "Flatten",
    "value_and_grad", "autodiff_value_and_grad", "check_gradients", "GradientReport",
    "GradientCheckError", "cast", "named_leaves",
    "initializers", "layers", "losses",
]
