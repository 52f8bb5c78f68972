"""``fit(..., record=[...], record_every=k)``: extensions recorded inside the compiled epoch.

The reference is a Python loop of the jitted ``make_train_step(..., extensions=...)`` over the
same batches (fit's documented order: ``fold_in(key, e)``, ``split`` into the shuffling key
and one key per step, the remainder batch last), averaging the extension's results at the
recorded step indices with NumPy.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import optim
from jbp.extensions import BatchL2, Extension
from jbp.layers import Dense, ReLU
from jbp.rules import Alignment, AlignmentRecord, plot_alignment, with_rule

CE = jbp.losses.softmax_cross_entropy
N, BS = 50, 8  # 6 full batches and a remainder of 2: 7 steps per epoch


def _model():
    return with_rule(jbp.Sequential([Dense(7), ReLU(), Dense(3)]), "fa", seed=3)


def _data(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, 5)) * rng.uniform(0.5, 2, size=5), dtype)
    y = jnp.asarray(rng.integers(0, 3, N), jnp.int32)
    return x, y


def _params(model, dtype):
    p, _ = model.init(jax.random.key(0), (5,))
    return jax.tree.map(lambda a: a.astype(dtype), p)


def _state(model, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), model.init_state((5,)))


@dataclasses.dataclass(frozen=True)
class Probe(Extension):
    """A test extension: per weight layer, ``[Σ∇W, log Σδ]`` (the log is NaN when the
    summed delta is negative) and a leaf that is always NaN."""

    name = "probe"

    def compute(self, call):
        s = jnp.sum(call.dy)
        return {
            "pair": jnp.stack([jnp.sum(call.grads["W"]), jnp.log(s)]),
            "never": jnp.asarray(jnp.nan, s.dtype),
        }


def _loop(model, params, state, data, ext, *, epochs, every, key, opt):
    """Per epoch, the results of ``ext`` at the recorded steps (lists of host trees), and the
    final parameters, by a Python loop of the jitted step."""
    x, y = data
    step = jax.jit(jbp.make_train_step(model, CE, opt, extensions=[ext]))
    nb, rem = divmod(N, BS)
    n_steps = nb + (1 if rem else 0)
    opt_state = opt.init(params)
    per_epoch = []
    for e in range(epochs):
        k_perm, k_steps = jax.random.split(jax.random.fold_in(key, e))
        keys = jax.random.split(k_steps, n_steps)
        order = np.asarray(jax.random.permutation(k_perm, N))
        got = []
        for j in range(n_steps):
            idx = order[j * BS : (j + 1) * BS]
            params, opt_state, m, state = step(params, opt_state, x[idx], y[idx], keys[j], state)
            if j % every == 0:
                got.append(jax.device_get(m["extras"][ext.name]))
        per_epoch.append(got)
    return per_epoch, params


def _fit(model, params, state, data, *, epochs=2, opt=None, **kw):
    kw.setdefault("verbose", 0)
    return jbp.fit(
        model,
        params,
        CE,
        opt or optim.adamw(1e-2),
        data,
        batch_size=BS,
        epochs=epochs,
        key=jax.random.key(7),
        state=state,
        **kw,
    )


@pytest.mark.parametrize("dtype,epochs", [(jnp.float64, 2), (jnp.float32, 1)])
def test_recorded_means_match_a_python_loop(dtype, epochs):
    model, data = _model(), _data(dtype)
    params, state = _params(model, dtype), _state(model, dtype)
    opt = optim.adamw(1e-2)
    ref, p_ref = _loop(
        model, params, state, data, Alignment(), epochs=epochs, every=3, key=jax.random.key(7),
        opt=opt,
    )  # fmt: skip
    p, h = _fit(
        model, params, state, data, opt=opt, epochs=epochs, record=[Alignment()], record_every=3
    )
    assert len(ref[0]) == 3  # steps 0, 3 and 6 (the remainder batch)
    rtol = 1e-12 if dtype == jnp.float64 else 2e-5
    for e, got in enumerate(ref):
        for layer in ("layers[0]", "layers[2]"):
            for q in ("grad_angle", "feedback_angle", "norm_ratio"):
                want = np.mean([float(g[layer][q]) for g in got])
                np.testing.assert_allclose(
                    h[f"alignment/{layer}/{q}"][e], want, rtol=rtol, atol=rtol
                )
        assert h["alignment/nonfinite"][e] == 0
    assert h["alignment/layers[2]/grad_angle"] == [0.0] * epochs  # the output layer: exactly 0
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    rec = AlignmentRecord.from_history(h)
    assert rec.layers == ["layers[0]", "layers[2]"] and rec.epochs == list(range(1, epochs + 1))
    assert rec.quantity("grad_angle")["layers[0]"] == h["alignment/layers[0]/grad_angle"]
    assert rec.loss == h["loss"]


def test_every_step_only_step_0_and_nonfinite_values():
    dtype = jnp.float64
    model, data = _model(), _data(dtype)
    params, state = _params(model, dtype), _state(model, dtype)
    opt = optim.sgd(0.1)
    for every, n_rec in ((1, 7), (50, 1)):  # every step; k > steps per epoch: step 0 only
        ref, _ = _loop(
            model,
            params,
            state,
            data,
            Probe(),
            epochs=2,
            every=every,
            key=jax.random.key(7),
            opt=opt,
        )
        _, h = _fit(model, params, state, data, opt=opt, record=Probe(), record_every=every)
        for e, got in enumerate(ref):
            assert len(got) == n_rec
            bad = 0
            for i in (0, 2):
                pair = np.stack([g[i]["pair"] for g in got])  # (recorded steps, 2)
                bad += int(np.sum(~np.isfinite(pair))) + len(got)  # + the "never" leaf
                want = [
                    np.mean(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in pair.T
                ]
                np.testing.assert_allclose(h[f"probe/{i}/pair"][e], want, rtol=1e-12)
                assert math.isnan(h[f"probe/{i}/never"][e])
            assert h["probe/nonfinite"][e] == bad
            assert "probe/1" not in h  # ReLU has no parameters: no column
        logs = [np.stack([g[0]["pair"] for g in got])[:, 1] for got in ref]
        if every == 1:  # the data gives both signs of Σδ: NaNs were skipped, not all
            assert any((~np.isfinite(v)).any() and np.isfinite(v).any() for v in logs)


def test_recording_keeps_training_bit_identical_with_progress_lines_and_a_resume(tmp_path, capsys):
    dtype = jnp.float32
    model, data = _model(), _data(dtype)
    params, state = _params(model, dtype), _state(model, dtype)
    kw = dict(epochs=3, record=[Alignment()], record_every=3)
    p0, h0 = _fit(model, params, state, data, epochs=3)
    p1, h1 = _fit(model, params, state, data, verbose=1, progress_every=3, **kw)
    for a, b in zip(jax.tree.leaves((p0, h0.state)), jax.tree.leaves((p1, h1.state))):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert h0["loss"] == h1["loss"] and h0["accuracy"] == h1["accuracy"]
    out = capsys.readouterr().out
    assert "epoch 1/3  step 3/7  loss" in out and "step 6/7" in out
    assert "alignment" not in out  # the epoch line leaves the recorded columns out
    # interrupted after 2 epochs, resumed without progress lines: the same history
    _fit(model, params, state, data, **{**kw, "epochs": 2}, checkpoint_dir=tmp_path)
    p2, h2 = _fit(model, params, state, data, **kw, checkpoint_dir=tmp_path, resume=True)
    assert h2.resumed_from == 2 and h2.keys() == h1.keys()
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    for k in h1.keys():
        if k != "seconds":
            assert h2[k] == h1[k], k
    assert len(h1["alignment/layers[0]/grad_angle"]) == 3
    fig = plot_alignment(h2)
    assert len(fig.axes[0].get_lines()) == 3  # two layers and the 90° line


def test_bad_record_arguments():
    model, data = _model(), _data(jnp.float64)
    params = _params(model, jnp.float64)
    with pytest.raises(ValueError, match="record_every: expected a positive"):
        _fit(model, params, None, data, record=[Alignment()], record_every=0)
    with pytest.raises(TypeError, match="record_every"):
        _fit(model, params, None, data, record=[Alignment()], record_every=2.0)
    with pytest.raises(TypeError, match=r"record\[1\]: expected an extension"):
        _fit(model, params, None, data, record=[Alignment(), "alignment"])
    with pytest.raises(TypeError, match="record: expected a list"):
        _fit(model, params, None, data, record="alignment")
    with pytest.raises(ValueError, match="record: two extensions with the same name"):
        _fit(model, params, None, data, record=[Alignment(), Alignment("direct")])
    with pytest.raises(ValueError, match="record: .*grad_fn='manual'"):
        _fit(model, params, None, data, record=[Alignment()], grad_fn="autodiff")
    with pytest.raises(ValueError, match="record: .*privacy"):
        dp = jbp.dp.DPConfig(noise_multiplier=1.0, max_norm=1.0, sample_rate=0.2, delta=1e-3)
        jbp.fit(model, params, CE, optim.sgd(0.1), data, epochs=1, key=jax.random.key(0),
                privacy=dp, record=[Alignment()], verbose=0)  # fmt: skip
    with pytest.raises(ValueError, match="record: .*mesh"):
        _fit(model, params, None, data, record=[Alignment()], mesh=jax.make_mesh((1,), ("data",)))

    @dataclasses.dataclass(frozen=True)
    class Loss(Probe):
        name = "loss"

    with pytest.raises(ValueError, match="record: extension names \\['loss'\\]"):
        _fit(model, params, None, data, record=[Loss()])
    with pytest.raises(ValueError, match="record: the extensions' results depend on the batch"):
        _fit(model, params, None, data, record=[BatchL2()])
    with pytest.raises(ValueError, match="no 'alignment/<layer>/<quantity>' column"):
        AlignmentRecord.from_history(jbp.History([{"epoch": 1, "loss": 1.0}]))
    with pytest.raises(TypeError, match="plot_alignment: expected an AlignmentRecord"):
        plot_alignment({"epoch": [1]})
