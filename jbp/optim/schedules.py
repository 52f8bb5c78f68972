"""Learning-rate schedules: pure functions ``step -> value`` (optax names and semantics).

A schedule is called with the optimizer's step count ``t`` (0 on the first
update) and may be called with a Python int or an int32 array, inside or
outside ``jit``. Each constructor validates its arguments and raises
``ValueError`` naming the offending one. Where optax's documentation says an
argument "must" be positive but optax itself only logs, jbp raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .base import check_real

__all__ = [
    "constant_schedule",
    "piecewise_constant_schedule",
    "step_decay",
    "exponential_decay",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "linear_schedule",
    "join_schedules",
    # short aliases
    "constant",
    "piecewise_constant",
    "cosine_decay",
    "warmup_cosine_decay",
    "linear",
]

Schedule = Callable[[ArrayLike], ArrayLike]
#: A learning rate: a constant or a schedule ``t -> η_t``.
ScalarOrSchedule = float | Schedule


def _check_int(name, value, *, low, where):
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{where}{name} must be >= {low}, got {value!r}")
    return value


def _as_float_count(count):
    """Steps as floats (avoids int32 overflow and integer division in jitted code)."""
    if isinstance(count, int):
        return float(count)
    return jnp.asarray(count).astype(jnp.result_type(float))


def constant_schedule(value: float) -> Schedule:
    """``lr(t) = value`` for every step."""
    check_real("value", value, where="constant_schedule: ")
    return lambda count: value


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """``lr(t) = init_value · Π_{b_i ≤ t} s_i`` for ``{b_i: s_i}`` in ``boundaries_and_scales``.

    A scale takes effect *at* its boundary step: with ``{100: 0.1}``,
    ``lr(99) = init_value`` and ``lr(100) = 0.1·init_value`` (as optax).
    Scales must be ≥ 0.
    """
    where = "piecewise_constant_schedule: "
    check_real("init_value", init_value, where=where)
    items = []
    if boundaries_and_scales is not None:
        if not isinstance(boundaries_and_scales, dict):
            raise TypeError(
                f"{where}boundaries_and_scales must be a dict {{step: scale}}, "
                f"got {type(boundaries_and_scales).__name__}"
            )
        for b, s in boundaries_and_scales.items():
            _check_int("boundaries_and_scales key (a step)", b, low=0, where=where)
            check_real(f"boundaries_and_scales[{b}]", s, low=0.0, where=where)
        items = sorted(boundaries_and_scales.items())

    def schedule(count):
        v = init_value
        for boundary, s in items:
            v = jnp.where(count < boundary, v, v * s)
        return v

    return schedule


def step_decay(init_value: float, transition_steps: int, decay_rate: float = 0.1) -> Schedule:
    """Step decay: ``lr(t) = init_value · decay_rate^floor(t / transition_steps)``.

    The same as ``exponential_decay(init_value, transition_steps, decay_rate,
    staircase=True)``; e.g. ``step_decay(0.1, 30)`` divides the rate by 10 every 30 steps.
    """
    return exponential_decay(init_value, transition_steps, decay_rate, staircase=True)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Exponential decay (optax ``exponential_decay``)::

        p = (t − transition_begin) / transition_steps      (floor(p) if staircase)
        lr(t) = init_value                      if t ≤ transition_begin
        lr(t) = init_value · decay_rate^p       otherwise

    With ``end_value``, the result is clipped from below by it when
    ``decay_rate < 1`` and from above when ``decay_rate > 1``.
    """
    where = "exponential_decay: "
    check_real("init_value", init_value, where=where)
    transition_steps = _check_int("transition_steps", transition_steps, low=1, where=where)
    check_real("decay_rate", decay_rate, low=0.0, low_open=True, where=where)
    transition_begin = _check_int("transition_begin", transition_begin, low=0, where=where)
    if end_value is not None:
        check_real("end_value", end_value, where=where)
        clip_fn = jnp.maximum if decay_rate < 1.0 else jnp.minimum

    def schedule(count):
        decreased = _as_float_count(count) - transition_begin
        p = decreased / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = jnp.where(decreased <= 0, init_value, init_value * jnp.power(decay_rate, p))
        if end_value is not None:
            value = clip_fn(value, end_value)
        return value

    return schedule


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine decay (optax ``cosine_decay_schedule``)::

        lr(t) = init_value · ((1 − alpha) · ½(1 + cos(π · min(t, decay_steps) / decay_steps)) + alpha)

    so ``lr(0) = init_value`` and ``lr(t) = alpha · init_value`` for ``t ≥ decay_steps``.
    ``alpha`` must lie in [0, 1] (optax does not check it).
    """
    where = "cosine_decay_schedule: "
    check_real("init_value", init_value, where=where)
    decay_steps = _check_int("decay_steps", decay_steps, low=1, where=where)
    check_real("alpha", alpha, low=0.0, high=1.0, where=where)

    def schedule(count):
        c = jnp.minimum(_as_float_count(count), float(decay_steps))
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * c / decay_steps))
        return init_value * ((1 - alpha) * cosine + alpha)

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear ramp (optax ``linear_schedule``)::

        c = clip(t − transition_begin, 0, transition_steps)
        lr(t) = init_value + (end_value − init_value) · c / transition_steps

    ``transition_steps = 0`` gives the constant ``init_value`` (as optax).
    """
    where = "linear_schedule: "
    check_real("init_value", init_value, where=where)
    check_real("end_value", end_value, where=where)
    transition_steps = _check_int("transition_steps", transition_steps, low=0, where=where)
    transition_begin = _check_int("transition_begin", transition_begin, low=0, where=where)
    if transition_steps == 0:
        return lambda count: init_value

    def schedule(count):
        c = jnp.clip(_as_float_count(count) - transition_begin, 0.0, float(transition_steps))
        frac = 1 - c / transition_steps
        return (init_value - end_value) * frac + end_value

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i+1](t − boundaries[i])`` from step ``boundaries[i]`` on (optax).

    ``boundaries`` must be strictly increasing ints ``>= 0`` (``ValueError`` otherwise).
    """
    where = "join_schedules: "
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            "join_schedules: need exactly one more schedule than boundaries, got "
            f"{len(schedules)} schedules and {len(boundaries)} boundaries"
        )
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{where}schedules[{i}] must be a callable step -> value, got {s!r}")
    boundaries = [
        _check_int(f"boundaries[{i}]", b, low=0, where=where) for i, b in enumerate(boundaries)
    ]
    for i in range(1, len(boundaries)):
        if boundaries[i] <= boundaries[i - 1]:
            raise ValueError(
                f"{where}boundaries must be strictly increasing steps, got "
                f"{boundaries} (boundaries[{i}] = {boundaries[i]} <= "
                f"boundaries[{i - 1}] = {boundaries[i - 1]}); schedules[{i}] would "
                f"never run"
            )

    def schedule(count):
        out = schedules[0](count)
        for boundary, s in zip(boundaries, schedules[1:]):
            out = jnp.where(count < boundary, out, s(count - boundary))
        return out

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup then cosine decay (optax ``warmup_cosine_decay_schedule``)::

        t < W:   lr(t) = init_value + (peak_value − init_value) · t / W
        t ≥ W:   lr(t) = cosine_decay_schedule(peak_value, decay_steps − W,
                                               alpha=end_value / peak_value)(t − W)

    ``decay_steps`` is the total length including the warmup ``W = warmup_steps``;
    ``lr(W) = peak_value`` and ``lr(t) = end_value`` for ``t ≥ decay_steps``.
    """
    where = "warmup_cosine_decay_schedule: "
    check_real("init_value", init_value, where=where)
    check_real("peak_value", peak_value, where=where)
    check_real("end_value", end_value, where=where)
    warmup_steps = _check_int("warmup_steps", warmup_steps, low=0, where=where)
    decay_steps = _check_int("decay_steps", decay_steps, low=0, where=where)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{where}decay_steps (the total length, warmup included) must be > "
            f"warmup_steps, got decay_steps={decay_steps}, warmup_steps={warmup_steps}"
        )
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    # cosine_decay_schedule's alpha range check does not apply here: end_value may exceed peak.
    cos_steps = decay_steps - warmup_steps

    def cosine(count):
        c = jnp.minimum(_as_float_count(count), float(cos_steps))
        return peak_value * ((1 - alpha) * 0.5 * (1 + jnp.cos(jnp.pi * c / cos_steps)) + alpha)

    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps), cosine], [warmup_steps]
    )


# short aliases (the names the issue lists)
constant = constant_schedule
piecewise_constant = piecewise_constant_schedule
cosine_decay = cosine_decay_schedule
warmup_cosine_decay = warmup_cosine_decay_schedule
linear = linear_schedule
