"""Diagnostics: speed of learning, per-layer report, detector, recording — against autodiff."""

import jax

jax.config.update("jax_enable_x64", True)

import dataclasses  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp import diagnostics as D  # noqa: E402
from jbp import initializers  # noqa: E402
from jbp.layers import (  # noqa: E402
    LSTM,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Embedding,
    Flatten,
    LayerNorm,
    Masked,
    MaxPool2D,
    ReLU,
    Sigmoid,
    SimpleRNN,
    Tanh,
)

mse = jbp.losses.mse
xent = jbp.losses.softmax_cross_entropy


def _rand(seed, shape, dtype, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=dtype)


def _mixed_model():
    # nested Sequential, a bias-free layer, every activation kind the report knows
    return jbp.Sequential(
        [
            Dense(7, w_init="he_normal", b_init=initializers.normal(0.3)),
            Tanh(),
            jbp.Sequential([Dense(6, b_init=initializers.normal(0.3)), Sigmoid()]),
            Dense(5, use_bias=False),
            ReLU(),
            Dense(3, b_init=initializers.normal(0.3)),
        ]
    )


def _params(model, in_shape, dtype, seed=0, w_std=None):
    """Params built with numpy (no compile): W ~ N(0, w_std²) (default 1/fan_in),
    b ~ N(0, 0.3²); the structure of ``model.init``."""
    rng = np.random.default_rng(seed)

    def build(m, d):
        if isinstance(m, jbp.Sequential):
            ps = []
            for layer in m.layers:
                p, d = build(layer, d)
                ps.append(p)
            return tuple(ps), d
        if isinstance(m, Dense):
            std = w_std if w_std is not None else 1 / math.sqrt(d)
            p = {"W": jnp.asarray(rng.standard_normal((d, m.units)) * std, dtype)}
            if m.use_bias:
                p["b"] = jnp.asarray(rng.standard_normal(m.units) * 0.3, dtype)
            return p, m.units
        if isinstance(m, Flatten):
            return (), math.prod(d) if isinstance(d, tuple) else d
        return (), d

    return build(model, in_shape if len(in_shape) > 1 else in_shape[0])[0]


def _init(model, in_shape, dtype, seed=0):
    """The model's own init, compiled once."""
    return jax.jit(lambda k: jbp.cast(model.init(k, in_shape)[0], dtype))(jax.random.key(seed))


def _ref_grads(model, loss, params, x, y):
    return jax.jit(jax.grad(lambda p: loss.value(model.apply(p, x), y)))(params)


def _leaves(model, prefix="", path=()):
    """[(name, path tuple into params, layer)] for every leaf layer, nested Sequentials
    unrolled — the test's own walk, independent of jbp.diagnostics."""
    out = []
    for i, layer in enumerate(model.layers):
        name = f"{prefix}.layers[{i}]" if prefix else f"layers[{i}]"
        if isinstance(layer, jbp.Sequential):
            out += _leaves(layer, name, path + (i,))
        else:
            out.append((name, path + (i,), layer))
    return out


def _get(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _run(model, params, state, x, *, train, eps=None, trace=None, prefix=""):
    """The model's forward, leaf layer by leaf layer, adding ``eps[name]`` to each layer's
    output (the values of a Masked one) and recording each layer's input and output."""
    for i, layer in enumerate(model.layers):
        name = f"{prefix}.layers[{i}]" if prefix else f"layers[{i}]"
        s = state[i] if model.stateful else ()
        if isinstance(layer, jbp.Sequential):
            x = _run(layer, params[i], s, x, train=train, eps=eps, trace=trace, prefix=name)
            continue
        y, _, _ = layer.forward_with_state(params[i], s, x, train=train)
        if eps is not None:
            y = Masked(y.values + eps[name], y.mask) if isinstance(y, Masked) else y + eps[name]
        if trace is not None:
            trace[name] = (
                x.values if isinstance(x, Masked) else x,
                y.values if isinstance(y, Masked) else y,
            )
        x = y
    return x


def _autodiff(model, loss, params, x, y, *, train=True, state=()):
    """The references, in one compiled call of ``jax.grad`` of the model's forward:
    ``(loss, ∂C/∂params, {name: ∂C/∂yˡ}, {name: (layer input, layer output)})``. The deltas
    are the gradient w.r.t. a zero perturbation added to each leaf layer's output (the vjp
    of the sub-network after it)."""

    def outputs(p):
        trace = {}
        _run(model, p, state, x, train=train, trace=trace)
        return {k: out for k, (_, out) in trace.items()}

    eps0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(outputs, params))

    def objective(p, eps):
        trace = {}
        pred = _run(model, p, state, x, train=train, eps=eps, trace=trace)
        value = loss.value(pred, y)
        return value, (value, trace)

    (g, d), (value, trace) = jax.jit(jax.grad(objective, argnums=(0, 1), has_aux=True))(
        params, eps0
    )
    return value, g, d, trace


def _autodiff_deltas(model, loss, params, x, y, *, train=True, state=()):
    """``({name: ∂C/∂yˡ}, {name: (layer input, layer output)})`` (see :func:`_autodiff`)."""
    _, _, d, trace = _autodiff(model, loss, params, x, y, train=train, state=state)
    return d, trace


def _norm(*arrays):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in arrays)))


def _close(got, want, rtol, scale=1e-6):
    """``got ≈ want`` to ``rtol``; absolute slack ``rtol·scale`` for values that are zero
    up to rounding (a conv bias before BatchNorm has ``∂C/∂b = 0``)."""
    assert got is not None
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _check_report(model, loss, params, x, y, rtol, *, train=True, state=None, seed=0, deltas=True):
    """Every row of layer_report (and, with ``deltas``, every layer_deltas entry) against
    independent references: jax.grad for the parameter gradients, jax.grad w.r.t. perturbed
    layer outputs for the deltas, numpy for norms and the unit fractions."""
    n = x.shape[0]
    dtype = (jax.tree.leaves(params) or [x])[0].dtype
    rng = np.random.default_rng(seed)
    updates = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape) * 1e-3, a.dtype), params
    )
    rep = D.layer_report(model, loss, params, x, y, updates=updates, train=train, state=state)
    deltas = D.layer_deltas(model, loss, params, x, y, train=train, state=state) if deltas else None
    st = state if state is not None else model.init_state(tuple(x.shape[1:]))
    ref_loss, ref_g, ref_d, trace = _autodiff(model, loss, params, x, y, train=train, state=st)
    gscale = _norm(*jax.tree.leaves(ref_g)) if jax.tree.leaves(ref_g) else 0.0
    leaves = _leaves(model)
    names = [name for name, _, _ in leaves]
    assert rep.names == names and len(rep) == len(leaves)
    assert deltas is None or list(deltas) == names
    np.testing.assert_allclose(rep.loss, float(ref_loss), rtol=rtol)
    for (name, path, layer), row in zip(leaves, rep):
        d = np.asarray(ref_d[name], np.float64)
        if deltas is not None:
            assert deltas[name].dtype == dtype and deltas[name].shape == d.shape
            np.testing.assert_allclose(
                np.asarray(deltas[name]), d, rtol=rtol, atol=rtol * float(np.max(np.abs(d)))
            )
        _close(row.delta_norm, np.linalg.norm((n * d).reshape(n, -1), axis=1).mean(), rtol)
        assert row.layer == type(layer).__name__ and row.out_shape == d.shape[1:]
        assert row.units == d.shape[-1]
        p, g, u = _get(params, path), _get(ref_g, path), _get(updates, path)
        if not jax.tree.leaves(p):
            for q in (
                "grad_norm",
                "param_norm",
                "grad_W_norm",
                "W_norm",
                "bias_grad_norm",
                "update_ratio",
                "leaves",
            ):
                assert getattr(row, q) is None, (name, q)
        else:
            bias = [k for k in p if k in ("b", "beta")]
            weights = [k for k in p if k not in bias]
            assert weights, name
            _close(row.grad_W_norm, _norm(*(g[k] for k in weights)), rtol, gscale)
            _close(row.W_norm, _norm(*(p[k] for k in weights)), rtol)
            _close(
                row.update_ratio,
                _norm(*(u[k] for k in weights)) / _norm(*(p[k] for k in weights)),
                rtol,
            )
            _close(row.grad_norm, _norm(*g.values()), rtol, gscale)
            _close(row.param_norm, _norm(*p.values()), rtol)
            if bias:
                _close(row.bias_grad_norm, _norm(*(g[k] for k in bias)), rtol, gscale)
            else:
                assert row.bias_grad_norm is None
            assert sorted(row.leaves) == sorted(p)
            for k in p:
                _close(row.leaves[k]["grad_norm"], _norm(g[k]), rtol, gscale)
                _close(row.leaves[k]["param_norm"], _norm(p[k]), rtol)
                _close(row.leaves[k]["update_ratio"], _norm(u[k]) / _norm(p[k]), rtol)
        z, a = (np.asarray(t, np.float64) for t in trace[name])
        if isinstance(layer, Sigmoid):
            assert row.activation == "sigmoid" and row.dead is None
            assert row.saturated == pytest.approx(np.mean((a < 0.05) | (a > 0.95)))
        elif isinstance(layer, Tanh):
            assert row.activation == "tanh" and row.dead is None
            assert row.saturated == pytest.approx(np.mean(np.abs(a) > 0.95))
        elif isinstance(layer, ReLU):
            assert row.activation == "relu" and row.saturated is None
            assert row.dead == pytest.approx(np.mean(np.all(z.reshape(-1, z.shape[-1]) <= 0, 0)))
        else:
            assert row.activation is None and row.saturated is None and row.dead is None
    return rep, deltas


NAMES = ["layers[0]", "layers[2].layers[0]", "layers[3]", "layers[5]"]


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-10), (jnp.float32, 2e-5)])
def test_speed_of_learning_equals_autodiff_bias_grads(dtype, rtol):
    model = _mixed_model()
    params = _params(model, (4,), dtype)
    x = _rand(1, (9, 4), dtype)
    y = _rand(2, (9, 3), dtype)
    got = D.speed_of_learning(model, mse, params, x, y)
    ref = _ref_grads(model, mse, params, x, y)
    # the bias-free Dense(5) has no speed of learning; the others in input-to-output order
    assert list(got) == ["layers[0]", "layers[2].layers[0]", "layers[5]"]
    for name, path in zip(got, [(0,), (2, 0), (5,)]):
        want = float(np.linalg.norm(_get(ref, path)["b"]))
        assert want > 0
        np.testing.assert_allclose(got[name], want, rtol=rtol)


def test_speed_of_learning_float32_classifier():
    model = jbp.Sequential([Dense(16), Sigmoid(), Dense(16), Sigmoid(), Dense(4)])
    params = _params(model, (5,), jnp.float32)
    x = _rand(3, (20, 5), jnp.float32)
    y = jnp.asarray(np.arange(20) % 4, jnp.int32)
    got = D.speed_of_learning(model, xent, params, x, y)
    ref = _ref_grads(model, xent, params, x, y)
    assert list(got) == ["layers[0]", "layers[2]", "layers[4]"]
    for name, i in zip(got, (0, 2, 4)):
        np.testing.assert_allclose(got[name], float(np.linalg.norm(ref[i]["b"])), rtol=2e-5)


# every leaf layer of the mixed model, in order; the Dense layers are DENSE
NAMES = [
    "layers[0]",
    "layers[1]",
    "layers[2].layers[0]",
    "layers[2].layers[1]",
    "layers[3]",
    "layers[4]",
    "layers[5]",
]
DENSE = ["layers[0]", "layers[2].layers[0]", "layers[3]", "layers[5]"]


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-10), (jnp.float32, 2e-5)])
def test_report_deltas_and_norms_equal_autodiff(dtype, rtol):
    model = _mixed_model()
    params = _params(model, (4,), dtype)
    n = 9
    x = _rand(4, (n, 4), dtype)
    y = _rand(5, (n, 3), dtype)
    rep, deltas = _check_report(model, mse, params, x, y, rtol)
    assert rep.names == NAMES and list(deltas) == NAMES
    for name, _path, layer in _leaves(model):
        if name in DENSE:
            assert rep[name].layer == "Dense" and rep[name].units == layer.units
    assert rep["layers[3]"].bias_grad_norm is None  # Dense(5, use_bias=False)
    assert [r.activation for r in rep] == [None, "tanh", None, "sigmoid", None, "relu", None]
    # the saturation / dead columns live on the activation layers, where they mean something
    assert rep["layers[1]"].saturated is not None and rep["layers[1]"].dead is None
    assert rep["layers[2].layers[1]"].saturated is not None
    assert rep["layers[4]"].dead is not None and rep["layers[4]"].saturated is None
    for name in DENSE:
        assert rep[name].saturated is None and rep[name].dead is None
    # a Dense's delta is ∂C/∂z; the Tanh after it is handed ∂C/∂a, and ∂C/∂z = ∂C/∂a ⊙ tanh'(z)
    z = np.asarray(_autodiff_deltas(model, mse, params, x, y)[1]["layers[1]"][0], np.float64)
    np.testing.assert_allclose(
        np.asarray(deltas["layers[0]"], np.float64),
        np.asarray(deltas["layers[1]"], np.float64) * (1 - np.tanh(z) ** 2),
        rtol=10 * rtol,
        atol=rtol * float(np.max(np.abs(deltas["layers[0]"]))),
    )


def _identity_net(act, units=4):
    model = jbp.Sequential([Dense(units), act])
    params = ({"W": jnp.eye(units, dtype=jnp.float64), "b": jnp.zeros(units, jnp.float64)}, ())
    return model, params


Z = jnp.asarray([[-10.0, 0.0, 10.0, 1.0], [0.0, 0.5, -4.0, 2.0]], jnp.float64)


def test_saturated_fraction_sigmoid_known_answer():
    model, params = _identity_net(Sigmoid())
    y = jnp.zeros_like(Z)
    # σ(z) < 0.05 or > 0.95  ⇔  |z| > 2.944: −10, 10, −4 → 3 of 8
    assert D.layer_report(model, mse, params, Z, y)["layers[1]"].saturated == pytest.approx(3 / 8)
    # ε = 0.2: |z| > 1.386: also z = 2 → 4 of 8
    rep = D.layer_report(model, mse, params, Z, y, sigmoid_eps=0.2)
    assert rep["layers[1]"].saturated == pytest.approx(4 / 8)
    assert rep.sigmoid_eps == 0.2


def test_saturated_fraction_tanh_known_answer():
    model, params = _identity_net(Tanh())
    y = jnp.zeros_like(Z)
    # |tanh z| > 0.95  ⇔  |z| > 1.832: −10, 10, −4, 2 → 4 of 8
    assert D.layer_report(model, mse, params, Z, y)["layers[1]"].saturated == pytest.approx(4 / 8)
    # ε = 0.001: |z| > 3.8: −10, 10, −4 → 3 of 8
    rep = D.layer_report(model, mse, params, Z, y, tanh_eps=0.001)
    assert rep["layers[1]"].saturated == pytest.approx(3 / 8)


def test_dead_relu_fraction_known_answer():
    model, params = _identity_net(ReLU(), units=5)
    x = jnp.asarray(
        [[-1.0, -2.0, -0.5, 3.0, 0.0], [0.0, 1.0, -0.1, 2.0, 0.0], [-3.0, -1.0, -7.0, -1.0, 0.0]],
        jnp.float64,
    )
    # column 0: ≤ 0 throughout (an exact 0 counts as dead), 1: alive once, 2: dead,
    # 3: alive, 4: exactly 0 everywhere → dead. 3 of 5 units dead.
    rep = D.layer_report(model, mse, params, x, jnp.zeros_like(x))
    assert rep["layers[1]"].dead == pytest.approx(3 / 5)
    assert rep["layers[1]"].saturated is None
    # the statistics sit on the activation's own row, not on the Dense before it
    assert rep["layers[0]"].dead is None and rep["layers[0]"].saturated is None


# --- any model: CNNs, recurrent nets with padding, nested paths, user layers ----------


def _random_params(model, in_shape, dtype, seed, w_std=None):
    """Random, non-uniform params of the structure of ``model.init`` (its shapes traced, not
    compiled), drawn with numpy: leaves of rank ≥ 2 ~ N(0, w_std²) (default 1/fan_in),
    vectors ~ N(0, 0.3²) (``gamma``: 1 + N(0, 0.3²))."""
    shapes = jax.eval_shape(lambda k: model.init(k, in_shape)[0], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        if len(s.shape) >= 2:
            std = w_std if w_std is not None else 1 / math.sqrt(math.prod(s.shape[:-1]))
            return jnp.asarray(rng.standard_normal(s.shape) * std, dtype)
        one = 1.0 if jax.tree_util.keystr(path[-1:], simple=True) == "gamma" else 0.0
        return jnp.asarray(one + rng.standard_normal(s.shape) * 0.3, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _cnn():
    return jbp.Sequential(
        [
            Conv2D(4, 3),
            BatchNorm(),
            ReLU(),
            MaxPool2D(2),
            Conv2D(3, 2, padding="VALID"),
            Tanh(),
            AvgPool2D(2, padding="SAME"),
            Flatten(),
            Dense(3),
        ]
    )


@pytest.mark.parametrize(
    "dtype,rtol,train",
    [(jnp.float64, 1e-10, True), (jnp.float64, 1e-10, False), (jnp.float32, 1e-4, True)],
)
def test_cnn_report_equals_autodiff(dtype, rtol, train):
    model = _cnn()
    params = _random_params(model, (6, 6, 2), dtype, seed=3)
    bn = dict(params[1], beta=params[1]["beta"].at[0].set(-10.0))  # channel 0: dead ReLU
    conv = dict(params[4], W=params[4]["W"] * 4)  # some tanh saturation
    params = params[:1] + (bn,) + params[2:4] + (conv,) + params[5:]
    x = _rand(21, (5, 6, 6, 2), dtype)
    y = jnp.asarray([0, 2, 1, 1, 0], jnp.int32)
    state = None
    if not train:  # BatchNorm's running statistics: random, as after some training
        rng = np.random.default_rng(4)
        state = model.init_state((6, 6, 2))
        state = (
            state[:1]
            + (
                {
                    "mean": jnp.asarray(rng.standard_normal(4) * 0.3, jnp.float32),
                    "var": jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32),
                },
            )
            + state[2:]
        )
    rep, _ = _check_report(
        model,
        xent,
        params,
        x,
        y,
        rtol,
        train=train,
        state=state,
        deltas=dtype == jnp.float64 and train,
    )
    assert rep.names == [f"layers[{i}]" for i in range(9)]
    assert [r.layer for r in rep] == [
        "Conv2D",
        "BatchNorm",
        "ReLU",
        "MaxPool2D",
        "Conv2D",
        "Tanh",
        "AvgPool2D",
        "Flatten",
        "Dense",
    ]
    assert rep["layers[0]"].out_shape == (6, 6, 4) and rep["layers[7]"].out_shape == (3,)
    assert 0 < rep["layers[2]"].dead < 1 and 0 < rep["layers[5]"].saturated < 1
    assert rep["layers[1]"].bias_grad_norm is not None  # BatchNorm's beta is its bias
    assert set(rep["layers[1]"].leaves) == {"gamma", "beta"}
    if train:  # batch statistics cancel the conv bias before BatchNorm: ∂C/∂b = 0
        assert rep["layers[0]"].bias_grad_norm < 1e3 * rtol * rep["layers[0]"].grad_W_norm
    with pytest.raises(ValueError, match="state"):
        D.layer_report(model, xent, params, x, y, train=False)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
def test_embedding_rnn_lstm_report_equals_autodiff(dtype, rtol):
    model = jbp.Sequential(
        [
            Embedding(11, 4, pad_id=0),
            SimpleRNN(5, return_sequences=True),
            LSTM(6),
            LayerNorm(),
            ReLU(),
            Dense(2),
        ]
    )
    params = _random_params(model, (7,), dtype, seed=5)
    ln = dict(params[3], beta=params[3]["beta"].at[1].set(-10.0))  # unit 1: dead ReLU
    params = params[:3] + (ln,) + params[4:]
    rng = np.random.default_rng(6)
    ids = rng.integers(1, 11, (5, 7))
    ids[0, 4:] = 0  # padding at the end
    ids[2, :3] = 0  # and at the start
    ids = jnp.asarray(ids, jnp.int32)
    y = jnp.asarray([1, 0, 1, 1, 0], jnp.int32)
    rep, _ = _check_report(model, xent, params, ids, y, rtol, deltas=dtype == jnp.float64)
    assert [r.layer for r in rep] == [
        "Embedding",
        "SimpleRNN",
        "LSTM",
        "LayerNorm",
        "ReLU",
        "Dense",
    ]
    assert rep["layers[0]"].out_shape == (7, 4) and rep["layers[1]"].out_shape == (7, 5)
    assert rep["layers[0]"].bias_grad_norm is None  # an embedding table has no bias
    assert set(rep["layers[2]"].leaves) == {"W_x", "W_h", "b"}
    assert 0 < rep["layers[4]"].dead < 1
    # the speed of learning of the recurrent and norm layers: their ∂C/∂b, ∂C/∂β
    assert [k for k, v in rep.column("bias_grad_norm").items() if v is not None] == [
        "layers[1]",
        "layers[2]",
        "layers[3]",
        "layers[5]",
    ]


def test_layers_are_named_by_path_in_nested_models():
    model = jbp.Sequential(
        [
            Dense(3, b_init=initializers.normal(0.3)),
            jbp.Sequential([Tanh(), jbp.Sequential([Dense(4), ReLU()])]),
            Dense(2, b_init=initializers.normal(0.3)),
        ]
    )
    names = [
        "layers[0]",
        "layers[1].layers[0]",
        "layers[1].layers[1].layers[0]",
        "layers[1].layers[1].layers[1]",
        "layers[2]",
    ]
    params = _params(model, (5,), jnp.float64, seed=7)
    x, y = _rand(22, (6, 5), jnp.float64), _rand(23, (6, 2), jnp.float64)
    rep, deltas = _check_report(model, mse, params, x, y, 1e-10)
    assert rep.names == names and list(deltas) == names
    # the extension on its own, in any engine pass, gives the same rows under the same names
    out = jax.jit(jbp.backprop(model, mse, extensions=[D.GradientStats()]))(params, x, y)
    rows = D.rows_by_name(out.extras["gradient_stats"])
    assert list(rows) == names and rows[names[3]].layer == ReLU()
    for name in names:
        assert float(rows[name]["delta_norm"]) == pytest.approx(rep[name].delta_norm, rel=1e-12)
    hist = D.GradientNormHistory(model, mse, (x, y))
    hist(0, params)
    assert hist.record.layers == names
    assert list(hist.record.speed_of_learning()) == [names[0], names[2], names[4]]
    # a bare layer is named after its class
    bare = Dense(2)
    p = {"W": _rand(24, (5, 2), jnp.float64), "b": _rand(25, (2,), jnp.float64)}
    rep = D.layer_report(bare, mse, p, x, y)
    assert rep.names == ["Dense"]
    ref = jax.jit(jax.grad(lambda p: mse.value(bare.apply(p, x), y)))(p)
    assert rep["Dense"].bias_grad_norm == pytest.approx(float(np.linalg.norm(ref["b"])), rel=1e-10)


def test_unit_stats_of_the_activations_equal_numpy():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((4, 3, 3, 5)) * 3
    z[:, :, :, 2] = -np.abs(z[:, :, :, 2])  # channel 2 ≤ 0 everywhere: dead
    z[:, 0, 0, 4] = np.abs(z[:, 0, 0, 4]) + 0.1  # channel 4 negative but at one pixel
    z[:, 1:, :, 4] = -1.0
    z[:, 0, 1:, 4] = -1.0
    z = jnp.asarray(z)
    for layer, eps_kw, want in (
        (Sigmoid(), {"sigmoid_eps": 0.1}, lambda a: np.mean((a < 0.1) | (a > 0.9))),
        (Tanh(), {"tanh_eps": 0.01}, lambda a: np.mean(np.abs(a) > 0.99)),
    ):
        a = np.asarray(layer.apply((), z))
        cache = layer.forward((), z)[1]
        got = layer.unit_stats(cache, **eps_kw, ignored_eps=0.3)
        assert set(got) == {"saturated"}
        assert float(got["saturated"]) == pytest.approx(want(a)) and 0 < want(a) < 1
    got = ReLU().unit_stats(ReLU().forward((), z)[1], sigmoid_eps=0.1)
    zz = np.asarray(z)
    assert set(got) == {"dead"}
    assert float(got["dead"]) == pytest.approx(np.mean(np.all(zz.reshape(-1, 5) <= 0, axis=0)))
    assert float(got["dead"]) == pytest.approx(1 / 5)
    # a batch of scalars is one unit
    assert float(ReLU().unit_stats({"x": jnp.asarray([-1.0, 0.0])})["dead"]) == 1.0


@dataclasses.dataclass(frozen=True)
class _Affine(jbp.Layer):
    """A user's layer with its own names: ``y = x ⊙ scale + shift`` (per feature); it says
    which leaf is its bias and reports a unit statistic of its own."""

    bias_leaves = ("shift",)

    def init(self, key, in_shape):
        f = in_shape[-1]
        return {"scale": jnp.ones((f,)), "shift": jnp.zeros((f,))}, tuple(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        return x * params["scale"] + params["shift"], {"x": x}

    def backward(self, params, cache, dy):
        x = cache["x"]
        axes = tuple(range(dy.ndim - 1))
        return (
            {"scale": jnp.sum(dy * x, axis=axes), "shift": jnp.sum(dy, axis=axes)},
            dy * params["scale"],
        )

    def unit_stats(self, cache, **thresholds):
        return {"negative": jnp.mean(cache["x"] < 0)}


def test_a_users_layer_gets_the_columns_it_provides():
    model = jbp.Sequential([Dense(4, b_init=initializers.normal(0.3)), _Affine(), Dense(2)])
    params = _params(model, (3,), jnp.float64, seed=9)
    params = (
        params[:1]
        + ({"scale": _rand(26, (4,), jnp.float64), "shift": _rand(27, (4,), jnp.float64)},)
        + params[2:]
    )
    x, y = _rand(28, (7, 3), jnp.float64), _rand(29, (7, 2), jnp.float64)
    rep = D.layer_report(model, mse, params, x, y)
    ref = _ref_grads(model, mse, params, x, y)
    row = rep["layers[1]"]
    assert row.layer == "_Affine" and row.activation == "_affine"
    np.testing.assert_allclose(row.bias_grad_norm, _norm(ref[1]["shift"]), rtol=1e-10)
    np.testing.assert_allclose(row.grad_W_norm, _norm(ref[1]["scale"]), rtol=1e-10)
    np.testing.assert_allclose(row.W_norm, _norm(params[1]["scale"]), rtol=1e-10)
    h = np.asarray(model.layers[0].apply(params[0], x))
    assert row.extra == {"negative": pytest.approx(float(np.mean(h < 0)))}
    assert row.saturated is None and row.dead is None

    @dataclasses.dataclass(frozen=True)
    class Bad(_Affine):
        def unit_stats(self, cache, **thresholds):
            return jnp.mean(cache["x"])

    @dataclasses.dataclass(frozen=True)
    class Clash(_Affine):
        def unit_stats(self, cache, **thresholds):
            return {"delta_norm": jnp.mean(cache["x"])}

    @dataclasses.dataclass(frozen=True)
    class PerUnit(_Affine):
        def unit_stats(self, cache, **thresholds):
            return {"negative": jnp.mean(cache["x"] < 0, axis=0)}

    for layer, err, match in (
        (Bad(), TypeError, "unit_stats must return a dict"),
        (Clash(), ValueError, "'delta_norm'.*rename"),
        (PerUnit(), ValueError, "scalars, got 'negative' of shape"),
    ):
        bad = jbp.Sequential([Dense(4), layer, Dense(2)])
        with pytest.raises(err, match=match):
            D.layer_report(bad, mse, params, x, y)


def test_gradient_norm_history_threads_batchnorm_state_through_fit():
    import jbp.train as train
    from jbp import optim

    model = jbp.Sequential([Conv2D(3, 3), BatchNorm(), ReLU(), Flatten(), Dense(2)])
    x = np.asarray(_rand(30, (12, 4, 4, 1), jnp.float32))
    y = (np.arange(12) % 2).astype(np.int32)
    params = _random_params(model, (4, 4, 1), jnp.float32, seed=2)
    state0 = model.init_state((4, 4, 1))
    hist = D.GradientNormHistory(model, xent, (x[:6], y[:6]))
    with pytest.raises(ValueError, match="state"):
        hist(0, params)  # train=False reads the running statistics
    hist(0, params, state0)
    trained, history = train.fit(
        model,
        params,
        xent,
        optim.sgd(0.1),
        (x, y),
        epochs=2,
        batch_size=4,
        key=jax.random.key(0),
        callbacks=[hist],
        verbose=0,
    )
    assert hist.record.epochs == [0, 1, 2]
    # the last record used fit's final running statistics, not the initial ones
    rep = D.layer_report(model, xent, trained, x[:6], y[:6], train=False, state=history.state)
    for q in ("delta_norm", "grad_W_norm", "dead"):
        for name in hist.record.present[q]:
            assert hist.record.quantity(q)[name][-1] == pytest.approx(
                getattr(rep[name], q), rel=1e-5, abs=1e-12
            )
    stale = D.layer_report(model, xent, trained, x[:6], y[:6], train=False, state=state0)
    assert stale["layers[0]"].grad_W_norm != pytest.approx(rep["layers[0]"].grad_W_norm, rel=1e-3)


def test_detector_names_the_exploding_conv_layer():
    w = initializers.normal(3.0)
    model = jbp.Sequential(
        [Conv2D(8, 3, w_init=w), ReLU(), jbp.Sequential([Flatten(), Dense(1, w_init=w)])]
    )
    params = _random_params(model, (5, 5, 2), jnp.float32, seed=1, w_std=3.0)  # normal(3.0)
    x, y = _rand(31, (8, 5, 5, 2), jnp.float32), _rand(32, (8, 1), jnp.float32)
    rep = D.layer_report(model, mse, params, x, y)
    found = D.detect_gradient_problems(rep)
    assert found and {f.kind for f in found} == {"exploding"}
    assert found[0].layer == "layers[0]" and found[0].value == rep["layers[0]"].grad_W_norm > 1e3
    assert rep.names[-2:] == ["layers[2].layers[0]", "layers[2].layers[1]"]
    assert D.detect_gradient_problems(rep, exploding_norm=1e30) == []


# --- the detector ----------------------------------------------------------------------


def _digits(n=200):
    from jbp.datasets import digits

    (x, y), _ = digits()
    return jnp.asarray(x[:n]), jnp.asarray(y[:n])


def test_detector_fires_on_deep_sigmoid_small_init():
    layers = []
    for _ in range(6):
        layers += [Dense(30, w_init=initializers.normal(0.1)), Sigmoid()]
    model = jbp.Sequential(layers + [Dense(10, w_init=initializers.normal(0.1))])
    x, y = _digits()
    params = _params(model, (64,), jnp.float32, w_std=0.1)  # what normal(0.1) draws
    rep = D.layer_report(model, xent, params, x, y)
    found = D.detect_gradient_problems(rep)
    assert found and all(f.kind == "vanishing" for f in found)
    assert found[0].layer == "layers[0]" and "vanishing" in str(found[0])
    assert found[0].value < 1e-3
    # the speed-of-learning mapping works too, and the first layer is the slowest
    sol = D.speed_of_learning(model, xent, params, x, y)
    assert list(sol) == [f"layers[{2 * i}]" for i in range(7)]  # model order, not key order
    vals = list(sol.values())
    assert vals == sorted(vals)
    assert D.detect_gradient_problems(sol)[0].layer == "layers[0]"
    # a looser threshold is quieter
    assert len(D.detect_gradient_problems(rep, vanishing_ratio=1e-12)) == 0


def test_detector_fires_on_large_init():
    model = jbp.Sequential(
        [
            Dense(64, w_init=initializers.normal(4.0)),
            ReLU(),
            Dense(64, w_init=initializers.normal(4.0)),
            ReLU(),
            Dense(1, w_init=initializers.normal(4.0)),
        ]
    )
    params = _params(model, (8,), jnp.float32, w_std=4.0)  # what normal(4.0) draws
    x, y = _rand(9, (32, 8), jnp.float32), _rand(10, (32, 1), jnp.float32)
    rep = D.layer_report(model, mse, params, x, y)
    found = D.detect_gradient_problems(rep)
    assert found and {f.kind for f in found} == {"exploding"}
    assert found[0].layer == "layers[0]" and found[0].value > 1e3
    assert "exploding" in str(found[0])
    assert D.detect_gradient_problems(rep, exploding_norm=1e30) == []


def test_detector_fires_on_non_finite():
    model = jbp.Sequential([Dense(4), Tanh(), Dense(2)])
    params = _params(model, (3,), jnp.float32)
    W = np.array(params[0]["W"])
    W[0, 0] = np.inf
    params = (dict(params[0], W=jnp.asarray(W)),) + params[1:]
    x, y = _rand(11, (5, 3), jnp.float32), _rand(12, (5, 2), jnp.float32)
    found = D.detect_gradient_problems(D.layer_report(model, mse, params, x, y))
    assert any(f.kind == "exploding" and f.layer == "layers[0]" for f in found)
    found = D.detect_gradient_problems({"a": 1.0, "b": float("nan")})
    assert [(f.kind, f.layer) for f in found] == [("exploding", "b")]


def test_detector_quiet_on_healthy_he_relu_net():
    model = jbp.Sequential(
        [
            Dense(30, w_init="he_normal"),
            ReLU(),
            Dense(30, w_init="he_normal"),
            ReLU(),
            Dense(30, w_init="he_normal"),
            ReLU(),
            Dense(10, w_init="he_normal"),
        ]
    )
    x, y = _digits()
    params = _init(model, (64,), jnp.float32)
    rep = D.layer_report(model, xent, params, x, y)
    assert D.detect_gradient_problems(rep) == []
    assert D.detect_gradient_problems(D.speed_of_learning(model, xent, params, x, y)) == []
    assert all(r.dead < 0.5 for r in rep if r.dead is not None)


def test_detector_min_norm_and_bad_arguments():
    found = D.detect_gradient_problems({"a": 1e-9, "b": 1e-9}, min_norm=1e-6)
    assert [(f.kind, f.layer) for f in found] == [("vanishing", "a"), ("vanishing", "b")]
    with pytest.raises(ValueError, match="vanishing_ratio"):
        D.detect_gradient_problems({"a": 1.0}, vanishing_ratio=0)
    with pytest.raises(ValueError, match="exploding_norm"):
        D.detect_gradient_problems({"a": 1.0}, exploding_norm=float("inf"))
    with pytest.raises(TypeError, match="LayerReport"):
        D.detect_gradient_problems([1.0, 2.0])
    with pytest.raises(TypeError, match="layer 'a'"):
        D.detect_gradient_problems({"a": "big"})


# --- bad input -------------------------------------------------------------------------


def test_model_without_parameters():
    # no Dense, no parameters at all: deltas and dead units still mean something; the
    # quantities that need a bias or weights say so instead of answering nothing
    model = jbp.Sequential([Flatten(), ReLU()])
    params = _params(model, (2, 3), jnp.float64)
    x, y = _rand(13, (4, 2, 3), jnp.float64), _rand(14, (4, 6), jnp.float64)
    x = x.at[:, 0, :2].set(-jnp.abs(x[:, 0, :2]))  # two units ≤ 0 on every example
    rep, _ = _check_report(model, mse, params, x, y, 1e-10)
    assert rep["layers[1]"].dead == pytest.approx(2 / 6)
    assert "‖∇W‖" not in str(rep) and "dead" in str(rep)
    with pytest.raises(ValueError, match="no layer of the model has a bias"):
        D.speed_of_learning(model, mse, params, x, y)
    with pytest.raises(ValueError, match="no layer has the quantity 'grad_W_norm'"):
        D.detect_gradient_problems(rep)
    assert D.detect_gradient_problems(rep, quantity="delta_norm") == []
    with pytest.raises(ValueError, match="no layers"):
        D.layer_report(jbp.Sequential([]), mse, (), x.reshape(4, 6), y)


def test_params_from_another_model_are_a_clear_error():
    model = jbp.Sequential([Dense(5), Sigmoid(), Dense(2)])
    other_width = jbp.Sequential([Dense(6), Sigmoid(), Dense(2)])
    other_depth = jbp.Sequential([Dense(5), Sigmoid(), Dense(5), Sigmoid(), Dense(2)])
    x, y = _rand(15, (4, 3), jnp.float32), _rand(16, (4, 2), jnp.float32)
    for other in (other_width, other_depth):
        params = _params(other, (3,), jnp.float32)
        for fn in (D.speed_of_learning, D.layer_report, D.layer_deltas):
            with pytest.raises(ValueError, match="params do not match the model"):
                fn(model, mse, params, x, y)
    params = _params(model, (3,), jnp.float32)
    with pytest.raises(ValueError, match="updates must have the structure"):
        D.layer_report(model, mse, params, x, y, updates=_params(other_width, (3,), jnp.float32))
    with pytest.raises(ValueError, match="params do not match"):  # wrong input width
        D.layer_report(model, mse, params, _rand(17, (4, 7), jnp.float32), y)
    with pytest.raises(ValueError, match="same number of examples"):
        D.layer_report(model, mse, params, x, y[:3])
    with pytest.raises(TypeError, match="model"):
        D.layer_report("net", mse, params, x, y)
    with pytest.raises(ValueError, match="sigmoid_eps"):
        D.layer_report(model, mse, params, x, y, sigmoid_eps=0.7)


# --- recording over training -----------------------------------------------------------


def test_gradient_norm_history_hand_rolled_loop(tmp_path):
    model = jbp.Sequential([Dense(12), Sigmoid(), Dense(12), Sigmoid(), Dense(3)])
    params = _params(model, (5,), jnp.float32)
    x, y = _rand(18, (40, 5), jnp.float32), jnp.asarray(np.arange(40) % 3, jnp.int32)
    hist = D.GradientNormHistory(model, xent, (x[:16], y[:16]))
    step = jax.jit(
        lambda p: jax.tree.map(
            lambda a, g: a - 0.5 * g, p, jbp.value_and_grad(model, xent)(p, x, y)[1]
        )
    )
    snapshots = []
    for epoch in range(4):
        hist(epoch, params)
        snapshots.append(params)
        params = step(params)
    rec = hist.record
    assert rec.epochs == [0, 1, 2, 3] and rec.layers == [f"layers[{i}]" for i in range(5)]
    assert list(rec.speed_of_learning()) == ["layers[0]", "layers[2]", "layers[4]"]
    assert rec.present["saturated"] == ["layers[1]", "layers[3]"]
    assert rec.present["delta_norm"] == rec.layers
    assert hist._fn._cache_size() == 1  # one compiled probe, reused every epoch
    for k, p in enumerate(snapshots):
        want = D.speed_of_learning(model, xent, p, x[:16], y[:16])
        for name, v in want.items():
            assert rec.speed_of_learning()[name][k] == pytest.approx(v, rel=1e-5)
        rep = D.layer_report(model, xent, p, x[:16], y[:16])
        assert rec.quantity("grad_W_norm")["layers[0]"][k] == pytest.approx(
            rep["layers[0]"].grad_W_norm, rel=1e-5
        )
        for q in ("saturated", "delta_norm"):
            assert rec.quantity(q)["layers[3]"][k] == pytest.approx(
                getattr(rep["layers[3]"], q), rel=1e-5, abs=1e-12
            )
    assert all(math.isnan(v) for v in rec.quantity("saturated")["layers[4]"])
    assert all(math.isnan(v) for v in rec.quantity("grad_W_norm")["layers[1]"])
    d = rec.to_dict()
    assert d["epochs"] == [0, 1, 2, 3] and len(d["values"]["delta_norm"]["layers[2]"]) == 4
    assert "epoch" in rec.table() and "layers[4]" in rec.table("grad_W_norm")
    assert "layers[1]" not in rec.table("grad_W_norm")  # only the layers that have it
    assert D.detect_gradient_problems(rec, vanishing_ratio=1e-9) == []
    # every=2 skips odd epochs
    h2 = D.GradientNormHistory(model, xent, (x[:16], y[:16]), every=2)
    for epoch in range(4):
        h2(epoch, params)
    assert h2.record.epochs == [0, 2]

    import matplotlib as mpl

    from jbp.plotting import plot_gradient_norms

    fig = plot_gradient_norms(rec, tmp_path / "sub" / "norms.png")
    assert (tmp_path / "sub" / "norms.png").stat().st_size > 1000
    assert fig.axes[0].get_yscale() == "log"
    import matplotlib.pyplot as plt

    plt.close(fig)
    del mpl


def test_gradient_norm_history_bad_input():
    model = jbp.Sequential([Dense(3), Sigmoid(), Dense(2)])
    x, y = _rand(19, (4, 3), jnp.float32), _rand(20, (4, 2), jnp.float32)
    with pytest.raises(TypeError, match="probe_data"):
        D.GradientNormHistory(model, mse, x)
    with pytest.raises(ValueError, match="every"):
        D.GradientNormHistory(model, mse, (x, y), every=0)
    hist = D.GradientNormHistory(model, mse, (x, y))
    with pytest.raises(ValueError, match="params do not match"):
        hist(0, _params(jbp.Sequential([Dense(4), Sigmoid(), Dense(2)]), (3,), jnp.float32))
    with pytest.raises(ValueError, match="empty"):
        D.detect_gradient_problems(hist.record)


def test_plotting_without_matplotlib_names_the_extra(monkeypatch):
    from jbp import plotting

    rec = D.GradientNormRecord()
    rec.append(0, {"loss": 1.0, "layers": {"layers[0]": {"grad_W_norm": 1.0}}})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"jbp\[examples\]"):
        plotting.plot_gradient_norms(rec, None)
    with pytest.raises(TypeError, match="GradientNormRecord"):
        plotting.plot_gradient_norms({"a": [1.0]})


def test_gradient_norm_history_as_fit_callback():
    import jbp.train as train
    from jbp import optim

    model = jbp.Sequential([Dense(8), Sigmoid(), Dense(3)])
    params = _params(model, (5,), jnp.float32)
    x = np.asarray(_rand(21, (30, 5), jnp.float32))
    y = (np.arange(30) % 3).astype(np.int32)
    hist = D.GradientNormHistory(model, xent, (x[:10], y[:10]))
    hist(0, params)
    trained, history = train.fit(
        model,
        params,
        xent,
        optim.sgd(0.5),
        (x, y),
        epochs=2,
        key=jax.random.key(0),
        callbacks=[hist],
        verbose=0,
    )
    assert hist.record.epochs == [0, 1, 2]
    want = D.speed_of_learning(model, xent, trained, x[:10], y[:10])
    assert hist.record.speed_of_learning()["layers[0]"][-1] == pytest.approx(
        want["layers[0]"], rel=1e-5
    )
    hist.add_to_history(history)
    assert history["bias_grad_norm/layers[2]"] == hist.record.speed_of_learning()["layers[2]"][1:]
    assert "grad_W_norm/layers[0]" in history.keys()
    with pytest.raises(TypeError, match="History"):
        hist.add_to_history({"loss": [1.0]})
