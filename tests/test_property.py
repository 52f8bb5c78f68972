"""Property-based: random Sequential nets — the hand-written gradient equals autodiff.

Each random architecture compiles its own program (~3 s on a CPU core), so the default run checks
only a few nets (``JBP_PROPERTY_EXAMPLES``, default 8) to keep the suite fast. Scale it up for a
nightly-style run, e.g.::

    JBP_PROPERTY_EXAMPLES=1000 python -m pytest tests/test_property.py

The number of nets actually checked is printed by the last test of this module.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jbp
from jbp import losses
from jbp.layers import ELU, GELU, Dense, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh

ACTIVATIONS = [
    Sigmoid(),
    Tanh(),
    ReLU(),
    LeakyReLU(0.05),
    ELU(0.8),
    Softplus(),
    GELU(),
    GELU(approximate=True),
    Softmax(),
    Identity(),
]
LOSSES = [losses.mse, losses.binary_cross_entropy, losses.softmax_cross_entropy]
CHECKED = {"nets": 0}
EXAMPLES = int(os.environ.get("JBP_PROPERTY_EXAMPLES", "8"))


@st.composite
def nets(draw):
    depth = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 64), min_size=depth, max_size=depth))
    acts = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth, max_size=depth))
    layers = []
    for i, (w, a) in enumerate(zip(widths, acts)):
        layers.append(Dense(w, use_bias=draw(st.booleans())))
        if i < depth - 1 or draw(st.booleans()):
            layers.append(a)
    loss = draw(st.sampled_from(LOSSES))
    if loss is losses.softmax_cross_entropy and widths[-1] < 2:
        layers.append(Dense(3))
    return (
        jbp.Sequential(layers),
        loss,
        draw(st.integers(1, 9)),
        draw(st.integers(1, 12)),
        draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets())
def test_random_nets_manual_equals_autodiff(spec):
    model, loss, n, d_in, seed = spec
    rng = np.random.default_rng(seed)
    params, (d_out,) = model.init(jax.random.key(seed), (d_in,))
    params = jbp.cast(params, jnp.float64)
    x = jnp.asarray(rng.standard_normal((n, d_in)))
    if loss is losses.softmax_cross_entropy:
        y = jnp.asarray(rng.integers(0, d_out, n))
    elif loss is losses.binary_cross_entropy:
        y = jnp.asarray(rng.uniform(size=(n, d_out)))
    else:
        y = jnp.asarray(rng.standard_normal((n, d_out)))
    # One compiled program per net holds both engines (cheaper than eager dispatch).
    both = jax.jit(
        lambda p, x, y: (
            jbp.value_and_grad(model, loss)(p, x, y),
            jbp.autodiff_value_and_grad(model, loss)(p, x, y),
        )
    )
    (v, g), (v_ref, g_ref) = both(params, x, y)
    np.testing.assert_allclose(v, v_ref, rtol=1e-10)
    for (name, a), (_, b) in zip(jbp.named_leaves(g), jbp.named_leaves(g_ref)):
        scale = float(jnp.max(jnp.abs(b))) if b.size else 0.0
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-12 + 1e-9 * scale, name
    CHECKED["nets"] += 1


def test_report_how_many_random_nets_were_checked(capsys):
    with capsys.disabled():
        print(f"\n[property] hand-written == autodiff on {CHECKED['nets']} random Sequential nets")
    assert CHECKED["nets"] > 0
