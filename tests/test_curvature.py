"""Curvature extensions against float64 references built with jax.jacrev / jax.hessian.

References, all independent of the hand-written backward:
- the per-example GGN ``JᵢᵀHᵢJᵢ`` from ``jax.jacrev`` of the model's forward (flattened params)
  and ``jax.hessian`` of the loss on one example;
- the Hessian of the mean loss from ``jax.hessian`` of forward + loss;
- Kronecker factors from the layer inputs of a forward pass (``A``; for Conv2D and Embedding
  the rows of ``∂z/∂W`` by ``jax.jacrev``, for the recurrent layers a reference forward written
  here) and ``jax.jacrev`` of the prediction w.r.t. the layer's output or pre-activations (``B``).

Comparisons: per leaf, ``max|a − b| ≤ rtol · max|b|`` (float64 ``rtol = 1e-10``, float32
``2e-4``). Monte-Carlo estimates: the mean of many single-sample estimates (fixed keys, so the
test is deterministic) lies within 5 standard errors of the exact value, entry by entry.
"""

import dataclasses

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import jbp  # noqa: E402
from jbp.core import Layer  # noqa: E402
from jbp.extensions import KFAC, KFLR, BatchDiagGGN, DiagGGN, DiagGGNMC, DiagHessian, KronFactors  # noqa: E402
from jbp.layers import (  # noqa: E402
    ELU,
    GELU,
    LSTM,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    SimpleRNN,
    Softplus,
    Tanh,
)

L = jbp.losses
RTOL = {jnp.float64: 1e-10, jnp.float32: 2e-4}


def assert_close(a, b, rtol, what=""):
    """Same tree structure; per leaf ``max|a − b| ≤ rtol · max|b|``."""
    assert jax.tree.structure(a) == jax.tree.structure(b), (
        what,
        jax.tree.structure(a),
        jax.tree.structure(b),
    )
    for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        assert u.shape == v.shape, (what, path, u.shape, v.shape)
        scale = max(np.max(np.abs(v)), 1e-300)
        err = np.max(np.abs(u - v)) / scale
        where = jax.tree_util.keystr(path)
        assert err <= rtol, f"{what} {where}: relative error {err:.3g} > {rtol}"


def _targets(loss, out_shape, n, rng, dtype=jnp.float64):
    if loss is L.softmax_cross_entropy:
        return jnp.asarray(rng.integers(0, out_shape[-1], n), jnp.int32)
    if loss is L.binary_cross_entropy:
        return jnp.asarray(rng.uniform(size=(n,) + tuple(out_shape)), dtype)
    return jnp.asarray(rng.standard_normal((n,) + tuple(out_shape)), dtype)


def _setup(model, in_shape, loss, n=3, seed=0, ids=None, dtype=jnp.float64):
    """Random, non-uniform params (init plus noise, so biases are not zero), inputs, targets."""
    rng = np.random.default_rng(seed)
    params, out_shape = model.init(jax.random.key(seed), in_shape)
    params = jax.tree.map(
        lambda p: jnp.asarray(p + 0.3 * rng.standard_normal(p.shape), dtype), params
    )
    if ids is None:
        x = jnp.asarray(rng.standard_normal((n,) + tuple(in_shape)), dtype)
    else:
        x = jnp.asarray(ids)
    return params, x, _targets(loss, out_shape, x.shape[0], rng, dtype)


def loss_hessians(loss, pred, y):
    """``(n, m, m)``: ``∂²ℓᵢ/∂predᵢ²`` by ``jax.hessian`` of the loss on one example."""
    m = int(np.prod(pred.shape[1:]))

    def one(z, t):
        return jax.hessian(lambda zz: loss.value(zz[None], t[None]))(z).reshape(m, m)

    return jax.vmap(one)(pred, y)


def ggn_reference(model, loss, params, x, y, key=None):
    """``(G_i (n, P, P), unravel)`` with ``G_i = JᵢᵀHᵢJᵢ`` over the flattened params: ``Jᵢ``
    from ``jax.jacrev`` of the batch's forward (examples do not mix), ``Hᵢ`` by ``jax.hessian``."""
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def G(flat, x, y):
        fwd = lambda th: model.apply(unravel(th), x, key=key, train=True)  # noqa: E731
        pred = fwd(flat)
        J = jax.jacrev(fwd)(flat).reshape(x.shape[0], -1, flat.size)  # (n, m, P)
        return jnp.einsum("nmp,nmk,nkq->npq", J, loss_hessians(loss, pred, y), J)

    return G(flat, x, y), unravel


def hessian_reference(model, loss, params, x, y, key=None):
    flat, unravel = ravel_pytree(params)
    H = jax.jit(
        jax.hessian(lambda th: loss.value(model.apply(unravel(th), x, key=key, train=True), y))
    )(flat)
    return unravel(jnp.diag(H))


# ------------------------------------------------------------------------------------------
# Losses: the Hessian factor and the sampler
# ------------------------------------------------------------------------------------------

LOSS_CASES = {
    "mse_2d": (L.mse, (2, 3)),
    "bce": (L.binary_cross_entropy, (3,)),
    "bce_n1": (L.binary_cross_entropy, (1,)),  # (n,) targets for (n, 1) logits
    "ce": (L.softmax_cross_entropy, (5,)),
    "ce_soft": (L.softmax_cross_entropy, (4,)),  # probabilities whose rows sum to ~2, not 1
}


def _loss_case(case, n, seed):
    loss, out = LOSS_CASES[case]
    rng = np.random.default_rng(seed)
    pred = jnp.asarray(rng.standard_normal((n,) + out) * 2)
    if case == "ce_soft":
        y = jnp.asarray(rng.uniform(size=(n,) + out))
    else:
        y = _targets(loss, out, n, rng)
    if case == "bce_n1":
        y = y[:, 0]
    return loss, pred, y


_loss_hessians = jax.jit(loss_hessians, static_argnums=0)


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_hessian_factor_and_sampler(case):
    """``Σ_c sᵢ,c sᵢ,cᵀ = Hᵢ`` (``jax.hessian`` of the loss on one example) in float64 and
    float32; ``E[g gᵀ] = Hᵢ`` for the sampled gradients: the mean of ``g gᵀ`` over 4000 samples
    (fixed key) lies within 5 standard errors of ``Hᵢ``, entry by entry, with the standard
    error bounded a priori: ``Var(g_k g_l) ≤ E[g_k² g_l²] ≤ 3`` for the Gaussian of ``mse``,
    ``≤ τ min(H_kk, H_ll)`` for the cross-entropies (``|g_l| ≤ √τ``, ``τ`` the target sum)."""
    loss, pred, y = _loss_case(case, 3, 3)
    want = np.asarray(_loss_hessians(loss, pred, y))
    for dtype in (jnp.float64, jnp.float32):
        p = pred.astype(dtype)
        S = loss.hessian_factor(p, y.astype(dtype) if jnp.issubdtype(y.dtype, jnp.floating) else y)
        assert S.shape[1:] == pred.shape and S.dtype == dtype
        cols = np.asarray(S, np.float64).reshape(S.shape[0], 3, -1)
        assert_close(np.einsum("cim,cik->imk", cols, cols), want, RTOL[dtype] * 0.1, case)
    n_samples = 4000
    g = jax.jit(loss.sampled_grads, static_argnums=3)(jax.random.key(7), pred, y, n_samples)
    assert g.shape == (n_samples,) + pred.shape
    g = np.asarray(g).reshape(n_samples, 3, -1)
    mean = np.einsum("sim,sik->imk", g, g) / n_samples
    if loss is L.mse:
        var = np.full(want.shape, 3.0)
    else:
        tau = np.asarray(y).sum(-1) if case == "ce_soft" else np.ones(3)
        d = np.diagonal(want, axis1=1, axis2=2)
        var = tau[:, None, None] * np.minimum(d[:, :, None], d[:, None, :])
    assert np.all(np.abs(mean - want) <= 5 * np.sqrt(var / n_samples) + 1e-12)
    assert loss.sample_targets(jax.random.key(8), pred, samples=2).shape[:2] == (2, 3)


def _recurrent_reference(cell, p, xs, mask, eps):
    """The recurrence written out again, with a perturbation ``eps[t]`` added to the
    pre-activations (``jax.jacrev`` w.r.t. ``eps`` at 0 gives ``∂pred/∂z_t``). Returns
    ``(h_T, previous states h_{t−1} (T, h))``."""
    hid = p["W_h"].shape[0]
    h = c = jnp.zeros(hid, xs.dtype)
    prev = []
    for t in range(xs.shape[0]):
        prev.append(h)
        z = xs[t] @ p["W_x"] + h @ p["W_h"] + p["b"] + eps[t]
        if cell == "lstm":
            i, f, o = (jax.nn.sigmoid(z[k * hid : (k + 1) * hid]) for k in (0, 1, 3))
            g = jnp.tanh(z[2 * hid : 3 * hid])
            c_new = f * c + i * g
            h_new = o * jnp.tanh(c_new)
        else:
            h_new, c_new = jnp.tanh(z), c
        h, c = jnp.where(mask[t], h_new, h), jnp.where(mask[t], c_new, c)
    return h, jnp.stack(prev)


# ------------------------------------------------------------------------------------------
# Every quantity on small networks, against the references
# ------------------------------------------------------------------------------------------

ALL = (DiagGGN(), BatchDiagGGN(), KFLR())


def _leaf_blocks(G, params):
    """The diagonal blocks of ``G`` (flattened params, ``ravel_pytree`` order), one per leaf."""
    leaves, treedef = jax.tree.flatten(params)
    out, start = [], 0
    for leaf in leaves:
        stop = start + leaf.size
        out.append(G[..., start:stop, start:stop])
        start = stop
    return treedef.unflatten(out)


def _is_factors(x):
    return isinstance(x, KronFactors)


def check_ggn_quantities(extras, G, unravel, params):
    """``diag_ggn``, ``batch_diag_ggn`` and the exact blocks ``kflr`` gives the 1-D leaves."""
    Gm = jnp.mean(G, 0)
    assert_close(extras["diag_ggn"], unravel(jnp.diag(Gm)), 1e-10, "diag_ggn")
    assert_close(
        extras["batch_diag_ggn"],
        jax.vmap(lambda g: unravel(jnp.diag(g)))(G),
        1e-10,
        "batch_diag_ggn",
    )
    blocks = jax.tree.leaves(_leaf_blocks(Gm, params))
    factors = jax.tree.leaves(extras["kflr"], is_leaf=_is_factors)
    assert len(blocks) == len(factors) == len(jax.tree.leaves(params))
    for (path, leaf), block, f in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], blocks, factors
    ):
        assert (f.A.shape, f.B.shape) == jbp.extensions.curvature.kron_factor_shapes(leaf.shape)
        if leaf.ndim == 1:
            assert_close(
                f, KronFactors(jnp.ones((1, 1)), block), 1e-10, f"kflr{jax.tree_util.keystr(path)}"
            )


def kron_reference(model, loss, params, x, y, ks, key=None):
    """``{k: KronFactors(A, B)}`` for the ``W`` of the Dense/Conv2D layers ``model.layers[k]``:
    ``A`` from the rows ``∂z[i, p, 0]/∂W[..., 0]`` (the layer's inputs, or patches) and ``B``
    from the position blocks of ``J_zᵢᵀHᵢJ_zᵢ`` (``J_z`` = ``∂predᵢ/∂zᵢ``), all by
    ``jax.jacrev``/``jax.hessian`` in one jitted function."""

    def fwd(lo, hi, p, v):
        return jbp.Sequential(model.layers[lo:hi]).apply(p[lo:hi], v, key=key, train=True)

    @jax.jit
    def ref(params, x, y):
        pred = model.apply(params, x, key=key, train=True)
        H = loss_hessians(loss, pred, y)
        out = {}
        for k in ks:
            layer, pk = model.layers[k], params[k]
            a = fwd(0, k, params, x) if k else x
            z = layer.apply(pk, a)
            n, P, F = z.shape[0], int(np.prod(z.shape[1:-1])), z.shape[-1]
            rows = jax.jacrev(lambda W: layer.apply({**pk, "W": W}, a))(pk["W"])
            rows = rows[(Ellipsis, 0) + (slice(None),) * (pk["W"].ndim - 1) + (0,)]
            rows = rows.reshape(n * P, -1)
            # Shift the upper model's keys: layer i of the full model uses fold_in(key, i).
            upper = lambda v: _upper(model, k, params, v, key)  # noqa: E731
            J = jax.jacrev(upper)(z).reshape(n, -1, n, P * F)
            J = jnp.stack([J[i, :, i] for i in range(n)])  # (n, m, P·F)
            M = jnp.einsum("nmp,nmk,nkq->npq", J, H, J).reshape(n, P, F, P, F)
            out[k] = KronFactors(rows.T @ rows / (n * P), jnp.einsum("npfpg->fg", M) / n)
        return out

    return ref(params, x, y)


def _upper(model, k, params, v, key):
    """The layers after ``k`` applied to ``v``, each with the key it has in the full model."""
    for i in range(k + 1, len(model.layers)):
        ki = None if key is None else jax.random.fold_in(key, i)
        v = model.layers[i].apply(params[i], v, key=ki, train=True)
    return v


def _run_all(model, loss, params, x, y, extensions, key=None):
    out = jax.jit(jbp.backprop(model, loss, extensions=extensions))(params, x, y, key=key)
    G, unravel = ggn_reference(model, loss, params, x, y, key=key)
    check_ggn_quantities(out.extras, G, unravel, params)
    return out


def test_mlp_every_quantity():
    """Every smooth activation's second derivative, ReLU, and dropout (training mode, a key)."""
    model = jbp.Sequential(
        [
            Dense(4),
            Tanh(),
            Dropout(0.3),
            Dense(4),
            Sigmoid(),
            ELU(),
            Softplus(),
            GELU(),
            GELU(approximate=True),
            ReLU(),
            Dense(3),
        ]
    )
    loss = L.softmax_cross_entropy
    params, x, y = _setup(model, (4,), loss, n=4, seed=1)
    key = jax.random.key(11)
    out = _run_all(model, loss, params, x, y, ALL + (DiagHessian(),), key=key)
    assert_close(
        out.extras["diag_hessian"],
        hessian_reference(model, loss, params, x, y, key=key),
        1e-10,
        "diag_hessian",
    )
    dense = [k for k, l in enumerate(model.layers) if isinstance(l, Dense)]
    ref = kron_reference(model, loss, params, x, y, dense, key=key)
    for k in dense:
        assert_close(out.extras["kflr"][k]["W"], ref[k], 1e-10, f"kflr layers[{k}].W")


def test_cnn_every_quantity():
    """Strides, dilation, SAME/VALID padding, average and max pooling, binary cross-entropy."""
    model = jbp.Sequential(
        [
            Conv2D(3, (3, 2), strides=(2, 1), padding="SAME", dilation=(1, 2)),
            Sigmoid(),
            AvgPool2D(2, strides=1),
            MaxPool2D(2, padding="SAME"),
            Flatten(),
            Dense(2),
        ]
    )
    loss = L.binary_cross_entropy
    params, x, y = _setup(model, (6, 7, 2), loss, n=3, seed=2)
    _check_hessian_and_kflr(model, loss, params, x, y, [0, 5])


def _check_hessian_and_kflr(model, loss, params, x, y, weight_layers):
    """Every quantity (``_run_all``), the diagonal Hessian against ``jax.hessian`` and the
    KFLR factors of ``weight_layers`` against the Kronecker reference, 1e-10."""
    out = _run_all(model, loss, params, x, y, ALL + (DiagHessian(),))
    assert_close(
        out.extras["diag_hessian"],
        hessian_reference(model, loss, params, x, y),
        1e-10,
        "diag_hessian",
    )
    ref = kron_reference(model, loss, params, x, y, weight_layers)
    for k in weight_layers:
        assert_close(out.extras["kflr"][k]["W"], ref[k], 1e-10, f"kflr layers[{k}].W")


@pytest.mark.parametrize("walks", [1, 2])
def test_cnn_in_chunks_of_examples_and_groups_of_columns(monkeypatch, walks):
    """The columns walked in one ``vmap`` (``walks=1``: the ``Conv2D`` patches then split into
    one chunk per example) or in groups (5 outputs, at most 2 walks: groups of 3 and 2, no
    chunks): the same values as the references, and the same seeded results (DiagGGNMC,
    KFAC; one key) as the engine's own ``vmap`` over all columns (the class without
    ``walk``)."""
    curv = jbp.extensions.curvature
    monkeypatch.setattr(curv, "_PATCH_CHUNK_BYTES", 1)
    monkeypatch.setattr(curv, "_MAX_WALKS", walks)
    model = jbp.Sequential(
        [
            Conv2D(3, 2, strides=(1, 2), padding="VALID"),
            Tanh(),
            Conv2D(2, (2, 3), dilation=(2, 1), padding=((1, 0), (1, 2))),
            Flatten(),
            Dense(5),
        ]
    )
    loss = L.softmax_cross_entropy
    params, x, y = _setup(model, (6, 7, 2), loss, n=4, seed=12)
    _check_hessian_and_kflr(model, loss, params, x, y, [0, 2, 4])

    class EngineWalk:  # the engine's vmap over every column: hide ``walk``
        walk = None

    key = jax.random.key(5)
    for ext in (DiagGGNMC(samples=3), KFAC(samples=3), DiagGGN()):
        plain = type("Plain" + type(ext).__name__, (EngineWalk, type(ext)), {})
        plain = plain(**dataclasses.asdict(ext))
        a, b = (
            jax.jit(jbp.backprop(model, loss, extensions=[e]))(params, x, y, key=key).extras
            for e in (ext, plain)
        )
        assert_close(a[ext.name], b[ext.name], 1e-12, ext.name)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("rule", ["bp", "kolen_pollack"])
@pytest.mark.parametrize("chunk_bytes", [1, 2**30], ids=["chunks", "whole"])
def test_conv2d_per_example_rules_match_vmap_of_grad(monkeypatch, dtype, rule, chunk_bytes):
    """This module's ``Conv2D`` per-example gradients and their sum of squares (batched
    products of the patches, in chunks of examples or whole) against ``vmap`` of
    ``jax.grad`` of ``⟨conv(x_i), δ_i⟩``; Kolen–Pollack's ``B`` gets ``K``'s (its convention)."""
    curv = jbp.extensions.curvature
    monkeypatch.setattr(curv, "_PATCH_CHUNK_BYTES", chunk_bytes)
    layer = Conv2D(3, (3, 2), strides=(2, 1), padding="SAME", dilation=(1, 2), rule=rule)
    rng = np.random.default_rng(13)
    params, out_shape = layer.init(jax.random.key(1), (7, 6, 2))
    params = jax.tree.map(lambda p: jnp.asarray(p + rng.standard_normal(p.shape), dtype), params)
    x = jnp.asarray(rng.standard_normal((4, 7, 6, 2)), dtype)
    dy = jnp.asarray(rng.standard_normal((4,) + out_shape), dtype)

    def one(p, xi, di):
        return jnp.sum(layer.apply(p, xi[None]) * di[None])

    want = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, dy)
    if rule == "kolen_pollack":
        want["B"] = want["W"]
    got = jax.jit(lambda p, x, d: curv._conv2d_batch_grad(layer, p, {"x": x}, d))(params, x, dy)
    sq = jax.jit(lambda p, x, d: curv._conv2d_sum_squares(layer, p, {"x": x}, d))(params, x, dy)
    rtol = 1e-12 if dtype == jnp.float64 else 1e-5
    assert_close(got, want, rtol, "batch_grad")
    assert_close(sq, jax.tree.map(lambda g: jnp.sum(g * g, 0), want), rtol, "sum_squares")
    assert all(a.dtype == dtype for a in jax.tree.leaves((got, sq)))


def test_layernorm_and_dense_over_a_time_axis():
    """LayerNorm's 1-D leaves get their exact blocks; ``Dense`` on ``(n, T, in)`` follows the
    expand convention (``A`` averages over positions, ``B`` sums the position blocks)."""
    model = jbp.Sequential([Dense(3), LayerNorm(), Tanh(), Flatten(), Dense(2, use_bias=False)])
    loss = L.mse
    params, x, y = _setup(model, (4, 5), loss, n=3, seed=3)
    out = _run_all(model, loss, params, x, y, ALL)
    ref = kron_reference(model, loss, params, x, y, [0, 4])
    for k in (0, 4):
        assert_close(out.extras["kflr"][k]["W"], ref[k], 1e-10, f"kflr layers[{k}].W")


def _ids(n=3, T=3, vocab=7, seed=2, pad=False):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (n, T))
    if pad:  # right padding, lengths 3, 2, 1
        ids = np.where(np.arange(T)[None] < np.array([T, 2, 1])[:n, None], ids, 0)
    return ids


@pytest.mark.parametrize(
    "cell,pad,loss",
    [("lstm", False, L.softmax_cross_entropy), ("rnn", True, L.binary_cross_entropy)],
)
def test_embedding_and_recurrent_every_quantity(cell, pad, loss):
    """Kronecker factors of Embedding and SimpleRNN/LSTM against a recurrence written out here;
    the padded case also checks the diagonals (the generic ``vmap`` paths, with masks)."""
    rnn = LSTM(4) if cell == "lstm" else SimpleRNN(4)
    model = jbp.Sequential([Embedding(7, 3, pad_id=0 if pad else None), rnn, Dense(3)])
    ids = _ids(pad=pad)
    params, x, y = _setup(model, (3,), loss, ids=ids, seed=14)
    if pad:
        out = _run_all(model, loss, params, x, y, ALL)
    else:
        out = jax.jit(jbp.backprop(model, loss, extensions=[KFLR()]))(params, x, y)
    got = out.extras["kflr"]
    n, T = ids.shape
    mask = (ids != 0) if pad else np.ones((n, T), bool)
    real = mask.sum()
    emb, dense = model.layers[0], model.layers[2]
    xs = params[0]["W"][ids]  # (n, T, 3)
    g = params[1]["W_h"].shape[1]

    @jax.jit
    def reference(p_emb, p_rec, p_dense, xs, y):
        # Embedding: A from the one-hot rows ∂y[i, t, 0]/∂W[:, 0] (jax.jacrev), real tokens only
        onehot = (
            jax.jacrev(lambda W: jbp.layers.masking.cotangent_values(emb.apply({"W": W}, x)))(
                p_emb["W"]
            )[:, :, 0, :, 0]
            * mask[..., None]
        )
        A_emb = jnp.einsum("ntv,ntw->vw", onehot, onehot) / real

        def pred_of(eps, xi, mi):
            h, prev = _recurrent_reference(cell, p_rec, xi, mi, eps)
            return dense.apply(p_dense, h[None])[0], prev

        zero = jnp.zeros((T, g), xs.dtype)
        pred, prev = jax.vmap(lambda xi, mi: pred_of(zero, xi, mi))(xs, mask)
        H = loss_hessians(loss, pred, y)
        J = jax.vmap(lambda xi, mi: jax.jacrev(lambda e: pred_of(e, xi, mi)[0])(zero))(xs, mask)
        Jx = jax.vmap(lambda xi, mi: jax.jacrev(lambda v: pred_of(zero, v, mi)[0])(xi))(xs, mask)
        B_rec = jnp.einsum("nmtg,nmk,nkth->gh", J, H, J) / n  # ∂pred/∂z_t blocks, Σ_t
        B_emb = jnp.einsum("nmtf,nmk,nktg->fg", Jx, H, Jx) / n  # ∂pred/∂x_t blocks, Σ_t
        Jb = jnp.sum(J, axis=2)  # ∂pred/∂b = Σ_t ∂pred/∂z_t
        B_b = jnp.einsum("nmg,nmk,nkh->gh", Jb, H, Jb) / n  # the exact GGN block of b
        return pred, prev, A_emb, B_rec, B_emb, B_b

    pred, prev, A_emb, B_rec, B_emb, B_b = reference(params[0], params[1], params[2], xs, y)
    np.testing.assert_allclose(pred, out.pred, rtol=1e-12)  # the reference is right
    m = mask[..., None]
    A_x = jnp.einsum("ntf,ntg->fg", xs * m, xs * m) / real
    A_h = jnp.einsum("ntf,ntg->fg", prev * m, prev * m) / real
    assert_close(got[0]["W"], KronFactors(A_emb, B_emb), 1e-10, "embedding W")
    assert_close(got[1]["W_x"], KronFactors(A_x, B_rec), 1e-10, f"{cell} W_x")
    assert_close(got[1]["W_h"], KronFactors(A_h, B_rec), 1e-10, f"{cell} W_h")
    assert_close(got[1]["b"], KronFactors(jnp.ones((1, 1)), B_b), 1e-10, f"{cell} b")


def test_float32_matches_the_float64_values():
    model = jbp.Sequential([Dense(5), Tanh(), Dense(3)])
    loss = L.softmax_cross_entropy
    p64, x64, y = _setup(model, (4,), loss, n=5, seed=6)
    run = jax.jit(jbp.backprop(model, loss, extensions=[DiagGGN(), KFLR(), DiagHessian()]))
    o32 = run(jbp.cast(p64, jnp.float32), x64.astype(jnp.float32), y)
    G, unravel = ggn_reference(model, loss, p64, x64, y)
    assert_close(o32.extras["diag_ggn"], unravel(jnp.diag(jnp.mean(G, 0))), RTOL[jnp.float32])
    assert_close(
        o32.extras["diag_hessian"], hessian_reference(model, loss, p64, x64, y), RTOL[jnp.float32]
    )
    assert_close(
        o32.extras["kflr"][0]["b"],
        KronFactors(jnp.ones((1, 1)), _leaf_blocks(jnp.mean(G, 0), p64)[0]["b"]),
        RTOL[jnp.float32],
    )
    for name in ("diag_ggn", "diag_hessian", "kflr"):
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(o32.extras[name]))


@pytest.mark.parametrize(
    "loss", [L.binary_cross_entropy, L.softmax_cross_entropy], ids=lambda l: l.name
)
def test_kron_factors_are_the_exact_ggn_block_for_one_dense_layer_and_one_example(loss):
    model = jbp.Sequential([Dense(3)])
    params, x, y = _setup(model, (4,), loss, n=1, seed=9)
    out = jbp.backprop(model, loss, extensions=[KFLR()])(params, x, y)
    G, _ = ggn_reference(model, loss, params, x, y)
    blocks = _leaf_blocks(G[0], params)[0]
    f = out.extras["kflr"][0]
    assert f["W"].A.shape == (4, 4) and f["W"].B.shape == (3, 3)
    np.testing.assert_allclose(jnp.kron(f["W"].A, f["W"].B), blocks["W"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jnp.kron(f["b"].A, f["b"].B), blocks["b"], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------
# Monte-Carlo variants: unbiased, converging to the exact value
# ------------------------------------------------------------------------------------------


def test_monte_carlo_diag_ggn_and_kfac_average_to_the_exact_values():
    """2000 Monte-Carlo estimates (keys split from one fixed key; DiagGGNMC with 2 samples per
    call, KFAC with 1): their mean lies within 5 standard errors of DiagGGN / KFLR, entry by
    entry (deterministic: fixed keys); KFAC's ``A`` is exact."""
    model = jbp.Sequential([Dense(4), Tanh(), Dense(3)])
    loss = L.softmax_cross_entropy
    params, x, y = _setup(model, (3,), loss, n=4, seed=16)
    exact = jax.jit(jbp.backprop(model, loss, extensions=[DiagGGN(), KFLR()]))(params, x, y).extras
    run = jbp.backprop(model, loss, extensions=[DiagGGNMC(samples=2), KFAC()])
    S = 2000
    keys = jax.random.split(jax.random.key(2024), S)
    est = jax.jit(jax.vmap(lambda k: run(params, x, y, key=k).extras))(keys)

    def within(samples, want, what):
        for (path, s), w in zip(
            jax.tree_util.tree_flatten_with_path(samples)[0], jax.tree.leaves(want)
        ):
            s, w = np.asarray(s), np.asarray(w)
            mean, se = s.mean(0), s.std(0) / np.sqrt(S)
            bad = np.abs(mean - w) > 5 * se + 1e-12
            assert not bad.any(), f"{what}{jax.tree_util.keystr(path)}: {np.abs(mean - w)[bad]}"

    within(est["diag_ggn_mc"], exact["diag_ggn"], "diag_ggn_mc")
    B = lambda t: jax.tree.map(lambda f: f.B, t, is_leaf=_is_factors)  # noqa: E731
    within(B(est["kfac"]), B(exact["kflr"]), "kfac B")
    for f_mc, f in zip(
        jax.tree.leaves(est["kfac"], is_leaf=_is_factors),
        jax.tree.leaves(exact["kflr"], is_leaf=_is_factors),
    ):
        np.testing.assert_allclose(f_mc.A, np.broadcast_to(f.A, f_mc.A.shape), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_sampling_extensions_need_a_key():
    model = jbp.Sequential([Dense(3)])
    params, x, y = _setup(model, (4,), L.mse)
    for ext in (DiagGGNMC(), KFAC(samples=2)):
        with pytest.raises(ValueError, match=f"{ext.name} samples random numbers and needs a key"):
            jax.jit(jbp.backprop(model, L.mse, extensions=[ext]))(params, x, y)


def test_diag_hessian_names_an_unsupported_layer():
    model = jbp.Sequential([Dense(5), LayerNorm(), Tanh(), Dense(2)])
    params, x, y = _setup(model, (3,), L.mse)
    with pytest.raises(ValueError, match=r"DiagHessian: layers\[1\] \(LayerNorm\(.*not supported"):
        jax.jit(jbp.backprop(model, L.mse, extensions=[DiagHessian()]))(params, x, y)


@dataclasses.dataclass(frozen=True)
class _Scale(Layer):
    """``y = x ⊙ w`` with a 2-D ``w``: no Kronecker factors, no second derivative."""

    def init(self, key, in_shape):
        return {"w": jax.random.normal(key, tuple(in_shape))}, tuple(in_shape)

    def forward(self, params, x, *, key=None, train=False):
        return x * params["w"], {"x": x}

    def backward(self, params, cache, dy):
        return {"w": jnp.sum(dy * cache["x"], axis=0)}, dy * params["w"]


def test_kron_factors_refuse_a_layer_without_them_and_diagonals_use_the_generic_default():
    model = jbp.Sequential([_Scale(), Flatten(), Dense(2)])
    params, x, y = _setup(model, (2, 3), L.mse, n=3, seed=17)
    with pytest.raises(ValueError, match=r"KFAC/KFLR: layer _Scale\(\) has parameters of rank"):
        jax.jit(jbp.backprop(model, L.mse, extensions=[KFLR()]))(params, x, y)
    with pytest.raises(ValueError, match="_Scale"):
        jax.jit(jbp.backprop(model, L.mse, extensions=[DiagHessian()]))(params, x, y)
    out = jax.jit(jbp.backprop(model, L.mse, extensions=[DiagGGN()]))(params, x, y)
    G, unravel = ggn_reference(model, L.mse, params, x, y)
    assert_close(out.extras["diag_ggn"], unravel(jnp.diag(jnp.mean(G, 0))), 1e-10)


def test_bad_arguments_and_losses_without_curvature():
    for cls in (DiagGGNMC, KFAC):
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="samples must be a positive integer"):
                cls(samples=bad)

    class Plain:
        name = "plain"

        def value(self, pred, target):
            return jnp.sum((pred - target) ** 2)

        def grad(self, pred, target):
            return 2 * (pred - target)

    model = jbp.Sequential([Dense(2)])
    params, x, y = _setup(model, (3,), L.mse)
    with pytest.raises(TypeError, match="has no hessian_factor"):
        jax.jit(jbp.backprop(model, Plain(), extensions=[DiagGGN()]))(params, x, y)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        L.mse.sampled_grads(jax.random.key(0), x, y, samples=0)
