"""Shared test utilities: random non-uniform data and autodiff references."""

import jax
import jax.numpy as jnp
import numpy as np

import jbp

TOL = {jnp.float64: dict(rtol=1e-10, atol=1e-12), jnp.float32: dict(rtol=2e-4, atol=2e-5)}


def rand(rng, shape, dtype=jnp.float64, scale=1.0):
    """Normal samples, never uniform: a non-uniform input or cotangent."""
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


def init(model, in_shape, dtype=jnp.float64, seed=0):
    params, out_shape = model.init(jax.random.key(seed), in_shape)
    return jbp.cast(params, dtype), out_shape


def vjp_reference(layer, params, x, dy, key=None, train=True):
    """(grads, dx) from jax.vjp of the layer's own forward — the autodiff oracle."""
    _, pull = jax.vjp(lambda p, x: layer.apply(p, x, key=key, train=train), params, x)
    return pull(dy)


def assert_trees_close(a, b, dtype):
    tol = TOL[dtype]
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(la, lb):
        assert u.shape == v.shape
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)
