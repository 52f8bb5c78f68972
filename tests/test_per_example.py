"""Per-example gradients, their norms from (input, delta) pairs, and per-example clipping.

Oracle: ``jax.grad`` of the loss on one example alone (a batch of one), example by example.
Every extension on every layer, and each layer's closed forms against the generic default
(Dense's included), are in tests/test_extensions.py.
"""

import jax

jax.config.update("jax_enable_x64", True)

import dataclasses  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp.core import Layer  # noqa: E402
from jbp.extensions import BatchL2  # noqa: E402
from jbp.layers import Dense, Flatten, ReLU, Sigmoid, Tanh  # noqa: E402
from jbp.per_example import (  # noqa: E402
    per_example_clipped_grad,
    per_example_grad_norms,
    per_example_grads,
)

TOL = {jnp.float64: dict(rtol=1e-10, atol=1e-12), jnp.float32: dict(rtol=2e-4, atol=2e-5)}
N = 7


def _params(model, in_shape, dtype, seed=0):
    params, out_shape = model.init(jax.random.key(seed), in_shape)
    return jbp.cast(params, dtype), out_shape


def _data(in_shape, out_shape, loss, dtype, seed=1, n=N):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n,) + tuple(in_shape)), dtype)
    if loss is jbp.losses.softmax_cross_entropy:
        y = jnp.asarray(rng.integers(0, out_shape[-1], n), jnp.int32)
    elif loss is jbp.losses.binary_cross_entropy:
        y = jnp.asarray(rng.uniform(size=(n,) + tuple(out_shape)), dtype)
    else:
        y = jnp.asarray(rng.standard_normal((n,) + tuple(out_shape)), dtype)
    return x, y


def _oracle_grads(model, loss, params, x, y):
    """jax.grad of the loss on example i alone, for each i (a Python loop)."""
    grad_one = jax.jit(jax.grad(lambda p, xi, yi: loss.value(model.apply(p, xi, train=True), yi)))
    return [jax.device_get(grad_one(params, x[i : i + 1], y[i : i + 1])) for i in range(x.shape[0])]


def _sq_norm(tree):
    return sum(float(np.sum(np.square(leaf))) for leaf in jax.tree.leaves(tree))


MODELS = {
    "dense": (lambda: jbp.Sequential([Dense(4)]), (5,)),
    "mlp": (lambda: jbp.Sequential([Dense(6), Tanh(), Dense(5), ReLU(), Dense(3)]), (4,)),
    "flatten": (lambda: jbp.Sequential([Flatten(), Dense(5), Sigmoid(), Dense(3)]), (2, 3)),
    # Dense on (T, in) inputs: the Gram form (2T² <= in·units) ...
    "dense_seq_gram": (lambda: jbp.Sequential([Dense(4), Tanh(), Flatten(), Dense(3)]), (3, 5)),
    # ... and the per-example outer product (2T² > in·units)
    "dense_seq_outer": (
        lambda: jbp.Sequential([Dense(2, use_bias=False), Flatten(), Dense(3)]),
        (6, 2),
    ),
    "nested": (lambda: jbp.Sequential([jbp.Sequential([Dense(5), ReLU()]), Dense(3)]), (4,)),
}
LOSSES = [jbp.losses.mse, jbp.losses.softmax_cross_entropy, jbp.losses.binary_cross_entropy]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_grads_rows_equal_jax_grad_and_mean_equals_batch_grad(name):
    make, in_shape = MODELS[name]
    model = make()
    loss = jbp.losses.softmax_cross_entropy
    params, out_shape = _params(model, in_shape, jnp.float64)
    x, y = _data(in_shape, out_shape, loss, jnp.float64)
    g = jax.device_get(jax.jit(per_example_grads(model, loss))(params, x, y))
    assert jax.tree.structure(g) == jax.tree.structure(params)  # zip below would hide a lost leaf
    for leaf, p in zip(jax.tree.leaves(g), jax.tree.leaves(params)):
        assert leaf.shape == (N,) + p.shape
    for i, ref in enumerate(_oracle_grads(model, loss, params, x, y)):
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda t: t[i], g)), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, **TOL[jnp.float64])
    _, batch = jax.jit(jbp.value_and_grad(model, loss))(params, x, y)
    mean = jax.tree.map(lambda t: np.mean(t, axis=0), g)
    for a, b in zip(jax.tree.leaves(mean), jax.tree.leaves(batch)):
        np.testing.assert_allclose(a, b, **TOL[jnp.float64])


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_norms_equal_norms_of_per_example_grads_and_jax_grad(name, dtype):
    make, in_shape = MODELS[name]
    model = make()
    loss = jbp.losses.softmax_cross_entropy
    params, out_shape = _params(model, in_shape, dtype)
    x, y = _data(in_shape, out_shape, loss, dtype)
    norms = jax.jit(per_example_grad_norms(model, loss))(params, x, y)
    assert norms.shape == (N,) and norms.dtype == dtype
    g = jax.device_get(jax.jit(per_example_grads(model, loss))(params, x, y))
    from_vmap = np.sqrt(
        sum(np.sum(np.square(l.reshape(N, -1)), axis=1) for l in jax.tree.leaves(g))
    )
    from_oracle = np.sqrt([_sq_norm(r) for r in _oracle_grads(model, loss, params, x, y)])
    np.testing.assert_allclose(norms, from_vmap, **TOL[dtype])
    np.testing.assert_allclose(norms, from_oracle, **TOL[dtype])


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_norms_for_each_loss(loss):
    model = jbp.Sequential([Dense(5), Tanh(), Dense(3)])
    params, out_shape = _params(model, (4,), jnp.float64)
    x, y = _data((4,), out_shape, loss, jnp.float64, n=9)
    norms = jax.jit(per_example_grad_norms(model, loss))(params, x, y)
    ref = np.sqrt([_sq_norm(r) for r in _oracle_grads(model, loss, params, x, y)])
    np.testing.assert_allclose(norms, ref, **TOL[jnp.float64])


@dataclasses.dataclass(frozen=True)
class Scale(Layer):
    """y = x ⊙ s: a layer with parameters and no per_example_sq_norms of its own."""

    def init(self, key, in_shape):
        return {"s": jax.random.normal(key, in_shape) + 1.0}, tuple(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        return x * params["s"], {"x": x}

    def backward(self, params, cache, dy):
        return {"s": jnp.sum(cache["x"] * dy, axis=0)}, dy * params["s"]


def test_generic_default_for_a_layer_without_override_and_zeros_without_params():
    model = jbp.Sequential([Dense(5), Scale(), ReLU(), Dense(3)])
    loss = jbp.losses.softmax_cross_entropy
    params, out_shape = _params(model, (4,), jnp.float64)
    x, y = _data((4,), out_shape, loss, jnp.float64)
    norms = jax.jit(per_example_grad_norms(model, loss))(params, x, y)
    ref = np.sqrt([_sq_norm(r) for r in _oracle_grads(model, loss, params, x, y)])
    np.testing.assert_allclose(norms, ref, **TOL[jnp.float64])
    out = jbp.backprop(model, loss, extensions=[BatchL2()])(params, x, y)
    assert out.extras["batch_l2"][2] == ()  # ReLU: no parameters, nothing computed
    assert out.extras["batch_l2"][1]["s"].shape == (N,)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_clipped_grad_equals_mean_of_individually_clipped_grads(dtype):
    model = jbp.Sequential([Flatten(), Dense(6), Tanh(), Dense(3)])
    loss = jbp.losses.softmax_cross_entropy
    params, out_shape = _params(model, (2, 3), dtype)
    x, y = _data((2, 3), out_shape, loss, dtype, n=11)
    rows = _oracle_grads(model, loss, params, x, y)
    norms_ref = np.sqrt([_sq_norm(r) for r in rows])
    C = float(np.median(norms_ref))  # about half the examples get clipped
    grads, norms = jax.jit(per_example_clipped_grad(model, loss, C))(params, x, y)
    np.testing.assert_allclose(norms, norms_ref, **TOL[dtype])
    clipped = [
        jax.tree.map(lambda g, s=min(1.0, C / nr): g * s, r) for r, nr in zip(rows, norms_ref)
    ]
    ref = jax.tree.map(lambda *gs: sum(gs) / len(gs), *clipped)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, **TOL[dtype])
    # a bound above every norm clips nothing: the plain batch gradient
    grads_big, _ = jax.jit(per_example_clipped_grad(model, loss, 10 * float(norms_ref.max())))(
        params, x, y
    )
    _, batch = jax.jit(jbp.value_and_grad(model, loss))(params, x, y)
    for a, b in zip(jax.tree.leaves(grads_big), jax.tree.leaves(batch)):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_bad_arguments():
    model = jbp.Sequential([Dense(3)])
    with pytest.raises(ValueError, match="max_norm"):
        per_example_clipped_grad(model, jbp.losses.mse, 0.0)
    with pytest.raises(ValueError, match="max_norm"):
        per_example_clipped_grad(model, jbp.losses.mse, -1)
    with pytest.raises(ValueError, match="grad_fn"):
        per_example_grads(model, jbp.losses.mse, grad_fn="numeric")
    with pytest.raises(TypeError, match="loss"):
        per_example_grad_norms(model, "mse")
    params, _ = model.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="same number of examples"):
        per_example_grad_norms(model, jbp.losses.mse)(params, jnp.ones((4, 2)), jnp.ones((3, 3)))


def test_autodiff_variant_and_key_per_example():
    model = jbp.Sequential([Dense(5), Tanh(), Dense(3)])
    loss = jbp.losses.mse
    params, out_shape = _params(model, (4,), jnp.float64)
    x, y = _data((4,), out_shape, loss, jnp.float64)
    a = jax.jit(per_example_grads(model, loss))(params, x, y, key=jax.random.key(0))
    b = jax.jit(per_example_grads(model, loss, grad_fn="autodiff"))(
        params, x, y, key=jax.random.key(0)
    )
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, **TOL[jnp.float64])
