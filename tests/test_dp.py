"""DP-SGD (jbp.dp.sgd): the private gradient, padded rows, noise, Poisson batches, fit's ε.

Oracle for the clipped gradients: ``vmap(jax.grad)`` of the loss on one example alone,
clipped example by example in numpy-free jnp (flat: global norm; per layer: each
Sequential child's parameters as one group with bound C/√L).
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp.layers import BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Tanh  # noqa: E402

LOSS = jbp.losses.softmax_cross_entropy
TOL = {jnp.float64: dict(rtol=1e-10, atol=1e-12), jnp.float32: dict(rtol=2e-4, atol=2e-6)}


def _setup(dtype, n=8, d=4, seed=0):
    model = jbp.Sequential([Dense(5), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(seed), (d,))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    x = (jax.random.normal(kx, (n, d)) * jnp.linspace(0.3, 3.0, n)[:, None]).astype(dtype)
    y = jax.random.randint(ky, (n,), 0, 3)
    return model, params, x, y


def _per_example_grads(model, params, x, y):
    def one(xi, yi):
        return jax.grad(lambda p: LOSS.value(model.apply(p, xi[None]), yi[None]))(params)

    return jax.vmap(one)(x, y)


def _flat_reference(per, c):
    n = jax.tree.leaves(per)[0].shape[0]
    sq = sum(jnp.sum(jnp.square(a).reshape(n, -1), axis=1) for a in jax.tree.leaves(per))
    scale = jnp.minimum(1.0, c / jnp.sqrt(sq))
    return jax.tree.map(
        lambda a: jnp.sum(a * scale.reshape((-1,) + (1,) * (a.ndim - 1)), 0), per
    ), jnp.sqrt(sq)


def _per_layer_reference(per, c):
    layers = [i for i, g in enumerate(per) if jax.tree.leaves(g)]
    cl = c / np.sqrt(len(layers))
    out = []
    for g in per:
        if not jax.tree.leaves(g):
            out.append(g)
            continue
        n = jax.tree.leaves(g)[0].shape[0]
        sq = sum(jnp.sum(jnp.square(a).reshape(n, -1), axis=1) for a in jax.tree.leaves(g))
        scale = jnp.minimum(1.0, cl / jnp.sqrt(sq))
        out.append(
            jax.tree.map(
                lambda a, s=scale: jnp.sum(a * s.reshape((-1,) + (1,) * (a.ndim - 1)), 0), g
            )
        )
    return tuple(out)


def _assert_tree_close(a, b, tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_zero_noise_flat_equals_mean_of_clipped_vmap_grad(dtype):
    model, params, x, y = _setup(dtype)
    per = _per_example_grads(model, params, x, y)
    _, norms = _flat_reference(per, 1.0)
    c = float(np.median(np.asarray(norms)))  # about half the rows are clipped
    ref_sum, norms = _flat_reference(per, c)
    assert 0 < int(jnp.sum(norms > c)) < x.shape[0]
    denom = 5.5  # expected batch size ≠ n on purpose
    g = jax.jit(
        jbp.dp.private_grad(
            model, LOSS, max_norm=c, noise_multiplier=0.0, expected_batch_size=denom
        )
    )
    grads, out, info = g(params, x, y, jax.random.key(3))
    _assert_tree_close(grads, jax.tree.map(lambda a: a / denom, ref_sum), TOL[dtype])
    np.testing.assert_allclose(float(info["clipped"]), float(jnp.mean(norms > c)))


def _cnn_setup(dtype, n=6, seed=11):
    """Conv2D(3, 3) on 6×6×2: T = 36, 2T² > d·p = 18·3 (per-example gradients);
    Conv2D(4, 2, VALID) on 3×3×3: T = 4, 2T² = 32 ≤ d·p = 12·4 (Gram form)."""
    model = jbp.Sequential(
        [
            Conv2D(3, 3),
            ReLU(),
            MaxPool2D(2),
            Conv2D(4, 2, padding="VALID"),
            Tanh(),
            Flatten(),
            Dense(3),
        ]
    )
    params, _ = model.init(jax.random.key(seed), (6, 6, 2))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a) + 0.3 * rng.standard_normal(a.shape), dtype), params
    )
    x = jnp.asarray(rng.standard_normal((n, 6, 6, 2)) * rng.uniform(0.3, 3.0, (n, 1, 1, 1)), dtype)
    y = jnp.asarray(rng.integers(0, 3, n))
    return model, params, x, y


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_zero_noise_cnn_equals_clipped_vmap_grad(dtype, clipping):
    """Both Conv2D branches of the clipped sum (per-example gradients weighted; the kernel
    correlation of the rescaled delta) and a padded row, against ``vmap(jax.grad)``."""
    model, params, x, y = _cnn_setup(dtype)
    per = jax.jit(lambda p, a, b: _per_example_grads(model, p, a, b))(params, x, y)
    _, norms = _flat_reference(per, 1.0)
    c = float(np.median(np.asarray(norms)))
    w = jnp.asarray([1, 1, 0, 1, 1, 1], jnp.float64)  # row 2 is padding
    per = jax.tree.map(lambda a: a * w.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1)), per)
    ref, norms = (
        _flat_reference(per, c) if clipping == "flat" else (_per_layer_reference(per, c), None)
    )
    g = jax.jit(
        jbp.dp.private_grad(
            model,
            LOSS,
            max_norm=c,
            noise_multiplier=0.0,
            expected_batch_size=5.0,
            clipping=clipping,
        )
    )
    grads, _, _ = g(params, x, y, jax.random.key(3), weights=w)
    _assert_tree_close(grads, jax.tree.map(lambda a: a / 5.0, ref), TOL[dtype])
    if norms is not None:
        assert 0 < int(jnp.sum(norms > c)) < int(jnp.sum(w))


def test_zero_noise_per_layer_equals_groupwise_clipped_reference():
    model, params, x, y = _setup(jnp.float64, seed=4)
    per = _per_example_grads(model, params, x, y)
    c = 0.8
    ref = _per_layer_reference(per, c)
    g = jax.jit(
        jbp.dp.private_grad(
            model,
            LOSS,
            max_norm=c,
            noise_multiplier=0.0,
            expected_batch_size=x.shape[0],
            clipping="per_layer",
        )
    )
    grads, _, _ = g(params, x, y, jax.random.key(0))
    _assert_tree_close(grads, jax.tree.map(lambda a: a / x.shape[0], ref), TOL[jnp.float64])
    # the bound is active in some layer and some example, and differs from flat clipping
    flat, _ = _flat_reference(per, c)
    assert not np.allclose(
        np.asarray(jax.tree.leaves(flat)[0]), np.asarray(jax.tree.leaves(ref)[0]), rtol=1e-6
    )


def test_noise_has_std_sigma_c_over_expected_batch():
    model = jbp.Sequential([Dense(64), Tanh(), Dense(10)])
    params, _ = model.init(jax.random.key(0), (32,))
    x = jax.random.normal(jax.random.key(1), (6, 32))
    y = jnp.arange(6) % 10
    sigma, c, denom = 1.7, 0.6, 4.0
    kw = dict(max_norm=c, expected_batch_size=denom)
    noisy = jax.jit(jbp.dp.private_grad(model, LOSS, noise_multiplier=sigma, **kw))
    clean = jax.jit(jbp.dp.private_grad(model, LOSS, noise_multiplier=0.0, **kw))
    key = jax.random.key(42)
    g0 = clean(params, x, y, key)[0]
    g1 = noisy(params, x, y, key)[0]
    z = np.concatenate(
        [
            np.ravel((np.asarray(a) - np.asarray(b)) * denom / (sigma * c))
            for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0))
        ]
    )
    m = z.size  # 32·64 + 64 + 64·10 + 10 = 2762
    # standard normal: sample std within 5 standard errors (SE ≈ 1/√(2m) ≈ 1.3 %), mean
    # within 5/√m; leaves use independent keys (their means/stds are each checked too).
    assert abs(z.std() - 1.0) < 5 / np.sqrt(2 * m)
    assert abs(z.mean()) < 5 / np.sqrt(m)
    w = np.ravel(np.asarray(jax.tree.leaves(g1)[0] - jax.tree.leaves(g0)[0])) * denom / (sigma * c)
    assert abs(w.std() - 1.0) < 5 / np.sqrt(2 * w.size)
    # the same key gives the same noise, another key other noise
    _assert_tree_close(noisy(params, x, y, key)[0], g1, TOL[jnp.float64])
    g2 = noisy(params, x, y, jax.random.key(43))[0]
    assert not np.allclose(np.asarray(jax.tree.leaves(g2)[0]), np.asarray(jax.tree.leaves(g1)[0]))


def test_padded_rows_change_nothing():
    model, params, x, y = _setup(jnp.float64, n=5, seed=7)
    pad_x = 10.0 * jax.random.normal(jax.random.key(9), (3, x.shape[1]))  # large, non-zero
    pad_y = jnp.array([2, 0, 1])
    xp = jnp.concatenate([x[:2], pad_x[:1], x[2:], pad_x[1:]])
    yp = jnp.concatenate([y[:2], pad_y[:1], y[2:], pad_y[1:]])
    w = jnp.array([1, 1, 0, 1, 1, 1, 0, 0], jnp.float64)
    opt = jbp.optim.sgd(0.3)
    step = jax.jit(
        jbp.dp.make_private_step(
            model,
            LOSS,
            opt,
            max_norm=0.5,
            noise_multiplier=1.3,
            expected_batch_size=5.0,
            metrics=("loss", "accuracy"),
        )
    )
    key = jax.random.key(5)
    s = opt.init(params)
    p1, _, m1, _ = step(params, s, x, y, key)
    p2, _, m2, _ = step(params, s, xp, yp, key, (), w)
    _assert_tree_close(p2, p1, TOL[jnp.float64])
    for k in ("loss", "accuracy", "dp_clipped", "dp_rows"):
        np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-12)
    assert float(m1["dp_rows"]) == 5.0
    np.testing.assert_allclose(
        float(m1["loss"]), float(LOSS.value(model.apply(params, x), y)), rtol=1e-12
    )


def test_private_step_zero_noise_is_sgd_on_clipped_mean():
    model, params, x, y = _setup(jnp.float64, seed=2)
    per = _per_example_grads(model, params, x, y)
    ref, _ = _flat_reference(per, 0.7)
    step = jax.jit(
        jbp.dp.make_private_step(
            model,
            LOSS,
            jbp.optim.sgd(1.0),
            max_norm=0.7,
            noise_multiplier=0.0,
            expected_batch_size=8.0,
        )
    )
    p, _, _, state = step(params, jbp.optim.sgd(1.0).init(params), x, y, jax.random.key(0))
    _assert_tree_close(p, jax.tree.map(lambda a, g: a - g / 8.0, params, ref), TOL[jnp.float64])
    assert state == ()


def test_poisson_batch():
    n, q, b = 50, 0.2, 14
    idx, w, dropped = jax.jit(jbp.dp.poisson_batch, static_argnums=(1, 3))(
        jax.random.key(3), n, q, b
    )
    u = np.asarray(jax.random.uniform(jax.random.key(3), (n,)))
    sampled = np.flatnonzero(u < q)
    assert len(set(np.asarray(idx).tolist())) == b  # distinct rows
    np.testing.assert_array_equal(np.asarray(w), (u[np.asarray(idx)] < q).astype(float))
    assert int(dropped) == max(0, len(sampled) - b)
    kept = set(np.asarray(idx)[np.asarray(w) > 0].tolist())
    assert kept <= set(sampled.tolist()) and len(kept) == min(b, len(sampled))
    # overflow: a cap below the realised size drops the excess, reported
    idx, w, dropped = jbp.dp.poisson_batch(jax.random.key(3), n, q, 3)
    assert float(jnp.sum(w)) == 3 and int(dropped) == len(sampled) - 3


def test_fit_reports_epsilon_per_epoch_and_trains():
    (x, y), _ = jbp.datasets.digits()
    x, y = jnp.asarray(x[:60]), jnp.asarray(y[:60])
    model = jbp.Sequential([Dense(10)])
    params, _ = model.init(jax.random.key(0), (64,))
    cfg = jbp.dp.DPConfig(noise_multiplier=1.1, max_norm=1.0, sample_rate=0.25, delta=1e-3)
    assert cfg.steps_for() == 4 and cfg.batch_size_for(60) == jbp.dp.default_max_batch_size(
        60, 0.25
    )
    _, h = jbp.fit(
        model,
        params,
        LOSS,
        jbp.optim.sgd(0.5),
        (x, y),
        epochs=2,
        key=jax.random.key(1),
        privacy=cfg,
        verbose=0,
    )
    for e, eps in enumerate(h["epsilon"]):
        assert eps == jbp.dp.epsilon(1.1, 0.25, 4 * (e + 1), 1e-3)
    assert h["epsilon"][1] > h["epsilon"][0] > 0
    assert all(0 < r < 60 for r in h["dp_rows"])
    assert h["dp_dropped"] == [0.0, 0.0]


def test_overflow_probability_matches_binomial_tail():
    cfg = jbp.dp.DPConfig(
        noise_multiplier=1.0, max_norm=1.0, sample_rate=0.3, delta=1e-5, max_batch_size=5
    )
    n = 12
    from math import comb

    ref = sum(comb(n, k) * 0.3**k * 0.7 ** (n - k) for k in range(6, n + 1))
    np.testing.assert_allclose(cfg.overflow_probability(n), ref, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise_multiplier=-0.1), "noise_multiplier"),
        (dict(max_norm=0.0), "max_norm"),
        (dict(max_norm=-1.0), "max_norm"),
        (dict(sample_rate=0.0), "sample_rate"),
        (dict(sample_rate=1.5), "sample_rate"),
        (dict(delta=1.0), "delta"),
        (dict(delta=0.0), "delta"),
        (dict(clipping="layer"), "clipping"),
        (dict(max_batch_size=0), "max_batch_size"),
    ],
)
def test_config_errors(kwargs, match):
    base = dict(noise_multiplier=1.0, max_norm=1.0, sample_rate=0.1, delta=1e-5)
    with pytest.raises(ValueError, match=match):
        jbp.dp.DPConfig(**{**base, **kwargs})


def test_step_and_fit_errors():
    model, params, x, y = _setup(jnp.float64)
    opt = jbp.optim.sgd(0.1)
    kw = dict(max_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0)
    bn = jbp.Sequential([Dense(5), BatchNorm(), Dense(3)])
    with pytest.raises(ValueError, match="BatchNorm"):
        jbp.dp.make_private_step(bn, LOSS, opt, **kw)
    for bad, match in [
        (dict(noise_multiplier=-1.0), "noise_multiplier"),
        (dict(max_norm=0.0), "max_norm"),
        (dict(expected_batch_size=0.0), "expected_batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            jbp.dp.make_private_step(model, LOSS, opt, **{**kw, **bad})
    step = jbp.dp.make_private_step(model, LOSS, opt, **kw)
    with pytest.raises(ValueError, match="weights"):
        step(params, opt.init(params), x, y, jax.random.key(0), (), jnp.ones(3))
    cfg = jbp.dp.DPConfig(noise_multiplier=1.0, max_norm=1.0, sample_rate=0.5, delta=1e-5)
    with pytest.raises(ValueError, match="batch_size=None"):
        jbp.fit(
            model,
            params,
            LOSS,
            opt,
            (x, y),
            epochs=1,
            key=jax.random.key(0),
            privacy=cfg,
            batch_size=4,
            verbose=0,
        )
    with pytest.raises(TypeError, match="DPConfig"):
        jbp.fit(
            model,
            params,
            LOSS,
            opt,
            (x, y),
            epochs=1,
            key=jax.random.key(0),
            privacy=dict(noise_multiplier=1.0),
            verbose=0,
        )
    with pytest.raises(ValueError, match="max_batch_size"):
        jbp.fit(
            model,
            params,
            LOSS,
            opt,
            (x, y),
            epochs=1,
            key=jax.random.key(0),
            verbose=0,
            privacy=jbp.dp.DPConfig(1.0, 1.0, 0.5, 1e-5, max_batch_size=100),
        )
