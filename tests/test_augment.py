"""Tests for jbp.augment: shapes/dtypes, keys, exact geometry, jit/scan, bad input.

Rotation convention under test: positive angles rotate counter-clockwise as the
image is displayed (row 0 at the top), so ``rotate(x, 90)`` equals
``np.rot90(x, k=1, axes=(1, 2))`` exactly for square images.
"""

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jbp import augment as A  # noqa: E402

KEY = jax.random.PRNGKey(0)


def np_translate(img, dy, dx):
    """Reference: img (H, W, ...) shifted dy rows down, dx columns right, zero fill."""
    out = np.zeros_like(img)
    h, w = img.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def images(shape, dtype=jnp.float64, seed=1):
    # numpy, not jax.random: an eager jax.random call compiles once per shape
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.1, 1.0, shape).astype(dtype))


ALL_AUGS = {
    "flip": A.random_flip(),
    "flip_v": A.random_flip(horizontal=False, vertical=True),
    "rotation": A.random_rotation(15.0),
    "translation": A.random_translation(2),
    "crop": A.random_crop((6, 6), padding=1),
    "noise": A.gaussian_noise(0.1),
    "compose": A.compose(A.random_flip(), A.random_translation((1, 2)), A.random_rotation(10)),
}
SHAPES = {"NHWC": (5, 6, 6, 3), "NHW": (5, 6, 6)}


@pytest.mark.parametrize("name", list(ALL_AUGS))
@pytest.mark.parametrize("layout,dtype", [("NHWC", jnp.float32), ("NHW", jnp.float64)])
def test_shape_dtype_and_keys(name, layout, dtype):
    aug = ALL_AUGS[name]
    x = images(SHAPES[layout], dtype)
    y1 = aug(KEY, x)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    y2 = aug(KEY, x)
    np.testing.assert_array_equal(y1, y2)  # same key, same output
    others = [aug(jax.random.PRNGKey(s), x) for s in range(1, 4)]
    assert any(not np.array_equal(y1, o) for o in others)  # keys matter


def test_random_crop_to_smaller_size_shape():
    x = images((4, 8, 8, 2))
    y = A.random_crop((5, 6))(KEY, x)
    assert y.shape == (4, 5, 6, 2)
    # each output is a window of the input
    for i in range(4):
        hits = [
            (a, b)
            for a in range(4)
            for b in range(3)
            if np.array_equal(y[i], x[i, a : a + 5, b : b + 6])
        ]
        assert len(hits) == 1


# ----------------------------------------------------------------------------
# deterministic geometry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 7, 5, 2), (3, 7, 5)])
def test_flip_twice_is_identity(shape):
    x = images(shape)
    np.testing.assert_array_equal(A.flip_horizontal(A.flip_horizontal(x)), x)
    np.testing.assert_array_equal(A.flip_horizontal(x), x[:, :, ::-1])
    np.testing.assert_array_equal(A.flip_vertical(A.flip_vertical(x)), x)


def test_translate_zero_and_shift():
    x = images((3, 6, 7, 2))
    np.testing.assert_array_equal(A.translate(x, 0, 0), x)
    y = A.translate(x, 2, -1)  # 2 rows down, 1 column left
    expected = np.zeros_like(x)
    expected[:, 2:, :-1] = x[:, :-2, 1:]
    np.testing.assert_array_equal(y, expected)
    # per-example shifts
    y = A.translate(x, jnp.array([0, 1, -3]), jnp.array([0, 0, 2]))
    np.testing.assert_array_equal(y[0], x[0])
    np.testing.assert_array_equal(y[1, 1:], x[1, :-1])
    np.testing.assert_array_equal(y[1, 0], 0)
    np.testing.assert_array_equal(y[2, :-3, 2:], x[2, 3:, :-2])
    for dy, dx in [(1, 1), (-2, 3), (0, -6), (5, -1)]:
        np.testing.assert_array_equal(
            A.translate(x, dy, dx)[1], np_translate(np.asarray(x[1]), dy, dx)
        )
    # shifting everything out leaves zeros
    np.testing.assert_array_equal(A.translate(x, 6, 0), 0)


@pytest.mark.parametrize("layout", ["NHWC", "NHW"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("n", [7, 8])  # odd and even sizes
def test_rotate_multiples_of_90_exact(layout, dtype, n):
    shape = (3, n, n, 2) if layout == "NHWC" else (3, n, n)
    x = images(shape, dtype)
    for deg, k in [(90, 1), (180, 2), (270, 3), (-90, -1), (450, 1)]:
        np.testing.assert_array_equal(A.rotate(x, deg), np.rot90(x, k=k, axes=(1, 2)))
    np.testing.assert_array_equal(A.rotate(x, 0), x)
    np.testing.assert_array_equal(A.rotate(x, 360), x)
    # per-example angles
    y = A.rotate(x, jnp.array([0.0, 90.0, 270.0]))
    for i, k in enumerate([0, 1, 3]):
        np.testing.assert_array_equal(y[i], np.rot90(x[i], k=k, axes=(0, 1)))


def test_rotate_180_non_square_is_double_flip():
    x = images((2, 5, 8, 3))
    np.testing.assert_array_equal(A.rotate(x, 180), x[:, ::-1, ::-1])


def test_rotate_direction_is_counter_clockwise():
    x = np.zeros((1, 5, 5))
    x[0, 2, 4] = 1.0  # a dot right of centre
    y = np.asarray(A.rotate(x, 90))
    assert y[0, 0, 2] == 1.0 and y.sum() == 1.0  # ends up above the centre


def test_rotate_bilinear_exact_on_linear_ramp():
    # bilinear interpolation reproduces an affine function exactly, so rotating
    # f(r, c) = a r + b c + d must give f at the analytically rotated source
    # point wherever that point lies inside the image.
    h, w = 9, 12
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    f = lambda r, c: 0.7 * r - 0.3 * c + 2.0
    x = f(rr, cc)[None]
    for deg in [17.0, -33.0, 61.5]:
        t = np.deg2rad(deg)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        y, xx = rr - cy, cc - cx
        ys = cy + y * np.cos(t) + xx * np.sin(t)
        xs = cx - y * np.sin(t) + xx * np.cos(t)
        inside = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
        assert inside.sum() > 40
        out = np.asarray(A.rotate(x, deg))[0]
        np.testing.assert_allclose(out[inside], f(ys, xs)[inside], rtol=1e-12, atol=1e-12)
        # far outside the image, zero fill
        outside = (ys < -1) | (ys > h) | (xs < -1) | (xs > w)
        np.testing.assert_array_equal(out[outside], 0.0)


def test_rotate_symmetric_image_nearly_invariant():
    yy, xx = np.mgrid[0:21, 0:21]
    sym = np.exp(-((yy - 10.0) ** 2 + (xx - 10.0) ** 2) / 30.0)[None]
    np.testing.assert_allclose(A.rotate(sym, 33.0), sym, atol=0.02)
    # the centre pixel stays exactly where it is
    assert float(A.rotate(sym, 33.0)[0, 10, 10]) == pytest.approx(1.0, abs=1e-12)


def test_rotate_integer_images_keep_dtype():
    x = (np.arange(64).reshape(1, 8, 8) % 200).astype(np.uint8)
    y = A.rotate(x, 90)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, np.rot90(x, 1, axes=(1, 2)))


# ----------------------------------------------------------------------------
# random augmentations: semantics
# ----------------------------------------------------------------------------


def test_random_identities():
    x = images((4, 6, 6, 2))
    np.testing.assert_array_equal(A.random_rotation(0)(KEY, x), x)
    np.testing.assert_array_equal(A.random_translation(0)(KEY, x), x)
    np.testing.assert_array_equal(A.gaussian_noise(0.0)(KEY, x), x)
    np.testing.assert_array_equal(A.random_crop(None, 0)(KEY, x), x)
    np.testing.assert_array_equal(A.random_flip(False, False)(KEY, x), x)
    np.testing.assert_array_equal(A.compose()(KEY, x), x)


def test_random_flip_per_example():
    x = jnp.broadcast_to(images((1, 4, 5)), (400, 4, 5))
    y = A.random_flip()(KEY, x)
    same = np.array([np.array_equal(y[i], x[i]) for i in range(400)])
    flipped = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(400)])
    assert np.all(same ^ flipped)
    # Binomial(400, 0.5): mean 200, sd 10
    assert abs(flipped.sum() - 200) < 50


def test_random_translation_draws_within_range():
    x0 = np.asarray(images((1, 7, 7)))[0]
    x = jnp.broadcast_to(x0, (60, 7, 7))
    y = np.asarray(A.random_translation((1, 2))(KEY, x))
    seen = set()
    for i in range(60):
        hits = [
            (dy, dx)
            for dy in range(-1, 2)
            for dx in range(-2, 3)
            if np.array_equal(y[i], np_translate(x0, dy, dx))
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) >= 10  # 15 possible shifts, drawn per example


def test_random_crop_is_pad_and_crop():
    x0 = np.asarray(images((1, 6, 6, 2)))[0]
    x = jnp.broadcast_to(x0, (40, 6, 6, 2))
    y = np.asarray(A.random_crop((6, 6), padding=2)(KEY, x))
    seen = set()
    for i in range(40):
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(y[i], np_translate(x0, dy, dx))
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) >= 8


def test_random_rotation_per_example_and_bounded():
    x = jnp.broadcast_to(images((1, 9, 9)), (20, 9, 9))
    y = A.random_rotation(30.0)(KEY, x)
    distinct = {np.asarray(y[i]).tobytes() for i in range(20)}
    assert len(distinct) == 20
    # each output equals rotate by some angle in [-30, 30]: search a fine grid
    # for the best match and check it reproduces the output closely
    grid = np.linspace(-30, 30, 241)
    cands = np.asarray(A.rotate(jnp.broadcast_to(x[:1], (241, 9, 9)), grid))
    for i in range(20):
        err = np.abs(cands - np.asarray(y[i])).max(axis=(1, 2))
        assert err.min() < 0.02


def test_gaussian_noise_statistics():
    x = images((64, 16, 16, 3))
    s = 0.3
    d = np.asarray(A.gaussian_noise(s)(KEY, x) - x).ravel()
    n = d.size
    assert abs(d.mean()) < 5 * s / math.sqrt(n)
    assert abs(d.var() - s**2) < 5 * s**2 * math.sqrt(2.0 / n)
    # independent across examples
    assert not np.allclose(d[:768], d[768:1536])


# ----------------------------------------------------------------------------
# compiled use
# ----------------------------------------------------------------------------


def test_inside_jit_of_scan():
    aug = A.compose(
        A.random_flip(), A.random_translation(2), A.random_rotation(10.0), A.gaussian_noise(0.01)
    )
    xs = images((4, 6, 8, 8, 1), jnp.float32)  # 4 batches of 6 images
    keys = jax.random.split(KEY, 4)

    @jax.jit
    def epoch(xs, keys):
        def step(total, inp):
            xb, k = inp
            xa = aug(k, xb)
            return total + jnp.sum(xa), xa

        return jax.lax.scan(step, jnp.float32(0), (xs, keys))

    total, out = epoch(xs, keys)
    assert out.shape == xs.shape and out.dtype == jnp.float32
    for b in range(4):
        np.testing.assert_allclose(out[b], aug(keys[b], xs[b]), rtol=1e-5, atol=1e-6)


def test_augmentations_are_hashable_static_args():
    a1 = A.compose(A.random_flip(), A.random_translation(2))
    a2 = A.compose(A.random_flip(), A.random_translation((2, 2)))
    assert a1 == a2 and hash(a1) == hash(a2)
    assert A.random_rotation(10) == A.random_rotation(10.0)
    assert A.random_rotation(10) != A.random_rotation(11)
    f = jax.jit(lambda k, x, aug: aug(k, x), static_argnums=2)
    x = images((2, 5, 5))
    np.testing.assert_allclose(f(KEY, x, a1), a1(KEY, x))


def test_compose_with_unhashable_callable():
    class Scale:  # defines __eq__ without __hash__: unhashable
        def __eq__(self, other):
            return isinstance(other, Scale)

        def __call__(self, key, x):
            return 2 * x

    aug = A.compose(A.random_flip(), Scale())
    x = images((3, 4, 4))
    y = aug(KEY, x)
    np.testing.assert_allclose(jnp.abs(y).sum(), 2 * jnp.abs(x).sum())
    np.testing.assert_allclose(jax.jit(lambda k, x: aug(k, x))(KEY, x), y)


def test_traced_angles_and_shifts():
    x = images((3, 6, 6))
    r = jax.jit(A.rotate)(x, jnp.array([90.0, 0.0, 180.0]))
    np.testing.assert_array_equal(r[0], np.rot90(x[0]))
    t = jax.jit(A.translate)(x, 1, jnp.array([0, 1, 2]))
    np.testing.assert_array_equal(t, A.translate(x, 1, jnp.array([0, 1, 2])))


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("aug", list(ALL_AUGS.values()), ids=list(ALL_AUGS))
@pytest.mark.parametrize("shape", [(6, 6), (2, 6, 6, 3, 1)])
def test_wrong_rank(aug, shape):
    with pytest.raises(ValueError, match=r"'x'.*" + re_shape(shape)):
        aug(KEY, jnp.zeros(shape))


def re_shape(shape):
    return r"\(" + r", ".join(str(d) for d in shape) + r"\)"


def test_wrong_rank_deterministic():
    for fn in [
        A.flip_horizontal,
        A.flip_vertical,
        lambda x: A.rotate(x, 10),
        lambda x: A.translate(x, 1, 1),
    ]:
        with pytest.raises(ValueError, match="rank"):
            fn(jnp.zeros((4, 4)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_angle(bad):
    with pytest.raises(ValueError, match="max_degrees"):
        A.random_rotation(bad)
    with pytest.raises(ValueError, match="degrees"):
        A.rotate(images((2, 4, 4)), bad)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="max_degrees"):
        A.random_rotation(-5)
    with pytest.raises(TypeError, match="max_degrees"):
        A.random_rotation("10")
    with pytest.raises(ValueError, match="stddev"):
        A.gaussian_noise(-0.1)
    with pytest.raises(ValueError, match="stddev"):
        A.gaussian_noise(float("nan"))
    with pytest.raises(ValueError, match="max_pixels"):
        A.random_translation(-1)
    with pytest.raises(ValueError, match="max_pixels"):
        A.random_translation((1, -2))
    with pytest.raises(TypeError, match="max_pixels"):
        A.random_translation(1.5)
    with pytest.raises(ValueError, match="padding"):
        A.random_crop((4, 4), padding=-1)
    with pytest.raises(ValueError, match="size"):
        A.random_crop((0, 4))
    with pytest.raises(TypeError, match="horizontal"):
        A.random_flip(horizontal="yes")
    with pytest.raises(TypeError, match="compose"):
        A.compose(A.random_flip(), 3)


def test_crop_larger_than_padded_image():
    crop = A.random_crop((9, 9), padding=1)
    crop(KEY, images((2, 7, 7)))  # 9 <= 7 + 2: fine
    with pytest.raises(ValueError, match="larger than the padded image"):
        crop(KEY, images((2, 6, 6)))


def test_per_example_argument_shape():
    with pytest.raises(ValueError, match="degrees"):
        A.rotate(images((3, 4, 4)), jnp.zeros(2))
    with pytest.raises(ValueError, match="dy"):
        A.translate(images((3, 4, 4)), jnp.zeros(4, jnp.int32), 0)


def test_noise_needs_float():
    with pytest.raises(TypeError, match="floating"):
        A.gaussian_noise(0.1)(KEY, jnp.zeros((2, 3, 3), jnp.int32))
