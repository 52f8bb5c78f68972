"""jbp.summary: counts checked against hand counts from the layer shapes."""

import jax.numpy as jnp
import pytest

import jbp
from jbp import layers as L
from jbp.summary import rows


def _by_name(model, in_shape, **kw):
    return {r.name: r for r in rows(model, in_shape, **kw)}


def test_mlp_counts_shapes_and_table():
    m = L.Sequential([L.Dense(32), L.ReLU(), L.Dense(10)])
    r = _by_name(m, (64,))
    assert r["layers[0]"].params == 64 * 32 + 32
    assert r["layers[1]"].params == 0
    assert r["layers[2]"].params == 32 * 10 + 10
    assert r[""].params == 64 * 32 + 32 + 32 * 10 + 10 and r[""].state == 0
    assert r["layers[0]"].out_shape == (32,) and r["layers[2]"].out_shape == (10,)
    text = jbp.summary(m, (64,))
    assert text == m.summary((64,))
    assert f"Trainable params: {64 * 32 + 32 + 330:,}" in text
    assert "layers[2] Dense" in text and "(None, 10)" in text and "Non-trainable state: 0" in text


def test_cnn_with_batchnorm_state_counted_separately():
    m = L.Sequential([L.Conv2D(8, 3), L.BatchNorm(), L.ReLU(), L.Flatten(), L.Dense(10)])
    r = _by_name(m, (8, 8, 1))
    conv = 3 * 3 * 1 * 8 + 8
    bn, bn_state = 2 * 8, 2 * 8  # gamma, beta; running mean, var
    dense = 8 * 8 * 8 * 10 + 10  # 'same' padding keeps 8x8
    assert r["layers[0]"].out_shape == (8, 8, 8)
    assert r["layers[1]"].params == bn and r["layers[1]"].state == bn_state
    assert r[""].params == conv + bn + dense and r[""].state == bn_state
    text = jbp.summary(m, (8, 8, 1))
    assert f"Non-trainable state: {bn_state}" in text and f"{bn} (+{bn_state} state)" in text


def test_lstm_counts():
    m = L.Sequential([L.LSTM(8), L.Dense(2)])
    r = _by_name(m, (5, 3))
    assert r["layers[0]"].params == 4 * 8 * (3 + 8) + 4 * 8
    assert r["layers[0]"].out_shape == (8,)
    assert r[""].params == 4 * 8 * (3 + 8) + 4 * 8 + 8 * 2 + 2


def test_transformer_block_nested_paths_and_counts():
    f, h = 16, 32
    m = L.transformer_block(f, 2, h)
    r = _by_name(m, (5, f))
    ln = 2 * f
    attn = 4 * (f * f + f)  # Wq, Wk, Wv, Wo and their biases
    mlp = ln + (f * h + h) + (h * f + f)
    assert r["layers[0]"].params == ln + attn
    assert r["layers[0].block.layers[1]"].kind == "MultiHeadAttention"
    assert r["layers[0].block.layers[1]"].params == attn
    assert r["layers[1].block.block.layers[1]"].out_shape == (5, h)
    assert r[""].params == ln + attn + mlp
    text = jbp.summary(m, (5, f))
    assert "  layers[0].block Sequential" in text  # nested rows indented


def test_params_given_report_their_dtype():
    import jax

    m = L.Sequential([L.Dense(3)])
    params, _ = m.init(jax.random.key(0), (4,))
    text = jbp.summary(m, (4,), params=jbp.cast(params, jnp.float16))
    assert "float16" in text
    with pytest.raises(ValueError, match="params"):
        jbp.summary(m, (4,), params=(params, params))


@pytest.mark.parametrize(
    "model,shape,exc",
    [
        ("notalayer", (3,), TypeError),
        (L.Sequential([L.Dense(2)]), (0,), ValueError),
        (L.Sequential([L.Dense(2)]), 3, TypeError),
    ],
)
def test_bad_arguments(model, shape, exc):
    with pytest.raises(exc, match="summary"):
        jbp.summary(model, shape)
