"""jbp.optim — optimizers, learning-rate schedules and clipping on optax's protocol.

Written by hand (no optax dependency). An optimizer is
``Optimizer(init(params) -> state, update(grads, state, params=None) -> (updates, state))``;
``apply_updates(params, updates)`` applies the result and keeps each leaf's dtype;
``chain(*transforms)`` composes transformations in order (optax ones too).

Typical use::

    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-3))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)
"""

from .base import (
    ChainState,
    CountState,
    GradientTransformation,
    Optimizer,
    apply_updates,
    chain,
    identity,
)
from .clipping import clip, clip_by_global_norm, global_norm
from .kfac import CurvatureOptimizer, KFACState, kfac
from .optimizers import adagrad, adam, adamw, momentum, rmsprop, sgd
from .schedules import (
    constant,
    constant_schedule,
    cosine_decay,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    linear,
    linear_schedule,
    piecewise_constant,
    piecewise_constant_schedule,
    step_decay,
    warmup_cosine_decay,
    warmup_cosine_decay_schedule,
)
from .transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByRStdDevState,
    TraceState,
    add_decayed_weights,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    scale_by_stddev,
    trace,
)

__all__ = [
    # protocol
    "Optimizer",
    "GradientTransformation",
    "ChainState",
    "CountState",
    "chain",
    "identity",
    "apply_updates",
    # optimizers
    "sgd",
    "momentum",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "kfac",
    "KFACState",
    "CurvatureOptimizer",
    # building blocks
    "scale",
    "scale_by_schedule",
    "scale_by_learning_rate",
    "trace",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_rss",
    "add_decayed_weights",
    "TraceState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRStdDevState",
    "ScaleByRssState",
    # clipping
    "clip",
    "clip_by_global_norm",
    "global_norm",
    # schedules
    "constant_schedule",
    "piecewise_constant_schedule",
    "step_decay",
    "exponential_decay",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "linear_schedule",
    "join_schedules",
    "constant",
    "piecewise_constant",
    "cosine_decay",
    "warmup_cosine_decay",
    "linear",
]
