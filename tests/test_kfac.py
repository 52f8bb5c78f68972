"""The K-FAC optimizer: its update against the equations evaluated with numpy (float64), the
moving averages and the inverse refresh schedule, Newton's step on least squares, the
training-step hook and bad input."""

import importlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp import optim  # noqa: E402
from jbp.extensions import KFAC, KFLR, BatchL2, DiagGGN, KronFactors  # noqa: E402
from jbp.layers import Dense, Tanh  # noqa: E402

L = jbp.losses


def _np_inverses(A, B, damping):
    """Factored Tikhonov damping (Martens & Grosse §6.3), with numpy."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(B) / B.shape[0]))
    r = np.sqrt(damping)
    return (
        np.linalg.inv(A + pi * r * np.eye(A.shape[0])),
        np.linalg.inv(B + r / pi * np.eye(B.shape[0])),
    )


def _np_precondition(g, inv):
    Ai, Bi = inv
    return (Ai @ np.asarray(g).reshape(Ai.shape[0], Bi.shape[0]) @ Bi).reshape(np.shape(g))


def _leaves(tree):
    return jax.tree.leaves(tree, is_leaf=lambda f: isinstance(f, KronFactors))


@pytest.fixture(scope="module")
def mlp_pass():
    model = jbp.Sequential([Dense(4), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (5,))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: jnp.asarray(p + 0.2 * rng.standard_normal(p.shape)), params)
    x = jnp.asarray(rng.standard_normal((6, 5)))
    y = jnp.asarray(rng.integers(0, 3, 6))
    out = jax.jit(jbp.backprop(model, L.softmax_cross_entropy, extensions=[KFLR()]))(params, x, y)
    return params, out


@pytest.mark.parametrize("momentum,norm_constraint", [(0.0, None), (0.9, 1e-4)])
def test_two_updates_follow_the_equations(mlp_pass, momentum, norm_constraint):
    """Step 0: A, B are the batch's factors, inverses computed; step 1 (inverse_every=2): the
    factors move (decay 0.8) with new factors, the inverses stay; momentum and the norm
    constraint as written in the module docstring."""
    params, out = mlp_pass
    lr, damping, decay = 0.3, 0.05, 0.8
    opt = optim.kfac(
        lr,
        damping=damping,
        decay=decay,
        inverse_every=2,
        momentum=momentum,
        norm_constraint=norm_constraint,
        curvature=KFLR(),
    )
    state = opt.init(params)
    update = jax.jit(opt.update)
    f0 = _leaves(out.extras["kflr"])
    rng = np.random.default_rng(1)
    f1 = [KronFactors(f.A * 1.5, f.B + 0.1 * np.eye(f.B.shape[0])) for f in f0]
    extras1 = {"kflr": jax.tree.unflatten(jax.tree.structure(params), f1)}
    g0 = out.grads
    g1 = jax.tree.map(lambda g: jnp.asarray(rng.standard_normal(g.shape)), g0)
    u0, state = update(g0, state, params, extras=out.extras)
    u1, state = update(g1, state, params, extras=extras1)

    inv0 = [_np_inverses(f.A, f.B, damping) for f in f0]
    vel = [np.zeros(np.shape(g)) for g in jax.tree.leaves(g0)]
    for g, u, inv in ((g0, u0, inv0), (g1, u1, inv0)):  # step 1 reuses inv0
        v = [_np_precondition(gl, i) for gl, i in zip(jax.tree.leaves(g), inv)]
        if norm_constraint is not None:
            vg = sum(np.sum(a * np.asarray(gl)) for a, gl in zip(v, jax.tree.leaves(g)))
            nu = np.sqrt(norm_constraint / (lr * lr * vg))
            assert nu < 0.5  # the cap is active
            v = [a * nu for a in v]
        vel = [momentum * m + a for m, a in zip(vel, v)]
        for got, want in zip(jax.tree.leaves(u), vel):
            np.testing.assert_allclose(got, -lr * want, rtol=1e-10, atol=1e-14)
    for got, a, b in zip(_leaves(state.factors), f0, f1):
        np.testing.assert_allclose(got.A, decay * a.A + (1 - decay) * b.A, rtol=1e-12)
        np.testing.assert_allclose(got.B, decay * a.B + (1 - decay) * b.B, rtol=1e-12)
    assert int(state.count) == 2


def test_the_inverses_are_refreshed_every_k_steps(mlp_pass):
    params, out = mlp_pass
    opt = optim.kfac(0.1, damping=0.01, decay=0.5, inverse_every=2, curvature=KFLR())
    state = opt.init(params)
    update = jax.jit(opt.update)
    seen = []
    for _ in range(3):
        _, state = update(out.grads, state, params, extras=out.extras)
        seen.append(_leaves(state.inverses))
    f = _leaves(out.extras["kflr"])  # constant factors: the averages equal them
    for _step, inverses in enumerate(seen):
        for got, fl in zip(inverses, f):
            Ai, Bi = _np_inverses(fl.A, fl.B, 0.01)
            np.testing.assert_allclose(got.A, Ai, rtol=1e-9)
            np.testing.assert_allclose(got.B, Bi, rtol=1e-9)
    # with changing factors, step 1 keeps step 0's inverses and step 2 recomputes
    state = opt.init(params)
    f2 = jax.tree.map(lambda a: a * 2.0, out.extras["kflr"])
    _, state = update(out.grads, state, params, extras=out.extras)
    inv0 = _leaves(state.inverses)
    _, state = update(out.grads, state, params, extras={"kflr": f2})
    for a, b in zip(_leaves(state.inverses), inv0):
        np.testing.assert_array_equal(a.A, b.A)
    _, state = update(out.grads, state, params, extras={"kflr": f2})
    for got, fl in zip(_leaves(state.inverses), _leaves(state.factors)):
        Ai, _ = _np_inverses(fl.A, fl.B, 0.01)
        np.testing.assert_allclose(got.A, Ai, rtol=1e-9)


def test_one_step_on_least_squares_is_newtons_step():
    """A linear model with the ``mse`` loss has the GGN block ``A ⊗ I`` (``B = I`` exactly), so
    one K-FAC step with ``lr = 1`` and negligible damping lands on the least-squares solution."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((40, 6)))
    y = jnp.asarray(rng.standard_normal((40, 2)))
    model = jbp.Sequential([Dense(2, use_bias=False)])
    params, _ = model.init(jax.random.key(1), (6,))
    params = jbp.cast(params, jnp.float64)
    opt = optim.kfac(1.0, damping=1e-20, curvature=KFLR())  # √λ = 1e-10
    step = jax.jit(jbp.make_train_step(model, L.mse, opt, extensions=[BatchL2()]))
    params, _, logs, _ = step(params, opt.init(params), x, y, jax.random.key(0))
    assert set(logs["extras"]) == {"batch_l2", "kflr"}  # the step merges both requests
    W, *_ = np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)
    np.testing.assert_allclose(params[0]["W"], W, rtol=1e-8, atol=1e-12)


def test_fit_trains_with_kfac():
    (x, y), _ = jbp.datasets.digits()
    x, y = x[:400], y[:400]
    model = jbp.Sequential([Dense(32), Tanh(), Dense(10)])
    params, _ = model.init(jax.random.key(0), x.shape[1:])
    opt = optim.kfac(0.05, damping=1e-2, inverse_every=5)
    params, history = jbp.fit(
        model,
        params,
        L.softmax_cross_entropy,
        opt,
        (x, y),
        batch_size=50,
        epochs=2,
        key=jax.random.key(1),
        metrics=("loss",),
        verbose=0,
    )
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert np.mean(np.argmax(model.apply(params, jnp.asarray(x)), -1) == y) > 0.8
    assert int(history.opt_state.count) == 2 * 8


def test_bad_arguments(mlp_pass):
    params, out = mlp_pass
    for kwargs, match in [
        ({"damping": 0.0}, "damping"),
        ({"decay": 1.0}, "decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"inverse_every": 0}, "inverse_every"),
        ({"norm_constraint": -1.0}, "norm_constraint"),
    ]:
        with pytest.raises(ValueError, match=match):
            optim.kfac(0.1, **kwargs)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.kfac(0.0)
    with pytest.raises(TypeError, match="curvature must be"):
        optim.kfac(0.1, curvature=DiagGGN())
    opt = optim.kfac(0.1)
    assert opt.extensions == (KFAC(),)
    state = opt.init(params)
    with pytest.raises(ValueError, match="update needs the Kronecker factors"):
        opt.update(out.grads, state, params)
    with pytest.raises(ValueError, match="update needs the Kronecker factors"):
        chained = optim.chain(optim.clip_by_global_norm(1.0), opt)
        chained.update(out.grads, chained.init(params), params)
    bad = jax.tree.map(
        lambda f: KronFactors(f.A[:1, :1], f.B),
        out.extras["kflr"],
        is_leaf=lambda f: isinstance(f, KronFactors),
    )
    with pytest.raises(ValueError, match=r"leaf \[0\]\['W'\] of shape \(5, 4\) needs factors"):
        opt.update(out.grads, state, params, extras={"kfac": bad})
    model = jbp.Sequential([Dense(3)])
    with pytest.raises(ValueError, match="grad_fn='manual'"):
        jbp.make_train_step(model, L.mse, opt, grad_fn="autodiff")


@pytest.mark.parametrize("n", [1, 7, 64, 65, 300])
def test_damped_inverse_across_the_block_size(n):
    """The inverse by blocked inverse Cholesky (matrix products above ``_BLOCK`` rows, loops
    below) against ``numpy.linalg.inv``: float64 to rounding, float32 to its precision."""
    kfac_module = importlib.import_module("jbp.optim.kfac")  # the module, not the function

    assert kfac_module._BLOCK == 64  # the sizes above straddle it
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2 * n + 3, n)) * rng.uniform(0.5, 2.0, n)
    m = x.T @ x / len(x) + 0.05 * np.eye(n)
    want = np.linalg.inv(m)
    inverse = jax.jit(kfac_module._spd_inverse)
    got = np.asarray(inverse(jnp.asarray(m)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11 * np.max(np.abs(want)))
    np.testing.assert_array_equal(got, got.T)
    got32 = np.asarray(inverse(jnp.asarray(m, jnp.float32)))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-4 * np.max(np.abs(want)))


def test_wide_layer_steps_and_refresh_schedule_match_numpy():
    """A Dense layer with 150 inputs (``A`` 150 × 150, past the block size), changing factors
    every step, ``inverse_every=3``: the inverses change only at steps 0 and 3 (equal to the
    numpy inverses of the moving averages at those steps) and every update is the numpy
    preconditioned gradient with the inverses of the last refresh."""
    rng = np.random.default_rng(3)
    model = jbp.Sequential([Dense(3)])
    params, _ = model.init(jax.random.key(2), (150,))
    params = jbp.cast(params, jnp.float64)
    x = jnp.asarray(rng.standard_normal((40, 150)) * rng.uniform(0.5, 2.0, 150))
    y = jnp.asarray(rng.integers(0, 3, 40))
    out = jax.jit(jbp.backprop(model, L.softmax_cross_entropy, extensions=[KFLR()]))(params, x, y)
    lr, damping, decay = 0.2, 0.02, 0.7
    opt = optim.kfac(lr, damping=damping, decay=decay, inverse_every=3, curvature=KFLR())
    update = jax.jit(opt.update)
    state = opt.init(params)
    avg, inv, previous = None, None, None
    for step in range(5):
        scale = 1.0 + 0.3 * step
        extras = {"kflr": jax.tree.map(lambda a, s=scale: a * s, out.extras["kflr"])}
        grads = jax.tree.map(lambda g: jnp.asarray(rng.standard_normal(g.shape)), out.grads)
        u, state = update(grads, state, params, extras=extras)
        new = _leaves(extras["kflr"])
        eps = 0.0 if step == 0 else decay
        avg = [
            (eps * a[0] + (1 - eps) * np.asarray(f.A), eps * a[1] + (1 - eps) * np.asarray(f.B))
            for a, f in zip(avg or [(0, 0)] * len(new), new)
        ]
        if step % 3 == 0:
            inv = [_np_inverses(A, B, damping) for A, B in avg]
        held = _leaves(state.inverses)
        for got, want in zip(held, inv):
            np.testing.assert_allclose(got.A, want[0], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got.B, want[1], rtol=1e-9, atol=1e-12)
        if step % 3 != 0:  # not a refresh step: the very same arrays as the step before
            for got, before in zip(held, previous):
                np.testing.assert_array_equal(got.A, before.A)
                np.testing.assert_array_equal(got.B, before.B)
        previous = held
        for got, g, i in zip(jax.tree.leaves(u), jax.tree.leaves(grads), inv):
            np.testing.assert_allclose(got, -lr * _np_precondition(g, i), rtol=1e-9, atol=1e-13)
