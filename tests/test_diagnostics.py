"""Diagnostics: speed of learning, per-layer report, detector, recording — against autodiff."""
import jax

jax.config.update("jax_enable_x64", True)

import math  # noqa: E402
import sys  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp import diagnostics as D  # noqa: E402
from jbp import initializers  # noqa: E402
from jbp.layers import Dense, Flatten, ReLU, Sigmoid, Tanh  # noqa: E402

mse = jbp.losses.mse
xent = jbp.losses.softmax_cross_entropy


def _rand(seed, shape, dtype, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, dtype=dtype)


def _mixed_model():
    # nested Sequential, a bias-free layer, every activation kind the report knows
    return jbp.Sequential([
        Dense(7, w_init="he_normal", b_init=initializers.normal(0.3)), Tanh(),
        jbp.Sequential([Dense(6, b_init=initializers.normal(0.3)), Sigmoid()]),
        Dense(5, use_bias=False), ReLU(),
        Dense(3, b_init=initializers.normal(0.3)),
    ])


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


def _dense_paths(model, prefix=()):
    """[(path tuple into params, layer)] for every Dense, nested Sequentials unrolled."""
    out = []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, jbp.Sequential):
            out += _dense_paths(layer, prefix + (i,))
        elif isinstance(layer, Dense):
            out.append((prefix + (i,), layer))
    return out


def _get(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _autodiff_deltas(model, loss, params, x, y):
    """∂C/∂z for every Dense: jax.grad w.r.t. a zero perturbation added to each z."""
    paths = [p for p, _ in _dense_paths(model)]

    def run(m, p, h, eps, prefix):
        for i, layer in enumerate(m.layers):
            path = prefix + (i,)
            if isinstance(layer, jbp.Sequential):
                h = run(layer, p[i], h, eps, path)
            else:
                h = layer.apply(p[i], h)
                if path in paths:
                    h = h + eps[paths.index(path)]
        return h

    def objective(eps):
        return loss.value(run(model, params, x, eps, ()), y)

    units = [layer.units for _, layer in _dense_paths(model)]
    eps0 = [jnp.zeros((x.shape[0], u), x.dtype) for u in units]
    return jax.jit(jax.grad(objective))(eps0)


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


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-10), (jnp.float32, 2e-5)])
def test_report_deltas_and_norms_equal_autodiff(dtype, rtol):
    model = _mixed_model()
    params = _params(model, (4,), dtype)
    n = 9
    x = _rand(4, (n, 4), dtype)
    y = _rand(5, (n, 3), dtype)
    ref_deltas = _autodiff_deltas(model, mse, params, x, y)
    deltas = D.layer_deltas(model, mse, params, x, y)
    assert list(deltas) == NAMES
    for name, ref in zip(NAMES, ref_deltas):
        assert deltas[name].dtype == dtype
        np.testing.assert_allclose(np.asarray(deltas[name]), np.asarray(ref), rtol=rtol,
                                   atol=rtol * float(np.max(np.abs(ref))))

    updates = jax.tree.map(lambda a: _rand(6, a.shape, dtype, 1e-3), params)
    rep = D.layer_report(model, mse, params, x, y, updates=updates)
    assert rep.names == NAMES and len(rep) == 4
    ref_grads = _ref_grads(model, mse, params, x, y)
    for row, ref, (path, layer) in zip(rep, ref_deltas, _dense_paths(model)):
        per_example = np.linalg.norm(n * np.asarray(ref, np.float64), axis=1).mean()
        np.testing.assert_allclose(row.delta_norm, per_example, rtol=rtol)
        np.testing.assert_allclose(row.grad_W_norm,
                                   float(np.linalg.norm(_get(ref_grads, path)["W"])), rtol=rtol)
        W = _get(params, path)["W"]
        np.testing.assert_allclose(row.W_norm, float(np.linalg.norm(W)), rtol=rtol)
        np.testing.assert_allclose(
            row.update_ratio,
            float(np.linalg.norm(_get(updates, path)["W"]) / np.linalg.norm(W)), rtol=rtol)
        assert row.units == layer.units
    np.testing.assert_allclose(rep.loss, float(mse.value(model.apply(params, x), y)), rtol=rtol)
    assert rep["layers[3]"].bias_grad_norm is None
    assert [r.activation for r in rep] == ["tanh", "sigmoid", "relu", None]
    # the saturation / dead columns exist only where they mean something
    assert rep["layers[0]"].saturated is not None and rep["layers[0]"].dead is None
    assert rep["layers[3]"].dead is not None and rep["layers[3]"].saturated is None
    assert rep["layers[5]"].saturated is None and rep["layers[5]"].dead is None


def test_report_table_and_dict():
    model = _mixed_model()
    params = _params(model, (4,), jnp.float32)
    x, y = _rand(7, (6, 4), jnp.float32), _rand(8, (6, 3), jnp.float32)
    rep = D.layer_report(model, mse, params, x, y)
    text = str(rep)
    for token in NAMES + ["‖∂C/∂b‖", "‖δ‖", "‖∇W‖", "‖W‖", "saturated", "dead ReLU", "loss ="]:
        assert token in text
    assert "‖ΔW‖/‖W‖" not in text  # no updates given: no column
    d = rep.to_dict()
    assert d["loss"] == rep.loss and [r["name"] for r in d["layers"]] == NAMES
    assert d["layers"][1]["activation"] == "sigmoid"
    assert rep.column("grad_W_norm") == {r.name: r.grad_W_norm for r in rep}
    with pytest.raises(KeyError, match="layers\\[9\\]"):
        rep["layers[9]"]
    with pytest.raises(ValueError, match="unknown quantity"):
        rep.column("nope")


def _identity_net(act, units=4):
    model = jbp.Sequential([Dense(units), act])
    params = ({"W": jnp.eye(units, dtype=jnp.float64), "b": jnp.zeros(units, jnp.float64)}, ())
    return model, params


Z = jnp.asarray([[-10.0, 0.0, 10.0, 1.0],
                 [0.0, 0.5, -4.0, 2.0]], jnp.float64)


def test_saturated_fraction_sigmoid_known_answer():
    model, params = _identity_net(Sigmoid())
    y = jnp.zeros_like(Z)
    # σ(z) < 0.05 or > 0.95  ⇔  |z| > 2.944: −10, 10, −4 → 3 of 8
    assert D.layer_report(model, mse, params, Z, y)["layers[0]"].saturated == pytest.approx(3 / 8)
    # ε = 0.2: |z| > 1.386: also z = 2 → 4 of 8
    rep = D.layer_report(model, mse, params, Z, y, sigmoid_eps=0.2)
    assert rep["layers[0]"].saturated == pytest.approx(4 / 8)
    assert rep.sigmoid_eps == 0.2


def test_saturated_fraction_tanh_known_answer():
    model, params = _identity_net(Tanh())
    y = jnp.zeros_like(Z)
    # |tanh z| > 0.95  ⇔  |z| > 1.832: −10, 10, −4, 2 → 4 of 8
    assert D.layer_report(model, mse, params, Z, y)["layers[0]"].saturated == pytest.approx(4 / 8)
    # ε = 0.001: |z| > 3.8: −10, 10, −4 → 3 of 8
    rep = D.layer_report(model, mse, params, Z, y, tanh_eps=0.001)
    assert rep["layers[0]"].saturated == pytest.approx(3 / 8)


def test_dead_relu_fraction_known_answer():
    model, params = _identity_net(ReLU(), units=5)
    x = jnp.asarray([[-1.0, -2.0, -0.5, 3.0, 0.0],
                     [0.0, 1.0, -0.1, 2.0, 0.0],
                     [-3.0, -1.0, -7.0, -1.0, 0.0]], jnp.float64)
    # column 0: ≤ 0 throughout (an exact 0 counts as dead), 1: alive once, 2: dead,
    # 3: alive, 4: exactly 0 everywhere → dead. 3 of 5 units dead.
    rep = D.layer_report(model, mse, params, x, jnp.zeros_like(x))
    assert rep["layers[0]"].dead == pytest.approx(3 / 5)
    assert rep["layers[0]"].saturated is None


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
    model = jbp.Sequential([Dense(64, w_init=initializers.normal(4.0)), ReLU(),
                            Dense(64, w_init=initializers.normal(4.0)), ReLU(),
                            Dense(1, w_init=initializers.normal(4.0))])
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
    model = jbp.Sequential([Dense(30, w_init="he_normal"), ReLU(),
                            Dense(30, w_init="he_normal"), ReLU(),
                            Dense(30, w_init="he_normal"), ReLU(),
                            Dense(10, w_init="he_normal")])
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

def test_model_without_dense_is_a_clear_error():
    model = jbp.Sequential([Flatten(), ReLU()])
    params = _params(model, (2, 3), jnp.float32)
    x, y = _rand(13, (4, 2, 3), jnp.float32), _rand(14, (4, 6), jnp.float32)
    for fn in (D.speed_of_learning, D.layer_report, D.layer_deltas):
        with pytest.raises(ValueError, match="no Dense layer"):
            fn(model, mse, params, x, y)


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
    step = jax.jit(lambda p: jax.tree.map(
        lambda a, g: a - 0.5 * g, p, jbp.value_and_grad(model, xent)(p, x, y)[1]))
    snapshots = []
    for epoch in range(4):
        hist(epoch, params)
        snapshots.append(params)
        params = step(params)
    rec = hist.record
    assert rec.epochs == [0, 1, 2, 3] and rec.layers == ["layers[0]", "layers[2]", "layers[4]"]
    assert hist._fn._cache_size() == 1  # one compiled probe, reused every epoch
    for k, p in enumerate(snapshots):
        want = D.speed_of_learning(model, xent, p, x[:16], y[:16])
        for name, v in want.items():
            assert rec.speed_of_learning()[name][k] == pytest.approx(v, rel=1e-5)
        rep = D.layer_report(model, xent, p, x[:16], y[:16])
        assert rec.quantity("grad_W_norm")["layers[0]"][k] == pytest.approx(
            rep["layers[0]"].grad_W_norm, rel=1e-5)
    assert all(math.isnan(v) for v in rec.quantity("saturated")["layers[4]"])
    d = rec.to_dict()
    assert d["epochs"] == [0, 1, 2, 3] and len(d["values"]["delta_norm"]["layers[2]"]) == 4
    assert "epoch" in rec.table() and "layers[4]" in rec.table("grad_W_norm")
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
    trained, history = train.fit(model, params, xent, optim.sgd(0.5), (x, y), epochs=2,
                                 key=jax.random.key(0), callbacks=[hist], verbose=0)
    assert hist.record.epochs == [0, 1, 2]
    want = D.speed_of_learning(model, xent, trained, x[:10], y[:10])
    assert hist.record.speed_of_learning()["layers[0]"][-1] == pytest.approx(want["layers[0]"],
                                                                            rel=1e-5)
    hist.add_to_history(history)
    assert history["bias_grad_norm/layers[2]"] == hist.record.speed_of_learning()["layers[2]"][1:]
    assert "grad_W_norm/layers[0]" in history.keys()
    with pytest.raises(TypeError, match="History"):
        hist.add_to_history({"loss": [1.0]})
