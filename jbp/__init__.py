"""jbp: backpropagation written by hand in JAX, proven against autodiff.

A layer is three pure functions — ``init``, ``forward``, ``backward`` — over a pytree of
parameters; ``Sequential`` composes them; ``value_and_grad`` runs forward, loss and the
hand-written backward; ``check_gradients`` proves it against ``jax.grad`` and finite
differences; ``fit`` trains with one compiled ``lax.scan`` per epoch.
"""

from jbp import distributed  # noqa: E402,F401,I001 - data parallelism (jbp.distributed)
from jbp import (
    augment,
    checkpoint,
    cpu,
    datasets,
    diagnostics,
    dp,
    extensions,
    initializers,
    layers,
    losses,
    optim,
    plotting,
    regularizers,
    rules,
    testing,
)
from jbp._validate import check_params
from jbp.callbacks import Callback, EarlyStopping
from jbp.check import GradientCheckError, GradientReport, check_gradients
from jbp.core import Layer, Sequential, cast, named_leaves
from jbp.engine import Pass, autodiff_value_and_grad, backprop, value_and_grad
from jbp.history import History
from jbp.layers import Dense, Dropout, Flatten
from jbp.summary import summary
from jbp.per_example import per_example_clipped_grad, per_example_grad_norms, per_example_grads
from jbp.train import DivergenceError, evaluate, fit, make_train_step

__version__ = "0.1.0"

__all__ = [
    # the engine
    "Layer",
    "Sequential",
    "Dense",
    "Dropout",
    "Flatten",
    "backprop",
    "Pass",
    "value_and_grad",
    "autodiff_value_and_grad",
    "check_gradients",
    "GradientReport",
    "GradientCheckError",
    "cast",
    "named_leaves",
    "check_params",
    "summary",
    # training
    "fit",
    "evaluate",
    "make_train_step",
    "History",
    "Callback",
    "EarlyStopping",
    "DivergenceError",
    # per-example gradients
    "per_example_grads",
    "per_example_grad_norms",
    "per_example_clipped_grad",
    # submodules
    "augment",
    "checkpoint",
    "cpu",
    "datasets",
    "dp",
    "diagnostics",
    "extensions",
    "initializers",
    "layers",
    "losses",
    "optim",
    "plotting",
    "regularizers",
    "rules",
    "testing",
]
