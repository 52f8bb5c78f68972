"""Every layer, proven by ``jbp.testing.check_layer`` from a table of settings (BackPACK keeps
its layer × extension settings as data the same way).

Each row runs, in float64 and float32: the hand-written backward against ``jax.vjp`` of the
layer's own forward (batch 3 and batch 1, under ``jit``), the backward under ``vmap`` and
inside ``lax.scan``, every first-order extension against its ``vmap(jax.grad)`` definition
(skipped for layers that mix examples), and a float64 finite-difference spot check. A new
layer gets one row here.
"""

import jax
import numpy as np
import pytest

from jbp import layers as L
from jbp.testing import check_layer

# (id, layer, in_shape, options for check_layer)
SETTINGS = [
    ("dense", L.Dense(4), (5,), {}),
    ("dense_seq_nobias", L.Dense(3, use_bias=False), (4, 5), {}),
    ("dense_seq_long", L.Dense(2), (7, 2), {}),  # 2T² > in·units: per-example product
    ("sigmoid", L.Sigmoid(), (4,), {}),
    ("tanh", L.Tanh(), (4,), {}),
    ("relu", L.ReLU(), (4,), {}),
    ("leaky_relu", L.LeakyReLU(0.1), (4,), {}),
    ("elu", L.ELU(0.7), (4,), {}),
    ("softplus", L.Softplus(), (4,), {}),
    ("gelu", L.GELU(), (4,), {}),
    ("gelu_tanh", L.GELU(approximate=True), (4,), {}),
    ("softmax", L.Softmax(), (5,), {}),
    ("flatten", L.Flatten(), (2, 3), {}),
    ("dropout_train", L.Dropout(0.4), (6,), {"train": True, "key": jax.random.key(3)}),
    ("conv_same", L.Conv2D(3, (3, 3)), (6, 6, 2), {}),
    ("conv_valid_stride", L.Conv2D(2, (2, 3), strides=(2, 1), padding="VALID"), (7, 6, 2), {}),
    ("maxpool", L.MaxPool2D((2, 2)), (4, 4, 2), {}),
    ("avgpool_same", L.AvgPool2D((3, 3), strides=(2, 2), padding="SAME"), (5, 5, 2), {}),
    ("global_avgpool", L.GlobalAvgPool2D(), (3, 3, 2), {}),
    (
        "batchnorm_eval",
        L.BatchNorm(),
        (3, 4),
        {"state": {"mean": np.array([0.1, -0.2, 0.3, 0.0]), "var": np.array([0.5, 1.5, 2.0, 1.0])}},
    ),
    ("batchnorm_train", L.BatchNorm(), (4,), {"train": True}),
    ("layernorm", L.LayerNorm(), (3, 4), {}),
    ("embedding_pad", L.Embedding(7, 3, pad_id=0), (4,), {"vocab": 7}),
    ("masking", L.Masking(), (4, 3), {}),
    ("meanpool_masked", L.MeanPool1D(), (4, 3), {"mask": "random"}),
    ("rnn_masked", L.SimpleRNN(3), (4, 2), {"mask": "random"}),
    ("lstm_masked_sequences", L.LSTM(3, return_sequences=True), (4, 2), {"mask": "random"}),
    ("sequential", L.Sequential([L.Dense(4), L.Tanh(), L.Dense(2)]), (3,), {}),
    ("residual", L.Residual(L.Sequential([L.Dense(3), L.Tanh()])), (3,), {}),
    (
        "attention_masked_causal_blockwise",
        L.MultiHeadAttention(2, head_dim=3, causal=True, block_size=3),
        (5, 4),
        {"mask": "random"},
    ),
    ("positional_learned", L.PositionalEmbedding(6), (4, 3), {}),
]


@pytest.mark.parametrize("name,layer,in_shape,options", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_layer(name, layer, in_shape, options):
    report = check_layer(layer, in_shape, **options)
    assert report.ok, str(report)
    checks = {r.check for r in report.rows}
    assert any(c.startswith("params vs jax.vjp (batch 1)") for c in checks)
    if jax.tree.leaves(layer.init(jax.random.key(0), in_shape)[0]) and not layer.mixes_examples(
        options.get("train", False)
    ):
        assert "extension batch_l2 vs vmap(grad)" in checks


def test_check_layer_catches_a_wrong_backward_and_names_the_check():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class BadTanh(L.Tanh):
        def backward(self, params, cache, dy):  # 1 − a instead of 1 − a²
            a = cache["y"]
            return (), dy * (1 - a)

    report = check_layer(BadTanh(), (4,), extensions=False)
    assert not report.ok
    assert any(f.startswith("dx vs jax.vjp") for f in report.failed)
    assert any("finite differences" in r.check and not r.ok for r in report.rows)
    assert "FAILED" in str(report)
    with pytest.raises(AssertionError, match="dx vs jax.vjp"):
        report.raise_if_failed()


def test_check_layer_catches_a_wrong_closed_form():
    import dataclasses

    import jax.numpy as jnp

    @dataclasses.dataclass(frozen=True)
    class BadNorms(L.Dense):
        def batch_l2(self, params, cache, dy):  # forgets the bias part
            out = super().batch_l2(params, cache, dy)
            return {**out, "b": jnp.zeros_like(out["b"])}

    report = check_layer(BadNorms(3), (4,), dtypes=("float64",), finite_differences=False)
    # the norms are wrong, and so is the clipping that reads them; nothing else
    assert report.failed == [
        "extension batch_l2 vs vmap(grad) [float64]",
        "extension clipped_grad vs vmap(grad) [float64]",
    ]
