"""bench/peers.py stays runnable: its harness, jbp's contenders and the JAX references, at
minimal sizes (the peer libraries are not needed: absent ones are skipped, and so are they
here via ``--libs jbp,jax``); and the pieces that make the peers compute the same thing —
the layout conversions and the NumPy port of Nielsen's network.py — against references.
"""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench")


def _bench_module(name):
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)


@pytest.fixture(scope="module")
def peers():
    return _bench_module("peers")


def test_jbp_and_jax_contenders_run_and_agree(peers, capsys):
    rows = peers.main(["--tiny", "--only", "per_example", "--libs", "jbp,jax", "--models", "mlp"])
    out = capsys.readouterr().out
    assert "per_example: MLP 784-16-16-10 b8: per-example grad norms" in out
    cases = sorted({r.case for r in rows})
    assert len(cases) == 2 and "clipped mean grad, C=" in cases[0] and "grad norms" in cases[1]
    assert not any("Opacus" in r.name for r in rows)  # --libs respected
    for case in {r.case for r in rows}:
        jbp_row, jax_row = [r for r in rows if r.case == case]
        assert jbp_row.checked == "ref" and jbp_row.median > 0, jbp_row
        assert jax_row.checked.startswith("ok ") and jax_row.median > 0, jax_row
        assert float(jax_row.checked.split()[1]) <= 1e-4


def test_a_missing_jbp_api_is_skipped_with_a_note(peers, capsys):
    rows = peers.main(["--tiny", "--only", "extensions", "--libs", "jbp", "--models", "mlp"])
    capsys.readouterr()
    assert len(rows) == 2  # first-order set, DiagGGN
    for r in rows:
        if r.median is None:
            assert r.checked == "skipped" and "not in this build" in r.note, r
        else:  # this jbp has the API: its row is the reference
            assert r.checked == "ref", r


def test_flatten_row_permutation_matches_channels_first_flattening():
    pm = _bench_module("peer_models")
    rng = np.random.default_rng(0)
    h, w, c, out = 3, 4, 5, 6
    x = rng.standard_normal((7, h, w, c))
    W = rng.standard_normal((h * w * c, out))
    Wc = pm.rows_hwc_to_chw(W, (h, w, c))
    np.testing.assert_allclose(
        x.reshape(7, -1) @ W, x.transpose(0, 3, 1, 2).reshape(7, -1) @ Wc, rtol=1e-12
    )
    np.testing.assert_array_equal(pm.rows_chw_to_hwc(Wc, (h, w, c)), W)
    lead = rng.standard_normal((2, h * w * c, out))  # leading (e.g. batch) axes
    np.testing.assert_array_equal(
        pm.rows_chw_to_hwc(pm.rows_hwc_to_chw(lead, (h, w, c)), (h, w, c)), lead
    )


def test_oi_to_jbp_inverts_the_channels_first_layouts(peers):
    """describe -> channels-first layouts -> oi_to_jbp is the identity (also with a batch axis)."""
    pm = _bench_module("peer_models")
    model, in_shape, _ = peers.cnn(peers.Config(**peers.TINY))  # 8x8x1 -> 2x2x32 -> 10
    rng = np.random.default_rng(2)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    params = tuple(
        {"W": f32(*s), "b": f32(s[-1])} if s else ()
        for s in [(3, 3, 1, 16), (), (), (3, 3, 16, 32), (), (), (), (128, 10)]
    )
    desc = pm.describe(model, params, in_shape)
    pairs = [
        (pm.dense_to_oi(d) if d["kind"] == "dense" else pm.conv_to_oihw(d), d["b"])
        for d in desc
        if d["kind"] in ("dense", "conv")
    ]
    back = pm.oi_to_jbp(desc, pairs)
    assert jax.tree.structure(back) == jax.tree.structure(jax.tree.map(np.asarray, params))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    stacked = [(np.stack([w, 2 * w]), np.stack([b, 2 * b])) for w, b in pairs]  # lead=1
    back2 = pm.oi_to_jbp(desc, stacked, lead=1)
    for a, b in zip(jax.tree.leaves(back2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a[1], 2 * np.asarray(b))


def test_nielsen_port_backprop_equals_jax_grad_float64():
    nn = _bench_module("nielsen_numpy")
    rng = np.random.default_rng(1)
    sizes = [6, 4, 3]
    Ws = [rng.standard_normal((o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.standard_normal((o, 1)) for o in sizes[1:]]
    x, y = rng.random((6, 1)), rng.random((3, 1))
    nb, nw = nn.Network(Ws, bs).backprop(x, y)

    def cost(params):
        a = jnp.asarray(x)
        for W, b in params:
            a = jax.nn.sigmoid(W @ a + b)
        return 0.5 * jnp.sum((a - y) ** 2)

    ref = jax.jit(jax.grad(cost))([(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(Ws, bs)])
    for (gW, gb), dw, db in zip(ref, nw, nb):
        np.testing.assert_allclose(dw, gW, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db, gb, rtol=1e-10, atol=1e-14)
    # update_mini_batch is the mean of the per-example gradients, times eta
    net = nn.Network(Ws, bs)
    data = [(rng.random((6, 1)), rng.random((3, 1))) for _ in range(3)]
    net.update_mini_batch(data, 0.5)
    grads = [nn.Network(Ws, bs).backprop(xi, yi)[1][0] for xi, yi in data]
    np.testing.assert_allclose(net.weights[0], Ws[0] - 0.5 * sum(grads) / 3, rtol=1e-12)
