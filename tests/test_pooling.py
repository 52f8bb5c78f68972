"""MaxPool2D, AvgPool2D, GlobalAvgPool2D: backward vs jax.vjp, ties, counts, bad input."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import assert_close, compare_with_autodiff, rand  # noqa: E402

import jbp  # noqa: E402
from jbp.layers.conv import Conv2D  # noqa: E402
from jbp.layers.normalization import BatchNorm  # noqa: E402
from jbp.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D  # noqa: E402

CONFIGS = [
    ((2, 7, 5, 3), MaxPool2D(2)),  # VALID, remainder rows
    ((1, 7, 6, 2), MaxPool2D(3, strides=2, padding="SAME")),  # overlapping windows
    ((2, 6, 5, 1), MaxPool2D((3, 2), strides=(2, 1), padding=((1, 1), (0, 1)))),
    ((2, 7, 5, 3), AvgPool2D(2)),
    ((1, 7, 6, 2), AvgPool2D(3, strides=2, padding="SAME")),  # partial windows at the edges
    ((2, 6, 5, 1), AvgPool2D((2, 3), strides=(1, 2), padding=((1, 0), (0, 2)))),
    ((3, 5, 4, 2), GlobalAvgPool2D()),
]


@pytest.mark.parametrize(
    "shape,layer",
    CONFIGS,
    ids=[
        "max-valid",
        "max-same-overlap",
        "max-explicit",
        "avg-valid",
        "avg-same",
        "avg-explicit",
        "global",
    ],
)
def test_pool_backward_matches_autodiff_float64(shape, layer):
    rng = np.random.default_rng(0)
    params, out_shape = layer.init(None, shape[1:])
    y, _, _ = compare_with_autodiff(layer, params, rand(rng, shape), rng)
    assert y.shape == (shape[0],) + out_shape


@pytest.mark.parametrize(
    "shape,layer", [CONFIGS[1], CONFIGS[4], CONFIGS[6]], ids=["max", "avg", "global"]
)
def test_pool_backward_matches_autodiff_float32(shape, layer):
    rng = np.random.default_rng(1)
    y, _, dx = compare_with_autodiff(layer, (), rand(rng, shape, jnp.float32), rng)
    assert y.dtype == dx.dtype == jnp.float32


def test_maxpool_ties_go_to_the_first_max_in_row_major_order_and_overlaps_accumulate():
    layer = MaxPool2D(2, strides=1)
    x = jnp.ones((1, 3, 3, 1))  # every window is a four-way tie
    y, cache = layer.forward((), x)
    dy = jnp.array([1.0, 2.0, 3.0, 5.0]).reshape(1, 2, 2, 1)
    _, dx = layer.backward((), cache, dy)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 2, 0], [3, 5, 0], [0, 0, 0]])
    # a unique max shared by all four overlapping windows receives all four deltas
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(7.0)
    _, dx = layer.backward((), layer.forward((), x)[1], dy)
    assert float(dx[0, 1, 1, 0]) == 11.0 and float(jnp.sum(jnp.abs(dx))) == 11.0
    # a tie inside one window: the earlier position (row-major) wins
    x = jnp.array([[0.0, 4.0], [4.0, 1.0]]).reshape(1, 2, 2, 1)
    _, dx = MaxPool2D(2).backward((), MaxPool2D(2).forward((), x)[1], jnp.full((1, 1, 1, 1), 3.0))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 3], [0, 0]])


def test_maxpool_inside_one_jit_after_fused_layers_routes_every_delta():
    # Regression: re-deriving the argmax in the backward as `x == y` lost gradient here,
    # because XLA recomputed the fused BatchNorm+ReLU producing x with different rounding.
    rng = np.random.default_rng(3)
    model = jbp.Sequential(
        [
            Conv2D(16, 3, use_bias=False),
            BatchNorm(),
            jbp.layers.ReLU(),
            MaxPool2D(2),
            jbp.Flatten(),
            jbp.Dense(3),
        ]
    )
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    params = jbp.cast(params, jnp.float64)
    x, y = jnp.asarray(rng.random((8, 28, 28, 1))), jnp.asarray(rng.integers(0, 3, 8))
    loss = jbp.losses.softmax_cross_entropy
    _, manual = jax.jit(jbp.value_and_grad(model, loss))(params, x, y)
    _, auto = jax.jit(jbp.autodiff_value_and_grad(model, loss))(params, x, y)
    assert_close(manual, auto, 1e-10, 1e-14)


def test_avgpool_same_counts_only_real_pixels():
    rng = np.random.default_rng(2)
    x = rand(rng, (1, 5, 4, 1))
    y = AvgPool2D(3, strides=2, padding="SAME").apply((), x)
    xn = np.asarray(x[0, :, :, 0])
    # SAME, H=5, k=3, s=2: pads (1, 1); W=4: pads (0, 1). Window (0, 0) covers rows 0..1, cols 0..2.
    np.testing.assert_allclose(y[0, 0, 0, 0], xn[0:2, 0:3].mean(), rtol=1e-12)
    np.testing.assert_allclose(y[0, 2, 1, 0], xn[3:5, 2:4].mean(), rtol=1e-12)
    np.testing.assert_allclose(y[0, 1, 0, 0], xn[1:4, 0:3].mean(), rtol=1e-12)


def test_global_avg_pool_shape():
    params, out = GlobalAvgPool2D().init(None, (3, 5, 7))
    assert out == (7,)


def test_bad_input_names_layer_and_shapes():
    with pytest.raises(ValueError, match=r"MaxPool2D.*rank 4.*\(2, 6, 6\)"):
        MaxPool2D(2).forward((), jnp.ones((2, 6, 6)))
    with pytest.raises(
        ValueError, match=r"AvgPool2D.*window \(3×3.*larger than the padded input \(2×5"
    ):
        AvgPool2D(3).forward((), jnp.ones((1, 2, 5, 1)))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D.*rank 4"):
        GlobalAvgPool2D().forward((), jnp.ones((2, 6, 1)))
    with pytest.raises(ValueError, match="smaller than the window"):
        MaxPool2D(2, padding=2)
    with pytest.raises(ValueError, match="window"):
        MaxPool2D((2, 0))
    with pytest.raises(TypeError, match="floating"):
        MaxPool2D(2).forward((), jnp.ones((1, 4, 4, 1), jnp.int32))
