"""MultiHeadAttention (dense and blockwise), PositionalEmbedding and a small Transformer:
hand-written backward vs jax.vjp, vs an independent naive attention, blockwise == dense,
padding masks, causal masks, and bad input."""

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.extend  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _layer_checks import assert_close, compare_with_autodiff, rand  # noqa: E402

import jbp  # noqa: E402
from jbp.core import _out_shape  # noqa: E402
from jbp.layers import (  # noqa: E402
    Dense,
    Embedding,
    Masked,
    MeanPool1D,
    MultiHeadAttention,
    PositionalEmbedding,
    transformer_block,
)

# right padding, none, left padding, and a sequence that is all padding
MASK = np.array(
    [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]],
    bool,
)


@jax.jit(static_argnums=(3, 4))
def naive_attention(params, x, mask, num_heads, causal):
    """An independent reference: per-head loops, jax.nn.softmax with a finite fill."""
    B, T, _ = x.shape
    hd = params["Wq"].shape[1]
    d = hd // num_heads
    bias = lambda n: params.get(n, 0.0)
    q, k, v = (x @ params[f"W{n}"] + bias(f"b{n}") for n in "qkv")
    allowed = jnp.ones((B, T, T), bool)
    if mask is not None:
        allowed = allowed & mask[:, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((T, T), bool))[None]
    heads = []
    for h in range(num_heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[..., sl] @ jnp.swapaxes(k[..., sl], 1, 2) / math.sqrt(d)
        p = jax.nn.softmax(jnp.where(allowed, s, -1e30), axis=-1)
        heads.append(p @ v[..., sl])
    y = jnp.concatenate(heads, axis=-1) @ params["Wo"] + bias("bo")
    return y if mask is None else jnp.where(mask[..., None], y, 0.0)


def random_params(model, in_shape, rng, dtype=jnp.float64, scale=0.5):
    """Random non-uniform parameters shaped like ``model.init``'s, drawn with numpy (no
    compilation: ``init`` runs only under ``eval_shape``); LayerNorm scales around 1."""
    shapes = jax.eval_shape(lambda k: model.init(k, in_shape)[0], jax.random.key(0))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (
            rand(rng, s.shape, dtype, scale)
            + (1.0 if jbp.core.leaf_name(path).endswith("gamma") else 0.0)
        ),
        shapes,
    )


def _setup(layer, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng, random_params(layer, shape[1:], rng, dtype), rand(rng, shape, dtype)


def test_init_shapes():
    layer = MultiHeadAttention(3, head_dim=5)
    params, out = layer.init(jax.random.key(0), (7, 4))
    assert out == (7, 4)
    assert {k: v.shape for k, v in params.items()} == {
        "Wq": (4, 15),
        "Wk": (4, 15),
        "Wv": (4, 15),
        "Wo": (15, 4),
        "bq": (15,),
        "bk": (15,),
        "bv": (15,),
        "bo": (4,),
    }
    assert len({float(params[w][0, 0]) for w in ("Wq", "Wk", "Wv")}) == 3  # distinct keys
    np.testing.assert_array_equal(params["bq"], 0.0)
    params, _ = MultiHeadAttention(2, use_bias=False).init(jax.random.key(0), (7, 6))
    assert {k: v.shape for k, v in params.items()} == {
        "Wq": (6, 6),
        "Wk": (6, 6),
        "Wv": (6, 6),
        "Wo": (6, 6),
    }


CASES = [  # (layer, (batch, T, features), mask rows or None)
    (MultiHeadAttention(2), (4, 7, 6), MASK),
    (MultiHeadAttention(2, causal=True), (4, 7, 6), MASK),
    (MultiHeadAttention(3, head_dim=5), (3, 7, 4), None),  # head_dim ≠ features / heads
    (MultiHeadAttention(1, causal=True, use_bias=False), (1, 5, 3), None),  # one head, batch 1
    (MultiHeadAttention(2, head_dim=2), (2, 1, 3), MASK[:2, :1]),  # T = 1
    (MultiHeadAttention(2, block_size=3), (4, 7, 6), MASK),  # 3 does not divide 7
    (MultiHeadAttention(2, causal=True, block_size=3), (4, 7, 6), MASK),
    (MultiHeadAttention(3, head_dim=2, causal=True, block_size=4), (1, 8, 5), None),
]
IDS = [
    "mask",
    "causal-mask",
    "headdim5",
    "1head-b1-nobias",
    "T1",
    "block3-mask",
    "block3-causal-mask",
    "block4-causal-b1",
]


@pytest.mark.parametrize("layer,shape,mask", CASES, ids=IDS)
def test_attention_matches_autodiff_and_naive_float64(layer, shape, mask):
    rng, params, x = _setup(layer, shape, jnp.float64)
    m = None if mask is None else jnp.asarray(mask)
    y, grads, dx = compare_with_autodiff(layer, params, x, rng, mask=m)
    # the forward against an independent implementation
    assert isinstance(y, Masked) == (m is not None)
    yv = y.values if m is not None else y
    ref = naive_attention(params, x, m, layer.num_heads, layer.causal)
    np.testing.assert_allclose(yv, ref, rtol=1e-12, atol=1e-12)
    assert jnp.all(jnp.isfinite(dx)) and all(
        jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)
    )
    if layer.use_bias:  # softmax ignores a shift of a whole row of scores: ∂L/∂b_k = 0
        assert float(jnp.max(jnp.abs(grads["bk"]))) <= 1e-12 * float(jnp.max(jnp.abs(grads["bv"])))
    if m is not None:
        np.testing.assert_array_equal(y.mask, mask)
        np.testing.assert_array_equal(np.asarray(yv)[~mask], 0.0)  # padded query rows
        np.testing.assert_array_equal(np.asarray(dx)[~mask], 0.0)  # padded keys: no weight
        assert np.all(np.asarray(dx)[mask] != 0)


@pytest.mark.parametrize("block_size", [None, 3])
def test_attention_float32(block_size):
    layer = MultiHeadAttention(2, head_dim=3, causal=True, block_size=block_size)
    rng, params, x = _setup(layer, (3, 7, 4), jnp.float32, seed=1)
    # atol: ∂L/∂b_k is zero in exact arithmetic (a shift of every score in a row), so both
    # sides hold float32 rounding noise ~1e-6 there; the other leaves are ~1e1.
    y, grads, dx = compare_with_autodiff(
        layer, params, x, rng, mask=jnp.asarray(MASK[1:]), atol=1e-5
    )
    assert y.values.dtype == dx.dtype == grads["Wq"].dtype == jnp.float32
    ref = naive_attention(
        jbp.cast(params, jnp.float64), x.astype(jnp.float64), jnp.asarray(MASK[1:]), 2, True
    )
    np.testing.assert_allclose(y.values, ref, rtol=1e-4, atol=1e-5)


def test_attention_hand_backward_matches_vjp_of_naive_reference():
    """Hand-written gradients (dense and blockwise) vs jax.vjp of the independent reference."""
    layer = MultiHeadAttention(2, causal=True)
    rng, params, x = _setup(layer, (4, 7, 6), jnp.float64, seed=2)
    m = jnp.asarray(MASK)
    dy = rand(rng, x.shape)

    @jax.jit
    def run(params, x, dy):
        _, pull = jax.vjp(lambda p, v: naive_attention(p, v, m, 2, True), params, x)
        out = [pull(dy)]
        for bs in (None, 2):
            lay = MultiHeadAttention(2, causal=True, block_size=bs)
            _, cache = lay.forward(params, Masked(x, m))
            out.append(lay.backward(params, cache, dy))
        return out

    (g_ref, dx_ref), *manual = run(params, x, dy)
    for bs, (grads, dx) in zip((None, 2), manual):
        assert_close(grads, g_ref, 1e-10, 1e-13, f"block_size={bs} params")
        assert_close(dx, dx_ref, 1e-10, 1e-13, f"block_size={bs} dx")


@pytest.mark.parametrize("causal,sizes", [(False, (2, 5, 8)), (True, (3, 4, 11))])
def test_blockwise_equals_dense(causal, sizes):
    """Forward and hand-written backward agree for block sizes that divide T = 8 (2, 4, 8),
    that do not (3, 5), and one longer than the sequence (11); padding masks on."""
    rng = np.random.default_rng(3)
    params = random_params(MultiHeadAttention(2), (8, 6), rng)
    x = rand(rng, (4, 8, 6))
    mask = jnp.asarray(np.concatenate([MASK, MASK[:, :1]], axis=1))
    dy = rand(rng, x.shape)

    def run(layer):
        y, cache = layer.forward(params, Masked(x, mask))
        return (y.values,) + layer.backward(params, cache, dy)

    ref, *got = jax.jit(
        lambda: [run(MultiHeadAttention(2, causal=causal, block_size=bs)) for bs in (None,) + sizes]
    )()
    for bs, g in zip(sizes, got):
        assert_close(g, ref, 1e-12, 1e-14, f"block_size={bs}")


def test_blockwise_cache_holds_no_T_by_T_matrix():
    layer = MultiHeadAttention(2, block_size=4)
    _, params, x = _setup(layer, (2, 16, 6), jnp.float64)
    _, cache = jax.eval_shape(layer.forward, params, x)  # shapes only: nothing compiled
    assert "P" not in cache and cache["L"].shape == (2, 2, 16)
    assert {k: v.shape for k, v in cache.items() if v is not None} == {
        "x": (2, 16, 6),
        "q": (2, 16, 2, 3),
        "k": (2, 16, 2, 3),
        "v": (2, 16, 2, 3),
        "o": (2, 16, 2, 3),
        "L": (2, 2, 16),
    }
    _, dense_cache = jax.eval_shape(MultiHeadAttention(2).forward, params, x)
    assert dense_cache["P"].shape == (2, 2, 16, 16)


# --- blockwise: query blocking and causal block skipping ----------------------------------
# (num_heads, head_dim, causal, block_size, (batch, T, features), mask rows or None);
# test_blockwise_equals_dense covers the other block sizes (2 … 11) with masks on T = 8
EDGE = [
    (3, 5, True, 2, (4, 7, 4), MASK),  # head_dim ≠ features / heads, 2 ∤ 7, padding
    (1, None, True, 1, (2, 5, 3), None),  # one head, blocks of one position: 15 of 25 pairs
    (2, None, False, 3, (3, 7, 6), None),  # no mask: only the internal padding of 3 ∤ 7
    (2, 2, True, 3, (2, 1, 3), MASK[:2, :1]),  # T = 1 (one block of one position)
]


@pytest.fixture(scope="module")
def edge_results():
    """Blockwise and dense ``(y, grads, dx)`` for every EDGE case in float64 (and the
    first in float32 too), from ONE compiled function."""
    rng = np.random.default_rng(7)
    data = []
    for H, hd, _, _, shape, mask in EDGE:
        params = random_params(MultiHeadAttention(H, head_dim=hd), shape[1:], rng)
        x, dy = rand(rng, shape), rand(rng, shape)
        data.append((params, x, dy, None if mask is None else jnp.asarray(mask)))

    def run(layer, params, x, dy, m):
        y, cache = layer.forward(params, x if m is None else Masked(x, m))
        return (y if m is None else y.values,) + layer.backward(params, cache, dy)

    @jax.jit
    def everything(data):
        out = []
        for n, ((H, hd, causal, bs, _, _), (params, x, dy, m)) in enumerate(zip(EDGE, data)):
            per_dtype = []
            for dt in (jnp.float64, jnp.float32)[: 2 if n == 0 else 1]:
                p, xc, dyc = jbp.cast((params, x, dy), dt)
                per_dtype.append(
                    [run(MultiHeadAttention(H, hd, causal, b), p, xc, dyc, m) for b in (None, bs)]
                )
            out.append(per_dtype)
        return out

    return everything(data)


@pytest.mark.parametrize("case", range(len(EDGE)))
def test_blockwise_equals_dense_edge_cases(edge_results, case):
    """Forward and hand-written backward, blockwise == dense: float64 to 1e-12, float32 to
    rounding, for one head, head_dim ≠ features / heads, T = 1, block sizes that do and do
    not divide T, causal or not, with and without padding masks."""
    (d64, b64), *f32 = edge_results[case]
    assert_close(b64, d64, 1e-12, 1e-14, f"EDGE[{case}] float64")
    for d32, b32 in f32:
        # atol: ∂L/∂b_k is zero in exact arithmetic, float32 noise ~1e-6 on both sides
        assert_close(b32, d32, 1e-5, 1e-5, f"EDGE[{case}] float32")
        assert b32[0].dtype == b32[2].dtype == jnp.float32
    mask = EDGE[case][5]
    if mask is not None:  # padded query rows output zeros and padded keys get no gradient
        np.testing.assert_array_equal(np.asarray(b64[0])[~mask], 0.0)
        np.testing.assert_array_equal(np.asarray(b64[2])[~mask], 0.0)


def _scans(jaxpr):
    """Every ``scan`` equation in a jaxpr, nested ones included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out.extend(_scans(sub))
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_visits_only_the_needed_block_pairs(causal):
    """T = 16, blocks of 4 → n = 4 query × 4 key blocks. The forward and the backward are
    each ONE scan over (query block, key block) pairs: all n² = 16 of them, or with
    ``causal`` only the n(n+1)/2 = 10 with j ≤ i (the 6 wholly in the future are skipped,
    not masked). Inside, no temporary is bigger than one (batch, H, k, k) block of scores
    (k = 4 ≥ d = 3), except the O(T) buffers the blocks are written into."""
    B, T, H, k = 2, 16, 2, 4
    layer = MultiHeadAttention(H, causal=causal, block_size=k)
    _, params, x = _setup(layer, (B, T, 6), jnp.float64)
    _, cache = layer.forward(params, x)
    fwd = jax.make_jaxpr(lambda p, v: layer.forward(p, v)[0])(params, x)
    bwd = jax.make_jaxpr(lambda p, c, g: layer.backward(p, c, g))(params, cache, x)
    pairs = 10 if causal else 16
    for jaxpr in (fwd.jaxpr, bwd.jaxpr):
        (scan,) = _scans(jaxpr)
        assert scan.params["length"] == pairs
        body = scan.params["jaxpr"].jaxpr
        for eqn in body.eqns:
            if str(eqn.params.get("name", "")).startswith("dynamic_update"):
                continue  # a block written back into its O(T) buffer
            for v in eqn.outvars:
                assert math.prod(v.aval.shape) <= B * H * k * k, (eqn.primitive, v.aval)
    fwd_pairs = [tuple(map(int, ij)) for ij in zip(*layer._block_pairs(4, key_major=False))]
    bwd_pairs = [tuple(map(int, ij)) for ij in zip(*layer._block_pairs(4, key_major=True))]
    every = [(i, j) for i in range(4) for j in range(4)]
    assert fwd_pairs == [(i, j) for i, j in every if j <= i or not causal]  # query-major
    assert sorted(bwd_pairs) == fwd_pairs  # the same pairs, key block by key block
    jj = np.array(bwd_pairs)[:, 1]
    assert np.all(np.diff(jj) >= 0)


def test_positional_embedding_matches_autodiff():
    rng = np.random.default_rng(4)
    layer = PositionalEmbedding(9)
    params, out = layer.init(jax.random.key(0), (6, 5))
    assert out == (6, 5) and params["P"].shape == (9, 5)
    assert 0.01 < float(jnp.std(params["P"])) < 0.03  # N(0, 0.02²)
    params = random_params(layer, (6, 5), rng)
    m = jnp.asarray(MASK[:3, :6])
    y, grads, dx = compare_with_autodiff(layer, params, rand(rng, (3, 6, 5)), rng, mask=m)
    assert isinstance(y, Masked) and np.array_equal(y.mask, m)
    np.testing.assert_array_equal(grads["P"][6:], 0.0)  # rows past T get no gradient
    p32 = jbp.cast(params, jnp.float32)
    _, g32, _ = compare_with_autodiff(layer, p32, rand(rng, (2, 4, 5), jnp.float32), rng)
    assert g32["P"].dtype == jnp.float32
    # sinusoidal: no parameters, the table of Vaswani et al. written out element by element
    sin = PositionalEmbedding(9, sinusoidal=True)
    p, out = sin.init(jax.random.key(0), (6, 5))
    assert p == () and out == (6, 5)
    x = rand(rng, (2, 6, 5))
    table = np.array(
        [
            [
                math.sin(t / 10000 ** (2 * (j // 2) / 5))
                if j % 2 == 0
                else math.cos(t / 10000 ** (2 * (j // 2) / 5))
                for j in range(5)
            ]
            for t in range(6)
        ]
    )
    np.testing.assert_allclose(sin.apply((), x), x + table, rtol=1e-14, atol=1e-14)
    compare_with_autodiff(sin, (), x, rng)


def _tiny_transformer(block_size=None):
    return jbp.Sequential(
        [
            Embedding(11, 8, pad_id=0),
            PositionalEmbedding(10),
            transformer_block(8, 2, 12),
            transformer_block(8, 2, 12, causal=True, block_size=block_size),
            MeanPool1D(),
            Dense(3),
        ]
    )


def test_transformer_check_gradients_with_padding():
    rng = np.random.default_rng(5)
    model = _tiny_transformer(block_size=3)
    assert _out_shape(model, (7,)) == (3,)
    params = random_params(model, (7,), rng, scale=0.3)
    ids = jnp.asarray(rng.integers(1, 11, (4, 7))).at[0, 5:].set(0).at[2, :3].set(0)
    y = jnp.asarray(rng.integers(0, 3, 4))
    report = jbp.check_gradients(
        model, jbp.losses.softmax_cross_entropy, params, ids, y, fd_directions=2
    )
    # ∂L/∂b_k is identically zero (softmax ignores a shift of a row of scores): it matches
    # autodiff, but a relative finite-difference check of a zero derivative measures only
    # rounding noise, so those two leaves are held to autodiff alone here (their being zero
    # is asserted in test_attention_matches_autodiff_and_naive_float64).
    names = [leaf.name for leaf in report.leaves]
    bk = [leaf for leaf in report.leaves if leaf.name.endswith(".bk")]
    assert len(bk) == 2 and all(leaf.ok_autodiff and leaf.abs_err < 1e-15 for leaf in bk), str(
        report
    )
    assert all(leaf.ok for leaf in report.leaves if leaf not in bk), str(report)
    assert "layers[2].layers[0].layers[1].Wq" in names and "layers[1].P" in names
    # padding does not change the prediction of the real tokens
    padded, short = jax.jit(lambda p: (model.apply(p, ids)[:1], model.apply(p, ids[:1, :5])))(
        params
    )
    np.testing.assert_allclose(padded, short, rtol=1e-12, atol=1e-13)


def test_transformer_block_float32_matches_autodiff():
    layer = transformer_block(8, 2, 16, causal=True, block_size=4)
    rng = np.random.default_rng(6)
    assert _out_shape(layer, (6, 8)) == (6, 8)
    params = random_params(layer, (6, 8), rng, jnp.float32, scale=0.3)
    y, grads, dx = compare_with_autodiff(
        layer,
        params,
        rand(rng, (3, 6, 8), jnp.float32),
        rng,
        mask=jnp.asarray(MASK[:3, 1:]),
        atol=1e-5,
    )
    assert y.values.dtype == dx.dtype == jnp.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        MultiHeadAttention(0)
    with pytest.raises(ValueError, match="block_size must be None or a positive integer, got 0"):
        MultiHeadAttention(2, block_size=0)
    with pytest.raises(ValueError, match="block_size .* got -3"):
        MultiHeadAttention(2, block_size=-3)
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(2, head_dim=0)
    with pytest.raises(ValueError, match="features = 5 is not divisible by num_heads = 2"):
        MultiHeadAttention(2).init(jax.random.key(0), (4, 5))
    layer = MultiHeadAttention(2)
    params, _ = layer.init(jax.random.key(0), (4, 6))
    with pytest.raises(
        ValueError,
        match=r"MultiHeadAttention\(num_heads=2.*expected input of shape "
        r"\(batch, time ≥ 1, 6\).*got \(2, 4, 5\)",
    ):
        layer.forward(params, jnp.ones((2, 4, 5)))
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention.*\(batch, time, features\), got shape \(2, 6\)"
    ):
        layer.forward(params, jnp.ones((2, 6)))
    with pytest.raises(
        ValueError,
        match=r"mask of shape \(2, 3\) does not match the input of shape "
        r"\(2, 4, 6\)",
    ):
        layer.forward(params, Masked(jnp.ones((2, 4, 6)), jnp.ones((2, 3), bool)))
    with pytest.raises(ValueError, match=r"params\['Wo'\] has shape \(6, 5\), expected \(6, 6\)"):
        layer.forward({**params, "Wo": jnp.ones((6, 5))}, jnp.ones((1, 4, 6)))
    with pytest.raises(ValueError, match="expected params with keys"):
        MultiHeadAttention(2, use_bias=False).forward(params, jnp.ones((1, 4, 6)))
    with pytest.raises(TypeError, match="causal must be a bool"):
        MultiHeadAttention(2, causal=1)
    with pytest.raises(ValueError, match="exceeds max_len = 4"):
        PositionalEmbedding(4).init(jax.random.key(0), (5, 3))
    pe = PositionalEmbedding(4)
    p, _ = pe.init(jax.random.key(0), (4, 3))
    with pytest.raises(ValueError, match=r"sequence length T = 6 exceeds max_len = 4"):
        pe.forward(p, jnp.ones((1, 6, 3)))
    with pytest.raises(ValueError, match=r"sequence length T = 6 exceeds max_len = 4"):
        PositionalEmbedding(4, sinusoidal=True).forward((), jnp.ones((1, 6, 3)))
    with pytest.raises(
        ValueError, match=r"expected input of shape \(batch, T, 3\).*got \(1, 4, 2\)"
    ):
        pe.forward(p, jnp.ones((1, 4, 2)))
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        PositionalEmbedding(0)
    with pytest.raises(ValueError, match="transformer_block: features = 6 is not divisible"):
        transformer_block(6, 4, 8)
    with pytest.raises(
        ValueError,
        match=r"layers\[1\] \(Residual\): Residual\(.*the block maps input "
        r"shape \(3, 4\) to output shape \(3, 8\)",
    ):
        transformer_block(8, 2, 8).init(jax.random.key(0), (3, 4))


# --- closed-form per-example extensions of the projections -------------------------------
# (layer, in_shape, mask option): T=7 on 6 features takes the direct form of ‖Gᵢ‖²
# (2T² > in·out), T=3 on 8 features the Gram form; padding and causal masks, blockwise too.
EXT_CASES = [
    (MultiHeadAttention(2, causal=True), (7, 6), "random"),
    (MultiHeadAttention(2, head_dim=4), (3, 8), "random"),
    (MultiHeadAttention(2, causal=True, block_size=2, use_bias=False), (3, 8), None),
]
# check_layer runs each dtype as its own large program; the blockwise case (the slowest)
# runs float64 here, and its float32 closed forms are held to the generic default in
# test_attention_closed_forms_equal_generic_default (its float32 backward: test_attention_float32)
EXT_DTYPES = [("float64", "float32"), ("float64", "float32"), ("float64",)]


@pytest.mark.parametrize(
    "layer,in_shape,mask,dtypes",
    [c + (d,) for c, d in zip(EXT_CASES, EXT_DTYPES)],
    ids=["direct-causal-mask", "gram-mask", "gram-block-causal"],
)
def test_attention_extensions_check_layer(layer, in_shape, mask, dtypes):
    """batch_grad / batch_l2 / sum_grad_squared (closed forms) vs vmap(jax.grad)."""
    from jbp.layers import _per_example as _pe

    T, f = in_shape
    hd = layer.num_heads * (layer.head_dim or f // layer.num_heads)
    assert _pe.use_gram(T, f, hd) == (T == 3)
    report = jbp.testing.check_layer(
        layer, in_shape, mask=mask, dtypes=dtypes, finite_differences=False
    )
    assert report.ok, str(report)
    assert any(r.check.startswith("extension batch_l2") for r in report.rows)


def test_attention_closed_forms_equal_generic_default():
    """The closed forms are the layer's methods, and equal the generic vmap-of-backward:
    float64 (direct form of ‖Gᵢ‖², padding mask) and float32 (the Gram form, blocks that do
    not divide T: the float32 half of the "gram-block-causal" check_layer case)."""
    from jbp.extensions.base import generic_batch_grad

    cases = [  # (layer, (batch, T, features), dtype, mask, rtol)
        (MultiHeadAttention(2, causal=True, block_size=3), (4, 7, 6), jnp.float64, MASK, 1e-10),
        (
            MultiHeadAttention(2, causal=True, block_size=2, use_bias=False),
            (4, 3, 8),
            jnp.float32,
            MASK[:, 2:5],
            1e-5,
        ),
    ]
    rng = np.random.default_rng(3)
    data = [
        (random_params(lay, shape[1:], rng, dt), rand(rng, shape, dt), rand(rng, shape, dt))
        for lay, shape, dt, _, _ in cases
    ]

    @jax.jit
    def run(data):
        out = []
        for (layer, _, _, m, _), (params, x, dy) in zip(cases, data):
            _, cache = layer.forward(params, Masked(x, jnp.asarray(m)))
            out.append(
                (
                    generic_batch_grad(layer, params, cache, dy),
                    layer.batch_grad(params, cache, dy),
                    layer.batch_l2(params, cache, dy),
                    layer.sum_grad_squared(params, cache, dy),
                )
            )
        return out

    for (layer, _, dt, _, rtol), (ref, bg, l2, sgs) in zip(cases, run(data)):
        assert all(a.dtype == dt for a in jax.tree.leaves((ref, bg, l2, sgs)))
        for name in ref:
            sq = jnp.square(ref[name].astype(jnp.float64))
            want = {
                "batch_grad": ref[name],
                "batch_l2": jnp.sum(sq, axis=tuple(range(1, sq.ndim))),
                "sum_grad_squared": jnp.sum(sq, axis=0),
            }
            for what, got in (("batch_grad", bg), ("batch_l2", l2), ("sum_grad_squared", sgs)):
                assert_close(got[name], want[what].astype(dt), rtol, 0.0, f"{layer} {what} {name}")
