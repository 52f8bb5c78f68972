"""Residual and PositionWise: hand-written backward vs jax.vjp, stateful and parameterless
blocks, padding masks, per-example gradient norms, and bad input."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import assert_close, compare_with_autodiff, rand, randomize  # noqa: E402

import jbp  # noqa: E402
from jbp.layers import (  # noqa: E402
    BatchNorm,
    Dense,
    LayerNorm,
    Masked,
    Masking,
    MeanPool1D,
    MultiHeadAttention,
    PositionWise,
    ReLU,
    Residual,
    Tanh,
)

MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], bool)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_residual_dense_matches_autodiff(dtype):
    rng = np.random.default_rng(0)
    layer = Residual(Dense(5))
    params, out = layer.init(jax.random.key(0), (4, 5))
    assert out == (4, 5) and set(params) == {"W", "b"}  # the block's params, no nesting
    params = randomize(params, rng, dtype)
    x = rand(rng, (3, 4, 5), dtype)
    y, grads, dx = compare_with_autodiff(layer, params, x, rng)
    np.testing.assert_allclose(y, x + x @ params["W"] + params["b"], rtol=1e-6)
    assert y.dtype == dx.dtype == grads["W"].dtype == dtype


def test_residual_parameterless_block():
    rng = np.random.default_rng(1)
    layer = Residual(Tanh())
    params, out = layer.init(jax.random.key(0), (6,))
    assert params == () and out == (6,)
    x, dy = rand(rng, (4, 6)), rand(rng, (4, 6))
    compare_with_autodiff(layer, params, x, rng)
    y, cache = layer.forward(params, x)
    grads, dx = layer.backward(params, cache, dy)
    assert grads == ()
    np.testing.assert_allclose(dx, dy * (2 - jnp.tanh(x) ** 2), rtol=1e-14)  # 1 + tanh'


def test_residual_around_stateful_block():
    rng = np.random.default_rng(2)
    block = jbp.Sequential([Dense(4, use_bias=False), BatchNorm(momentum=0.5), ReLU(), Dense(3)])
    layer = Residual(block)
    assert layer.stateful
    params, _ = layer.init(jax.random.key(0), (3,))
    params = randomize(params, rng, jnp.float64)
    state = jbp.cast(layer.init_state((3,)), jnp.float64)
    assert jax.tree.structure(state) == jax.tree.structure(block.init_state((3,)))
    x = rand(rng, (6, 3))
    # training: batch statistics; the state moves exactly as the block's own
    y, cache, new_state = layer.forward_with_state(params, state, x, train=True)
    yb, _, block_state = block.forward_with_state(params, state, x, train=True)
    np.testing.assert_allclose(y, x + yb, rtol=1e-14)
    assert_close(new_state, block_state, 0.0, 0.0, "state")
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])
    compare_with_autodiff(layer, params, x, rng, train=True)
    # evaluation: running statistics, state unchanged, backward vs jax.vjp
    dy = rand(rng, x.shape)

    @jax.jit
    def evaluate(params, x, dy):
        y, cache, s = layer.forward_with_state(params, new_state, x, train=False)
        _, pull = jax.vjp(
            lambda p, v: layer.forward_with_state(p, new_state, v, train=False)[0], params, x
        )
        return s, layer.backward(params, cache, dy), pull(dy)

    s, manual, auto = evaluate(params, x, dy)
    assert_close(s, new_state, 0.0, 0.0, "eval state")
    assert_close(manual, auto, 1e-10, 1e-13, "eval backward")
    # inside a Sequential, through the gradient check (train=True), leaves named by path
    model = jbp.Sequential([layer, Dense(2)])
    mp = randomize(model.init(jax.random.key(1), (3,))[0], rng, jnp.float64)
    report = jbp.check_gradients(model, jbp.losses.mse, mp, x, rand(rng, (6, 2)))
    assert report.ok, str(report)
    assert [leaf.name for leaf in report.leaves][:2] == [
        "layers[0].layers[0].W",
        "layers[0].layers[1].beta",
    ]


def test_residual_and_positionwise_with_padding_mask():
    rng = np.random.default_rng(3)
    m = jnp.asarray(MASK)
    attention = Residual(jbp.Sequential([PositionWise(LayerNorm()), MultiHeadAttention(2)]))
    params, _ = attention.init(jax.random.key(0), (4, 6))
    params = randomize(params, rng, jnp.float64)
    x = rand(rng, (3, 4, 6))
    y, _, dx = compare_with_autodiff(attention, params, x, rng, mask=m)
    assert isinstance(y, Masked)
    np.testing.assert_array_equal(y.mask, MASK)
    # padded rows: the attention outputs zeros there, so y = x; and no gradient flows into
    # the attention from them (only the skip path's δ)
    np.testing.assert_allclose(np.asarray(y.values)[~MASK], np.asarray(x)[~MASK], rtol=1e-15)
    mlp = Residual(PositionWise(jbp.Sequential([LayerNorm(), Dense(5), Tanh(), Dense(6)])))
    params, _ = mlp.init(jax.random.key(1), (4, 6))
    params = randomize(params, rng, jnp.float64)
    y, _, _ = compare_with_autodiff(mlp, params, x, rng, mask=m)
    np.testing.assert_array_equal(y.mask, MASK)
    # PositionWise on a plain array is the layer itself
    ln = PositionWise(LayerNorm())
    p, out = ln.init(jax.random.key(0), (4, 6))
    assert out == (4, 6) and set(p) == {"gamma", "beta"}
    np.testing.assert_array_equal(ln.apply(p, x), LayerNorm().apply(p, x))
    np.testing.assert_array_equal(ln.apply(p, Masked(x, m)).values, LayerNorm().apply(p, x))


def test_per_example_grad_norms_through_residual():
    """Residual and PositionWise delegate per_example_sq_norms to their block (Dense's closed
    form, MultiHeadAttention's vmap default) — vs per-example autodiff gradients."""
    rng = np.random.default_rng(4)
    model = jbp.Sequential(
        [
            Masking(),
            Residual(jbp.Sequential([PositionWise(LayerNorm()), MultiHeadAttention(2)])),
            Residual(PositionWise(Dense(6))),
            MeanPool1D(),
            Dense(2),
        ]
    )
    params = randomize(model.init(jax.random.key(0), (4, 6))[0], rng, jnp.float64, scale=0.3)
    x = rand(rng, (3, 4, 6)) * jnp.asarray(MASK)[..., None]
    y = rand(rng, (3, 2))
    loss = jbp.losses.mse

    @jax.jit
    def both(p):
        norms = jbp.per_example_grad_norms(model, loss)(p, x, y)
        auto = jbp.per_example_grads(model, loss, grad_fn="autodiff")(p, x, y)
        return norms, jnp.sqrt(
            sum(jnp.sum(jnp.square(g.reshape(3, -1)), axis=1) for g in jax.tree.leaves(auto))
        )

    norms, ref = both(params)
    np.testing.assert_allclose(norms, ref, rtol=1e-10)


class Narrows(jbp.Layer):
    """Claims to keep its input shape in init, drops a feature in forward."""

    def init(self, key, in_shape):
        return (), tuple(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        return x[..., :3], {}

    def backward(self, params, cache, dy):  # pragma: no cover - never reached
        raise AssertionError


def test_bad_blocks_raise_clear_errors():
    with pytest.raises(
        ValueError,
        match=r"Residual\(block=Dense\(units=3.*the block maps input "
        r"shape \(4,\) to output shape \(3,\)",
    ):
        Residual(Dense(3)).init(jax.random.key(0), (4,))
    layer = Residual(Dense(4))
    params, _ = layer.init(jax.random.key(0), (4,))
    with pytest.raises(
        ValueError,
        match=r"the block maps an input of shape \(2, 4\) to an output "
        r"of shape \(2, 3\)",
    ):
        Residual(Narrows()).forward((), jnp.ones((2, 4)))
    with pytest.raises(
        ValueError,
        match=r"Residual.block \(Dense\): .*params\['W'\] has shape "
        r"\(4, 3\), expected \(in_features, 4\)",
    ):
        layer.forward({"W": jnp.ones((4, 3)), "b": jnp.ones(3)}, jnp.ones((2, 4)))
    with pytest.raises(
        ValueError,
        match=r"Residual.block \(Dense\): Dense\(units=4.*expected input "
        r"of shape \(batch, ..., 4\), got \(2, 5\)",
    ):
        layer.forward(params, jnp.ones((2, 5)))
    with pytest.raises(TypeError, match="block must be a jbp Layer"):
        Residual(lambda x: x)
    with pytest.raises(TypeError, match="block must be a jbp Layer"):
        PositionWise([Dense(3)])
    ln = Residual(LayerNorm())
    p, _ = ln.init(jax.random.key(0), (4, 6))
    with pytest.raises(
        TypeError,
        match=r"Residual.block \(LayerNorm\): x: expected an array.*got "
        r"Masked.*wrap position-wise layers .* in PositionWise",
    ):
        ln.forward(p, Masked(jnp.ones((2, 4, 6)), jnp.ones((2, 4), bool)))
