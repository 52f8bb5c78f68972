"""Embedding (scatter-add backward), the Masked mechanism, Masking and MeanPool1D."""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import assert_close, compare_with_autodiff, per_example_grads, rand  # noqa: E402

import jbp  # noqa: E402
from jbp.layers.embedding import Embedding  # noqa: E402
from jbp.layers.masking import Masked, Masking, MeanPool1D  # noqa: E402


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_embedding_backward_matches_autodiff(dtype):
    rng = np.random.default_rng(0)
    layer = Embedding(7, 3)
    params, out = layer.init(jax.random.key(0), (5,))
    params = jbp.cast(params, dtype)
    ids = jnp.asarray(rng.integers(0, 7, (4, 5)))
    y, grads, dx = compare_with_autodiff(layer, params, ids, rng)
    assert y.shape == (4,) + out and y.dtype == dtype and grads["W"].dtype == dtype


def test_repeated_ids_accumulate_and_unused_rows_get_zero():
    rng = np.random.default_rng(1)
    layer = Embedding(6, 2)
    params = jbp.cast(layer.init(jax.random.key(0), (4,))[0], jnp.float64)
    ids = jnp.array([[1, 3, 1, 1], [3, 0, 1, 0]])
    y, cache = layer.forward(params, ids)
    np.testing.assert_array_equal(y[0, 2], params["W"][1])
    dy = rand(rng, (2, 4, 2))
    grads, dx = layer.backward(params, cache, dy)
    expected = np.zeros((6, 2))
    for n in range(2):
        for t in range(4):
            expected[int(ids[n, t])] += np.asarray(dy[n, t])
    np.testing.assert_allclose(grads["W"], expected, rtol=1e-12)
    np.testing.assert_allclose(grads["W"][1], dy[0, 0] + dy[0, 2] + dy[0, 3] + dy[1, 2], rtol=1e-12)
    assert np.all(np.asarray(grads["W"])[[2, 4, 5]] == 0)
    assert dx.dtype == jax.dtypes.float0 and dx.shape == ids.shape


def test_pad_id_masks_and_masked_mean_pool_matches_autodiff():
    rng = np.random.default_rng(2)
    ids = jnp.array([[4, 2, 5, 0, 0], [3, 0, 0, 0, 0], [1, 2, 3, 4, 5]])  # right-padded, pad_id 0
    emb = Embedding(6, 3, pad_id=0)
    params, _ = emb.init(jax.random.key(0), (5,))
    y, _ = emb.forward(params, ids)
    assert isinstance(y, Masked)
    np.testing.assert_array_equal(y.mask, ids != 0)
    compare_with_autodiff(emb, params, ids, rng)  # dy for a Masked output: values only

    x, mask = rand(rng, (3, 5, 4)), ids != 0
    pooled, _, dx = compare_with_autodiff(MeanPool1D(), (), x, rng, mask=mask)
    np.testing.assert_allclose(pooled[1], x[1, 0], rtol=1e-12)  # one real step
    np.testing.assert_allclose(pooled[0], np.mean(np.asarray(x[0, :3]), 0), rtol=1e-12)
    assert np.all(np.asarray(dx[0, 3:]) == 0)  # padding gets no gradient
    compare_with_autodiff(MeanPool1D(), (), x.astype(jnp.float32), rng, mask=mask)  # float32
    # no mask: the 1/T weights (T > 1, where a missing 1/T would show), float64 and float32
    for dtype in (jnp.float64, jnp.float32):
        xu = rand(rng, (3, 5, 4), dtype)
        pooled_u, _, dx_u = compare_with_autodiff(MeanPool1D(), (), xu, rng)
        np.testing.assert_allclose(
            pooled_u, np.mean(np.asarray(xu), 1), rtol=1e-12 if dtype == jnp.float64 else 1e-5
        )
    compare_with_autodiff(MeanPool1D(), (), rand(rng, (2, 1, 3), jnp.float32), rng)  # T = 1
    # a sequence with no real step gives zeros, not NaN
    empty = MeanPool1D().apply((), Masked(x, jnp.zeros((3, 5), bool)))
    np.testing.assert_array_equal(empty, 0.0)


def test_masking_layer_derives_mask_from_padding_vectors():
    rng = np.random.default_rng(3)
    x = rand(rng, (2, 4, 3)).at[0, 2:].set(0.0).at[1, 0].set(0.0)
    y, cache = Masking().forward((), x)
    np.testing.assert_array_equal(y.mask, [[True, True, False, False], [False, True, True, True]])
    dy = rand(rng, x.shape)
    np.testing.assert_array_equal(Masking().backward((), cache, dy)[1], dy)


def test_embedding_pool_dense_check_gradients_and_per_example_grads():
    rng = np.random.default_rng(4)
    model = jbp.Sequential([Embedding(9, 4, pad_id=0), MeanPool1D(), jbp.Dense(2)])
    params, _ = model.init(jax.random.key(0), (6,))
    params = jbp.cast(params, jnp.float64)
    ids = jnp.asarray(rng.integers(1, 9, (5, 6))).at[0, 3:].set(0).at[2, 1:].set(0)
    y = rand(rng, (5, 2))
    report = jbp.check_gradients(model, jbp.losses.mse, params, ids, y)
    assert report.ok, str(report)
    manual = per_example_grads(model, jbp.losses.mse, params, ids, y, jbp.value_and_grad)
    auto = per_example_grads(model, jbp.losses.mse, params, ids, y, jbp.autodiff_value_and_grad)
    assert_close(manual, auto, 1e-10, 1e-14)
    _, batch = jax.jit(jbp.value_and_grad(model, jbp.losses.mse))(params, ids, y)
    assert_close(jax.tree.map(lambda g: jnp.mean(g, 0), manual), batch, 1e-10, 1e-14)


def test_bad_input_names_layer_and_shapes():
    layer = Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"Embedding.*\[0, 5\).*\[0, 5\].*\(1, 3\)"):
        layer.forward(params, jnp.array([[0, 5, 2]]))
    with pytest.raises(ValueError, match=r"Embedding.*\[-1, 2\]"):
        layer.forward(params, jnp.array([[-1, 2]]))
    jax.jit(lambda p, i: layer.apply(p, i))(
        params, jnp.array([[0, 9]])
    )  # traced: no check, no crash
    with pytest.raises(TypeError, match=r"Embedding.*integer token ids.*float"):
        layer.forward(params, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="pad_id"):
        Embedding(5, 2, pad_id=5)
    with pytest.raises(
        ValueError, match=r"MeanPool1D.*mask of shape \(2, 3\).*\(2, 4, 3\).*\(2, 4\)"
    ):
        MeanPool1D().forward((), Masked(jnp.ones((2, 4, 3)), jnp.ones((2, 3), bool)))
    with pytest.raises(ValueError, match=r"MeanPool1D.*\(batch, time, features\).*\(2, 4\)"):
        MeanPool1D().forward((), jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="x: expected an array"):
        jbp.Dense(2).forward(
            jbp.Dense(2).init(jax.random.key(0), (3,))[0],
            Masked(jnp.ones((1, 2, 3)), jnp.ones((1, 2), bool)),
        )
