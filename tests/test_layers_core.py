"""Every core layer's hand-written backward against jax.vjp of its forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, init, rand, vjp_reference

import jbp
from jbp.layers import (
    ELU,
    GELU,
    Dense,
    Flatten,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)

ACTIVATIONS = [
    Identity(),
    Sigmoid(),
    Tanh(),
    ReLU(),
    LeakyReLU(0.2),
    ELU(0.7),
    Softplus(),
    GELU(),
    GELU(approximate=True),
    Softmax(),
]
SHAPES = [(1, 5), (7, 3), (4, 6, 5)]
DTYPES = [jnp.float64, jnp.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("layer", ACTIVATIONS, ids=repr)
def test_activation_backward_matches_autodiff(layer, dtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rand(rng, shape, dtype, scale=2.0)
        dy = rand(rng, shape, dtype)
        params, out_shape = init(layer, shape[1:], dtype)
        y, cache = layer.forward(params, x)
        assert y.shape == x.shape and y.dtype == dtype and out_shape == shape[1:]
        grads, dx = layer.backward(params, cache, dy)
        ref_grads, ref_dx = vjp_reference(layer, params, x, dy)
        assert grads == () and dx.dtype == dtype
        assert_trees_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_backward_matches_autodiff(dtype, use_bias):
    rng = np.random.default_rng(2)
    for shape, units in [((1, 4), 3), ((9, 5), 7), ((3, 2, 6), 4)]:
        layer = Dense(units, use_bias=use_bias, b_init="normal")
        params, out_shape = init(layer, shape[1:], dtype)
        assert out_shape == shape[1:-1] + (units,)
        x = rand(rng, shape, dtype)
        y, cache = layer.forward(params, x)
        assert y.shape == shape[:-1] + (units,) and y.dtype == dtype
        dy = rand(rng, y.shape, dtype)
        grads, dx = layer.backward(params, cache, dy)
        assert set(grads) == ({"W", "b"} if use_bias else {"W"})
        assert_trees_close((grads, dx), vjp_reference(layer, params, x, dy), dtype)


def test_dense_equations_by_hand():
    """dW = aᵀδ, db = Σδ, da = δWᵀ written out with numpy, independently of jax."""
    rng = np.random.default_rng(3)
    a, delta = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    W, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    layer = Dense(3)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    z, cache = layer.forward(params, jnp.asarray(a))
    np.testing.assert_allclose(z, a @ W + b, rtol=1e-12)
    grads, dx = layer.backward(params, cache, jnp.asarray(delta))
    expect_W = sum(np.outer(a[i], delta[i]) for i in range(6))
    np.testing.assert_allclose(grads["W"], expect_W, rtol=1e-12)
    np.testing.assert_allclose(grads["b"], delta.sum(0), rtol=1e-12)
    np.testing.assert_allclose(dx, delta @ W.T, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_flatten_backward(dtype):
    rng = np.random.default_rng(4)
    layer = Flatten()
    x = rand(rng, (3, 4, 2, 5), dtype)
    params, out_shape = layer.init(jax.random.key(0), (4, 2, 5))
    assert out_shape == (40,)
    y, cache = layer.forward(params, x)
    dy = rand(rng, y.shape, dtype)
    assert_trees_close(
        layer.backward(params, cache, dy), vjp_reference(layer, params, x, dy), dtype
    )


def test_activation_values_match_jax_nn():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 9)) * 3)
    pairs = [
        (Sigmoid(), jax.nn.sigmoid),
        (Tanh(), jnp.tanh),
        (ReLU(), jax.nn.relu),
        (LeakyReLU(0.1), lambda z: jax.nn.leaky_relu(z, 0.1)),
        (ELU(0.5), lambda z: jax.nn.elu(z, 0.5)),
        (Softplus(), jax.nn.softplus),
        (GELU(), lambda z: jax.nn.gelu(z, approximate=False)),
        (Softmax(), jax.nn.softmax),
    ]
    for layer, ref in pairs:
        np.testing.assert_allclose(layer.apply((), x), ref(x), rtol=1e-12, atol=1e-14)


def test_relu_derivative_at_zero_and_kinks():
    """At the kink both conventions agree with jax.grad: ReLU'(0) = 0, LeakyReLU'(0) = 1."""
    x = jnp.array([[-1.0, 0.0, 2.0]])
    dy = jnp.array([[0.3, -0.7, 1.1]])
    for layer in (ReLU(), LeakyReLU(0.1), ELU(1.0)):
        _, cache = layer.forward((), x)
        _, dx = layer.backward((), cache, dy)
        _, ref = vjp_reference(layer, (), x, dy)
        np.testing.assert_allclose(dx, ref, rtol=1e-12)


def test_sigmoid_extremes_are_finite():
    x = jnp.array([[-800.0, -30.0, 0.0, 30.0, 800.0]])
    for layer in (Sigmoid(), Softplus(), Tanh(), ELU(), GELU()):
        y, cache = layer.forward((), x)
        _, dx = layer.backward((), cache, jnp.ones_like(x) * 0.5)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), layer


def test_layers_are_hashable_static_values():
    a, b = Dense(4, w_init="he_normal"), Dense(4, w_init="he_normal")
    assert a == b and hash(a) == hash(b)
    m = jbp.Sequential([a, ReLU(), Dense(2)])
    assert hash(m) == hash(jbp.Sequential([b, ReLU(), Dense(2)]))
