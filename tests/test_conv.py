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


# The patch form in one chunk is what every other test here runs on CPU; in chunks of one
# example on the configurations with strides, dilation and asymmetric padding.
@pytest.mark.parametrize(
    "shape,kwargs,by_patches",
    [(shape, kwargs, False) for shape, kwargs in CONFIGS]
    + [(*CONFIGS[i], True) for i in (1, 3, 4)],
    ids=[f"convolution-{i}" for i in range(len(CONFIGS))] + ["patches-1", "patches-3", "patches-4"],
)
def test_both_kernel_gradient_forms_match_autodiff(monkeypatch, shape, kwargs, by_patches):
    """``_kernel_correlation`` has two forms: the patch product (XLA CPU; here in chunks of
    one example, the smallest budget) and one convolution (GPU/TPU). Both vs ``jax.vjp``."""
    import jbp.layers._per_example as pe  # noqa: PLC0415
    import jbp.layers.conv as conv  # noqa: PLC0415

    monkeypatch.setattr(conv, "_kernel_grad_by_patches", lambda: by_patches)
    monkeypatch.setattr(pe, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(4)
    layer = Conv2D(**kwargs)
    params, _ = layer.init(jax.random.key(0), shape[1:])
    params = randomize(params, rng, jnp.float64)
    x = rand(rng, (3,) + shape[1:])  # three examples: three chunks
    compare_with_autodiff(layer, params, x, rng)


# One chunk with the per-example gradients kept is also what the extension tests run.
@pytest.mark.parametrize(
    "shape,kwargs,budget",
    [(*c, b) for c in CONFIGS for b in ("one-example", "two-examples")]
    + [(*CONFIGS[i], "all") for i in (0, 4)],
)
def test_per_example_closed_forms_in_chunks(monkeypatch, shape, kwargs, budget):
    """``batch_grad``, ``batch_l2``, ``sum_grad_squared`` and ``scaled_grad_sum`` vs
    ``vmap(jax.grad)``, with a non-uniform per-example delta and non-uniform scales, for
    chunk budgets of one example's patches (4 chunks; the norms and sums chunk by chunk),
    two examples' (2 chunks; where the per-example gradients fit, they are formed and
    read) and everything (1 chunk; per-example gradients kept)."""
    import jbp.layers._per_example as pe  # noqa: PLC0415

    rng = np.random.default_rng(5)
    n = 4
    layer = Conv2D(**kwargs)
    params, out = layer.init(jax.random.key(0), shape[1:])
    kh, kw = layer.kernel_size
    patch_bytes = (kh * kw * shape[3] + 1) * out[0] * out[1] * 8
    chunks = {"one-example": 4, "two-examples": 2, "all": 1}[budget]
    monkeypatch.setattr(pe, "CHUNK_BYTES", patch_bytes * (n // chunks) if chunks > 1 else 2**40)
    assert layer._chunks(jnp.zeros((n,) + shape[1:]), jnp.zeros((n,) + out)) == chunks
    params = randomize(params, rng, jnp.float64)
    x = rand(rng, (n,) + shape[1:])
    dy = rand(rng, (n,) + out)
    scale = jnp.asarray(rng.uniform(0.1, 2.0, n))
    _, cache = layer.forward(params, x)

    def one(p, xi, di):  # example i's own loss <z_i, δ_i>
        return jnp.vdot(layer.forward(p, xi[None])[0], di[None])

    ref = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, dy)
    got = layer.batch_grad(params, cache, dy)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-12)
    l2 = layer.batch_l2(params, cache, dy)
    for k in ref:
        want = np.sum(np.square(ref[k]).reshape(n, -1), axis=1)
        np.testing.assert_allclose(l2[k], want, rtol=1e-11, atol=1e-12)
    sq = layer.sum_grad_squared(params, cache, dy)
    for k in ref:
        np.testing.assert_allclose(sq[k], np.sum(np.square(ref[k]), 0), rtol=1e-11, atol=1e-12)
    sgs = layer.scaled_grad_sum(params, cache, dy, scale)
    for k in ref:
        want = np.tensordot(np.asarray(scale), np.asarray(ref[k]), 1)
        np.testing.assert_allclose(sgs[k], want, rtol=1e-11, atol=1e-12)


def test_chunk_count_is_the_fewest_divisor_within_the_budget(monkeypatch):
    import jbp.layers._per_example as pe  # noqa: PLC0415

    assert pe.example_chunks(12, 100, 1200) == 1
    assert pe.example_chunks(12, 100, 1199) == 2  # 6 examples = 600 bytes
    assert pe.example_chunks(12, 100, 350) == 4  # 3 examples; 5 does not divide 12
    assert pe.example_chunks(7, 100, 350) == 7  # 7 is prime
    assert pe.example_chunks(12, 100, 50) == 12  # not even one example fits
    monkeypatch.setattr(pe, "CHUNK_BYTES", 250)
    assert pe.example_chunks(12, 100) == (6 if jax.default_backend() == "cpu" else 1)


def test_input_gradient_convolution_takes_an_hwio_kernel():
    """The input gradient's convolution gets its swapped kernel as an explicit HWIO transpose,
    never as the dimension numbers HWOI, which XLA CPU ran 33× slower inside ``lax.scan``
    (``fit``'s epoch): a regression check on the lowered program."""
    layer = Conv2D(4, 3, strides=2)
    params, _ = layer.init(jax.random.key(0), (7, 7, 3))
    y, cache = layer.forward(params, jnp.ones((2, 7, 7, 3)))
    text = (
        jax.jit(lambda p, c, d: layer.backward(p, c, d)[1])
        .lower(params, cache, jnp.ones(y.shape))
        .as_text()
    )
    convs = [line for line in text.splitlines() if "convolution(" in line]
    assert len(convs) == 1, convs
    assert "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]" in convs[0], convs[0]


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
