"""BatchNorm (batch statistics, running statistics as state) and LayerNorm."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import (  # noqa: E402
    RTOL,
    assert_close,
    compare_with_autodiff,
    per_example_grads,
    rand,
    randomize,
)

import jbp  # noqa: E402
from jbp.layers.conv import Conv2D  # noqa: E402
from jbp.layers.normalization import BatchNorm, LayerNorm  # noqa: E402


@pytest.mark.parametrize(
    "shape,layer,dtype",
    [
        ((5, 3), BatchNorm(), jnp.float64),
        ((2, 5, 3, 4), BatchNorm(), jnp.float64),  # NHWC: statistics over batch, H, W
        ((1, 4, 3, 2), BatchNorm(use_scale=False), jnp.float64),  # batch size 1
        ((2, 5, 3, 4), BatchNorm(), jnp.float32),
        ((3, 5, 4), LayerNorm(), jnp.float64),
        ((1, 6), LayerNorm(use_bias=False), jnp.float64),
        ((3, 5, 4), LayerNorm(), jnp.float32),
    ],
    ids=["bn-2d", "bn-nhwc", "bn-b1-noscale", "bn-nhwc-f32", "ln-3d", "ln-b1-nobias", "ln-f32"],
)
def test_norm_backward_matches_autodiff(shape, layer, dtype):
    rng = np.random.default_rng(0)
    params, out = layer.init(jax.random.key(0), shape[1:])
    params = randomize(params, rng, dtype)
    x = rand(rng, shape, dtype, scale=2.0) + 0.7  # non-zero mean, non-unit variance
    y, _, dx = compare_with_autodiff(layer, params, x, rng)
    assert y.shape == (shape[0],) + out and y.dtype == dx.dtype == dtype


def test_batchnorm_running_statistics_update_as_documented_and_eval_uses_them():
    rng = np.random.default_rng(1)
    layer = BatchNorm(momentum=0.9, eps=1e-3)
    params, _ = layer.init(jax.random.key(0), (3,))
    params = randomize(params, rng, jnp.float64)
    state = jbp.cast(layer.init_state((3,)), jnp.float64)
    np.testing.assert_array_equal(state["mean"], 0.0)
    np.testing.assert_array_equal(state["var"], 1.0)
    x1, x2 = rand(rng, (6, 3), scale=2.0) + 1.0, rand(rng, (4, 3)) - 0.5
    _, _, s1 = layer.forward_with_state(params, state, x1, train=True)
    _, _, s2 = layer.forward_with_state(params, s1, x2, train=True)
    mean1, var1 = np.mean(np.asarray(x1), 0), np.var(np.asarray(x1), 0)  # biased variance
    mean2, var2 = np.mean(np.asarray(x2), 0), np.var(np.asarray(x2), 0)
    np.testing.assert_allclose(s1["mean"], 0.1 * mean1, rtol=1e-12)
    np.testing.assert_allclose(s1["var"], 0.9 + 0.1 * var1, rtol=1e-12)
    np.testing.assert_allclose(s2["mean"], 0.9 * 0.1 * mean1 + 0.1 * mean2, rtol=1e-12)
    np.testing.assert_allclose(s2["var"], 0.9 * (0.9 + 0.1 * var1) + 0.1 * var2, rtol=1e-12)

    # eval: the running statistics, the state returned unchanged, any batch size
    x3 = rand(rng, (2, 3))
    y, cache, s3 = layer.forward_with_state(params, s2, x3, train=False)
    expected = params["gamma"] * (x3 - s2["mean"]) / np.sqrt(s2["var"] + 1e-3) + params["beta"]
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert s3 is s2
    # the eval-mode backward (a fixed affine map) vs autodiff
    dy = rand(rng, y.shape)
    grads, dx = layer.backward(params, cache, dy)
    _, pull = jax.vjp(lambda p, v: layer.forward_with_state(p, s2, v, train=False)[0], params, x3)
    assert_close((grads, dx), pull(dy), RTOL[jnp.dtype(jnp.float64)])
    # ... and in float32
    f32 = jnp.float32
    p32, st32, x32 = jbp.cast(params, f32), jbp.cast(s2, f32), x3.astype(f32)
    y32, cache32, _ = layer.forward_with_state(p32, st32, x32, train=False)
    dy32 = rand(rng, y32.shape, f32)
    _, pull32 = jax.vjp(lambda p, v: layer.forward_with_state(p, st32, v, train=False)[0], p32, x32)
    assert_close(layer.backward(p32, cache32, dy32), pull32(dy32), RTOL[jnp.dtype(f32)])
    # a float32 state keeps its dtype when updated from float64 batches
    s32 = layer.init_state((3,))
    assert layer.forward_with_state(params, s32, x1, train=True)[2]["mean"].dtype == jnp.float32


def test_batchnorm_in_sequential_state_threading_and_gradient_check():
    rng = np.random.default_rng(2)
    # (no conv bias: BatchNorm subtracts the mean, so its gradient would be exactly zero)
    model = jbp.Sequential(
        [
            Conv2D(3, 3, strides=2, use_bias=False),
            BatchNorm(momentum=0.5),
            jbp.layers.ReLU(),
            jbp.Flatten(),
            jbp.Dense(3),
            LayerNorm(),
            jbp.Dense(2),
        ]
    )
    assert model.stateful
    params, _ = model.init(jax.random.key(0), (5, 4, 2))
    params = jbp.cast(params, jnp.float64)
    state = model.init_state((5, 4, 2))
    assert state[0] == () and set(state[1]) == {"mean", "var"} and state[1]["mean"].shape == (3,)
    x, y = rand(rng, (4, 5, 4, 2)), rand(rng, (4, 2))

    pred, cache, new_state = model.forward_with_state(params, state, x, train=True)
    np.testing.assert_allclose(pred, model.apply(params, x, train=True), rtol=1e-12)
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])
    pred_eval, _, same = model.forward_with_state(params, new_state, x, train=False)
    assert same[1] is new_state[1]

    report = jbp.check_gradients(model, jbp.losses.mse, params, x, y)  # train=True: batch stats
    assert report.ok, str(report)
    # per-example gradients (each example normalised by its own statistics) vs autodiff
    manual = per_example_grads(model, jbp.losses.mse, params, x, y, jbp.value_and_grad)
    auto = per_example_grads(model, jbp.losses.mse, params, x, y, jbp.autodiff_value_and_grad)
    assert_close(manual, auto, 1e-9, 1e-12)


def test_batchnorm_state_through_a_training_step():
    import jbp.optim as optim
    import jbp.train as train

    rng = np.random.default_rng(3)
    model = jbp.Sequential([jbp.Dense(4), BatchNorm(momentum=0.8), jbp.Dense(1)])
    params, _ = model.init(jax.random.key(0), (3,))
    state = model.init_state((3,))
    opt = optim.sgd(0.1)
    step = train.make_train_step(model, jbp.losses.mse, opt)
    x, y = rand(rng, (8, 3), jnp.float32), rand(rng, (8, 1), jnp.float32)
    p2, _, metrics, s2 = jax.jit(step)(params, opt.init(params), x, y, jax.random.key(1), state)
    h = np.asarray(model.layers[0].apply(params[0], x))
    np.testing.assert_allclose(s2[1]["mean"], 0.2 * h.mean(0), rtol=1e-5, atol=1e-7)
    assert s2[1]["mean"].dtype == jnp.float32


def test_bad_input_and_missing_state():
    layer = BatchNorm()
    params, _ = layer.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"BatchNorm.*forward_with_state"):
        layer.apply(params, jnp.ones((2, 3)))  # train=False, no state
    with pytest.raises(ValueError, match=r"BatchNorm.*\(batch, \.\.\., 3\).*\(2, 4\)"):
        layer.forward(params, jnp.ones((2, 4)), train=True)
    with pytest.raises(ValueError, match=r"BatchNorm.*state has mean \(4,\)"):
        layer.forward_with_state(params, BatchNorm().init_state((4,)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(batch, \.\.\., 3\).*\(3,\)"):
        LayerNorm().forward(LayerNorm().init(jax.random.key(0), (3,))[0], jnp.ones((3,)))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(eps=0.0)
