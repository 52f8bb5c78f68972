"""Each optimizer trains a small jbp network on the embedded digits to a lower loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import jbp  # noqa: E402
from jbp import optim  # noqa: E402
from jbp.datasets import digits  # noqa: E402

STEPS = 25

OPTIMIZERS = {
    "sgd": lambda: optim.sgd(0.5),
    "momentum": lambda: optim.momentum(0.1, beta=0.9),
    "nesterov": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: optim.adagrad(0.1),
    "rmsprop": lambda: optim.rmsprop(1e-2),
    "adam": lambda: optim.adam(1e-2),
    "adamw": lambda: optim.adamw(1e-2, weight_decay=1e-2),
    "clip+adam+schedule": lambda: optim.chain(
        optim.clip_by_global_norm(1.0), optim.adam(optim.warmup_cosine_decay(0.0, 2e-2, 5, STEPS))
    ),
}


@pytest.fixture(scope="module")
def problem():
    (x, y), _ = digits()
    x, y = jnp.asarray(x[:256]), jnp.asarray(y[:256])
    model = jbp.Sequential([jbp.layers.Dense(32), jbp.layers.ReLU(), jbp.layers.Dense(10)])
    params, out_shape = model.init(jax.random.key(0), (64,))
    assert out_shape == (10,)
    vg = jbp.value_and_grad(model, jbp.losses.softmax_cross_entropy)
    return params, x, y, vg


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_lowers_digits_loss(problem, name):
    params, x, y, vg = problem
    opt = OPTIMIZERS[name]()

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            loss, grads = vg(p, x, y)
            updates, s = opt.update(grads, s, p)
            return (optim.apply_updates(p, updates), s), loss

        (p, s), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=STEPS)
        final, _ = vg(p, x, y)
        return p, s, losses, final

    p, s, losses, final = train(params)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and np.isfinite(final)
    assert float(final) < 0.8 * losses[0], (name, losses[0], float(final))
    assert int(s.count) == STEPS
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
