"""jbp.regularizers: hand-written penalty gradients against jax.grad, masks, bad input."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp import regularizers as R  # noqa: E402
from jbp.layers.activations import Tanh  # noqa: E402
from jbp.layers.dense import Dense  # noqa: E402


def _tree(seed=0, dtype=np.float64):
    """Nested dicts / tuples / lists with 2-D, 3-D, 4-D and 1-D leaves, random non-uniform values."""
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s) * rng.uniform(0.5, 2.0), dtype)
    return {
        "dense": {"W": f(5, 3), "b": f(3)},
        "conv": (f(3, 3, 2, 4), f(4)),
        "norm": {"scale": f(7), "offset": f(7)},
        "deep": [{"kernel": f(2, 2, 3)}, f(6, 2)],
        "step": jnp.asarray(3, jnp.int32),
    }


# leaf_name renders every tuple/list index as layers[i]
WEIGHTS = {"dense.W", "conv.layers[0]", "deep.layers[0].kernel", "deep.layers[1]"}

ALL = [R.l1(0.37), R.l2(0.81), R.elastic_net(0.23, 1.7)]


def _names(tree):
    return [n for n, _ in jbp.named_leaves(tree)]


def _float_only(tree):
    return {k: v for k, v in tree.items() if k != "step"}


@pytest.mark.parametrize("reg", ALL, ids=repr)
def test_grad_matches_autodiff_float64(reg):
    params = _float_only(_tree(1))
    manual = reg.grad(params)
    auto = jax.grad(reg.value)(params)
    assert jax.tree.structure(manual) == jax.tree.structure(params)
    for (name, gm), (_, ga) in zip(jbp.named_leaves(manual), jbp.named_leaves(auto)):
        assert gm.dtype == jnp.float64
        np.testing.assert_allclose(gm, ga, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("reg", ALL, ids=repr)
def test_grad_matches_autodiff_float32_and_keeps_dtype(reg):
    params = _float_only(_tree(2, np.float32))
    assert reg.value(params).dtype == jnp.float32
    manual = reg.grad(params)
    auto = jax.grad(reg.value)(params)
    for (name, gm), (_, ga) in zip(jbp.named_leaves(manual), jbp.named_leaves(auto)):
        assert gm.dtype == jnp.float32, name
        np.testing.assert_allclose(gm, ga, rtol=1e-6, atol=1e-7, err_msg=name)


def test_values_follow_the_formulas():
    params = _tree(3)
    ws = [params["dense"]["W"], params["conv"][0], params["deep"][0]["kernel"], params["deep"][1]]
    abs_sum = sum(float(jnp.sum(jnp.abs(w))) for w in ws)
    sq_sum = sum(float(jnp.sum(w * w)) for w in ws)
    np.testing.assert_allclose(R.l1(0.3).value(params), 0.3 * abs_sum, rtol=1e-12)
    np.testing.assert_allclose(R.l2(0.3).value(params), 0.5 * 0.3 * sq_sum, rtol=1e-12)  # the ½
    np.testing.assert_allclose(
        R.elastic_net(0.2, 0.7).value(params), 0.2 * abs_sum + 0.5 * 0.7 * sq_sum, rtol=1e-12
    )
    g = R.l2(0.3).grad(params)
    np.testing.assert_allclose(g["dense"]["W"], 0.3 * params["dense"]["W"], rtol=1e-15)  # λ w


def test_elastic_net_reduces_to_l1_and_l2():
    params = _float_only(_tree(4))
    for a, b in [(R.elastic_net(0.4, 0.0), R.l1(0.4)), (R.elastic_net(0.0, 0.9), R.l2(0.9))]:
        np.testing.assert_allclose(a.value(params), b.value(params), rtol=1e-14)
        for x, y in zip(jax.tree.leaves(a.grad(params)), jax.tree.leaves(b.grad(params))):
            np.testing.assert_allclose(x, y, rtol=1e-14)


def test_l1_subgradient_at_zero_is_zero():
    w = jnp.array([[0.0, -2.0], [3.0, 0.0]])
    g = R.l1(0.5).grad({"W": w})["W"]
    np.testing.assert_array_equal(g, [[0.0, -0.5], [0.5, 0.0]])
    # (jax.grad(jnp.abs)(0.) is 1, a one-sided derivative; away from 0 the two agree)
    g2 = R.elastic_net(0.5, 2.0).grad({"W": w})["W"]
    np.testing.assert_array_equal(g2, [[0.0, -0.5 - 4.0], [0.5 + 6.0, 0.0]])


def test_default_selects_weights_not_biases_or_norm_scales():
    params = _tree(5)
    for reg in ALL:
        assert set(reg.selected_names(params)) == WEIGHTS
        g = reg.grad(params)
        for name, leaf in jbp.named_leaves(g):
            if name not in WEIGHTS:
                assert not np.any(np.asarray(leaf)), name  # biases, scales, ints untouched
            else:
                assert np.all(np.asarray(leaf) != 0), name
        assert g["step"].dtype == jnp.int32
    # changing a bias does not change the penalty
    moved = jax.tree.map(lambda x: x, params)
    moved["dense"]["b"] = moved["dense"]["b"] + 10.0
    moved["norm"]["scale"] = moved["norm"]["scale"] * 3.0
    assert float(R.l2(1.0).value(moved)) == float(R.l2(1.0).value(params))
    assert jax.tree.leaves(R.weights_only(params)) == [n in WEIGHTS for n in _names(params)]


def test_sequential_names_and_default():
    model = jbp.Sequential([Dense(4), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (5,))
    assert R.l2(1.0).selected_names(params) == ["layers[0].W", "layers[2].W"]


def test_predicate_mask():
    params = _float_only(_tree(6))
    reg = R.l2(0.5, mask=lambda name: name.startswith("dense.") or name == "norm.scale")
    assert set(reg.selected_names(params)) == {"dense.W", "dense.b", "norm.scale"}
    g = reg.grad(params)
    np.testing.assert_allclose(g["dense"]["b"], 0.5 * params["dense"]["b"])
    np.testing.assert_allclose(g["norm"]["scale"], 0.5 * params["norm"]["scale"])
    assert not np.any(np.asarray(g["conv"][0])) and not np.any(np.asarray(g["norm"]["offset"]))
    auto = jax.grad(reg.value)(params)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(auto)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_pytree_mask_full_and_prefix():
    params = _float_only(_tree(7))
    full = jax.tree.map(lambda _: False, params)
    full["conv"] = (False, True)  # only the conv bias
    full["deep"][1] = True
    reg = R.l1(0.2, mask=full)
    assert set(reg.selected_names(params)) == {"conv.layers[1]", "deep.layers[1]"}
    # a prefix: one bool per top-level entry
    prefix = {"dense": True, "conv": False, "norm": False, "deep": [False, True]}
    reg2 = R.elastic_net(0.1, 0.3, mask=prefix)
    assert set(reg2.selected_names(params)) == {"dense.W", "dense.b", "deep.layers[1]"}
    for r in (reg, reg2):
        auto = jax.grad(r.value)(params)
        for x, y in zip(jax.tree.leaves(r.grad(params)), jax.tree.leaves(auto)):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
    hash(reg), hash(reg2)  # hashable even with a dict mask
    assert R.l1(0.2, mask=full) == reg


def test_mask_selecting_nothing_gives_zero():
    params = _float_only(_tree(8))
    reg = R.l2(1.0, mask=lambda name: False)
    assert float(reg.value(params)) == 0.0 and reg.value(params).dtype == jnp.float64
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(reg.grad(params)))


def test_regularizers_are_hashable_and_jittable():
    params = _float_only(_tree(9))
    for reg in ALL + [R.l2(0.1, mask=lambda n: True)]:
        hash(reg)
        v = jax.jit(reg.value)(params)
        np.testing.assert_allclose(v, reg.value(params), rtol=1e-12)
        g = jax.jit(reg.grad)(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), g, reg.grad(params))
    assert R.l2(0.1) == R.l2(0.1) and hash(R.l2(0.1)) == hash(R.l2(0.1))
    assert "0.5" in repr(R.l1(0.5))


def _classification(dtype):
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(9, 5)), dtype)
    y = jnp.asarray(rng.integers(0, 3, size=9), jnp.int32)
    model = jbp.Sequential([Dense(6), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(1), (5,))
    params = jax.tree.map(
        lambda p: p + jnp.asarray(rng.normal(size=p.shape) * 0.3, p.dtype), params
    )
    return model, jbp.cast(params, dtype), x, y


@pytest.mark.parametrize("reg", ALL, ids=repr)
def test_check_gradients_with_regularizer(reg):
    model, params, x, y = _classification(jnp.float64)
    report = jbp.check_gradients(
        model, jbp.losses.softmax_cross_entropy, params, x, y, regularizer=reg, fd_directions=2
    )
    assert report.ok, str(report)


def test_model_plus_penalty_equals_autodiff_and_adds_up():
    loss = jbp.losses.softmax_cross_entropy
    reg = R.elastic_net(0.01, 0.3)
    for dtype, rtol, atol in [(jnp.float64, 1e-10, 1e-13), (jnp.float32, 2e-5, 1e-6)]:
        model, params, x, y = _classification(dtype)
        manual = jax.jit(jbp.value_and_grad(model, loss, regularizer=reg))
        auto = jax.jit(jbp.autodiff_value_and_grad(model, loss, regularizer=reg))
        plain = jax.jit(jbp.value_and_grad(model, loss))
        v, g = manual(params, x, y)
        va, ga = auto(params, x, y)
        v0, g0 = plain(params, x, y)
        assert v.dtype == dtype
        np.testing.assert_allclose(v, va, rtol=10 * rtol)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ga)):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        # the total is data loss + penalty; bias gradients are the data gradients
        np.testing.assert_allclose(v, v0 + reg.value(params), rtol=10 * rtol)
        np.testing.assert_array_equal(g[0]["b"], g0[0]["b"])
        np.testing.assert_allclose(g[0]["W"], g0[0]["W"] + reg.grad(params)[0]["W"], rtol=10 * rtol)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda v: R.l1(v), "strength"),
        (lambda v: R.l2(v), "strength"),
        (lambda v: R.elastic_net(v, 0.1), "l1"),
        (lambda v: R.elastic_net(0.1, v), "l2"),
    ],
)
def test_bad_strength(make, arg):
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=arg):
            make(bad)
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match=arg):
            make(bad)
    make(0)  # zero is allowed


def test_bad_masks():
    params = _float_only(_tree(11))
    with pytest.raises(TypeError, match="mask"):
        R.l2(0.1, mask="W")
    with pytest.raises(TypeError, match="mask"):
        R.l2(0.1, mask={"dense": 1})
    with pytest.raises(ValueError, match="mask"):
        R.l2(0.1, mask={"dense": True}).value(params)  # wrong structure
    with pytest.raises(TypeError, match="bool"):
        R.l2(0.1, mask=lambda name: "yes").grad(params)
