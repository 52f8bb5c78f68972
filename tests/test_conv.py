"""Conv2D: hand-written backward (two more convolutions) vs jax.vjp, shapes, bad input."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import compare_with_autodiff, per_example_grads, rand, randomize  # noqa: E402

import jbp  # noqa: E402
from jbp.layers.conv import Conv2D  # noqa: E402
from jbp.layers.pooling import MaxPool2D  # noqa: E402

# (input (batch, H, W, C), layer kwargs): non-square images, stride 2 with a remainder
# ((H + pads − k_eff) mod s ≠ 0), VALID and SAME, kernel larger than stride and smaller
# (k=1, s=2), dilation, explicit asymmetric padding, batch size 1.
CONFIGS = [
    ((2, 7, 5, 3), dict(features=4, kernel_size=3)),
    ((2, 7, 6, 2), dict(features=3, kernel_size=3, strides=2)),
    ((1, 8, 7, 3), dict(features=2, kernel_size=(3, 2), strides=2, padding="VALID")),
    ((2, 9, 8, 2), dict(features=3, kernel_size=3, strides=(2, 3), dilation=2, padding="VALID")),
    (
        (2, 6, 7, 2),
        dict(
            features=3,
            kernel_size=(2, 3),
            strides=(1, 2),
            dilation=(1, 2),
            padding=((2, 0), (1, 3)),
            use_bias=False,
        ),
    ),
    ((3, 5, 6, 1), dict(features=2, kernel_size=1, strides=2, padding=1)),
]


@pytest.mark.parametrize("shape,kwargs", CONFIGS)
def test_conv_backward_matches_autodiff_float64(shape, kwargs):
    rng = np.random.default_rng(0)
    layer = Conv2D(**kwargs)
    params, out_shape = layer.init(jax.random.key(0), shape[1:])
    params = randomize(params, rng, jnp.float64)
    y, grads, dx = compare_with_autodiff(layer, params, rand(rng, shape), rng)
    assert y.shape == (shape[0],) + out_shape
    assert dx.dtype == jnp.float64


@pytest.mark.parametrize("shape,kwargs", [CONFIGS[1], CONFIGS[3]])
def test_conv_backward_matches_autodiff_float32(shape, kwargs):
    rng = np.random.default_rng(1)
    layer = Conv2D(**kwargs)
    params, _ = layer.init(jax.random.key(1), shape[1:])
    params = randomize(params, rng, jnp.float32)
    y, grads, dx = compare_with_autodiff(layer, params, rand(rng, shape, jnp.float32), rng)
    assert y.dtype == dx.dtype == grads["W"].dtype == jnp.float32


def test_same_padding_output_size_and_stride_remainder_rows_get_zero_gradient():
    # VALID, H = 8, k = 3, s = 2: windows start at 0, 2, 4 → row 7 is never read.
    rng = np.random.default_rng(2)
    layer = Conv2D(2, 3, strides=2, padding="VALID")
    params, out = layer.init(jax.random.key(0), (8, 8, 1))
    assert out == (3, 3, 2)
    x = rand(rng, (1, 8, 8, 1))
    y, cache = layer.forward(params, x)
    _, dx = layer.backward(params, cache, rand(rng, y.shape))
    assert np.all(np.asarray(dx[:, 7]) == 0) and np.all(np.asarray(dx[:, :, 7]) == 0)
    assert np.any(np.asarray(dx[:, 6]) != 0)
    assert Conv2D(2, 3, strides=2).init(jax.random.key(0), (7, 5, 1))[1] == (4, 3, 2)


def test_conv_net_check_gradients_and_per_example_grads():
    rng = np.random.default_rng(3)
    model = jbp.Sequential(
        [
            Conv2D(3, 3, strides=2),
            jbp.layers.ReLU(),
            MaxPool2D(2, padding="SAME"),
            jbp.Flatten(),
            jbp.Dense(2),
        ]
    )
    params, _ = model.init(jax.random.key(0), (7, 6, 2))
    params = jbp.cast(params, jnp.float64)
    x, y = rand(rng, (4, 7, 6, 2)), rand(rng, (4, 2))
    report = jbp.check_gradients(model, jbp.losses.mse, params, x, y)
    assert report.ok, str(report)

    manual = per_example_grads(model, jbp.losses.mse, params, x, y, jbp.value_and_grad)
    auto = per_example_grads(model, jbp.losses.mse, params, x, y, jbp.autodiff_value_and_grad)
    _, batch = jax.jit(jbp.value_and_grad(model, jbp.losses.mse))(params, x, y)
    for m, a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(auto), jax.tree.leaves(batch)):
        np.testing.assert_allclose(m, a, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.mean(m, axis=0), b, rtol=1e-10, atol=1e-12)


def test_bad_input_names_layer_and_shapes():
    layer = Conv2D(4, 3, padding="VALID")
    params, _ = layer.init(jax.random.key(0), (6, 6, 2))
    with pytest.raises(ValueError, match=r"Conv2D.*rank 4.*\(5, 6, 6\)"):
        layer.forward(params, jnp.ones((5, 6, 6)))  # NHW, no channels
    with pytest.raises(
        ValueError, match=r"Conv2D.*kernel \(3×3.*larger than the padded input \(2×6"
    ):
        layer.forward(params, jnp.ones((1, 2, 6, 2)))
    with pytest.raises(ValueError, match=r"Conv2D.*kernel \(5×5"):
        Conv2D(4, 3, dilation=2, padding="VALID").init(jax.random.key(0), (4, 9, 1))
    with pytest.raises(ValueError, match=r"Conv2D.*2 input channels.*\(1, 6, 6, 3\)"):
        layer.forward(params, jnp.ones((1, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"Conv2D.*\(height, width, channels\)"):
        layer.init(jax.random.key(0), (6, 6))
    with pytest.raises(TypeError, match="floating"):
        layer.forward(params, jnp.ones((1, 6, 6, 2), jnp.int32))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2D(4, 0)
    with pytest.raises(ValueError, match="padding"):
        Conv2D(4, 3, padding="FULL")
    with pytest.raises(ValueError, match="features"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match="unknown initializer"):
        Conv2D(4, 3, w_init="nope")
