"""Nothing silent: every boundary check of issue 20 raises, naming the culprit, before compiling.

Classes: concrete range checks that jit cannot make (labels, binary targets, Embedding ids),
gradient trees zipped unchecked, parameters / optimizer state / model state against what
the model and the optimizer build, divergence, configuration traps (EarlyStopping's
direction, learning rates and schedules, regularizer masks, shuffle, bfloat16 with Adam),
and false alarms of check_gradients. Resume and checkpoints: tests/test_resume.py.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import losses, optim, regularizers
from jbp.callbacks import EarlyStopping, infer_mode
from jbp.layers import Dense, Embedding, Flatten, ReLU, Tanh
from jbp.layers.normalization import BatchNorm

CE = losses.softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Tripwire(Dense):
    """A Dense that fails the test if anything traces or runs it: the checks come first."""

    def forward(self, params, x, *, key=None, train=False):
        raise AssertionError("the model was traced before the boundary check")


@dataclasses.dataclass(frozen=True)
class TripEmbedding(Embedding):
    def forward(self, params, x, *, key=None, train=False):
        raise AssertionError("the model was traced before the boundary check")


def _data(n=8, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n).astype(np.int32)


def _net(last=Tripwire):
    model = jbp.Sequential([Dense(8), ReLU(), last(3)])
    params, _ = model.init(jax.random.key(0), (4,))
    return model, params


def _fit(model, params, data, loss=CE, **kw):
    kw = {**dict(epochs=1, key=jax.random.key(0), verbose=0, metrics=("loss",)), **kw}
    return jbp.fit(model, params, loss, kw.pop("optimizer", optim.sgd(0.1)), data, **kw)


# --------------------------------------------------------------------------------------
# 1. range checks that jit cannot make: checked once, on the concrete data
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["train", "validation"])
@pytest.mark.parametrize("bad,found", [(7, r"\[0, 7\]"), (-1, r"\[-1, 2\]")])
def test_class_labels_out_of_range_are_named_in_fit(where, bad, found):
    model, params = _net()
    x, y = _data()
    y_bad = y.copy()
    y_bad[5] = bad
    y_bad[[0, 1]] = [0, 2]
    kw = (
        dict(data=(x, y_bad)) if where == "train" else dict(data=(x, y), validation_data=(x, y_bad))
    )
    with pytest.raises(
        ValueError,
        match=rf"{where}_data: y: softmax_cross_entropy: labels \(3 "
        rf"classes\) must lie in \[0, 3\), got values in {found}: "
        rf"1 of 8 out of range, the first at \[5\] = {bad}",
    ):
        _fit(model, params, **kw)


def test_labels_are_checked_in_evaluate_and_check_gradients():
    model, params = _net(Dense)
    x, y = _data()
    y[3] = 3
    with pytest.raises(
        ValueError, match=r"data: y: softmax_cross_entropy: labels .* first at \[3\] = 3"
    ):
        jbp.evaluate(model, params, CE, (x, y))
    with pytest.raises(
        ValueError, match=r"^y: softmax_cross_entropy: labels .* first at \[3\] = 3"
    ):
        jbp.check_gradients(model, CE, params, x, y)


def test_binary_targets_outside_unit_interval_and_negative_probabilities():
    model, params = _net()
    x, _ = _data()
    t = np.random.default_rng(1).uniform(size=(8, 3)).astype(np.float32)
    t[3, 1] = 1.5
    with pytest.raises(
        ValueError,
        match=r"train_data: y: binary_cross_entropy: targets must lie "
        r"in \[0, 1\], got values in .*first at \[3, 1\] = 1.5",
    ):
        _fit(model, params, (x, t), loss=losses.binary_cross_entropy)
    t[3, 1] = -0.25
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy: target probabilities must lie in "
        r"\[0, inf\].*first at \[3, 1\] = -0.25",
    ):
        _fit(model, params, (x, t))
    with pytest.raises(
        ValueError,
        match=r"validation_data: y: mse: target must have the "
        r"prediction's shape \(n, 3\) = \(8, 3\), got \(8, 2\)",
    ):
        _fit(model, params, (x, t), loss=losses.mse, validation_data=(x, t[:, :2]))


def _ids(n=6, t=5, vocab=10, seed=2):
    return np.random.default_rng(seed).integers(0, vocab, (n, t)).astype(np.int32)


def test_embedding_ids_outside_the_vocabulary_are_named():
    model = jbp.Sequential([TripEmbedding(10, 4), Flatten(), Tripwire(3)])
    params, _ = model.init(jax.random.key(0), (5,))
    ids, y = _ids(), np.arange(6) % 3
    bad = ids.copy()
    bad[2, 4] = 10
    with pytest.raises(
        ValueError,
        match=r"train_data: x: layers\[0\] \(TripEmbedding\): .*token "
        r"ids must lie in \[0, 10\), got values in \[0, 10\]: 1 of "
        r"30 out of range, the first at \[2, 4\] = 10",
    ):
        _fit(model, params, (bad, y))
    bad[2, 4] = -3
    with pytest.raises(ValueError, match=r"validation_data: x: layers\[0\].*\[2, 4\] = -3"):
        _fit(model, params, (ids, y), validation_data=(bad, y))
    with pytest.raises(TypeError, match=r"train_data: x: layers\[0\].*expected integer token ids"):
        _fit(model, params, (ids.astype(np.float32), y))


def test_embedding_ids_in_evaluate_and_check_gradients():
    model = jbp.Sequential([Embedding(10, 4), Flatten(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (5,))
    ids, y = _ids(), np.arange(6) % 3
    ids[0, 0] = 99
    with pytest.raises(ValueError, match=r"data: x: layers\[0\] \(Embedding\).*\[0, 0\] = 99"):
        jbp.evaluate(model, params, CE, (ids, y))
    with pytest.raises(ValueError, match=r"^x: layers\[0\] \(Embedding\).*\[0, 0\] = 99"):
        jbp.check_gradients(model, CE, params, ids, y)
    # the layer's own check, for a model that is the Embedding itself
    with pytest.raises(ValueError, match=r"^x: Embedding\(vocab_size=10.*token ids"):
        jbp.check_gradients(
            Embedding(10, 4),
            losses.mse,
            Embedding(10, 4).init(jax.random.key(0), (5,))[0],
            ids,
            np.zeros((6, 5, 4), np.float32),
        )


# --------------------------------------------------------------------------------------
# 2. two trees are compared before they are zipped
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ForgetsBias(Dense):
    """A backward that omits the bias gradient."""

    def backward(self, params, cache, dy):
        g, dx = super().backward(params, cache, dy)
        return {"W": g["W"]}, dx


@dataclasses.dataclass(frozen=True)
class ExtraLeaf(Dense):
    def backward(self, params, cache, dy):
        g, dx = super().backward(params, cache, dy)
        return {**g, "extra": g["b"]}, dx


def test_check_gradients_names_a_missing_or_extra_gradient_leaf():
    x, y = _data()
    for last, match in [
        (
            ForgetsBias,
            r"the hand-written gradient does not have the structure of "
            r"params: missing in the hand-written gradient: layers\[2\]\.b",
        ),
        (ExtraLeaf, r"not in params: layers\[2\]\.extra"),
    ]:
        model = jbp.Sequential([Dense(5), Tanh(), last(3)])
        params, _ = model.init(jax.random.key(0), (4,))
        with pytest.raises(ValueError, match=match):
            jbp.check_gradients(model, CE, params, x, y)


def test_fit_names_a_missing_gradient_leaf_before_running():
    model = jbp.Sequential([Dense(5), Tanh(), ForgetsBias(3)])
    params, _ = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"grads lacks the leaf at \[2\]\['b'\]"):
        _fit(model, params, _data())


def test_a_regularizer_mask_that_matches_no_leaf():
    model, params = _net()
    reg = regularizers.l2(1e-3, mask=lambda name: name.endswith(".kernel"))
    with pytest.raises(
        ValueError,
        match=r"regularizer: the mask of L2\(strength=0.001.* matches no "
        r"leaf of params, so the penalty would be 0; the "
        r"floating-point leaves are layers\[0\]\.W, layers\[0\]\.b",
    ):
        _fit(model, params, _data(), regularizer=reg)
    dense, dense_params = _net(Dense)
    with pytest.raises(ValueError, match="matches no leaf"):
        jbp.check_gradients(dense, CE, dense_params, *_data(), regularizer=reg)
    # a mask tree of the wrong structure is refused, never zipped
    with pytest.raises(ValueError, match="mask must be a pytree of bools shaped like params"):
        regularizers.l2(1e-3, mask=(True, False)).value(params)
    # the default selection (weight matrices) and an explicit mask that selects are fine
    regularizers.l2(1e-3).check_params(params)
    regularizers.l2(1e-3, mask=lambda n: n.startswith("layers[2]")).check_params(params)


# --------------------------------------------------------------------------------------
# 3. params, optimizer state and model state against what the model / optimizer build
# --------------------------------------------------------------------------------------


def _with(params, i, **leaves):
    layer = dict(params[i])
    for k, v in leaves.items():
        if v is None:
            layer.pop(k)
        else:
            layer[k] = v
    return params[:i] + (layer,) + params[i + 1 :]


BAD_PARAMS = [
    (
        "width",
        dict(W=jnp.zeros((4, 5))),
        r"layers\[0\]\.W: expected shape \(4, 8\), found \(4, 5\)",
    ),
    (
        "bias broadcasts",
        dict(b=jnp.zeros((1,))),
        r"layers\[0\]\.b: expected shape \(8,\), found \(1,\)",
    ),
    (
        "transposed",
        dict(W=jnp.zeros((8, 4))),
        r"layers\[0\]\.W: expected shape \(4, 8\), found \(8, 4\) \(transposed\?\)",
    ),
    (
        "missing key",
        dict(b=None),
        r"structure differs from model.init\(key, \(4,\)\): missing layers\[0\]\.b",
    ),
    (
        "integer",
        dict(W=jnp.zeros((4, 8), jnp.int32)),
        r"layers\[0\]\.W: expected a floating-point array, found dtype int32",
    ),
]


@pytest.mark.parametrize("case,leaves,match", BAD_PARAMS, ids=[c[0] for c in BAD_PARAMS])
def test_check_params_names_leaf_expected_and_found(case, leaves, match):
    model, params = _net()
    bad = _with(params, 0, **leaves)
    with pytest.raises(ValueError, match=r"params: .*" + match):
        jbp.check_params(model, bad, (4,))
    with pytest.raises(ValueError, match=match):  # fit checks before compiling
        _fit(model, bad, _data())
    assert jbp.check_params(model, params, (4,)) == (3,)


def test_params_of_another_model_and_odd_leaves():
    model, _ = _net()
    other, _ = jbp.Sequential([Dense(8), Dense(3)]).init(jax.random.key(0), (4,))
    with pytest.raises(
        ValueError,
        match=r"missing layers\[2\]\.W, layers\[2\]\.b; unexpected "
        r"layers\[1\]\.W, layers\[1\]\.b; were they made by "
        r"this model's init",
    ):
        jbp.check_params(model, other, (4,))
    _, params = _net()
    with pytest.raises(TypeError, match=r"params: layers\[0\]\.W is a str, expected an array"):
        jbp.check_params(model, _with(params, 0, W="weights"), (4,))
    with pytest.raises(
        TypeError, match=r"in_shape: expected a tuple of ints.*got the int 4; write \(4,\)"
    ):
        jbp.check_params(model, params, 4)


def test_evaluate_and_check_gradients_check_params():
    model, params = _net(Dense)
    bad = _with(params, 2, W=jnp.zeros((3, 8)))
    x, y = _data()
    with pytest.raises(
        ValueError,
        match=r"layers\[2\]\.W: expected shape \(8, 3\), found \(3, 8\) "
        r"\(transposed\?\)",
    ):
        jbp.evaluate(model, bad, CE, (x, y))
    with pytest.raises(ValueError, match=r"layers\[2\]\.b: expected shape \(3,\), found \(1,\)"):
        jbp.check_gradients(model, CE, _with(params, 2, b=jnp.zeros(1)), x, y)


def test_optimizer_state_of_another_optimizer_or_other_params():
    model, params = _net()
    with pytest.raises(
        ValueError,
        match=r"opt_state: the structure differs from "
        r"optimizer.init\(params\): missing opt_state\.states\[0\]"
        r"\.mu\[0\]\['W'\].*is it the state of this optimizer",
    ):
        _fit(
            model,
            params,
            _data(),
            optimizer=optim.adam(1e-3),
            opt_state=optim.sgd(0.1).init(params),
        )
    other = _with(params, 0, W=jnp.zeros((4, 5)), b=jnp.zeros(5))
    with pytest.raises(
        ValueError,
        match=r"opt_state: shapes differ from optimizer.init\(params\): "
        r"opt_state\.states\[0\]\.trace\[0\]\['W'\]: expected "
        r"shape \(4, 8\), found \(4, 5\)",
    ):
        _fit(
            model,
            params,
            _data(),
            optimizer=optim.momentum(0.1),
            opt_state=optim.momentum(0.1).init(other),
        )


def test_model_state_of_another_model():
    model = jbp.Sequential([Dense(8), BatchNorm(), Tripwire(3)])
    params, _ = model.init(jax.random.key(0), (4,))
    state = jbp.Sequential([Dense(6), BatchNorm(), Dense(3)]).init_state((4,))
    with pytest.raises(
        ValueError,
        match=r"state: shapes differ from model.init_state\(\(4,\)\): "
        r"layers\[1\]\.\w+: expected shape \(8,\), found \(6,\)",
    ):
        _fit(model, params, _data(), state=state)


# --------------------------------------------------------------------------------------
# 4. divergence: stop at the first non-finite epoch (default), raise, or ignore
# --------------------------------------------------------------------------------------


def _diverging(**kw):
    """Least squares with a step far too large: the loss grows ~100x a step and overflows."""
    x = np.linspace(-2.0, 2.0, 32, dtype=np.float32)[:, None]
    model = jbp.Sequential([Dense(1)])
    params, _ = model.init(jax.random.key(0), (1,))
    seen = []

    def record(epoch, logs, p):
        seen.append(p)

    out = jbp.fit(
        model,
        params,
        losses.mse,
        optim.sgd(5.0),
        (x, 3 * x),
        batch_size=4,
        epochs=8,
        metrics=("loss",),
        key=jax.random.key(0),
        callbacks=[record],
        **kw,
    )
    return out, seen


def test_divergence_stops_and_returns_the_last_finite_parameters(capsys):
    (params, history), seen = _diverging(verbose=1)
    d = history.diverged
    assert d is not None and d > 1 and len(history) == d
    losses_ = history["loss"]
    assert all(math.isfinite(v) for v in losses_[:-1]) and not math.isfinite(losses_[-1])
    assert len(seen) == d - 1  # callbacks never saw the diverged parameters
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(seen[-1])):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.isfinite(np.asarray(a)).all()
    out = capsys.readouterr().out
    assert (
        f"diverged at epoch {d}: loss inf; stopped, returning the parameters after epoch {d - 1}"
        in out
    )
    assert jbp.History.from_json(history.to_json()).diverged == d


def test_divergence_raise_and_ignore():
    with pytest.raises(jbp.DivergenceError, match=r"training diverged at epoch \d: loss inf"):
        _diverging(verbose=0, on_nonfinite="raise")
    (params, history), _ = _diverging(verbose=0, on_nonfinite="ignore")
    assert len(history) == 8 and history.diverged is None
    assert not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))
    model, params = _net()
    with pytest.raises(
        ValueError,
        match=r"on_nonfinite: expected one of \('stop', 'raise', "
        r"'ignore'\), got 'warn'",
    ):
        _fit(model, params, _data(), on_nonfinite="warn")


# --------------------------------------------------------------------------------------
# 5. configuration traps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "monitor,mode",
    [
        ("val_accuracy", "max"),
        ("accuracy", "max"),
        ("test_accuracy", "max"),
        ("val_auc", "max"),
        ("val_loss", "min"),
        ("loss", "min"),
        ("val_mse", "min"),
        ("rmse", "min"),
        ("val_mae", "min"),
        ("penalty", "min"),
    ],
)
def test_early_stopping_infers_its_direction(monitor, mode):
    assert EarlyStopping(monitor).mode == mode == infer_mode(monitor)
    other = {"min": "max", "max": "min"}[mode]
    assert EarlyStopping(monitor, mode=other).mode == other  # explicit mode wins


def test_early_stopping_on_val_accuracy_keeps_the_best_epoch():
    es = EarlyStopping("val_accuracy", patience=3)
    curve = [0.5, 0.9, 0.7, 0.6, 0.8]
    stops = [es.on_epoch_end(e, {"val_accuracy": v}, f"params@{e}") for e, v in enumerate(curve, 1)]
    assert stops == [None, None, None, None, True]
    assert (es.best_epoch, es.best_value) == (2, 0.9)
    assert es.on_train_end("last") == ("params@2", ())
    with pytest.raises(
        ValueError,
        match=r"cannot tell whether 'val_f2_macro' should go up or "
        r"down; pass mode='min' or mode='max'",
    ):
        EarlyStopping("val_f2_macro")


@pytest.mark.parametrize(
    "make", [optim.sgd, optim.momentum, optim.adagrad, optim.rmsprop, optim.adam, optim.adamw]
)
@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -1e-3])
def test_learning_rates_must_be_finite_and_positive(make, lr):
    with pytest.raises(
        ValueError,
        match=r"learning_rate must be a finite number in \(0.0, inf\)"
        if math.isinf(lr)
        else "learning_rate must be in",
    ):
        make(lr)


def test_other_hyperparameters_must_be_finite():
    with pytest.raises(ValueError, match=r"adam: eps must be a finite number"):
        optim.adam(1e-3, eps=float("inf"))
    with pytest.raises(ValueError, match=r"clip_by_global_norm: max_norm must be a finite"):
        optim.clip_by_global_norm(float("inf"))


@pytest.mark.parametrize(
    "schedule,match",
    [
        (optim.linear_schedule(0.1, -0.1, 100), r"yields -0.00\d+ at step 51"),
        (lambda t: 1.0 / (10 - t), r"yields inf at step 10"),
        (lambda t: jnp.sqrt(0.5 - t / 1000.0), r"yields nan at step 501"),
        (optim.exponential_decay(0.1, 1, 2.0), r"yields inf at step \d+.*bound a growing schedule"),
        (lambda t: -0.1 if t > 20 else 0.1, r"yields -0.1 at step 21"),  # not vectorised: per step
    ],
)
def test_schedules_with_negative_or_non_finite_rates(schedule, match):
    with pytest.raises(ValueError, match=r"sgd: learning_rate: the schedule " + match):
        optim.sgd(schedule)


def test_valid_schedules_that_reach_zero_are_accepted():
    for s in [
        optim.cosine_decay_schedule(0.1, 100),
        optim.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100),
        optim.piecewise_constant_schedule(0.1, {10: 0.5}),
        optim.linear_schedule(0.1, 0.0, 50),
        optim.join_schedules([optim.constant_schedule(0.1), optim.constant_schedule(0.01)], [5]),
    ]:
        optim.adam(s)


@pytest.mark.parametrize(
    "boundaries,exc,match",
    [
        ([10, 5], ValueError, r"boundaries must be strictly increasing steps, got \[10, 5\]"),
        (
            [5, 5],
            ValueError,
            r"boundaries must be strictly increasing.*schedules\[1\] would never run",
        ),
        ([-1, 5], ValueError, r"boundaries\[0\] must be >= 0"),
        ([2.5, 5], TypeError, r"boundaries\[0\] must be an int"),
    ],
)
def test_join_schedules_boundaries(boundaries, exc, match):
    c = optim.constant_schedule(0.1)
    with pytest.raises(exc, match="join_schedules: " + match):
        optim.join_schedules([c, c, c], boundaries)


@pytest.mark.parametrize("arg,value", [("shuffle", "no"), ("shuffle", 1), ("drop_last", "yes")])
def test_shuffle_and_drop_last_must_be_bools(arg, value):
    model, params = _net()
    with pytest.raises(TypeError, match=rf"{arg}: expected True or False, got {value!r}"):
        _fit(model, params, _data(), **{arg: value})


@pytest.mark.parametrize(
    "make",
    [optim.adam, optim.rmsprop, optim.adagrad, lambda lr: optim.sgd(lr, momentum=0.9)],
    ids=["adam", "rmsprop", "adagrad", "momentum"],
)
def test_low_precision_params_get_float32_statistics(make):
    rng = np.random.default_rng(3)
    params = {
        "W": jnp.asarray(rng.standard_normal((3, 4)), jnp.bfloat16),
        "s": jnp.asarray(rng.standard_normal(4), jnp.float16),
    }
    grads = jax.tree.map(lambda p: (p * 0.5 + 0.25).astype(p.dtype), params)
    opt = make(1e-2)
    state = opt.init(params)
    floats = [a for a in jax.tree.leaves(state) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float32 for a in floats)
    updates, state2 = opt.update(grads, state, params)
    for u in jax.tree.leaves(updates):
        assert u.dtype == jnp.float32 and np.isfinite(np.asarray(u)).all()
    assert [a.dtype for a in jax.tree.leaves(state2)] == [a.dtype for a in jax.tree.leaves(state)]
    new = optim.apply_updates(params, updates)
    assert new["W"].dtype == jnp.bfloat16 and new["s"].dtype == jnp.float16


def test_adam_first_step_on_bfloat16_matches_the_equations():
    """Step 1: m̂ = g, v̂ = g², u = −η g / (|g| + ε); in bfloat16 arithmetic 1 − 0.999 = 0 and
    the bias correction divided by zero (NaN at once)."""
    rng = np.random.default_rng(4)
    g64 = rng.standard_normal((5, 3)) * np.logspace(-3, 1, 3)
    p = {"W": jnp.asarray(rng.standard_normal((5, 3)), jnp.bfloat16)}
    g = {"W": jnp.asarray(g64, jnp.bfloat16)}
    lr, eps = 1e-2, 1e-8
    opt = optim.adam(lr, eps=eps)
    u, _ = opt.update(g, opt.init(p), p)
    gb = np.asarray(g["W"], np.float64)  # the bfloat16 gradient, exactly
    np.testing.assert_allclose(
        np.asarray(u["W"], np.float64), -lr * gb / (np.abs(gb) + eps), rtol=1e-6
    )


def test_bfloat16_mlp_trains_with_adam_like_float32():
    (x, y), _ = jbp.datasets.digits()
    x, y = x[:256], y[:256]
    model = jbp.Sequential([Dense(32), Tanh(), Dense(10)])
    params, _ = model.init(jax.random.key(0), (64,))
    kw = dict(epochs=12, key=jax.random.key(1), verbose=0, metrics=("loss",))  # full batch
    _, h32 = jbp.fit(model, params, CE, optim.adam(3e-2), (x, y), **kw)
    p16, h16 = jbp.fit(
        model,
        jbp.cast(params, jnp.bfloat16),
        CE,
        optim.adam(3e-2),
        (x.astype(jnp.bfloat16), y),
        **kw,
    )
    assert h16.diverged is None and all(math.isfinite(v) for v in h16["loss"])
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(p16))
    assert h16["loss"][-1] < 0.2 * h16["loss"][0]  # it learns
    np.testing.assert_allclose(h16["loss"], h32["loss"], rtol=0.02, atol=0.01)


# --------------------------------------------------------------------------------------
# 6. check_gradients: no false alarm on a leaf whose true gradient is 0
# --------------------------------------------------------------------------------------


def _bn_problem(dtype, last=Dense, scale=100.0):
    """Dense → BatchNorm: the Dense bias has a true gradient of exactly 0 (BatchNorm
    subtracts the batch mean); its computed gradient is rounding noise. A target scale of
    100 makes the loss ~1e4, and the noise with it."""
    rng = np.random.default_rng(0)
    model = jbp.Sequential([last(6), BatchNorm(), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(1), (5,))
    x = jnp.asarray(rng.standard_normal((16, 5)), dtype)
    y = jnp.asarray(rng.standard_normal((16, 3)) * scale, dtype)
    return model, jbp.cast(params, dtype), x, y


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
def test_a_zero_gradient_leaf_passes_and_the_report_names_the_bound(dtype):
    model, params, x, y = _bn_problem(dtype)
    report = jbp.check_gradients(model, losses.mse, params, x, y)
    assert report.ok, str(report)
    rows = {l.name: l for l in report.leaves}
    assert rows["layers[0].b"].rel_err > 0.1  # relative to itself: pure noise
    assert rows["layers[0].b"].bound == "others"
    assert rows["layers[0].b"].fd_bound in ("others", "loss")
    assert rows["layers[0].W"].bound == "leaf" and rows["layers[0].W"].fd_bound == "leaf"
    text = str(report)
    assert (
        "bound" in text
        and "others/" in text
        and "bounds: leaf = its own gradient; others = 0.01 x" in text
    )


@dataclasses.dataclass(frozen=True)
class OffsetBias(Dense):
    """A bias gradient off by a constant: wrong where the true gradient is 0."""

    def backward(self, params, cache, dy):
        g, dx = super().backward(params, cache, dy)
        return {**g, "b": g["b"] + 1e-3}, dx


def test_the_floors_still_catch_a_wrong_zero_gradient_leaf():
    model, params, x, y = _bn_problem(jnp.float64, last=OffsetBias, scale=1.0)
    report = jbp.check_gradients(model, losses.mse, params, x, y)
    assert report.failed == ["layers[0].b"], str(report)
    bad = {l.name: l for l in report.leaves}["layers[0].b"]
    assert bad.ok_autodiff is False and bad.ok_fd is False
