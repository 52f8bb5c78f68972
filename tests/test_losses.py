"""Losses: values against independent numpy formulas, gradients against jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOL, rand

from jbp import losses


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n,k", [(1, 3), (6, 4), (13, 1)])
def test_mse(dtype, n, k):
    rng = np.random.default_rng(0)
    pred, target = rand(rng, (n, k), dtype), rand(rng, (n, k), dtype)
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    expect = sum(np.sum((t[i] - p[i]) ** 2) for i in range(n)) / (2 * n)  # the seed's 1/(2n)
    assert losses.mse(pred, target).dtype == dtype
    np.testing.assert_allclose(losses.mse.value(pred, target), expect, **TOL[dtype])
    np.testing.assert_allclose(
        losses.mse.grad(pred, target), jax.grad(losses.mse.value)(pred, target), **TOL[dtype]
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1), (8, 1), (5, 3)])
def test_binary_cross_entropy(dtype, shape):
    rng = np.random.default_rng(1)
    z = rand(rng, shape, dtype, scale=3.0)
    t = jnp.asarray(rng.uniform(size=shape), dtype)
    zz, tt = np.asarray(z, np.float64), np.asarray(t, np.float64)
    s = 1 / (1 + np.exp(-zz))
    expect = -np.sum(tt * np.log(s) + (1 - tt) * np.log(1 - s)) / shape[0]
    np.testing.assert_allclose(losses.binary_cross_entropy(z, t), expect, **TOL[dtype])
    np.testing.assert_allclose(
        losses.binary_cross_entropy.grad(z, t),
        jax.grad(losses.binary_cross_entropy.value)(z, t),
        **TOL[dtype],
    )


def test_binary_cross_entropy_is_stable_for_huge_logits():
    z = jnp.array([[1000.0], [-1000.0], [50.0]])
    t = jnp.array([[0.0], [1.0], [1.0]])
    v = losses.binary_cross_entropy(z, t)
    np.testing.assert_allclose(v, (1000 + 1000 + np.log1p(np.exp(-50.0))) / 3, rtol=1e-12)
    assert np.all(np.isfinite(losses.binary_cross_entropy.grad(z, t)))


def test_binary_cross_entropy_accepts_flat_targets_for_one_logit():
    z = jnp.array([[0.3], [-1.2]])
    np.testing.assert_allclose(
        losses.binary_cross_entropy(z, jnp.array([1.0, 0.0])),
        losses.binary_cross_entropy(z, jnp.array([[1.0], [0.0]])),
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n,k", [(1, 2), (9, 5)])
def test_softmax_cross_entropy_labels_onehot_and_probabilities(dtype, n, k):
    rng = np.random.default_rng(2)
    z = rand(rng, (n, k), dtype, scale=2.0)
    labels = jnp.asarray(rng.integers(0, k, n))
    zz = np.asarray(z, np.float64)
    expect = -np.mean(np.log(_np_softmax(zz))[np.arange(n), np.asarray(labels)])
    ce = losses.softmax_cross_entropy
    np.testing.assert_allclose(ce(z, labels), expect, **TOL[dtype])
    onehot = jax.nn.one_hot(labels, k, dtype=dtype)
    np.testing.assert_allclose(ce(z, onehot), expect, **TOL[dtype])
    np.testing.assert_allclose(
        ce.grad(z, labels), (_np_softmax(zz) - np.asarray(onehot)) / n, **TOL[dtype]
    )
    probs = jnp.asarray(_np_softmax(rng.standard_normal((n, k))), dtype)
    np.testing.assert_allclose(ce.grad(z, probs), jax.grad(ce.value)(z, probs), **TOL[dtype])
    # Unnormalised targets: the gradient formula keeps the Σt factor.
    weights = jnp.asarray(rng.uniform(0.1, 2.0, (n, k)), dtype)
    np.testing.assert_allclose(ce.grad(z, weights), jax.grad(ce.value)(z, weights), **TOL[dtype])


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = jnp.array([[1000.0, 0.0, -1000.0]])
    v = losses.softmax_cross_entropy(z, jnp.array([1]))
    np.testing.assert_allclose(v, 1000.0, rtol=1e-12)


def test_accuracy():
    z = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0]])
    assert float(losses.accuracy(z, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)
    assert float(losses.accuracy(jnp.array([[0.5], [-0.2]]), jnp.array([1.0, 1.0]))) == 0.5


@pytest.mark.parametrize(
    "loss,pred,target,match",
    [
        (
            losses.mse,
            np.zeros((4, 2)),
            np.zeros((4, 3)),
            r"mse: target must have the prediction's shape \(4, 2\), got \(4, 3\)",
        ),
        (
            losses.binary_cross_entropy,
            np.zeros((4, 1)),
            np.full((4, 1), 2.0),
            r"targets must lie in \[0, 1\]",
        ),
        (
            losses.binary_cross_entropy,
            np.zeros((4, 2)),
            np.zeros((3, 2)),
            r"target must have the logits' shape",
        ),
        (
            losses.softmax_cross_entropy,
            np.zeros((4, 3)),
            np.array([0, 1, 3, 2]),
            r"labels must lie in \[0, 3\)",
        ),
        (
            losses.softmax_cross_entropy,
            np.zeros((4, 3)),
            np.array([0, -1, 2, 2]),
            r"labels must lie in \[0, 3\)",
        ),
        (
            losses.softmax_cross_entropy,
            np.zeros((4, 3)),
            np.array([[0, 1, 2, 1]]),
            r"integer labels must have shape \(4,\)",
        ),
        (
            losses.softmax_cross_entropy,
            np.zeros((4, 3)),
            np.zeros((4, 2)),
            r"probabilities of shape \(4, 3\)",
        ),
        (
            losses.softmax_cross_entropy,
            np.zeros(4),
            np.zeros(4, int),
            r"logits must have shape \(batch, classes\)",
        ),
    ],
)
def test_bad_targets(loss, pred, target, match):
    with pytest.raises(ValueError, match=match):
        loss.value(jnp.asarray(pred), jnp.asarray(target))
    with pytest.raises(ValueError, match=match):
        loss.grad(jnp.asarray(pred), jnp.asarray(target))


def test_non_array_and_integer_predictions():
    with pytest.raises(TypeError, match="pred: expected an array"):
        losses.mse([[1.0]], jnp.zeros((1, 1)))
    with pytest.raises(TypeError, match="pred must be floating point"):
        losses.mse(jnp.zeros((1, 1), int), jnp.zeros((1, 1)))


def test_get_by_name():
    assert losses.get("mse") is losses.mse
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        losses.get("hinge")


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
def test_fused_value_and_grad_equals_value_and_grad(dtype):
    """The one-pass value_and_grad the engines call agrees with .value and .grad."""
    rng = np.random.default_rng(9)
    z = rand(rng, (7, 4), dtype, scale=3.0)
    cases = [
        (losses.mse, rand(rng, (7, 4), dtype)),
        (losses.binary_cross_entropy, jnp.asarray(rng.uniform(size=(7, 4)), dtype)),
        (losses.softmax_cross_entropy, jnp.asarray(rng.integers(0, 4, 7))),
        (losses.softmax_cross_entropy, jnp.asarray(rng.uniform(0.1, 2.0, (7, 4)), dtype)),
    ]
    for loss, t in cases:
        v, g = loss.value_and_grad(z, t)
        assert v.dtype == dtype and g.dtype == dtype
        np.testing.assert_allclose(v, loss.value(z, t), **TOL[dtype])
        np.testing.assert_allclose(g, loss.grad(z, t), **TOL[dtype])
        np.testing.assert_allclose(g, jax.grad(loss.value)(z, t), **TOL[dtype])
