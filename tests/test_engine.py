"""Sequential + value_and_grad vs autodiff, under jit and vmap; check_gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, assert_trees_close, init, rand

import jbp
from jbp import losses
from jbp.layers import ELU, Dense, Flatten, ReLU, Sigmoid, Softmax, Tanh


def _mlp():
    return jbp.Sequential([Dense(7), Tanh(), Dense(5), ELU(0.3), Dense(3)])


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "loss",
    [losses.mse, losses.binary_cross_entropy, losses.softmax_cross_entropy],
    ids=lambda l: l.name,
)
def test_value_and_grad_matches_autodiff(dtype, loss):
    rng = np.random.default_rng(0)
    model = _mlp()
    params, _ = init(model, (4,), dtype)
    x = rand(rng, (6, 4), dtype)
    if loss is losses.softmax_cross_entropy:
        y = jnp.asarray(rng.integers(0, 3, 6))
    elif loss is losses.binary_cross_entropy:
        y = jnp.asarray(rng.uniform(size=(6, 3)), dtype)
    else:
        y = rand(rng, (6, 3), dtype)
    v, g = jax.jit(jbp.value_and_grad(model, loss))(params, x, y)
    v_ref, g_ref = jbp.autodiff_value_and_grad(model, loss)(params, x, y)
    assert v.dtype == dtype
    np.testing.assert_allclose(v, v_ref, **TOL[dtype])
    assert_trees_close(g, g_ref, dtype)
    assert jax.tree.map(lambda a: a.dtype, g) == jax.tree.map(lambda a: a.dtype, params)


def test_seed_delta_recursion_by_hand():
    """δᴸ = ∂L/∂aᴸ ⊙ f'(zᴸ); δˡ = (δˡ⁺¹ Wˡ⁺¹ᵀ) ⊙ f'(zˡ); ∂L/∂Wˡ = aˡ⁻¹ᵀ δˡ — in numpy."""
    rng = np.random.default_rng(1)
    n = 5
    a0 = rng.standard_normal((n, 3))
    W1, b1 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    W2, b2 = rng.standard_normal((4, 2)), rng.standard_normal(2)
    y = rng.standard_normal((n, 2))
    sig = lambda z: 1 / (1 + np.exp(-z))
    z1 = a0 @ W1 + b1
    a1 = sig(z1)
    z2 = a1 @ W2 + b2
    a2 = sig(z2)
    d2 = (a2 - y) / n * a2 * (1 - a2)  # MSE 1/(2n) Σ‖y−a‖², then f'(z)
    d1 = (d2 @ W2.T) * a1 * (1 - a1)
    model = jbp.Sequential([Dense(4), Sigmoid(), Dense(2), Sigmoid()])
    params = ({"W": W1, "b": b1}, (), {"W": W2, "b": b2}, ())
    params = jax.tree.map(jnp.asarray, params)
    value, g = jbp.value_and_grad(model, losses.mse)(params, jnp.asarray(a0), jnp.asarray(y))
    np.testing.assert_allclose(value, np.sum((y - a2) ** 2) / (2 * n), rtol=1e-12)
    np.testing.assert_allclose(g[2]["W"], a1.T @ d2, rtol=1e-12)
    np.testing.assert_allclose(g[2]["b"], d2.sum(0), rtol=1e-12)
    np.testing.assert_allclose(g[0]["W"], a0.T @ d1, rtol=1e-12)
    np.testing.assert_allclose(g[0]["b"], d1.sum(0), rtol=1e-12)
    _, caches = model.forward(params, jnp.asarray(a0))
    _, _, deltas = model.backward_with_deltas(
        params, caches, losses.mse.grad(model.apply(params, jnp.asarray(a0)), jnp.asarray(y))
    )
    np.testing.assert_allclose(deltas[2], d2, rtol=1e-12)  # dy into Dense 2 is δ²
    np.testing.assert_allclose(deltas[0], d1, rtol=1e-12)  # dy into Dense 1 is δ¹


def test_vmap_over_single_examples_averages_to_batch_gradient():
    rng = np.random.default_rng(2)
    model = jbp.Sequential([Dense(6), ReLU(), Dense(4), Softmax(), Dense(3)])
    params, _ = init(model, (5,))
    x = rand(rng, (8, 5))
    y = jnp.asarray(rng.integers(0, 3, 8))
    f = jbp.value_and_grad(model, losses.softmax_cross_entropy)
    values, per_example = jax.jit(jax.vmap(f, in_axes=(None, 0, 0)))(params, x[:, None], y[:, None])
    assert values.shape == (8,)
    batch_value, batch_grads = f(params, x, y)
    np.testing.assert_allclose(values.mean(), batch_value, rtol=1e-12)
    assert_trees_close(jax.tree.map(lambda g: g.mean(0), per_example), batch_grads, jnp.float64)
    # and each row is the autodiff gradient of that example alone
    _, g3 = jbp.autodiff_value_and_grad(model, losses.softmax_cross_entropy)(params, x[3:4], y[3:4])
    assert_trees_close(jax.tree.map(lambda g: g[3], per_example), g3, jnp.float64)


def test_nested_sequential_and_flatten():
    rng = np.random.default_rng(3)
    inner = jbp.Sequential([Dense(5), Sigmoid()])
    model = jbp.Sequential([Flatten(), inner, Dense(2)])
    params, out_shape = init(model, (2, 3))
    assert out_shape == (2,)
    x, y = rand(rng, (4, 2, 3)), rand(rng, (4, 2))
    _, g = jbp.value_and_grad(model, losses.mse)(params, x, y)
    _, g_ref = jbp.autodiff_value_and_grad(model, losses.mse)(params, x, y)
    assert_trees_close(g, g_ref, jnp.float64)
    names = [n for n, _ in jbp.named_leaves(params)]
    assert names == ["layers[1].layers[0].W", "layers[1].layers[0].b", "layers[2].W", "layers[2].b"]


# ------------------------------------------------------------------------ check_gradients


@dataclasses.dataclass(frozen=True)
class BrokenTanh(Tanh):
    """tanh with a wrong derivative (1 − a instead of 1 − a²)."""

    def derivative(self, z, a):
        return 1 - a


@dataclasses.dataclass(frozen=True)
class BrokenBiasDense(Dense):
    """Dense whose bias gradient forgets to sum over the batch (takes example 0)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {"W": grads["W"], "b": dy[0]}, dx


def test_check_gradients_passes_and_prints_a_table():
    rng = np.random.default_rng(4)
    model = _mlp()
    params, _ = init(model, (4,))
    report = jbp.check_gradients(model, losses.mse, params, rand(rng, (5, 4)), rand(rng, (5, 3)))
    assert report.ok and report.failed == [] and bool(report)
    text = str(report)
    for name in ["layers[0].W", "layers[2].b", "layers[4].W"]:
        assert name in text
    assert "all gradients agree" in text
    assert all(l.fd_rel_err is not None and l.fd_rel_err < 1e-6 for l in report.leaves)
    assert all(l.rel_err < 1e-10 for l in report.leaves)


def test_check_gradients_float32_params():
    rng = np.random.default_rng(5)
    model = _mlp()
    params, _ = init(model, (4,), jnp.float32)
    x, y = rand(rng, (5, 4), jnp.float32), jnp.asarray(rng.integers(0, 3, 5))
    report = jbp.check_gradients(model, losses.softmax_cross_entropy, params, x, y)
    assert report.ok and report.dtype == "float32", str(report)


def test_check_gradients_names_the_broken_leaf():
    rng = np.random.default_rng(6)
    model = jbp.Sequential([Dense(6), BrokenTanh(), Dense(3)])
    params, _ = init(model, (4,))
    x, y = rand(rng, (7, 4)), rand(rng, (7, 3))
    report = jbp.check_gradients(model, losses.mse, params, x, y)
    # The wrong derivative sits between the layers: only the first Dense's leaves are wrong.
    assert not report.ok
    assert report.failed == ["layers[0].W", "layers[0].b"]
    assert "MISMATCH in layers[0].W, layers[0].b" in str(report)
    bad = {l.name: l for l in report.leaves}
    assert bad["layers[0].W"].ok_fd is False  # finite differences agree with autodiff
    with pytest.raises(jbp.GradientCheckError, match=r"layers\[0\].W"):
        report.raise_if_failed()
    with pytest.raises(AssertionError):
        jbp.check_gradients(
            model, losses.mse, params, x, y, finite_differences=False, raise_on_failure=True
        )


def test_check_gradients_names_a_broken_bias_only():
    rng = np.random.default_rng(7)
    model = jbp.Sequential([Dense(5), Sigmoid(), BrokenBiasDense(2)])
    params, _ = init(model, (3,))
    report = jbp.check_gradients(
        model, losses.mse, params, rand(rng, (6, 3)), rand(rng, (6, 2)), finite_differences=False
    )
    assert report.failed == ["layers[2].b"]


def test_finite_differences_alone_catch_errors_autodiff_would_share():
    """A forward whose backward is right but FD differs cannot happen; but FD must be
    sensitive: perturb the manual gradient by a scaled copy and the FD error shows it."""
    rng = np.random.default_rng(8)
    model = jbp.Sequential([Dense(3), Sigmoid(), Dense(2)])
    params, _ = init(model, (3,))
    x, y = rand(rng, (4, 3)), rand(rng, (4, 2))
    from jbp.check import _finite_differences

    errs = _finite_differences(model, losses.mse, None, params, x, y, None, True, (), 1e-6, 3, 0)
    assert max(errs) < 1e-7

    @dataclasses.dataclass(frozen=True)
    class Scaled(Dense):
        def backward(self, params, cache, dy):
            g, dx = super().backward(params, cache, dy)
            return jax.tree.map(lambda a: 1.01 * a, g), dx

    bad = jbp.Sequential([Dense(3), Sigmoid(), Scaled(2)])
    errs = _finite_differences(bad, losses.mse, None, params, x, y, None, True, (), 1e-6, 3, 0)
    assert errs[2] > 1e-3 and errs[3] > 1e-3 and max(errs[:2]) < 1e-7
