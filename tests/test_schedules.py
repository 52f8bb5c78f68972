"""Learning-rate schedules: exact values at chosen steps, boundaries included."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from jbp import optim  # noqa: E402


def _check(schedule, expected):
    """expected: {step: value}. Checked with Python ints and, in one jit, int32 arrays."""
    steps = sorted(expected)
    for t in steps:
        assert float(schedule(t)) == pytest.approx(expected[t], rel=1e-12, abs=1e-15), t
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, dtype=jnp.int32))
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), [expected[t] for t in steps], rtol=1e-12, atol=1e-15
    )


def test_constant():
    for s in (optim.constant_schedule(0.3), optim.constant(0.3)):
        assert s(0) == 0.3 and s(10**6) == 0.3
    assert float(jax.jit(optim.constant(0.3))(jnp.int32(7))) == 0.3


def test_piecewise_constant_scales_take_effect_at_the_boundary():
    expected = {0: 1.0, 2: 1.0, 3: 0.5, 5: 0.5, 6: 0.05, 100: 0.05}
    _check(optim.piecewise_constant_schedule(1.0, {3: 0.5, 6: 0.1}), expected)
    _check(optim.piecewise_constant(1.0, {6: 0.1, 3: 0.5}), expected)  # dict order irrelevant
    _check(optim.piecewise_constant(0.2), {0: 0.2, 50: 0.2})


def test_step_decay():
    _check(optim.step_decay(0.8, 4, 0.5), {0: 0.8, 3: 0.8, 4: 0.4, 7: 0.4, 8: 0.2, 13: 0.1})
    _check(optim.step_decay(1.0, 30), {29: 1.0, 30: 0.1, 60: 0.01})


def test_exponential_decay():
    _check(
        optim.exponential_decay(1.0, 10, 0.5),
        {0: 1.0, 5: 0.5**0.5, 10: 0.5, 20: 0.25, 25: 0.5**2.5},
    )
    _check(
        optim.exponential_decay(2.0, 10, 0.5, transition_begin=5),
        {0: 2.0, 3: 2.0, 5: 2.0, 10: 2.0 * 0.5**0.5, 15: 1.0},
    )
    _check(
        optim.exponential_decay(1.0, 10, 0.5, staircase=True),
        {0: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25},
    )
    _check(
        optim.exponential_decay(1.0, 10, 0.5, end_value=0.3), {0: 1.0, 10: 0.5, 20: 0.3, 100: 0.3}
    )
    _check(
        optim.exponential_decay(1.0, 1, 2.0, end_value=5.0),  # growth, capped from above
        {0: 1.0, 1: 2.0, 2: 4.0, 3: 5.0, 10: 5.0},
    )


def test_cosine_decay():
    s = optim.cosine_decay_schedule(2.0, 10, alpha=0.1)
    _check(
        s,
        {
            0: 2.0,
            5: 2.0 * (0.9 * 0.5 + 0.1),
            10: 0.2,
            15: 0.2,
            2: 2.0 * (0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)) + 0.1),
        },
    )
    _check(optim.cosine_decay(1.0, 4), {0: 1.0, 2: 0.5, 4: 0.0, 9: 0.0})


def test_warmup_cosine_decay():
    s = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=4, decay_steps=12, end_value=0.2)
    _check(
        s,
        {
            0: 0.0,
            2: 0.5,
            3: 0.75,
            4: 1.0,
            8: 0.2 + 0.8 * 0.5,
            12: 0.2,
            20: 0.2,
            6: 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 2 / 8)),
        },
    )
    _check(optim.warmup_cosine_decay(0.1, 0.5, 0, 10), {0: 0.5, 5: 0.25, 10: 0.0})


def test_linear():
    _check(
        optim.linear_schedule(1.0, 0.0, 4, transition_begin=2),
        {0: 1.0, 2: 1.0, 3: 0.75, 4: 0.5, 6: 0.0, 100: 0.0},
    )
    _check(optim.linear(0.0, 0.3, 3), {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.3})
    assert optim.linear(0.7, 0.1, 0)(5) == 0.7  # no transition: constant init_value (as optax)


def test_schedule_drives_optimizer_from_step_zero():
    """The optimizer calls the schedule with its count: 0 on the first update."""
    opt = optim.sgd(optim.piecewise_constant(1.0, {1: 0.5, 2: 0.2}))
    p = {"w": jnp.zeros(2)}
    state = opt.init(p)
    g = {"w": jnp.array([1.0, -2.0])}
    update = jax.jit(opt.update)
    seen = []
    for _ in range(3):
        u, state = update(g, state, p)
        seen.append(np.asarray(u["w"]))
    np.testing.assert_allclose(seen, [[-1.0, 2.0], [-0.5, 1.0], [-0.1, 0.2]], rtol=1e-14)


def test_float32_updates_with_a_float64_schedule():
    opt = optim.adam(optim.warmup_cosine_decay(0.0, 1e-2, 2, 10))
    p = {"w": jnp.ones(3, jnp.float32)}
    u, _ = opt.update({"w": jnp.ones(3, jnp.float32)}, opt.init(p), p)
    assert u["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: optim.exponential_decay(1.0, 0, 0.5), "transition_steps"),
        (lambda: optim.exponential_decay(1.0, 10, 0.0), "decay_rate"),
        (lambda: optim.exponential_decay(1.0, 10, -0.5), "decay_rate"),
        (lambda: optim.exponential_decay(1.0, 10, 0.5, transition_begin=-1), "transition_begin"),
        (lambda: optim.step_decay(1.0, 0), "transition_steps"),
        (lambda: optim.cosine_decay(1.0, 0), "decay_steps"),
        (lambda: optim.cosine_decay(1.0, 10, alpha=-0.1), "alpha"),
        (lambda: optim.warmup_cosine_decay(0.0, 1.0, 10, 10), "decay_steps"),
        (lambda: optim.warmup_cosine_decay(0.0, 1.0, -1, 10), "warmup_steps"),
        (lambda: optim.linear(1.0, 0.0, -3), "transition_steps"),
        (lambda: optim.linear(1.0, 0.0, 3, transition_begin=-2), "transition_begin"),
        (lambda: optim.piecewise_constant(1.0, {5: -0.1}), r"boundaries_and_scales\[5\]"),
        (lambda: optim.piecewise_constant(1.0, {-5: 0.1}), "boundaries_and_scales"),
        (lambda: optim.constant(float("nan")), "value"),
    ],
)
def test_bad_schedule_arguments_raise_value_error_naming_them(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_non_integer_steps_raise_type_error():
    with pytest.raises(TypeError, match="decay_steps"):
        optim.cosine_decay(1.0, 10.5)
    with pytest.raises(TypeError, match="boundaries_and_scales"):
        optim.piecewise_constant(1.0, [(3, 0.5)])
