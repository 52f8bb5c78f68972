"""Smoke tests: examples/transformer.py, both tasks with tiny settings, and its two helpers
that are not jbp's own (the next-character loss and the windowed sampler), each against an
independent reference."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--epochs",
    "1",
    "--features",
    "8",
    "--heads",
    "2",
    "--blocks",
    "1",
    "--mlp-hidden",
    "8",
    "--batch-size",
    "32",
    "--no-plot",
]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tf = _load("transformer")


def test_sentiment_task_tiny(capsys):
    out = tf.main(
        ["--limit", "64", "--max-len", "10", "--vocab", "200", "--baselines", "none"] + TINY
    )
    assert out["check_ok"], str(out["report"])
    assert len(out["history"]["loss"]) == 1
    assert 0.0 <= out["test"]["accuracy"] <= 1.0 and np.isfinite(out["test"]["loss"])
    text = capsys.readouterr().out
    assert "Transformer 1×8-d, 2 heads, T=10" in text and "majority class" in text


def test_lm_task_tiny(capsys):
    out = tf.main(
        [
            "--task",
            "lm",
            "--limit",
            "24",
            "--context",
            "10",
            "--val-windows",
            "6",
            "--min-char-count",
            "1",
            "--sample-len",
            "12",
            "--prompt",
            "The ",
            "--prompt",
            "A film that is",
        ]
        + TINY
    )  # the second prompt outgrows T = 10
    assert out["check_ok"], str(out["report"])
    assert len(out["history"]["val_loss"]) == 1 and np.isfinite(out["val_loss"])
    assert [s[:4] for s in out["samples"]] == ["The ", "A fi"]
    assert [len(s) for s in out["samples"]] == [4 + 12, 14 + 12]
    assert set("".join(out["samples"])) <= set(out["chars"])
    assert "bigram" in capsys.readouterr().out


def test_next_char_cross_entropy_matches_jax_grad():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.standard_normal((3, 5, 7)))
    t = jnp.asarray(rng.integers(0, 7, (3, 5)))
    ref = lambda z: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), t[..., None], -1))  # noqa: E731
    loss = tf.next_char_cross_entropy
    v, g = loss.value_and_grad(z, t)
    np.testing.assert_allclose(float(v), float(ref(z)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(ref)(z)), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np.asarray(loss.grad(z, t)), np.asarray(g), rtol=1e-12)
    v32, g32 = loss.value_and_grad(z.astype(jnp.float32), t)
    np.testing.assert_allclose(np.asarray(g32), np.asarray(g), rtol=1e-4, atol=1e-7)


def test_sampler_matches_a_plain_loop_over_prefixes():
    """The jitted sampler (fixed window, causal mask hides the unfilled tail, slides past T)
    draws what a plain loop draws from the model run on exactly the last ≤ T characters."""
    T, V, n_new = 5, 11, 7
    model = tf.build_lm(V, T, features=8, num_heads=2, blocks=1, mlp_hidden=8)
    params, _ = model.init(jax.random.key(1), (T,))
    prompt = np.array([3, 1, 4], np.int32)
    key = jax.random.key(7)
    buf = np.zeros(max(len(prompt) + n_new, T), np.int32)
    buf[: len(prompt)] = prompt
    got = np.asarray(
        tf.make_sampler(model, T, n_new)(params, key, jnp.asarray(buf), len(prompt), 1.3)
    )
    apply = jax.jit(model.apply)  # one compile per prefix length (3, 4, then 5)
    seq = list(prompt)
    for k in jax.random.split(key, n_new):
        ctx = jnp.asarray(seq[-T:], jnp.int32)[None]
        logits = apply(params, ctx)[0, -1]
        seq.append(int(jax.random.categorical(k, logits / 1.3)))
    assert got.tolist() == seq[len(prompt) :]
