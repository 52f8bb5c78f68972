"""fit(progress_every=k): lines from inside the compiled epoch, arithmetic unchanged."""

import jax

jax.config.update("jax_enable_x64", True)

import re  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp import optim  # noqa: E402
from jbp.layers import Dense, Tanh  # noqa: E402

CE = jbp.losses.softmax_cross_entropy
LINE = re.compile(r"^  epoch (\d+)/(\d+)  step +(\d+)/(\d+)  loss (\S+)  accuracy (\S+)$")


def _setup(n=23, d=4):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((n, d)))
    y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    model = jbp.Sequential([Dense(5), Tanh(), Dense(3)])
    params, _ = model.init(jax.random.key(0), (d,))
    return model, jbp.cast(params, jnp.float64), x, y


def _fit(model, params, x, y, **kw):
    return jbp.fit(
        model, params, CE, optim.sgd(0.1), (x, y), batch_size=2, epochs=2,
        key=jax.random.key(1), **kw,
    )  # fmt: skip


def test_progress_lines_carry_running_means_and_change_nothing(capsys):
    """23 examples, batch 2 → 12 steps (11 full + a remainder of 1); a line every 5 steps.
    The running means in each line equal the mean of the per-step metrics recomputed
    independently from a Python loop of `make_train_step` with the same keys and order."""
    model, params, x, y = _setup()
    p0, h0 = _fit(model, params, x, y, verbose=0)
    capsys.readouterr()
    p1, h1 = _fit(model, params, x, y, verbose=1, progress_every=5)
    out = capsys.readouterr().out.splitlines()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p0, p1)
    assert h0.records[-1]["loss"] == h1.records[-1]["loss"]
    lines = [LINE.match(s) for s in out if s.startswith("  epoch")]
    assert all(lines) and [(m[1], m[3]) for m in lines] == [
        ("1", "5"), ("1", "10"), ("2", "5"), ("2", "10")
    ]  # fmt: skip
    assert all(m[2] == "2" and m[4] == "12" for m in lines)

    # independent reference: the same steps in Python (fit's documented key / order rule)
    step = jax.jit(
        jbp.train.make_train_step(model, CE, optim.sgd(0.1), metrics=["loss", "accuracy"])
    )
    opt_state, state, p = optim.sgd(0.1).init(params), model.init_state((4,)), params
    for e in range(2):
        k_perm, k_steps = jax.random.split(jax.random.fold_in(jax.random.key(1), e))
        keys = jax.random.split(k_steps, 12)
        order = np.asarray(jax.random.permutation(k_perm, 23))
        losses, accs = [], []
        for j in range(12):
            idx = order[2 * j : 2 * j + 2]
            p, opt_state, m, state = step(p, opt_state, x[idx], y[idx], keys[j], state)
            losses.append(float(m["loss"]))
            accs.append(float(m["accuracy"]))
        for m in lines[2 * e : 2 * e + 2]:
            i = int(m[3])
            np.testing.assert_allclose(float(m[5]), np.mean(losses[:i]), rtol=2e-4)
            np.testing.assert_allclose(float(m[6]), np.mean(accs[:i]), rtol=2e-4, atol=1e-4)


def test_progress_with_dp_sgd_and_silent_runs(capsys):
    model, params, x, y = _setup()
    dp = jbp.dp.DPConfig(max_norm=1.0, noise_multiplier=1.0, sample_rate=0.25, delta=1e-3)
    jbp.fit(
        model, params, CE, optim.sgd(0.1), (x, y), epochs=1, key=jax.random.key(1),
        privacy=dp, progress_every=2,
    )  # fmt: skip
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("  epoch")]
    steps = dp.steps_for()
    assert len(lines) == steps // 2 and lines[0].split()[3] == f"2/{steps}"
    _fit(model, params, x, y, verbose=0, progress_every=1)  # verbose=0: no lines
    assert "step" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, err, match",
    [(0, ValueError, "positive"), (2.5, TypeError, "float"), (True, TypeError, "bool")],
)
def test_progress_every_bad_values(value, err, match):
    model, params, x, y = _setup()
    with pytest.raises(err, match=f"progress_every.*{match}"):
        _fit(model, params, x, y, verbose=0, progress_every=value)
