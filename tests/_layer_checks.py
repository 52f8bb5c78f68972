"""Helpers for the layer tests (conv, pooling, normalization, embedding, recurrent).

``compare_with_autodiff`` runs a layer's hand-written backward and ``jax.vjp`` of its own
forward inside ONE jitted function (one compilation per configuration) on a random,
non-uniform cotangent, and asserts the two agree leaf by leaf, norm-wise:
``max|manual − autodiff| ≤ rtol · max|autodiff| + atol``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jbp.layers.masking import Masked
from jbp.testing import TOLERANCES

# one definition of the tolerances: jbp.testing.TOLERANCES (what check_layer publishes)
RTOL = {jnp.dtype(d): rtol for d, (rtol, _) in TOLERANCES.items()}


def rand(rng, shape, dtype=jnp.float64, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


def randomize(params, rng, dtype, scale=0.5):
    """Perturb every leaf (biases and scales too) so no gradient is trivially symmetric."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype) + rand(rng, a.shape, dtype, scale), params)


def _values(y):
    return y.values if isinstance(y, Masked) else y


def assert_close(manual, auto, rtol, atol=0.0, what=""):
    lm, la = jax.tree.leaves(manual), jax.tree.leaves(auto)
    assert jax.tree.structure(manual) == jax.tree.structure(auto), (what, manual, auto)
    for i, (m, a) in enumerate(zip(lm, la)):
        assert m.shape == a.shape, (what, i, m.shape, a.shape)
        assert m.dtype == a.dtype, (what, i, m.dtype, a.dtype)
        m64, a64 = np.asarray(m, np.float64), np.asarray(a, np.float64)
        err = float(np.max(np.abs(m64 - a64))) if m.size else 0.0
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        assert err <= rtol * scale + atol, f"{what} leaf {i}: max err {err:.3e}, scale {scale:.3e}"


def compare_with_autodiff(layer, params, x, rng, *, mask=None, train=True, atol=None):
    """Hand-written ``(grads, dx)`` vs ``jax.vjp`` for ``layer`` at ``(params, x)``.

    ``x``: a float array (also differentiated), or integer ids (``dx`` must then be float0).
    ``mask``: the layer is fed ``Masked(x, mask)``. Returns ``(y, grads, dx)``.
    """
    dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else x.dtype
    rtol = RTOL[jnp.dtype(dtype)]
    atol = rtol * 1e-3 if atol is None else atol
    integer = jnp.issubdtype(x.dtype, jnp.integer)

    def feed(v):
        return v if mask is None else Masked(v, mask)

    out = jax.eval_shape(lambda p, v: _values(layer.apply(p, feed(v), train=train)), params, x)
    dy = rand(rng, out.shape, out.dtype)

    @jax.jit
    def both(params, x, dy):
        y, cache = layer.forward(params, feed(x), train=train)
        grads, dx = layer.backward(params, cache, dy)

        def f(p, v):
            return _values(layer.apply(p, feed(v), train=train))

        if integer:
            _, pull = jax.vjp(lambda p: f(p, x), params)
            (g_auto,) = pull(dy)
            return y, grads, dx, g_auto, None
        _, pull = jax.vjp(f, params, x)
        g_auto, dx_auto = pull(dy)
        return y, grads, dx, g_auto, dx_auto

    y, grads, dx, g_auto, dx_auto = both(params, x, dy)
    assert_close(grads, g_auto, rtol, atol, f"{layer!r} params")
    if integer:
        assert dx.dtype == jax.dtypes.float0 and dx.shape == x.shape
    else:
        assert_close(dx, dx_auto, rtol, atol, f"{layer!r} dx")
    return y, grads, dx


def per_example_grads(model, loss, params, x, y, engine):
    """vmap over examples of ``engine(model, loss)`` on single examples (batch axis 1)."""
    f = engine(model, loss)
    return jax.jit(jax.vmap(lambda xi, yi: f(params, xi[None], yi[None])[1]))(x, y)
