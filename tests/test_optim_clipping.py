"""Clipping transformations and global_norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from jbp import optim  # noqa: E402


def _tree(rng, scale, dtype=np.float64):
    return {
        "w": jnp.asarray(scale * rng.normal(size=(3, 4)), dtype=dtype),
        "b": (
            jnp.asarray(scale * rng.normal(size=(4,)), dtype=dtype),
            [jnp.asarray(scale * rng.normal(size=(2,)), dtype=dtype)],
        ),
    }


def _flat(tree):
    return np.concatenate(
        [np.ravel(np.asarray(x, dtype=np.float64)) for x in jax.tree.leaves(tree)]
    )


def test_global_norm_is_the_norm_of_all_leaves_as_one_vector():
    rng = np.random.default_rng(0)
    tree = _tree(rng, 2.0)
    np.testing.assert_allclose(optim.global_norm(tree), np.linalg.norm(_flat(tree)), rtol=1e-14)
    assert float(optim.global_norm({"a": jnp.array([3.0]), "b": [jnp.array([[4.0]])]})) == 5.0
    assert float(optim.global_norm({})) == 0.0


def _apply(opt, g):
    u, state = jax.jit(opt.update)(g, opt.init(g))
    assert int(state.count) == 1
    return u


@pytest.mark.parametrize("max_norm", [0.5, 3.0])
def test_clip_by_global_norm_bounds_norm_and_keeps_direction(max_norm):
    rng = np.random.default_rng(1)
    opt = optim.clip_by_global_norm(max_norm)
    update = jax.jit(opt.update)
    state = opt.init(_tree(rng, 1.0))
    for scale in (5.0, 20.0, 100.0):
        g = _tree(rng, scale)
        n = np.linalg.norm(_flat(g))
        assert n > max_norm
        u, _ = update(g, state)
        fu, fg = _flat(u), _flat(g)
        assert np.linalg.norm(fu) <= max_norm * (1 + 1e-12)
        np.testing.assert_allclose(np.linalg.norm(fu), max_norm, rtol=1e-12)
        # same direction: u = (max_norm / ‖g‖) g, a positive multiple
        np.testing.assert_allclose(fu, fg * (max_norm / n), rtol=1e-12, atol=1e-15)
        assert fu @ fg / (np.linalg.norm(fu) * np.linalg.norm(fg)) == pytest.approx(1.0, abs=1e-12)


def test_clip_by_global_norm_leaves_small_gradients_untouched():
    rng = np.random.default_rng(2)
    g = _tree(rng, 0.01)
    assert np.linalg.norm(_flat(g)) < 1.0
    u = _apply(optim.clip_by_global_norm(1.0), g)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g)):
        np.testing.assert_array_equal(a, b)  # bit for bit


def test_clip_by_global_norm_float32_stays_float32():
    rng = np.random.default_rng(3)
    g = _tree(rng, 10.0, np.float32)
    u = _apply(optim.clip_by_global_norm(1.0), g)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u))
    assert np.linalg.norm(_flat(u)) == pytest.approx(1.0, rel=1e-5)


def test_clip_by_value_clips_each_element():
    rng = np.random.default_rng(4)
    g = _tree(rng, 3.0)
    u = _apply(optim.clip(1.5), g)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g)):
        np.testing.assert_array_equal(a, np.clip(np.asarray(b), -1.5, 1.5))
    fu, fg = _flat(u), _flat(g)
    assert np.any(np.abs(fg) > 1.5) and np.any(np.abs(fg) < 1.5)  # the case is not trivial
    inside = np.abs(fg) <= 1.5
    np.testing.assert_array_equal(fu[inside], fg[inside])
    np.testing.assert_array_equal(fu[~inside], 1.5 * np.sign(fg[~inside]))


def test_clipping_inside_chain_with_an_optimizer():
    g = {"a": jnp.array([30.0, -40.0])}  # norm 50
    p = {"a": jnp.zeros(2)}
    opt = optim.chain(optim.clip_by_global_norm(5.0), optim.sgd(1.0))
    u, _ = jax.jit(opt.update)(g, opt.init(p), p)
    np.testing.assert_allclose(u["a"], [-3.0, 4.0], rtol=1e-14)
    opt = optim.chain(optim.clip(10.0), optim.sgd(0.5))
    u, _ = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(u["a"], [-5.0, 5.0], rtol=1e-14)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: optim.clip_by_global_norm(0.0), "max_norm"),
        (lambda: optim.clip_by_global_norm(-3.0), "max_norm"),
        (lambda: optim.clip_by_global_norm(float("nan")), "max_norm"),
        (lambda: optim.clip(0.0), "max_abs"),
        (lambda: optim.clip(-1.0), "max_abs"),
    ],
)
def test_bad_clipping_bounds(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()
