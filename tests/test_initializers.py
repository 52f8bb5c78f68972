"""Tests for jbp.initializers: variances vs formulas, bounds, orthogonality, API."""

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jbp import initializers as I  # noqa: E402

KEY = jax.random.PRNGKey(42)
DENSE = (400, 300)
CONV = (3, 3, 32, 64)  # HWIO

# (factory, distribution, variance(fan_in, fan_out))
VARIANCE_SCALING = [
    (I.glorot_normal, "normal", lambda fi, fo: 2.0 / (fi + fo)),
    (I.glorot_uniform, "uniform", lambda fi, fo: 2.0 / (fi + fo)),
    (I.he_normal, "normal", lambda fi, fo: 2.0 / fi),
    (I.he_uniform, "uniform", lambda fi, fo: 2.0 / fi),
    (I.lecun_normal, "normal", lambda fi, fo: 1.0 / fi),
    (I.lecun_uniform, "uniform", lambda fi, fo: 1.0 / fi),
]


def _check_moments(w, var, distribution, n_sigma=5.0):
    """Sample mean and variance within n_sigma sampling standard errors.

    For n iid samples of variance s2, the sample variance has standard error
    sqrt((mu4 - s2^2) / n): mu4 = 3 s2^2 (normal) or 9/5 s2^2 (uniform).
    """
    w = np.asarray(w, dtype=np.float64).ravel()
    n = w.size
    kurt = {"normal": 3.0, "uniform": 9.0 / 5.0}[distribution]
    se_var = var * math.sqrt((kurt - 1.0) / n)
    se_mean = math.sqrt(var / n)
    assert abs(w.mean()) < n_sigma * se_mean, (w.mean(), se_mean)
    assert abs(w.var() - var) < n_sigma * se_var, (w.var(), var, se_var)


def test_compute_fans():
    assert I.compute_fans((400, 300)) == (400, 300)
    assert I.compute_fans((3, 3, 32, 64)) == (9 * 32, 9 * 64)
    assert I.compute_fans((5, 7, 11)) == (35, 55)
    assert I.compute_fans((2, 3, 4, 5, 6)) == (24 * 5, 24 * 6)
    assert I.compute_fans((17,)) == (17, 17)
    assert I.compute_fans(()) == (1, 1)


@pytest.mark.parametrize(
    "factory,dist,varfn", VARIANCE_SCALING, ids=[f[0].__name__ for f in VARIANCE_SCALING]
)
@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_variance_scaling_moments(factory, dist, varfn, shape):
    fan_in, fan_out = I.compute_fans(shape)
    var = varfn(fan_in, fan_out)
    w = factory()(KEY, shape, jnp.float64)
    assert w.shape == shape and w.dtype == jnp.float64
    _check_moments(w, var, dist)
    assert math.isclose(factory().variance(shape), var)
    if dist == "uniform":
        limit = math.sqrt(3.0 * var)
        assert float(jnp.max(jnp.abs(w))) <= limit
        assert float(jnp.max(w)) > 0.99 * limit
        assert float(jnp.min(w)) < -0.99 * limit


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_normal_and_uniform_moments(shape):
    _check_moments(I.normal(0.3)(KEY, shape, jnp.float64), 0.09, "normal")
    _check_moments(I.normal()(KEY, shape, jnp.float64), 1e-4, "normal")
    w = I.uniform(0.5)(KEY, shape, jnp.float64)
    _check_moments(w, 0.25 / 3.0, "uniform")
    assert float(jnp.max(jnp.abs(w))) <= 0.5
    assert float(jnp.max(w)) > 0.495 and float(jnp.min(w)) < -0.495
    w = I.uniform()(KEY, shape)
    assert float(jnp.max(jnp.abs(w))) <= 1e-2


def test_constants():
    assert np.array_equal(I.zeros()(KEY, (3, 4)), np.zeros((3, 4)))
    assert np.array_equal(I.ones()(KEY, (5,)), np.ones(5))
    assert np.array_equal(I.constant(0.25)(KEY, (2, 2)), np.full((2, 2), 0.25))
    assert np.array_equal(I.constant(np.float32(3))(KEY, (2,)), [3.0, 3.0])
    assert I.constant(jnp.asarray(2.0)) == I.constant(2.0)
    assert I.zeros()(KEY, (2,), jnp.int32).dtype == jnp.int32


@pytest.mark.parametrize("shape", [(50, 20), (20, 20), (20, 50), (3, 3, 4, 8), (2, 2, 8, 40)])
def test_orthogonal(shape):
    w = I.orthogonal()(KEY, shape, jnp.float64)
    assert w.shape == shape and w.dtype == jnp.float64
    m = np.asarray(w).reshape(-1, shape[-1])
    rows, cols = m.shape
    if rows >= cols:
        np.testing.assert_allclose(m.T @ m, np.eye(cols), atol=1e-12)
    else:
        np.testing.assert_allclose(m @ m.T, np.eye(rows), atol=1e-12)
    w2 = I.orthogonal(2.0)(KEY, shape, jnp.float64)
    np.testing.assert_allclose(w2, 2.0 * w, atol=1e-12)


def test_orthogonal_float32_and_sign_convention():
    w = I.orthogonal()(KEY, (64, 32))
    assert w.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(w).T @ np.asarray(w), np.eye(32), atol=1e-5)
    # sign correction: Q diag(sign(diag R)) makes the first column a_1/||a_1||,
    # symmetric in sign (raw Householder Q would have Q[0, 0] < 0 always).
    keys = jax.random.split(KEY, 40)
    firsts = np.array([float(I.orthogonal()(k, (4, 4), jnp.float64)[0, 0]) for k in keys])
    assert (firsts > 0).sum() >= 8 and (firsts < 0).sum() >= 8


def test_rank_one_orthogonal_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        I.orthogonal()(KEY, (5,))


@pytest.mark.parametrize(
    "factory",
    [
        I.glorot_normal,
        I.he_uniform,
        I.lecun_normal,
        I.normal,
        I.uniform,
        I.orthogonal,
        I.zeros,
        I.ones,
    ],
)
def test_dtypes(factory):
    assert factory()(KEY, (6, 4)).dtype == jnp.float32
    assert factory()(KEY, (6, 4), jnp.float64).dtype == jnp.float64
    assert factory()(KEY, (6, 4), jnp.bfloat16).dtype == jnp.bfloat16


def test_random_needs_float_dtype():
    with pytest.raises(TypeError, match="floating"):
        I.he_normal()(KEY, (3, 3), jnp.int32)


def test_deterministic_and_key_dependent():
    a = I.he_normal()(KEY, (10, 10))
    b = I.he_normal()(KEY, (10, 10))
    c = I.he_normal()(jax.random.PRNGKey(1), (10, 10))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # typed (new-style) keys work too
    assert I.he_normal()(jax.random.key(0), (3, 3)).shape == (3, 3)


def test_works_under_jit():
    f = jax.jit(lambda k: I.glorot_uniform()(k, (7, 5)))
    np.testing.assert_array_equal(f(KEY), I.glorot_uniform()(KEY, (7, 5)))


def test_aliases_equal():
    assert I.xavier_normal() == I.glorot_normal()
    assert I.xavier_uniform() == I.glorot_uniform()
    assert I.kaiming_normal() == I.he_normal()
    assert I.kaiming_uniform() == I.he_uniform()
    np.testing.assert_array_equal(I.xavier_normal()(KEY, (4, 3)), I.glorot_normal()(KEY, (4, 3)))


def test_equality_hash_repr():
    assert I.he_normal() == I.he_normal()
    assert hash(I.he_normal()) == hash(I.he_normal())
    assert I.normal(0.1) == I.normal(0.1) and hash(I.normal(0.1)) == hash(I.normal(0.1))
    assert I.normal(0.1) != I.normal(0.2)
    assert I.he_normal() != I.he_uniform()
    assert I.he_normal() != I.lecun_normal()
    assert repr(I.he_normal()) == "HeNormal()"
    assert repr(I.normal(0.1)) == "Normal(stddev=0.1)"
    # usable as a static jit argument
    f = jax.jit(lambda k, init: init(k, (3, 2)), static_argnums=1)
    assert f(KEY, I.he_normal()).shape == (3, 2)


def test_get():
    assert I.get("he_normal") == I.he_normal()
    assert I.get("xavier_uniform") == I.glorot_uniform()
    assert I.get("Kaiming-Normal") == I.he_normal()
    assert I.get("zeros") == I.zeros()
    assert I.get("normal") == I.normal()
    assert I.get("orthogonal") == I.orthogonal()
    init = I.normal(0.5)
    assert I.get(init) is init
    assert I.get(I.he_uniform) == I.he_uniform()  # factory given without calling

    def custom(key, shape, dtype=jnp.float32):
        return jnp.full(shape, 7.0, dtype)

    assert I.get(custom) is custom


def test_get_unknown_lists_sorted_names():
    with pytest.raises(ValueError) as ei:
        I.get("he_normall")
    msg = str(ei.value)
    assert "he_normall" in msg
    listed = msg.split("known names: ")[1].split(", ")
    assert listed == sorted(listed)
    for name in ["he_normal", "xavier_uniform", "zeros", "orthogonal", "lecun_uniform"]:
        assert name in listed


def test_get_bad_types():
    with pytest.raises(TypeError):
        I.get(3)
    with pytest.raises(TypeError, match="constant"):
        I.get(I.constant)


def test_bad_arguments():
    with pytest.raises(ValueError, match="stddev"):
        I.normal(-0.1)
    with pytest.raises(ValueError, match="stddev"):
        I.normal(float("nan"))
    with pytest.raises(ValueError, match="scale"):
        I.uniform(-1.0)
    with pytest.raises(ValueError, match="scale"):
        I.orthogonal(-2.0)
    with pytest.raises(TypeError, match="stddev"):
        I.normal("big")
    with pytest.raises(TypeError, match="scalar"):
        I.constant(np.ones(3))


@pytest.mark.parametrize("shape", [(0, 3), (3, -1), (2, 0, 4)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match="positive"):
        I.he_normal()(KEY, shape)
    with pytest.raises(ValueError, match="positive"):
        I.zeros()(KEY, shape)
    with pytest.raises(ValueError, match="positive"):
        I.compute_fans(shape)


def test_bad_shape_type():
    with pytest.raises(TypeError, match="shape"):
        I.he_normal()(KEY, (3.5, 2))
