"""Dropout: backward vs jax.grad with the same key, mask statistics, modes, bad input."""

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp.layers.activations import Tanh  # noqa: E402
from jbp.layers.dense import Dense  # noqa: E402
from jbp.layers.dropout import Dropout  # noqa: E402


def _x(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape) * rng.uniform(0.5, 2.0, size=shape[-1]), dtype)


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-14), (jnp.float32, 1e-6)])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_backward_matches_autodiff_same_key(dtype, tol, rate):
    layer = Dropout(rate)
    x = _x((7, 11), dtype)
    dy = _x((7, 11), dtype, seed=1)  # a random, non-uniform cotangent
    key = jax.random.key(42)
    y, cache = layer.forward((), x, key=key, train=True)
    _, dx = layer.backward((), cache, dy)
    y_ref, vjp = jax.vjp(lambda x: layer.apply((), x, key=key, train=True), x)
    (dx_ref,) = vjp(dy)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    # the equations: y = x·m/(1−p), dx = dy·m/(1−p), with the same mask m
    m = np.asarray(y) != 0
    np.testing.assert_allclose(y, np.where(m, np.asarray(x) / (1 - rate), 0), rtol=10 * tol)
    np.testing.assert_allclose(dx, np.where(m, np.asarray(dy) / (1 - rate), 0), rtol=10 * tol)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_kept_fraction_is_one_minus_rate(rate):
    n = 200_000
    x = jnp.ones((n // 100, 100), jnp.float32)
    y, cache = Dropout(rate).forward((), x, key=jax.random.key(7), train=True)
    kept = float(jnp.mean(cache["mask"]))
    std = math.sqrt(rate * (1 - rate) / n)  # binomial standard deviation of the fraction
    assert abs(kept - (1 - rate)) < 5 * std, (kept, 1 - rate, std)
    assert float(jnp.mean(y != 0)) == kept


def test_mean_activation_preserved_in_expectation():
    rate = 0.6
    x = _x((1, 50), jnp.float64, seed=3)
    keys = jax.random.split(jax.random.key(0), 4000)
    ys = jax.vmap(lambda k: Dropout(rate).apply((), x, key=k, train=True))(keys)  # (4000, 1, 50)
    mean = jnp.mean(ys, axis=0)
    # per unit: E[y] = x, Var[y] = x² p/(1−p); average over 4000 draws
    std = np.abs(np.asarray(x)) * math.sqrt(rate / (1 - rate)) / math.sqrt(len(keys))
    assert np.all(np.abs(np.asarray(mean - x)) < 5 * std + 1e-12)
    # and over many units at once: the batch mean of y ≈ the batch mean of x
    big = _x((400, 500), jnp.float64, seed=4) + 1.0
    yb = Dropout(rate).apply((), big, key=jax.random.key(1), train=True)
    se = float(jnp.sqrt(jnp.sum(big**2) * rate / (1 - rate))) / big.size
    assert abs(float(jnp.mean(yb) - jnp.mean(big))) < 5 * se


def test_eval_mode_is_identity_and_needs_no_key():
    x = _x((5, 4), jnp.float32)
    layer = Dropout(0.5)
    y, cache = layer.forward((), x, train=False)
    assert y is x or np.array_equal(y, x)
    _, dx = layer.backward((), cache, x * 3)
    np.testing.assert_array_equal(dx, x * 3)
    # with a key too
    np.testing.assert_array_equal(layer.apply((), x, key=jax.random.key(0), train=False), x)


def test_rate_zero_is_identity():
    x = _x((5, 4), jnp.float64)
    y, cache = Dropout(0.0).forward((), x, key=jax.random.key(0), train=True)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(Dropout(0.0).backward((), cache, 2 * x)[1], 2 * x)


def test_keys_decide_the_mask():
    x = _x((8, 64), jnp.float32)
    layer = Dropout(0.5)
    m1 = layer.forward((), x, key=jax.random.key(1), train=True)[1]["mask"]
    m1b = layer.forward((), x, key=jax.random.key(1), train=True)[1]["mask"]
    m2 = layer.forward((), x, key=jax.random.key(2), train=True)[1]["mask"]
    np.testing.assert_array_equal(m1, m1b)  # same key, same mask
    assert not np.array_equal(m1, m2)  # different keys, different masks
    # legacy uint32 keys work as well
    layer.forward((), x, key=jax.random.PRNGKey(3), train=True)


def test_init_no_params_shape_preserved():
    params, out = Dropout(0.2).init(jax.random.key(0), (3, 4))
    assert params == () and out == (3, 4)
    hash(Dropout(0.2))
    assert Dropout(0.2) == Dropout(0.2) and Dropout(0.2).keep_prob == pytest.approx(0.8)


def _mlp():
    model = jbp.Sequential(
        [Dense(16), Tanh(), Dropout(0.4), Dense(8), Tanh(), Dropout(0.25), Dense(3)]
    )
    params, _ = model.init(jax.random.key(0), (6,))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(10, 6)))
    y = jnp.asarray(rng.integers(0, 3, size=10), jnp.int32)
    return model, jbp.cast(params, jnp.float64), x, y


def test_in_sequential_value_and_grad_jit_matches_autodiff():
    model, params, x, y = _mlp()
    loss = jbp.losses.softmax_cross_entropy
    manual = jax.jit(jbp.value_and_grad(model, loss), static_argnames="train")
    auto = jax.jit(jbp.autodiff_value_and_grad(model, loss), static_argnames="train")
    key = jax.random.key(9)
    v, g = manual(params, x, y, key=key)
    va, ga = auto(params, x, y, key=key)
    np.testing.assert_allclose(v, va, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ga)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    # a different key gives a different loss (the masks change); train=False is deterministic
    v2, _ = manual(params, x, y, key=jax.random.key(10))
    assert float(v2) != float(v)
    ve, _ = manual(params, x, y, key=None, train=False)
    np.testing.assert_allclose(
        ve, jbp.losses.softmax_cross_entropy(model.apply(params, x), y), rtol=1e-12
    )
    report = jbp.check_gradients(model, loss, params, x, y, key=key, fd_directions=2)
    assert report.ok, str(report)


def test_traced_train_flag():
    """train as a traced jit argument: both modes in one graph, same results as static."""
    model, params, x, y = _mlp()
    loss = jbp.losses.softmax_cross_entropy
    key = jax.random.key(9)
    traced = jax.jit(jbp.value_and_grad(model, loss))
    static = jax.jit(jbp.value_and_grad(model, loss), static_argnames="train")
    for train in (True, False):
        v, g = traced(params, x, y, key=key, train=train)
        vs, gs = static(params, x, y, key=key, train=train)
        np.testing.assert_allclose(v, vs, rtol=1e-13)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gs)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="static_argnames"):
        traced(params, x, y, key=None, train=False)


def test_in_sequential_under_vmap_per_example_keys():
    model, params, x, y = _mlp()
    loss = jbp.losses.softmax_cross_entropy
    keys = jax.random.split(jax.random.key(11), x.shape[0])

    def per_example(engine):
        f = engine(model, loss)
        return jax.jit(jax.vmap(lambda xi, yi, k: f(params, xi[None], yi[None], key=k)))

    v, g = per_example(jbp.value_and_grad)(x, y, keys)
    va, ga = per_example(jbp.autodiff_value_and_grad)(x, y, keys)
    np.testing.assert_allclose(v, va, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ga)):
        assert a.shape[0] == x.shape[0]
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_float32_in_sequential():
    model, params, x, y = _mlp()
    params, x = jbp.cast(params, jnp.float32), x.astype(jnp.float32)
    loss = jbp.losses.softmax_cross_entropy
    key = jax.random.key(12)
    v, g = jax.jit(jbp.value_and_grad(model, loss))(params, x, y, key=key)
    _, ga = jax.jit(jbp.autodiff_value_and_grad(model, loss))(params, x, y, key=key)
    assert v.dtype == jnp.float32
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ga)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_bad_rate_value(rate):
    with pytest.raises(ValueError, match="rate"):
        Dropout(rate)


@pytest.mark.parametrize("rate", ["0.5", None, True])
def test_bad_rate_type(rate):
    with pytest.raises(TypeError, match="rate"):
        Dropout(rate)


def test_missing_key_in_training_is_a_clear_error():
    x = _x((2, 3), jnp.float32)
    with pytest.raises(ValueError, match="key"):
        Dropout(0.5).forward((), x, train=True)
    model, params, xm, ym = _mlp()
    with pytest.raises(ValueError, match=r"layers\[2\].*Dropout.*key"):
        jbp.value_and_grad(model, jbp.losses.softmax_cross_entropy)(
            params, xm, ym, key=None, train=True
        )


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="x"):
        Dropout(0.5).forward((), jnp.ones((2, 3), jnp.int32), key=jax.random.key(0), train=True)


def test_inside_fit_manual_equals_autodiff_and_keys_matter():
    """In fit, each step's forward key drives the mask and the backward reuses it: the
    hand-written run equals the jax.grad run step for step; another key, another run."""
    import jbp.train as train
    from jbp import optim

    model, params, x, y = _mlp()

    def run(grad_fn, seed):
        p, h = train.fit(
            model,
            params,
            jbp.losses.softmax_cross_entropy,
            optim.sgd(0.5),
            (x, y),
            batch_size=4,
            epochs=2,
            key=jax.random.key(seed),
            verbose=0,
            metrics=("loss",),
            grad_fn=grad_fn,
        )
        return p, h["loss"]

    p_manual, l_manual = run("manual", 0)
    p_auto, l_auto = run("autodiff", 0)
    np.testing.assert_allclose(l_manual, l_auto, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(p_manual), jax.tree.leaves(p_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    p_other, _ = run("manual", 1)
    assert not np.allclose(jax.tree.leaves(p_other)[0], jax.tree.leaves(p_manual)[0])
    # and dropout really acts during fit: without it the same run ends elsewhere
    plain = jbp.Sequential(
        [l if not isinstance(l, Dropout) else Dropout(0.0) for l in model.layers]
    )
    p_plain, _ = train.fit(
        plain,
        params,
        jbp.losses.softmax_cross_entropy,
        optim.sgd(0.5),
        (x, y),
        batch_size=4,
        epochs=2,
        key=jax.random.key(0),
        verbose=0,
        metrics=("loss",),
    )
    assert not np.allclose(jax.tree.leaves(p_plain)[0], jax.tree.leaves(p_manual)[0])
