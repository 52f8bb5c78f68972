"""SimpleRNN and LSTM: backpropagation through time vs jax.vjp, padding masks, bad input."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import assert_close, compare_with_autodiff, per_example_grads, rand, randomize  # noqa: E402

import jbp  # noqa: E402
from jbp.layers.embedding import Embedding  # noqa: E402
from jbp.layers.masking import Masked  # noqa: E402
from jbp.layers.recurrent import LSTM, SimpleRNN  # noqa: E402

MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)  # right, none, left


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bptt_matches_autodiff_float64(cls, return_sequences, masked):
    rng = np.random.default_rng(0)
    layer = cls(4, return_sequences=return_sequences)
    params, out = layer.init(jax.random.key(0), (5, 3))
    params = randomize(params, rng, jnp.float64, scale=0.3)
    y, _, dx = compare_with_autodiff(
        layer, params, rand(rng, (3, 5, 3)), rng, mask=jnp.asarray(MASK) if masked else None
    )
    assert (y.values if isinstance(y, Masked) else y).shape == (3,) + out
    assert isinstance(y, Masked) == (masked and return_sequences)
    if masked:  # padded steps get no gradient
        assert np.all(np.asarray(dx)[~MASK] == 0) and np.all(np.asarray(dx)[MASK] != 0)


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM])
def test_bptt_matches_autodiff_float32_and_short_shapes(cls):
    rng = np.random.default_rng(1)
    layer = cls(3, return_sequences=True)
    params, _ = layer.init(jax.random.key(1), (6, 2))
    params = randomize(params, rng, jnp.float32, scale=0.3)
    y, grads, dx = compare_with_autodiff(
        layer,
        params,
        rand(rng, (2, 6, 2), jnp.float32),
        rng,
        mask=jnp.asarray(MASK[:2, [0, 1, 2, 3, 4, 4]]),
    )
    assert y.values.dtype == dx.dtype == grads["W_h"].dtype == jnp.float32
    # sequence length 1 and batch size 1 (W_h then gets exactly zero gradient: h_0 = 0)
    layer = cls(3)
    params, _ = layer.init(jax.random.key(2), (1, 2))
    params = randomize(params, rng, jnp.float64, scale=0.3)
    _, grads, _ = compare_with_autodiff(layer, params, rand(rng, (1, 1, 2)), rng)
    assert np.all(np.asarray(grads["W_h"]) == 0)


def test_padded_sequence_gives_the_state_of_its_real_steps():
    rng = np.random.default_rng(2)
    layer = LSTM(3)
    params, _ = layer.init(jax.random.key(0), (4, 2))
    x = rand(rng, (1, 4, 2))
    short = layer.apply(params, x[:, :2])
    right = layer.apply(params, Masked(x, jnp.array([[True, True, False, False]])))
    left = layer.apply(params, Masked(x[:, [2, 3, 0, 1]], jnp.array([[False, False, True, True]])))
    assert short.dtype == jnp.float64  # float64 input: float64 arithmetic
    np.testing.assert_allclose(right, short, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(left, short, rtol=1e-12, atol=1e-14)


def test_embedding_rnn_check_gradients_and_per_example_grads():
    rng = np.random.default_rng(3)
    model = jbp.Sequential(
        [Embedding(8, 3, pad_id=0), SimpleRNN(4, return_sequences=True), LSTM(3), jbp.Dense(2)]
    )
    params, _ = model.init(jax.random.key(0), (5,))
    params = jbp.cast(params, jnp.float64)
    ids = jnp.asarray(rng.integers(1, 8, (4, 5))).at[0, 3:].set(0).at[3, :2].set(0)
    y = rand(rng, (4, 2))
    report = jbp.check_gradients(model, jbp.losses.mse, params, ids, y)
    assert report.ok, str(report)
    manual = per_example_grads(model, jbp.losses.mse, params, ids, y, jbp.value_and_grad)
    auto = per_example_grads(model, jbp.losses.mse, params, ids, y, jbp.autodiff_value_and_grad)
    assert_close(manual, auto, 1e-10, 1e-14)


def test_bad_input_names_layer_and_shapes():
    layer = SimpleRNN(4)
    params, _ = layer.init(jax.random.key(0), (5, 3))
    with pytest.raises(ValueError, match=r"SimpleRNN.*\(batch, time, features\).*\(2, 5\)"):
        layer.forward(params, jnp.ones((2, 5)))
    with pytest.raises(
        ValueError, match=r"SimpleRNN.*mask of shape \(2, 4\).*\(2, 5, 3\).*\(2, 5\)"
    ):
        layer.forward(params, Masked(jnp.ones((2, 5, 3)), jnp.ones((2, 4), bool)))
    with pytest.raises(ValueError, match=r"LSTM.*\(batch, time ≥ 1, 3\).*\(2, 5, 2\)"):
        LSTM(2).forward(LSTM(2).init(jax.random.key(0), (5, 3))[0], jnp.ones((2, 5, 2)))
    with pytest.raises(ValueError, match=r"SimpleRNN.*\(time, features\)"):
        layer.init(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match="features"):
        LSTM(0)
