"""jbp.optim optimizers against textbook updates written here, in numpy.

The reference loops below are independent of the code under test: they only
read the hyperparameters and the random gradients, and step float64 numpy
arrays with the update equations of each optimizer (as optax defines them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from jbp import optim  # noqa: E402

N_STEPS = 5


def _random_tree(rng, dtype=np.float64):
    return {
        "dense": {
            "w": rng.normal(size=(3, 4)).astype(dtype),
            "b": rng.normal(size=(4,)).astype(dtype),
        },
        "out": (rng.normal(size=(2,)).astype(dtype), [rng.normal(size=(2, 3)).astype(dtype)]),
    }


def _leaves(tree):
    return jax.tree.leaves(tree)


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    params = _random_tree(rng)
    grads = [_random_tree(rng) for _ in range(N_STEPS)]
    return params, grads


def _run(opt, params, grads_seq, jit=True):
    """Run the optimizer under jit on jnp copies; return the list of params after each step."""
    update = jax.jit(opt.update) if jit else opt.update
    p = jax.tree.map(jnp.asarray, params)
    state = opt.init(p)
    out = []
    for g in grads_seq:
        u, state = update(jax.tree.map(jnp.asarray, g), state, p)
        p = optim.apply_updates(p, u)
        out.append(p)
    return out, state


def _reference(params, grads_seq, step_fn, init_fn):
    """Leafwise numpy reference: step_fn(t, p, g, s) -> (new_p, new_s), t counted from 0."""
    ps = [np.array(x, dtype=np.float64) for x in _leaves(params)]
    ss = [init_fn(p) for p in ps]
    out = []
    for t, g in enumerate(grads_seq):
        gs = _leaves(g)
        res = [step_fn(t, p, gi, s) for p, gi, s in zip(ps, gs, ss)]
        ps = [r[0] for r in res]
        ss = [r[1] for r in res]
        out.append([p.copy() for p in ps])
    return out


def _assert_trajectories(got, want, rtol=1e-12, atol=1e-13):
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        for i, (a, b) in enumerate(zip(_leaves(g), w)):
            np.testing.assert_allclose(
                np.asarray(a), b, rtol=rtol, atol=atol, err_msg=f"step {step}, leaf {i}"
            )


# ----------------------------------------------------------------------------
# numpy references (textbook, written independently)
# ----------------------------------------------------------------------------


def ref_sgd(lr, beta=None, nesterov=False):
    def init(p):
        return np.zeros_like(p)

    def step(t, p, g, v):
        eta = lr(t) if callable(lr) else lr
        if beta is None:
            return p - eta * g, v
        v = g + beta * v
        d = g + beta * v if nesterov else v
        return p - eta * d, v

    return init, step


def ref_adagrad(lr, init_acc, eps):
    def init(p):
        return np.full_like(p, init_acc)

    def step(t, p, g, s):
        s = s + g**2
        return p - lr * g / np.sqrt(s + eps), s

    return init, step


def ref_rmsprop(lr, decay, eps, initial_scale, centered, beta=None, nesterov=False):
    def init(p):
        return (np.full_like(p, initial_scale), np.zeros_like(p), np.zeros_like(p))

    def step(t, p, g, s):
        nu, mu, tr = s
        nu = decay * nu + (1 - decay) * g**2
        if centered:
            mu = decay * mu + (1 - decay) * g
            d = -lr * g / np.sqrt(nu - mu**2 + eps)
        else:
            d = -lr * g / np.sqrt(nu + eps)
        if beta is not None:  # optax: the trace runs on the already-scaled update
            tr = d + beta * tr
            d = d + beta * tr if nesterov else tr
        return p + d, (nu, mu, tr)

    return init, step


def ref_adam(lr, b1, b2, eps, eps_root, wd=0.0):
    def init(p):
        return (np.zeros_like(p), np.zeros_like(p))

    def step(t, p, g, s, decay_this_leaf=True):
        m, v = s
        eta = lr(t) if callable(lr) else lr
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        k = t + 1
        m_hat = m / (1 - b1**k)
        v_hat = v / (1 - b2**k)
        d = m_hat / (np.sqrt(v_hat + eps_root) + eps)
        if wd and decay_this_leaf:
            d = d + wd * p
        return p - eta * d, (m, v)

    return init, step


# ----------------------------------------------------------------------------
# each optimizer vs its reference
# ----------------------------------------------------------------------------

CASES = {
    "sgd": (lambda: optim.sgd(0.07), lambda: ref_sgd(0.07)),
    "sgd_momentum": (lambda: optim.sgd(0.07, momentum=0.8), lambda: ref_sgd(0.07, 0.8)),
    "sgd_nesterov": (
        lambda: optim.sgd(0.07, momentum=0.8, nesterov=True),
        lambda: ref_sgd(0.07, 0.8, True),
    ),
    "momentum_alias": (lambda: optim.momentum(0.05, beta=0.6), lambda: ref_sgd(0.05, 0.6)),
    "sgd_schedule": (
        lambda: optim.sgd(lambda t: 0.1 / (t + 1.0), momentum=0.5),
        lambda: ref_sgd(lambda t: 0.1 / (t + 1.0), 0.5),
    ),
    "adagrad": (
        lambda: optim.adagrad(0.3, initial_accumulator_value=0.2, eps=1e-2),
        lambda: ref_adagrad(0.3, 0.2, 1e-2),
    ),
    "rmsprop": (
        lambda: optim.rmsprop(0.01, decay=0.8, eps=0.05, initial_scale=0.1),
        lambda: ref_rmsprop(0.01, 0.8, 0.05, 0.1, False),
    ),
    "rmsprop_centered_momentum": (
        lambda: optim.rmsprop(0.01, decay=0.7, eps=0.5, centered=True, momentum=0.6),
        lambda: ref_rmsprop(0.01, 0.7, 0.5, 0.0, True, 0.6),
    ),
    "rmsprop_nesterov": (
        lambda: optim.rmsprop(0.02, decay=0.85, eps=0.05, momentum=0.5, nesterov=True),
        lambda: ref_rmsprop(0.02, 0.85, 0.05, 0.0, False, 0.5, True),
    ),
    "adam": (
        lambda: optim.adam(0.01, b1=0.8, b2=0.95, eps=0.1, eps_root=0.02),
        lambda: ref_adam(0.01, 0.8, 0.95, 0.1, 0.02),
    ),
    "adam_defaults": (lambda: optim.adam(1e-3), lambda: ref_adam(1e-3, 0.9, 0.999, 1e-8, 0.0)),
    "adam_schedule": (
        lambda: optim.adam(lambda t: 0.02 * 0.5**t, eps=0.1),
        lambda: ref_adam(lambda t: 0.02 * 0.5**t, 0.9, 0.999, 0.1, 0.0),
    ),
    "adamw": (
        lambda: optim.adamw(0.01, b1=0.8, b2=0.95, eps=0.1, weight_decay=0.3),
        lambda: ref_adam(0.01, 0.8, 0.95, 0.1, 0.0, wd=0.3),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_textbook_update(name):
    make_opt, make_ref = CASES[name]
    params, grads = _setup(seed=sorted(CASES).index(name))  # deterministic per case
    got, state = _run(make_opt(), params, grads)
    init, step = make_ref()
    want = _reference(params, grads, step, init)
    _assert_trajectories(got, want)
    assert int(state.count) == N_STEPS
    assert state.count.dtype == jnp.int32


def _ref_adamw_masked(params, grads, flags, lr, b2, eps, wd):
    init, step = ref_adam(lr, 0.9, b2, eps, 0.0, wd=wd)
    ps = [np.array(x) for x in _leaves(params)]
    ss = [init(p) for p in ps]
    out = []
    for t, g in enumerate(grads):
        res = [step(t, p, gi, s, f) for p, gi, s, f in zip(ps, _leaves(g), ss, flags)]
        ps, ss = [r[0] for r in res], [r[1] for r in res]
        out.append([p.copy() for p in ps])
    return out


def test_adamw_mask_tree_callable_and_prefix():
    params, grads = _setup(seed=3)
    kw = dict(lr=0.01, b2=0.99, eps=0.1, wd=0.5)
    mask = {"dense": {"w": True, "b": False}, "out": (False, [True])}
    want = _ref_adamw_masked(params, grads, _leaves(mask), **kw)
    for m in (mask, lambda p: mask):
        got, _ = _run(optim.adamw(0.01, b2=0.99, eps=0.1, weight_decay=0.5, mask=m), params, grads)
        _assert_trajectories(got, want)
    # a prefix mask: one bool for the whole "out" subtree
    prefix = {"dense": {"w": True, "b": False}, "out": True}
    flags = _leaves({"dense": {"w": True, "b": False}, "out": (True, [True])})
    want = _ref_adamw_masked(params, grads, flags, **kw)
    got, _ = _run(optim.adamw(0.01, b2=0.99, eps=0.1, weight_decay=0.5, mask=prefix), params, grads)
    _assert_trajectories(got, want)


def test_adamw_needs_params():
    opt = optim.adamw(1e-3)
    p = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p))


def test_adamw_decay_is_decoupled_from_adam():
    """With zero gradients Adam's step is 0, so AdamW's update is exactly −η·wd·p."""
    p = {"w": jnp.array([1.0, -2.0, 3.0])}
    opt = optim.adamw(0.1, weight_decay=0.5)
    u, _ = opt.update({"w": jnp.zeros(3)}, opt.init(p), p)
    np.testing.assert_allclose(u["w"], -0.1 * 0.5 * np.array([1.0, -2.0, 3.0]), rtol=1e-15)


# ----------------------------------------------------------------------------
# dtypes, pytrees, jit, state round-trip
# ----------------------------------------------------------------------------

ALL_OPTS = {
    "sgd": lambda: optim.sgd(0.1),
    "momentum": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: optim.adagrad(0.1),
    "rmsprop": lambda: optim.rmsprop(0.1, centered=True, momentum=0.9),
    "adam": lambda: optim.adam(0.1),
    "adamw": lambda: optim.adamw(
        optim.cosine_decay(0.1, 10), mask=lambda p: jax.tree.map(lambda _: True, p)
    ),
    "clip_chain": lambda: optim.chain(
        optim.clip(0.5), optim.clip_by_global_norm(1.0), optim.adam(0.1)
    ),
}


@pytest.mark.parametrize("name", sorted(ALL_OPTS))
def test_float32_params_stay_float32_under_x64(name):
    assert jax.config.jax_enable_x64
    opt = ALL_OPTS[name]()
    rng = np.random.default_rng(1)
    params = _random_tree(rng, np.float32)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float32), params)
    grads = jax.tree.map(lambda x: jnp.asarray(x * 0.3 + 0.1, dtype=jnp.float32), params)
    state = opt.init(params)

    @jax.jit
    def step(g, s, p):
        u, s = opt.update(g, s, p)
        return optim.apply_updates(p, u), s, u

    for _ in range(2):
        params, state, u = step(grads, state, params)
        for leaf in _leaves(u):
            assert leaf.dtype == jnp.float32
    for leaf in _leaves(params):
        assert leaf.dtype == jnp.float32
    for leaf in _leaves(state):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    # a float64 gradient does not change the dtype of the float32 state (a fixed scan carry)
    g64 = jax.tree.map(lambda x: x.astype(jnp.float64), grads)
    _, state2 = jax.eval_shape(opt.update, g64, state, params)
    assert [x.dtype for x in _leaves(state2)] == [x.dtype for x in _leaves(state)]


def test_apply_updates_keeps_dtype_and_structure():
    params = {"a": jnp.ones(2, jnp.float32), "b": [jnp.ones((1, 2), jnp.float64)]}
    updates = {"a": jnp.full(2, 0.5, jnp.float64), "b": [jnp.full((1, 2), 0.25, jnp.float32)]}
    new = optim.apply_updates(params, updates)
    assert new["a"].dtype == jnp.float32 and new["b"][0].dtype == jnp.float64
    np.testing.assert_array_equal(new["a"], [1.5, 1.5])
    np.testing.assert_array_equal(new["b"][0], [[1.25, 1.25]])


def test_state_round_trips_through_tree_util_and_scan():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.rmsprop(0.1, momentum=0.9))
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones(3),)}
    state = opt.init(params)
    grads = jax.tree.map(lambda x: 0.1 * x + 0.2, params)
    _, state = opt.update(grads, state, params)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(state)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(state)
    u1, s1 = opt.update(grads, state, params)
    u2, s2 = opt.update(grads, rebuilt, params)
    for a, b in zip(_leaves((u1, s1)), _leaves((u2, s2))):
        np.testing.assert_array_equal(a, b)
    assert int(s1.count) == 2

    # the state is a valid lax.scan carry: three steps in one scan == three python steps
    def body(carry, _):
        p, s = carry
        u, s = opt.update(grads, s, p)
        return (optim.apply_updates(p, u), s), None

    (p_scan, s_scan), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=3)
    p_py, s_py = params, opt.init(params)
    for _ in range(3):
        u, s_py = opt.update(grads, s_py, p_py)
        p_py = optim.apply_updates(p_py, u)
    for a, b in zip(_leaves((p_scan, s_scan)), _leaves((p_py, s_py))):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_states_are_namedtuples_with_int32_count():
    params = {"w": jnp.ones(2)}
    for name, make in ALL_OPTS.items():
        state = make().init(params)
        assert hasattr(state, "_fields") and state._fields[0] == "count", name
        assert state.count.dtype == jnp.int32 and state.count.shape == (), name
        for inner in state.states:
            assert inner._fields[0] == "count", (name, type(inner).__name__)


# ----------------------------------------------------------------------------
# chain
# ----------------------------------------------------------------------------


def test_chain_order_matters_clip_then_adam_vs_adam_then_clip():
    # Adam normalises each coordinate to about ±1 on the first step (|m̂/√v̂| = 1),
    # so clipping by value at 0.5 before Adam is invisible, after Adam it halves the step.
    g = {"w": jnp.array([3.0, -0.2, 0.01])}
    p = {"w": jnp.zeros(3)}
    clip_then_adam = optim.chain(optim.clip(0.5), optim.adam(1.0, eps=1e-12))
    adam_then_clip = optim.chain(optim.adam(1.0, eps=1e-12), optim.clip(0.5))
    u1, _ = clip_then_adam.update(g, clip_then_adam.init(p), p)
    u2, _ = adam_then_clip.update(g, adam_then_clip.init(p), p)
    np.testing.assert_allclose(u1["w"], [-1.0, 1.0, -1.0], rtol=1e-9)
    np.testing.assert_allclose(u2["w"], [-0.5, 0.5, -0.5], rtol=1e-9)


def test_chain_clip_global_norm_before_sgd_matches_manual():
    g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # global norm 5
    p = jax.tree.map(jnp.zeros_like, g)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1))
    u, state = jax.jit(opt.update)(g, opt.init(p), p)
    np.testing.assert_allclose(u["a"], [-0.06, 0.0], rtol=1e-14)
    np.testing.assert_allclose(u["b"], [-0.08], rtol=1e-14)
    assert len(state.states) == 2


def test_chain_accepts_foreign_transformations_with_the_same_protocol():
    """An optax transformation is any (init, update) pair: a plain NamedTuple stands in."""
    from collections import namedtuple

    Foreign = namedtuple("GradientTransformation", ["init", "update"])
    double = Foreign(
        lambda params: (), lambda u, s, params=None: (jax.tree.map(lambda x: 2 * x, u), s)
    )
    opt = optim.chain(double, optim.sgd(0.5))
    p = {"w": jnp.ones(2)}
    u, _ = opt.update({"w": jnp.array([1.0, 2.0])}, opt.init(p), p)
    np.testing.assert_allclose(u["w"], [-1.0, -2.0])


def test_chain_rejects_non_transformations():
    with pytest.raises(TypeError, match="argument 1"):
        optim.chain(optim.sgd(0.1), 0.5)


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: optim.sgd(0.0), "learning_rate"),
        (lambda: optim.sgd(-0.1), "learning_rate"),
        (lambda: optim.adam(float("nan")), "learning_rate"),
        (lambda: optim.momentum(-1e-3), "learning_rate"),
        (lambda: optim.adagrad(0.0), "learning_rate"),
        (lambda: optim.rmsprop(-1.0), "learning_rate"),
        (lambda: optim.adamw(0.0), "learning_rate"),
        (lambda: optim.adam(0.1, b1=1.0), "b1"),
        (lambda: optim.adam(0.1, b1=-0.1), "b1"),
        (lambda: optim.adam(0.1, b2=1.5), "b2"),
        (lambda: optim.adamw(0.1, b2=1.0), "b2"),
        (lambda: optim.rmsprop(0.1, decay=1.0), "decay"),
        (lambda: optim.rmsprop(0.1, decay=-0.5), "decay"),
        (lambda: optim.sgd(0.1, momentum=1.0), "momentum"),
        (lambda: optim.sgd(0.1, momentum=-0.2), "momentum"),
        (lambda: optim.rmsprop(0.1, momentum=1.2), "momentum"),
        (lambda: optim.momentum(0.1, beta=1.0), "beta"),
        (lambda: optim.adam(0.1, eps=0.0), "eps"),
        (lambda: optim.adamw(0.1, eps=-1e-8), "eps"),
        (lambda: optim.rmsprop(0.1, eps=0.0), "eps"),
        (lambda: optim.adagrad(0.1, eps=0.0), "eps"),
        (lambda: optim.adam(0.1, eps_root=-1.0), "eps_root"),
        (lambda: optim.adamw(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: optim.clip_by_global_norm(0.0), "max_norm"),
        (lambda: optim.clip_by_global_norm(-1.0), "max_norm"),
        (lambda: optim.clip(0.0), "max_abs"),
        (lambda: optim.clip(-2.0), "max_abs"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_learning_rate_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        optim.adam("0.1")


@pytest.mark.parametrize("name", sorted(ALL_OPTS))
def test_grads_tree_differing_from_state_names_first_path(name):
    opt = ALL_OPTS[name]()
    params = {"dense": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "out": [jnp.ones(3)]}
    state = opt.init(params)
    bad = {"dense": {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "out": [jnp.ones(3)]}
    with pytest.raises(ValueError, match=r"\['dense'\]\['b"):  # the first differing path
        jax.jit(opt.update)(bad, state, params)


def test_grads_tree_mismatch_without_params_is_caught_by_state_or_apply_updates():
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    missing = {"a": jnp.ones(2)}
    opt = optim.adam(0.1)
    with pytest.raises(ValueError, match=r"lacks the leaf at \['b'\]"):
        opt.update(missing, opt.init(params))
    extra = {"a": jnp.ones(2), "b": jnp.ones(3), "z": jnp.ones(1)}
    with pytest.raises(ValueError, match=r"extra leaf at \['z'\]"):
        opt.update(extra, opt.init(params))
    wrong_shape = {"a": jnp.ones(2), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"\['b'\] has shape \(4,\)"):
        opt.update(wrong_shape, opt.init(params))
    # sgd without momentum keeps no param-shaped state: apply_updates catches it
    sgd = optim.sgd(0.1)
    u, _ = sgd.update(missing, sgd.init(params))
    with pytest.raises(ValueError, match=r"apply_updates.*\['b'\]"):
        optim.apply_updates(params, u)
    with pytest.raises(ValueError, match=r"\[1\]"):
        optim.apply_updates([jnp.ones(1), jnp.ones(1)], [jnp.ones(1)])
    # tuple vs list: same key paths, different containers
    with pytest.raises(ValueError, match="containers"):
        optim.apply_updates((jnp.ones(1),), [jnp.ones(1)])


def test_adamw_bad_mask_names_mask():
    params = {"w": jnp.ones(2), "b": jnp.ones(3)}
    opt = optim.adamw(0.1, mask={"w": True, "c": False})
    with pytest.raises(ValueError, match="mask"):
        opt.update(params, opt.init(params), params)


def test_hyperparameters_may_be_traced():
    """Validation must not break hyperparameter sweeps under jit (tracers are not checked)."""

    @jax.jit
    def step(lr, g):
        opt = optim.adam(lr)
        p = {"w": jnp.zeros(2)}
        u, _ = opt.update(g, opt.init(p), p)
        return u

    u = step(0.5, {"w": jnp.array([1.0, -1.0])})
    np.testing.assert_allclose(u["w"], [-0.5, 0.5], rtol=1e-6)
