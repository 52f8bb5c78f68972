"""fit / make_train_step: one loop for GD, SGD and minibatch, checked against hand-rolled loops."""

import jax

jax.config.update("jax_enable_x64", True)

import dataclasses  # noqa: E402
import json  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
import jbp.train  # noqa: E402
from jbp import optim, regularizers  # noqa: E402
from jbp.callbacks import Callback, EarlyStopping  # noqa: E402
from jbp.core import Layer  # noqa: E402
from jbp.history import History  # noqa: E402
from jbp.layers import Dense, Tanh  # noqa: E402
from jbp.train import batch_plan, evaluate, fit, make_train_step, parse_batch_size  # noqa: E402

TIGHT = dict(rtol=1e-12, atol=1e-13)
CE = jbp.losses.softmax_cross_entropy


def _mlp():
    return jbp.Sequential([Dense(5), Tanh(), Dense(3)])


def _setup(n=23, d=4, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, d)), dtype)
    y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    model = _mlp()
    params, _ = model.init(jax.random.key(seed), (d,))
    return model, jbp.cast(params, dtype), x, y


def _close(a, b, **tol):
    tol = tol or TIGHT
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


def _noise(key, x):
    """A keyed augmentation, so the test also proves the keys thread as documented."""
    return x + 0.05 * jax.random.normal(key, x.shape, x.dtype)


# --------------------------------------------------------------------------------------
# fit equals a hand-rolled Python loop of step calls
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle,chunk", [(False, None), (True, None), (True, 3)])
def test_one_epoch_minibatch_equals_python_loop_of_steps(shuffle, chunk, monkeypatch):
    model, params, x, y = _setup(n=23)
    if chunk:  # gather 3 batches at a time: 4 full batches = one chunk of 3 + one of 1
        row = x.dtype.itemsize * x.shape[1] + y.dtype.itemsize
        monkeypatch.setattr(jbp.train.batching, "_CHUNK_BYTES", 5 * row * chunk)
        assert jbp.train.batching._chunk_batches(5, 4, x, y) == chunk
    opt = optim.sgd(0.3, momentum=0.9)
    key = jax.random.key(42)
    got, hist = fit(
        model,
        params,
        CE,
        opt,
        (x, y),
        batch_size=5,
        epochs=1,
        key=key,
        shuffle=shuffle,
        augment=_noise,
        verbose=0,
        metrics=("loss", "accuracy"),
    )

    # the documented key scheme: fold_in(key, epoch) -> (perm key, step keys)
    step = jax.jit(make_train_step(model, CE, opt, metrics=("loss", "accuracy"), augment=_noise))
    k_perm, k_steps = jax.random.split(jax.random.fold_in(key, 0))
    keys = jax.random.split(k_steps, 5)
    order = np.asarray(jax.random.permutation(k_perm, 23)) if shuffle else np.arange(23)
    batches = [order[i : i + 5] for i in range(0, 23, 5)]
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    p, s = params, opt.init(params)
    losses, accs = [], []
    for b, k in zip(batches, keys):
        p, s, m, _ = step(p, s, x[b], y[b], k)
        losses.append(float(m["loss"]))
        accs.append(float(m["accuracy"]))
    _close(got, p)
    _close(hist.opt_state, s)
    sizes = np.array([len(b) for b in batches])
    np.testing.assert_allclose(hist["loss"][0], np.dot(sizes, losses) / 23, **TIGHT)
    np.testing.assert_allclose(hist["accuracy"][0], np.dot(sizes, accs) / 23, **TIGHT)


def test_float32_epoch_is_bit_identical_to_the_python_loop(monkeypatch):
    """The compiled epoch changes no rounding: in float32, where a different summation order
    would show, fit's parameters equal (bit for bit) a loop of the jitted step over the same
    batches, with the shuffled batches gathered a chunk at a time (two chunks of 2)."""
    model, params, x, y = _setup(n=23, dtype=jnp.float32)
    row = x.dtype.itemsize * x.shape[1] + y.dtype.itemsize
    monkeypatch.setattr(jbp.train.batching, "_CHUNK_BYTES", 5 * row * 2)
    assert jbp.train.batching._chunk_batches(5, 4, x, y) == 2
    opt = optim.sgd(0.3, momentum=0.9)
    key = jax.random.key(3)
    got, hist = fit(model, params, CE, opt, (x, y), batch_size=5, epochs=1, key=key, verbose=0)

    step = jax.jit(make_train_step(model, CE, opt))
    k_perm, k_steps = jax.random.split(jax.random.fold_in(key, 0))
    keys = jax.random.split(k_steps, 5)
    order = np.asarray(jax.random.permutation(k_perm, 23))
    p, s = params, opt.init(params)
    for j, k in enumerate(keys):
        b = order[5 * j : 5 * j + 5]
        p, s, _, _ = step(p, s, x[b], y[b], k)
    for u, v in zip(jax.tree.leaves((got, hist.opt_state)), jax.tree.leaves((p, s))):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_partial_last_batch_is_averaged_over_its_true_size():
    """Plain GD: the last update of the epoch is −η × the mean of the 3 per-example grads."""
    model, params, x, y = _setup(n=13)
    lr = 0.5
    after_full, _ = fit(
        model,
        params,
        CE,
        optim.sgd(lr),
        (x[:10], y[:10]),
        batch_size=5,
        epochs=1,
        key=jax.random.key(0),
        shuffle=False,
        verbose=0,
    )
    got, _ = fit(
        model,
        params,
        CE,
        optim.sgd(lr),
        (x, y),
        batch_size=5,
        epochs=1,
        key=jax.random.key(0),
        shuffle=False,
        verbose=0,
    )
    rows = [
        jax.grad(lambda p: CE.value(model.apply(p, x[i : i + 1]), y[i : i + 1]))(after_full)
        for i in (10, 11, 12)
    ]
    expected = jax.tree.map(lambda p, *g: p - lr * sum(g) / 3, after_full, *rows)
    _close(got, expected)
    # drop_last=True skips those 3 examples: same as training on the first 10 only
    dropped, h = fit(
        model,
        params,
        CE,
        optim.sgd(lr),
        (x, y),
        batch_size=5,
        epochs=1,
        key=jax.random.key(0),
        shuffle=False,
        drop_last=True,
        verbose=0,
    )
    _close(dropped, after_full)
    assert batch_plan(13, 5) == (5, 2, 3) and batch_plan(13, 5, drop_last=True) == (5, 2, 0)


def test_full_batch_equals_gradient_descent_steps():
    model, params, x, y = _setup(n=17)
    lr, epochs = 0.7, 3
    got, hist = fit(
        model,
        params,
        CE,
        optim.sgd(lr),
        (x, y),
        batch_size=None,
        epochs=epochs,
        key=jax.random.key(5),
        verbose=0,
    )
    same, _ = fit(
        model,
        params,
        CE,
        optim.sgd(lr),
        (x, y),
        batch_size=17,
        epochs=epochs,
        key=jax.random.key(5),
        verbose=0,
    )
    grad = jax.jit(jax.value_and_grad(lambda p: CE.value(model.apply(p, x), y)))
    p, losses = params, []
    for _ in range(epochs):
        value, g = grad(p)
        losses.append(float(value))
        p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    _close(got, p)
    _close(same, p)
    np.testing.assert_allclose(hist["loss"], losses, **TIGHT)


# --------------------------------------------------------------------------------------
# A stateful test layer: records which example each training step saw
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recorder(Layer):
    """Identity layer whose state logs ``x[:, 0]`` of every training batch of size 1."""

    n: int
    stateful = True

    def init(self, key, in_shape):
        return (), tuple(in_shape)

    def init_state(self, in_shape):
        return {"count": jnp.zeros((), jnp.int32), "seen": -jnp.ones((self.n,), jnp.int32)}

    def forward(self, params, x, *, key=None, train=False):
        return x, ()

    def forward_with_state(self, params, state, x, *, key=None, train=False):
        if train:
            i = state["count"]
            state = {
                "count": i + 1,
                "seen": state["seen"].at[i % self.n].set(x[0, 0].astype(jnp.int32)),
            }
        return x, (), state

    def backward(self, params, cache, dy):
        return (), dy


def test_sgd_visits_every_example_once_per_epoch_in_a_fresh_permutation():
    n = 12
    x = jnp.stack([jnp.arange(n, dtype=jnp.float64), jnp.linspace(-1, 1, n)], axis=1)
    y = jnp.asarray(np.random.default_rng(0).standard_normal((n, 1)))
    model = jbp.Sequential([Recorder(n), Dense(1)])
    params, _ = model.init(jax.random.key(0), (2,))
    run = lambda epochs: fit(
        model,
        params,
        jbp.losses.mse,
        optim.sgd(0.01),
        (x, y),
        batch_size=1,
        epochs=epochs,
        key=jax.random.key(3),
        verbose=0,
        metrics=("loss",),
    )  # state: model.init_state by default
    _, h1 = run(1)
    _, h2 = run(2)
    first = np.asarray(h1.state[0]["seen"])
    second = np.asarray(h2.state[0]["seen"])
    assert int(h2.state[0]["count"]) == 2 * n
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert list(first) != list(range(n))  # shuffled
    assert list(first) != list(second)  # reshuffled every epoch
    np.testing.assert_array_equal(
        first,
        np.asarray(
            jax.random.permutation(jax.random.split(jax.random.fold_in(jax.random.key(3), 0))[0], n)
        ),
    )


@dataclasses.dataclass(frozen=True)
class Shift(Layer):
    """``y = x − m`` with ``m`` a running mean of the inputs (state), updated in training."""

    stateful = True

    def init(self, key, in_shape):
        return (), tuple(in_shape)

    def init_state(self, in_shape):
        return jnp.zeros(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        raise AssertionError("a stateful model must go through forward_with_state")

    def forward_with_state(self, params, state, x, *, key=None, train=False):
        new = 0.8 * state + 0.2 * jnp.mean(x, axis=0) if train else state
        return x - state, (), new

    def backward(self, params, cache, dy):
        return (), dy


def test_stateful_model_manual_equals_autodiff_and_state_threads():
    _, _, x, y = _setup(n=20)
    model = jbp.Sequential([Shift(), Dense(5), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(1), (4,))
    params = jbp.cast(params, jnp.float64)
    st = (Shift().init_state((4,)), (), (), ())
    kw = dict(
        batch_size=6,
        epochs=2,
        key=jax.random.key(2),
        verbose=0,
        validation_data=(x[:7], y[:7]),
        state=st,
    )
    pm, hm = fit(model, params, CE, optim.adam(0.05), (x, y), **kw)
    pa, ha = fit(model, params, CE, optim.adam(0.05), (x, y), grad_fn="autodiff", **kw)
    _close(pm, pa)
    _close(hm.state, ha.state)
    assert float(jnp.max(jnp.abs(hm.state[0]))) > 0  # the running mean moved
    # one step signature for every model: state in, state out
    step = make_train_step(model, CE, optim.sgd(0.1))
    out = jax.jit(step)(params, optim.sgd(0.1).init(params), x[:4], y[:4], jax.random.key(0), st)
    assert len(out) == 4
    np.testing.assert_allclose(out[3][0], 0.2 * np.mean(np.asarray(x[:4]), axis=0), **TIGHT)
    # evaluation with a state uses it and leaves it alone
    r = evaluate(model, pm, CE, (x, y), state=hm.state, metrics=("loss",))
    assert np.isfinite(r["loss"])


# --------------------------------------------------------------------------------------
# manual == autodiff, reproducibility, regularizer, metrics
# --------------------------------------------------------------------------------------


def test_manual_and_autodiff_train_the_same_params():
    model, params, x, y = _setup(n=30)
    kw = dict(batch_size=7, epochs=3, key=jax.random.key(9), verbose=0)
    pm, hm = fit(model, params, CE, optim.adam(0.03), (x, y), **kw)
    pa, ha = fit(model, params, CE, optim.adam(0.03), (x, y), grad_fn="autodiff", **kw)
    _close(pm, pa, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hm["loss"], ha["loss"], **TIGHT)


def test_reproducible_from_the_key():
    model, params, x, y = _setup(n=20, dtype=jnp.float32)
    kw = dict(batch_size=3, epochs=2, verbose=0, augment=_noise, validation_data=(x, y))
    p1, h1 = fit(model, params, CE, optim.sgd(0.1), (x, y), key=jax.random.key(7), **kw)
    p2, h2 = fit(model, params, CE, optim.sgd(0.1), (x, y), key=jax.random.key(7), **kw)
    p3, _ = fit(model, params, CE, optim.sgd(0.1), (x, y), key=jax.random.key(8), **kw)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == jnp.float32
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h.records]
    assert drop(h1) == drop(h2)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3)))


def test_regularizer_reported_apart_from_the_data_loss():
    model, params, x, y = _setup(n=12)
    reg = regularizers.l2(0.1)
    got, h = fit(
        model,
        params,
        CE,
        optim.sgd(0.5),
        (x, y),
        epochs=1,
        key=jax.random.key(0),
        regularizer=reg,
        verbose=0,
    )
    np.testing.assert_allclose(h["loss"][0], CE.value(model.apply(params, x), y), **TIGHT)
    np.testing.assert_allclose(h["penalty"][0], reg.value(params), **TIGHT)
    _, g = jbp.autodiff_value_and_grad(model, CE, regularizer=reg)(params, x, y)
    _close(got, jax.tree.map(lambda p, d: p - 0.5 * d, params, g))


def test_metrics_registry_and_unknown_names():
    from jbp.metrics import METRICS, get_metrics

    assert {"loss", "accuracy", "mse", "rmse", "mae"} <= set(METRICS)
    assert [m.name for m in get_metrics(["accuracy", "accuracy"])] == ["loss", "accuracy"]
    with pytest.raises(ValueError, match=r"metrics: unknown metric 'f1'; known: accuracy, loss"):
        get_metrics(("loss", "f1"))
    # rmse is sqrt of the set's mse, whatever the chunking
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((11, 3)))
    y = jnp.asarray(rng.standard_normal((11, 2)))
    model = jbp.Sequential([Dense(2)])
    params, _ = model.init(jax.random.key(0), (3,))
    pred = model.apply(params, x)
    ms = ("loss", "mse", "rmse", "mae")
    whole = evaluate(model, params, jbp.losses.mse, (x, y), metrics=ms, batch_size=None)
    chunked = evaluate(model, params, jbp.losses.mse, (x, y), metrics=ms, batch_size=4)
    for k in ms:
        np.testing.assert_allclose(whole[k], chunked[k], **TIGHT)
    np.testing.assert_allclose(
        whole["mse"], np.mean((np.asarray(pred) - np.asarray(y)) ** 2), **TIGHT
    )
    np.testing.assert_allclose(whole["rmse"], whole["mse"] ** 0.5, **TIGHT)
    np.testing.assert_allclose(whole["loss"], 0.5 * 2 * whole["mse"], **TIGHT)  # the ½ convention


# --------------------------------------------------------------------------------------
# early stopping, callbacks, history, progress
# --------------------------------------------------------------------------------------


def test_early_stopping_on_a_constructed_curve():
    curve = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0]
    es = EarlyStopping(monitor="val_loss", patience=3)
    stopped_at = None
    for epoch, v in enumerate(curve, start=1):
        if es.on_epoch_end(epoch, {"val_loss": v}, params=f"params@{epoch}"):
            stopped_at = epoch
            break
    assert (stopped_at, es.best_epoch, es.best_value, es.stopped_epoch) == (6, 3, 3.0, 6)
    assert es.on_train_end("last") == ("params@3", ())
    # min_delta: 3.0 is not better than 4.0 by more than 1.5; mode="max"
    es = EarlyStopping("val_accuracy", patience=1, min_delta=1.5, mode="max")
    assert not es.on_epoch_end(1, {"val_accuracy": 0.5}, None)
    assert es.on_epoch_end(2, {"val_accuracy": 1.9}, None)
    assert es.best_epoch == 1


def test_early_stopping_in_fit_stops_at_the_right_epoch_and_restores_the_best():
    """Train y = 2x from w = 0; validate against y = x: val_loss falls, then rises."""
    x = jnp.linspace(-1.0, 1.0, 16)[:, None]
    model = jbp.Sequential([Dense(1, use_bias=False, w_init="zeros")])
    params, _ = model.init(jax.random.key(0), (1,))
    params = jbp.cast(params, jnp.float64)
    kw = dict(key=jax.random.key(0), verbose=0, validation_data=(x, x), metrics=("loss",))
    opt = optim.sgd(0.4)
    _, full = fit(model, params, jbp.losses.mse, opt, (x, 2 * x), epochs=12, **kw)
    curve = np.asarray(full["val_loss"])
    best = int(np.argmin(curve)) + 1
    assert 2 < best < 9 and curve[-1] > curve[best - 1]  # a valley: the curve is as built
    patience = 2
    got, h = fit(
        model,
        params,
        jbp.losses.mse,
        opt,
        (x, 2 * x),
        epochs=12,
        early_stopping=EarlyStopping(patience=patience),
        **kw,
    )
    assert len(h) == best + patience and h.stopped_epoch == best + patience
    assert h.best_epoch == best
    at_best, _ = fit(model, params, jbp.losses.mse, opt, (x, 2 * x), epochs=best, **kw)
    _close(got, at_best)
    # an int is the patience on val_loss; restore_best=False keeps the last params
    _, h_int = fit(
        model, params, jbp.losses.mse, opt, (x, 2 * x), epochs=12, early_stopping=patience, **kw
    )
    assert h_int.stopped_epoch == best + patience
    last, _ = fit(
        model,
        params,
        jbp.losses.mse,
        opt,
        (x, 2 * x),
        epochs=12,
        early_stopping=EarlyStopping(patience=patience, restore_best=False),
        **kw,
    )
    ran, _ = fit(model, params, jbp.losses.mse, opt, (x, 2 * x), epochs=best + patience, **kw)
    _close(last, ran)


def test_callbacks_see_results_and_can_stop(capsys):
    model, params, x, y = _setup(n=10)
    seen = []

    def cb(epoch, logs, params):
        seen.append((epoch, sorted(logs)))
        logs["extra"] = 10.0 * epoch  # callbacks may add columns
        return epoch == 2

    class Obj(Callback):
        def __init__(self):
            self.calls = 0

        def on_epoch_end(self, epoch, logs, params, state=()):
            self.calls += 1

    obj = Obj()
    _, h = fit(
        model,
        params,
        CE,
        optim.sgd(0.1),
        (x, y),
        epochs=5,
        key=jax.random.key(0),
        callbacks=[cb, obj],
        validation_data=(x, y),
        verbose=1,
    )
    assert len(h) == 2 and h.stopped_epoch == 2 and obj.calls == 2
    assert seen[0] == (1, ["accuracy", "epoch", "loss", "seconds", "val_accuracy", "val_loss"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/5  loss ")
    assert "val_accuracy" in lines[1] and "extra 20.0000" in lines[1] and lines[1].endswith("s")
    assert h["extra"] == [10.0, 20.0] and list(h.to_dict())[-1] == "seconds"
    _, _ = fit(
        model, params, CE, optim.sgd(0.1), (x, y), epochs=1, key=jax.random.key(0), verbose=0
    )
    assert capsys.readouterr().out == ""


def test_history_table_dict_json_roundtrip(tmp_path):
    model, params, x, y = _setup(n=10)
    _, h = fit(
        model,
        params,
        CE,
        optim.sgd(0.1),
        (x, y),
        epochs=3,
        batch_size=4,
        key=jax.random.key(0),
        validation_data=(x, y),
        verbose=0,
    )
    d = h.to_dict()
    assert list(d) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert d["epoch"] == [1, 2, 3] and all(isinstance(v, float) for v in d["loss"])
    path = tmp_path / "history.json"
    text = h.to_json(path)
    assert json.loads(path.read_text()) == json.loads(text)
    back = History.from_json(path)
    assert back.to_dict() == d and back.info() == h.info()
    table = h.as_table()
    assert table.splitlines()[0].split() == list(d) and len(table.splitlines()) == 5
    assert h["loss"] == d["loss"] and h.last["epoch"] == 3 and len(h) == 3
    with pytest.raises(KeyError, match="no column 'nope'"):
        h["nope"]
    ax = h.plot()
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "val_loss"]


def test_parse_batch_size_words():
    assert parse_batch_size("gd") is None and parse_batch_size("full") is None
    assert (
        parse_batch_size("sgd") == 1 and parse_batch_size("32") == 32 and parse_batch_size(8) == 8
    )
    with pytest.raises(ValueError, match="batch_size"):
        parse_batch_size("big")


# --------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, before anything is compiled or run
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Untouchable(Layer):
    """A model that fails the test if anything traces or runs it."""

    def init(self, key, in_shape):
        return (), tuple(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        raise AssertionError("fit compiled or ran the model before validating its arguments")

    def backward(self, params, cache, dy):
        raise AssertionError("fit ran the backward before validating its arguments")


_X = np.random.default_rng(0).standard_normal((8, 3))
_Y = np.random.default_rng(1).standard_normal((8, 3))
_NAN = _X.copy()
_NAN[2, 1] = np.nan
_INF = _Y.copy()
_INF[0, 0] = np.inf

BAD = [
    (dict(batch_size=0), ValueError, "batch_size: must be a positive"),
    (dict(batch_size=-3), ValueError, "batch_size: must be a positive"),
    (dict(batch_size=9), ValueError, "batch_size: 9 is larger than the data"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(train_data=(_X, _Y[:7])), ValueError, "train_data: x and y must have the same number"),
    (dict(train_data=(_X[:0], _Y[:0])), ValueError, "train_data: empty data"),
    (dict(train_data=(_NAN, _Y)), ValueError, "train_data: x contains 1 NaN or Inf"),
    (dict(train_data=(_X, _INF)), ValueError, "train_data: y contains 1 NaN or Inf"),
    (dict(train_data=_X), TypeError, "train_data: expected a pair"),
    (dict(validation_data=(_NAN, _Y)), ValueError, "validation_data: x contains"),
    (dict(validation_data=(_X, _Y[:5])), ValueError, "validation_data: x and y"),
    (dict(validation_data=(_X[:, :2], _Y)), ValueError, "validation_data: x has example shape"),
    (dict(epochs=0), ValueError, "epochs: must be a positive"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(epochs=2.0), TypeError, "epochs"),
    (dict(metrics=("loss", "f1")), ValueError, "metrics: unknown metric 'f1'; known: accuracy"),
    (dict(metrics=(3,)), TypeError, "metrics"),
    (dict(augment=3), TypeError, "augment: expected a callable"),
    (dict(grad_fn="numeric"), ValueError, "grad_fn"),
    (dict(key=0), TypeError, "key: expected a jax.random key"),
    (dict(optimizer=0.1), TypeError, "optimizer"),
    (dict(early_stopping="yes"), TypeError, "early_stopping"),
    (
        dict(early_stopping=EarlyStopping("val_loss", patience=2)),
        ValueError,
        "early_stopping: monitor 'val_loss' is not a column",
    ),
    (
        dict(early_stopping=EarlyStopping("val_f1", patience=2), validation_data=(_X, _Y)),
        ValueError,
        "early_stopping: monitor 'val_f1'",
    ),
    (dict(callbacks=[3]), TypeError, r"callbacks\[0\]"),
    (dict(verbose="loud"), TypeError, "verbose"),
]


@pytest.mark.parametrize("override,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises_before_compiling(override, exc, match):
    kw = dict(
        model=jbp.Sequential([Untouchable()]),
        params=((),),
        loss=jbp.losses.mse,
        optimizer=optim.sgd(0.1),
        train_data=(_X, _Y),
        epochs=1,
        key=jax.random.key(0),
        verbose=0,
    )
    kw.update(override)
    with pytest.raises(exc, match=match):
        fit(**kw)


def test_bad_early_stopping_arguments():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="lowest")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1.0)
