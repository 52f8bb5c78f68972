"""The engine: ``jbp.backprop`` and its ``Pass``, state threading, readers, extension errors.

The per-layer extension values are proven in tests/test_layer_table.py (every layer against
vmap(jax.grad)) and tests/test_extensions.py (whole models); here: the engine's contract.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp.extensions import BatchGrad, BatchL2, ClippedGrad, Extension, SumGradSquared, Variance
from jbp.layers import BatchNorm, Dense, Dropout, ReLU, Tanh
from jbp.testing import assert_trees_close

CE = jbp.losses.softmax_cross_entropy


def _setup(model, in_shape=(5,), n=6, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    params, out_shape = model.init(jax.random.key(seed), in_shape)
    params = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a) + 0.2 * rng.standard_normal(a.shape), dtype), params
    )
    x = jnp.asarray(rng.standard_normal((n,) + in_shape), dtype)
    y = jnp.asarray(rng.integers(0, out_shape[-1], n), jnp.int32)
    return params, x, y


def test_pass_fields_equal_autodiff_with_regularizer():
    model = jbp.Sequential([Dense(7), Tanh(), Dense(3)])
    params, x, y = _setup(model)
    reg = jbp.regularizers.l2(0.3)
    out = jax.jit(jbp.backprop(model, CE, regularizer=reg))(params, x, y)
    ref = jax.jit(jbp.backprop(model, CE, regularizer=reg, grad_fn="autodiff"))(params, x, y)
    assert isinstance(out, jbp.Pass) and out.extras == {} and out.state == ()
    # independent values: the loss of model.apply, the penalty of the regularizer, jax.grad
    np.testing.assert_allclose(out.loss, CE.value(model.apply(params, x), y), rtol=1e-12)
    np.testing.assert_allclose(out.penalty, reg.value(params), rtol=1e-12)
    g = jax.grad(lambda p: CE.value(model.apply(p, x), y) + reg.value(p))(params)
    assert_trees_close(out.grads, g, what="grads")
    assert_trees_close(ref.grads, g, what="autodiff grads")
    np.testing.assert_allclose(out.pred, model.apply(params, x), rtol=1e-12)
    # readers agree with the Pass
    v, g2 = jbp.value_and_grad(model, CE, regularizer=reg)(params, x, y)
    np.testing.assert_allclose(v, out.loss + out.penalty, rtol=1e-12)
    assert_trees_close(g2, out.grads)


def test_state_is_threaded_and_none_means_init_state():
    model = jbp.Sequential([Dense(4), BatchNorm(momentum=0.5), ReLU(), Dense(3)])
    params, x, y = _setup(model, n=8)
    f = jax.jit(jbp.backprop(model, CE), static_argnames="train")  # train is a Python bool
    out = f(params, x, y)  # state=None → init_state
    s0 = model.init_state((5,))
    out2 = f(params, x, y, state=s0)
    assert_trees_close(out.state, out2.state)
    h = np.asarray(model.layers[0].apply(params[0], x))
    np.testing.assert_allclose(out.state[1]["mean"], 0.5 * h.mean(0), rtol=1e-6)
    ref = jax.jit(jbp.backprop(model, CE, grad_fn="autodiff"))(params, x, y, state=s0)
    assert_trees_close(out.grads, ref.grads)
    assert_trees_close(out.state, ref.state)
    # eval mode reads the state and leaves it alone; apply(state=) works for BatchNorm
    ev = f(params, x, y, state=out.state, train=False)
    assert_trees_close(ev.state, out.state)
    np.testing.assert_allclose(ev.pred, model.apply(params, x, state=out.state), rtol=1e-12)


def test_dropout_key_is_shared_by_both_engines():
    model = jbp.Sequential([Dense(8), ReLU(), Dropout(0.5), Dense(3)])
    params, x, y = _setup(model)
    k = jax.random.key(4)
    a = jbp.backprop(model, CE)(params, x, y, key=k)
    b = jbp.backprop(model, CE, grad_fn="autodiff")(params, x, y, key=k)
    assert_trees_close(a.grads, b.grads)


def test_extensions_in_one_pass_and_requirements_first():
    model = jbp.Sequential([Dense(4), Tanh(), Dense(3)])
    params, x, y = _setup(model)
    out = jbp.backprop(model, CE, extensions=[ClippedGrad(0.5)])(params, x, y)
    assert list(out.extras) == ["batch_l2", "clipped_grad"]  # the requirement came along
    g = jax.vmap(
        jax.grad(lambda p, xi, yi: CE.value(model.apply(p, xi[None]), yi[None])),
        in_axes=(None, 0, 0),
    )(params, x, y)
    sq = sum(np.sum(np.square(np.asarray(l)).reshape(len(x), -1), 1) for l in jax.tree.leaves(g))
    scale = np.minimum(1, 0.5 / np.sqrt(sq))
    want = jax.tree.map(lambda a: np.tensordot(scale, np.asarray(a), 1) / len(x), g)
    assert_trees_close(out.extras["clipped_grad"], want)
    # the same extension twice is computed once; two different ones with one name: an error
    out = jbp.backprop(model, CE, extensions=[BatchL2(), ClippedGrad(0.5), BatchL2()])(params, x, y)
    assert list(out.extras) == ["batch_l2", "clipped_grad"]
    with pytest.raises(ValueError, match="two different extensions named 'clipped_grad'"):
        jbp.backprop(model, CE, extensions=[ClippedGrad(0.5), ClippedGrad(1.0)])


def test_bad_extensions_and_modes_raise_clear_errors():
    model = jbp.Sequential([Dense(4), BatchNorm(), Dense(3)])
    params, x, y = _setup(model)
    with pytest.raises(TypeError, match=r"extensions\[0\].*the class BatchL2; pass an instance"):
        jbp.backprop(model, CE, extensions=[BatchL2])
    with pytest.raises(TypeError, match=r"extensions\[1\].*Extension.*got str"):
        jbp.backprop(model, CE, extensions=[BatchL2(), "variance"])
    with pytest.raises(TypeError, match="extensions: expected a sequence"):
        jbp.backprop(model, CE, extensions=42)
    with pytest.raises(ValueError, match="grad_fn='manual'"):
        jbp.backprop(model, CE, extensions=[Variance()], grad_fn="autodiff")
    with pytest.raises(ValueError, match="max_norm"):
        ClippedGrad(0.0)
    f = jbp.backprop(model, CE, extensions=[SumGradSquared()])
    with pytest.raises(ValueError, match="sum_grad_squared is a per-example quantity.*BatchNorm"):
        f(params, x, y)  # train=True: batch statistics
    f(params, x, y, train=False)  # eval mode: fine

    @dataclasses.dataclass(frozen=True)
    class Sampled(Extension):
        name = "sampled"
        needs_key = True

        def default(self, call):
            return call.grads

    with pytest.raises(ValueError, match="sampled samples random numbers and needs a key"):
        jbp.backprop(model, CE, extensions=[Sampled()])(params, x, y, train=False)


def test_user_extension_and_user_layer_generic_default():
    """A user-written extension (per-example L1 norms) on a user-written layer with only
    init/forward/backward: the generic default runs and matches vmap(jax.grad)."""

    @dataclasses.dataclass(frozen=True)
    class Scale(jbp.Layer):
        def init(self, key, in_shape):
            return {"s": jax.random.normal(key, in_shape) + 1.0}, tuple(in_shape)

        def forward(self, params, x, *, key=None, train=False):
            return x * params["s"], {"x": x}

        def backward(self, params, cache, dy):
            return {"s": jnp.sum(cache["x"] * dy, axis=0)}, dy * params["s"]

    @dataclasses.dataclass(frozen=True)
    class BatchL1(Extension):
        name = "batch_l1"
        per_example = True

        def default(self, call):
            from jbp.extensions import generic_batch_grad

            g = generic_batch_grad(call.layer, call.params, call.cache, call.per_example_dy)
            return jax.tree.map(lambda a: jnp.sum(jnp.abs(a), axis=tuple(range(1, a.ndim))), g)

    model = jbp.Sequential([Dense(5), Scale(), Tanh(), Dense(3)])
    params, x, y = _setup(model)
    out = jax.jit(jbp.backprop(model, CE, extensions=[BatchL1(), BatchGrad()]))(params, x, y)
    g = jax.vmap(
        jax.grad(lambda p, xi, yi: CE.value(model.apply(p, xi[None]), yi[None])),
        in_axes=(None, 0, 0),
    )(params, x, y)
    want = jax.tree.map(lambda a: np.sum(np.abs(np.asarray(a)).reshape(len(x), -1), 1), g)
    assert_trees_close(out.extras["batch_l1"], want)
    assert_trees_close(out.extras["batch_grad"], g)
    assert out.extras["batch_l1"][2] == ()  # Tanh: no parameters


def test_float32_stays_float32():
    model = jbp.Sequential([Dense(4), Tanh(), Dense(3)])
    params, x, y = _setup(model, dtype=jnp.float32)
    out = jax.jit(jbp.backprop(model, CE, extensions=[BatchL2(), Variance()]))(params, x, y)
    for leaf in jax.tree.leaves((out.grads, out.extras)):
        assert leaf.dtype == jnp.float32
    g = jax.grad(lambda p: CE.value(model.apply(p, x), y))(params)
    assert_trees_close(out.grads, g, dtype="float32")
