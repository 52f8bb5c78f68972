"""Every first-order extension on every layer with parameters, against an independent oracle.

Oracle: ``jax.vmap(jax.grad(ℓᵢ))`` — the gradient of the loss on example ``i`` alone, each
example fed to ``model.apply`` as a batch of one — from which the expected ``batch_grad``,
``batch_l2``, ``sum_grad_squared``, ``variance`` and ``clipped_grad`` are computed in numpy.
The engine runs all five extensions in one pass. Each model (a row of ``MODELS``, the
BackPACK-style table of settings) is compiled once per dtype; the float64 oracle serves the
float32 run too (the data are float32-representable), so float32 is compared with the exact
values at float32 tolerance.

The layer-level table (``LAYERS``) checks each layer's closed forms against the same kind
of oracle (``jax.vjp`` of the layer's own forward on one example) and against the
extension's generic default (``vmap`` of the layer's ``backward``) where that can run, on
both branches of the Gram / per-example switch.
"""

import jax

jax.config.update("jax_enable_x64", True)

import dataclasses  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jbp  # noqa: E402
from jbp.core import Layer  # noqa: E402
from jbp.engine import LayerCall  # noqa: E402
from jbp.extensions import (  # noqa: E402
    BatchGrad,
    BatchL2,
    ClippedGrad,
    Extension,
    SumGradSquared,
    Variance,
)
from jbp.extensions.firstorder import (  # noqa: E402
    clip_factors,
    global_sq_norms,
    scale_rows,
    scaled_mean_grad,
)
from jbp.layers import (  # noqa: E402
    LSTM,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2D,
    MeanPool1D,
    ReLU,
    SimpleRNN,
    Tanh,
)
from jbp.layers import _per_example as _pe  # noqa: E402
from jbp.layers.masking import Masked  # noqa: E402

# max|actual − expected| ≤ rtol·|expected| + atol·max|expected| (per leaf)
TOL = {jnp.float64: (1e-10, 1e-12), jnp.float32: (2e-4, 2e-5)}
mse, bce, sce = jbp.losses.mse, jbp.losses.binary_cross_entropy, jbp.losses.softmax_cross_entropy
EXT_NAMES = ("batch_grad", "batch_l2", "sum_grad_squared", "variance", "clipped_grad")


@dataclasses.dataclass(frozen=True)
class Scale(Layer):
    """A user's layer with only init/forward/backward: ``y = x ⊙ s + c`` (generic defaults)."""

    def init(self, key, in_shape):
        k1, k2 = jax.random.split(key)
        return (
            {"s": jax.random.normal(k1, in_shape) + 1.0, "c": jax.random.normal(k2, in_shape)},
            tuple(in_shape),
        )

    def forward(self, params, x, *, key=None, train=False):
        return x * params["s"] + params["c"], {"x": x}

    def backward(self, params, cache, dy):
        return {"s": jnp.sum(cache["x"] * dy, axis=0), "c": jnp.sum(dy, axis=0)}, dy * params["s"]


def _cnn():
    # Conv2D(4, 3) on 8×8×2: T = 64, 2T² = 8192 > d·p = 18·4  -> per-example gradient
    # Conv2D(5, 3, VALID) on 4×4×4: T = 4, 2T² = 32 ≤ d·p = 36·5 -> Gram form
    return jbp.Sequential(
        [
            Conv2D(4, 3),
            ReLU(),
            MaxPool2D(2),
            Conv2D(5, 3, padding="VALID"),
            BatchNorm(),
            AvgPool2D(2),
            Flatten(),
            Dense(3),
        ]
    )


# name: (model, in_shape, input kind, loss, batch size, train)
MODELS = {
    "mlp": (
        lambda: jbp.Sequential([Dense(6), Tanh(), Dense(5), ReLU(), Dense(3)]),
        (4,),
        "float",
        sce,
        7,
        True,
    ),
    "batch1": (lambda: jbp.Sequential([Dense(6), Tanh(), Dense(3)]), (4,), "float", sce, 1, True),
    "cnn_bn_eval": (_cnn, (8, 8, 2), "float", mse, 5, False),
    # Embedding: 2T² = 72 ≤ vocab·features = 78 -> Gram; LSTM: Gram for W_x and W_h
    "emb_pad_lstm": (
        lambda: jbp.Sequential([Embedding(13, 6, pad_id=0), LSTM(5), Dense(2)]),
        (6,),
        "ids13",
        bce,
        6,
        True,
    ),
    # Embedding: 2T² = 50 > 7·3 -> per-example; SimpleRNN: per-example for W_x and W_h
    "emb_rnn_seq_meanpool": (
        lambda: jbp.Sequential(
            [Embedding(7, 3, pad_id=0), SimpleRNN(4, return_sequences=True), MeanPool1D(), Dense(3)]
        ),
        (5,),
        "ids7",
        sce,
        6,
        True,
    ),
    # Dense on (batch, T, features): Dense(6) on (3, 4) Gram (18 ≤ 24), Dense(2) on (3, 6)
    # per-example (18 > 12); LayerNorm over the features of every position
    "layernorm_seq_dense": (
        lambda: jbp.Sequential([Dense(6), LayerNorm(), Tanh(), Dense(2), Flatten(), Dense(3)]),
        (3, 4),
        "float",
        mse,
        5,
        True,
    ),
    "user_layer": (
        lambda: jbp.Sequential([Dense(5), Scale(), ReLU(), Dense(3)]),
        (4,),
        "float",
        bce,
        6,
        True,
    ),
}


def _f32_exact(a):
    """float64 values that float32 represents exactly (so one oracle serves both dtypes)."""
    return np.asarray(np.asarray(a, np.float32), np.float64)


def _inputs(kind, in_shape, n, rng):
    if kind == "float":
        scale = rng.uniform(0.5, 2.0, size=(1,) + tuple(in_shape))  # non-uniform per feature
        return jnp.asarray(_f32_exact(rng.standard_normal((n,) + tuple(in_shape)) * scale))
    vocab, T = int(kind[3:]), in_shape[0]
    ids = rng.integers(1, vocab, (n, T))  # small vocab: repeated ids
    lengths = rng.integers(1, T + 1, n)
    lengths[0] = T  # one full sequence
    pad = np.arange(T)[None] >= lengths[:, None]  # right padding ...
    pad[-1] = np.arange(T) < T - lengths[-1]  # ... and one left-padded
    return jnp.asarray(np.where(pad, 0, ids), jnp.int32)


def _targets(loss, out_shape, n, rng):
    if loss is sce:
        return jnp.asarray(rng.integers(0, out_shape[-1], n), jnp.int32)
    if loss is bce:
        return jnp.asarray(_f32_exact(rng.uniform(size=(n,) + tuple(out_shape))))
    return jnp.asarray(_f32_exact(rng.standard_normal((n,) + tuple(out_shape))))


def _state(model, in_shape, rng):
    """The model's state, BatchNorm's running statistics made non-trivial."""
    if not model.stateful:
        return None
    out = []
    for layer, s in zip(model.layers, model.init_state(in_shape)):
        if isinstance(layer, BatchNorm):
            f = s["mean"].shape[0]
            s = {
                "mean": jnp.asarray(_f32_exact(rng.standard_normal(f))),
                "var": jnp.asarray(_f32_exact(rng.uniform(0.3, 3.0, f))),
            }
        out.append(s)
    return tuple(out)


def _cast(tree, dtype):
    return None if tree is None else jbp.cast(tree, dtype)


def _oracle(model, loss, params, x, y, state, train):
    """Per-example gradients ``(n, *leaf.shape)``: ``vmap`` of ``jax.grad`` of one example's
    loss through ``model.apply`` (a batch of one); independent of the hand-written backward."""

    def one(p, xi, yi):
        return loss.value(model.apply(p, xi[None], train=train, state=state), yi[None])

    return jax.device_get(jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))(params, x, y))


def _expected(G, max_norm):
    """The five extensions' results from the per-example gradients ``G``."""
    n = jax.tree.leaves(G)[0].shape[0]
    l2 = jax.tree.map(lambda g: np.sum(np.square(g.reshape(n, -1)), axis=1), G)
    norms = np.sqrt(sum(jax.tree.leaves(l2)))
    scale = np.minimum(1.0, max_norm / norms)
    return {
        "batch_grad": G,
        "batch_l2": l2,
        "sum_grad_squared": jax.tree.map(lambda g: np.sum(np.square(g), axis=0), G),
        "variance": jax.tree.map(lambda g: np.var(g, axis=0), G),
        "clipped_grad": jax.tree.map(
            lambda g: np.mean(g * scale.reshape((n,) + (1,) * (g.ndim - 1)), axis=0), G
        ),
    }


def _assert_tree_close(actual, expected, dtype, what, scales=None, atol_abs=None):
    """Leaf by leaf; ``scales`` (default: ``expected``) sets each leaf's absolute tolerance
    (``atol·max|scale|``), or ``atol_abs`` fixes it."""
    rtol, atol = TOL[dtype]
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    scales = jax.tree.leaves(expected if scales is None else scales)
    for i, (a, e) in enumerate(zip(jax.tree.leaves(actual), jax.tree.leaves(expected))):
        a, e = np.asarray(a), np.asarray(e, np.float64)
        assert a.shape == e.shape, (what, i, a.shape, e.shape)
        assert a.dtype == dtype, (what, i, a.dtype)
        scale = float(np.max(np.abs(scales[i]))) if e.size else 0.0
        tol = atol * scale if atol_abs is None else atol_abs
        np.testing.assert_allclose(a, e, rtol=rtol, atol=tol, err_msg=f"{what} leaf {i}")


@pytest.fixture(scope="module", params=sorted(MODELS))
def setting(request):
    """One model of the table: float64 params, data, state and the oracle's expectations."""
    make, in_shape, kind, loss, n, train = MODELS[request.param]
    model = make()
    rng = np.random.default_rng(sorted(MODELS).index(request.param))
    params, out_shape = model.init(jax.random.key(1), in_shape)
    # perturb every leaf (biases, γ, β too) so no gradient is trivially zero or symmetric
    params = jax.tree.map(
        lambda a: jnp.asarray(
            _f32_exact(np.asarray(a, np.float64) + 0.3 * rng.standard_normal(a.shape))
        ),
        params,
    )
    x, y = _inputs(kind, in_shape, n, rng), _targets(loss, out_shape, n, rng)
    state = _state(model, in_shape, rng)
    G = _oracle(model, loss, params, x, y, state, train)
    assert jax.tree.structure(G) == jax.tree.structure(params)
    norms = np.sqrt(sum(np.sum(np.square(g.reshape(n, -1)), axis=1) for g in jax.tree.leaves(G)))
    max_norm = 0.7 * float(np.median(norms))  # most examples get clipped, not all
    return dict(
        name=request.param,
        model=model,
        loss=loss,
        params=params,
        x=x,
        y=y,
        state=state,
        train=train,
        n=n,
        G=G,
        expected=_expected(G, max_norm),
        max_norm=max_norm,
    )


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
def test_every_extension_on_every_layer_equals_vmap_of_jax_grad(setting, dtype):
    s = setting
    exts = [BatchGrad(), BatchL2(), SumGradSquared(), Variance(), ClippedGrad(s["max_norm"])]
    run = jbp.backprop(s["model"], s["loss"], extensions=exts)
    f = jax.jit(lambda p, x, y, st: run(p, x, y, state=st, train=s["train"]))
    x = s["x"] if jnp.issubdtype(s["x"].dtype, jnp.integer) else s["x"].astype(dtype)
    y = s["y"] if jnp.issubdtype(s["y"].dtype, jnp.integer) else s["y"].astype(dtype)
    out = f(_cast(s["params"], dtype), x, y, _cast(s["state"], dtype))
    assert sorted(out.extras) == sorted(EXT_NAMES)
    for name in EXT_NAMES:
        # variance = E[g²] − ḡ² is accurate relative to E[g²] (exactly 0 for one example)
        scales = s["expected"]["sum_grad_squared"] if name == "variance" else None
        _assert_tree_close(
            out.extras[name], s["expected"][name], dtype, f"{s['name']} {name}", scales
        )
    # the same pass's batch gradient is the mean of the per-example gradients
    _assert_tree_close(
        out.grads, jax.tree.map(lambda g: np.mean(g, axis=0), s["G"]), dtype, f"{s['name']} grads"
    )


@dataclasses.dataclass(frozen=True)
class _ClippedBySecondBackward(Extension):
    """The clipped mean by a second backward pass through the whole network: the output
    delta's row ``i`` scaled by ``min(1, C/‖gᵢ‖)`` and backpropagated again (the engine's
    seeded walk). What ``ClippedGrad`` computed before book-keeping; an independent route."""

    max_norm: float = 1.0
    name = "clipped_by_second_backward"
    per_example = True
    seeded = True
    requires = (BatchL2(),)

    def seed(self, ctx):
        scale = clip_factors(global_sq_norms(ctx.extras["batch_l2"]), self.max_norm)
        return scale_rows(ctx.dpred, scale)[None]

    def compute(self, call):
        return call.grads


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
def test_clipped_grad_by_book_keeping_equals_a_second_backward_pass(setting, dtype):
    """Every model of the table (MLP, CNN with both Conv2D branches, Embedding + LSTM on
    padded ids, masked sequences, a user's layer): book-keeping == the full second pass."""
    s = setting
    c = s["max_norm"]
    run = jbp.backprop(
        s["model"], s["loss"], extensions=[ClippedGrad(c), _ClippedBySecondBackward(c)]
    )
    f = jax.jit(lambda p, x, y, st: run(p, x, y, state=st, train=s["train"]).extras)
    x = s["x"] if jnp.issubdtype(s["x"].dtype, jnp.integer) else s["x"].astype(dtype)
    y = s["y"] if jnp.issubdtype(s["y"].dtype, jnp.integer) else s["y"].astype(dtype)
    out = f(_cast(s["params"], dtype), x, y, _cast(s["state"], dtype))
    assert sorted(out) == ["batch_l2", "clipped_by_second_backward", "clipped_grad"]
    _assert_tree_close(
        out["clipped_grad"],
        out["clipped_by_second_backward"],
        dtype,
        f"{s['name']} book-keeping",
        s["expected"]["clipped_grad"],
    )


def test_the_table_covers_every_layer_with_parameters_and_every_loss():
    """Guards the matrix itself: a layer or loss dropped from MODELS fails here."""

    def leaves(layer):
        return (
            [l for sub in layer.layers for l in leaves(sub)]
            if hasattr(layer, "layers")
            else [layer]
        )

    covered = {type(l) for make, *_ in MODELS.values() for l in leaves(make())}
    assert {Dense, Conv2D, Embedding, LayerNorm, BatchNorm, SimpleRNN, LSTM, Scale} <= covered
    assert {MODELS[k][3] for k in MODELS} == {mse, bce, sce}
    assert min(m[4] for m in MODELS.values()) == 1
    # the branches the comments of MODELS claim, (T, d, p) of use_gram:
    assert not _pe.use_gram(8 * 8, 3 * 3 * 2, 4) and _pe.use_gram(2 * 2, 3 * 3 * 4, 5)  # Conv2D
    assert _pe.use_gram(6, 13, 6) and not _pe.use_gram(5, 7, 3)  # Embedding
    assert _pe.use_gram(6, 6, 4 * 5) and _pe.use_gram(6, 5, 4 * 5)  # LSTM W_x, W_h
    assert not _pe.use_gram(5, 3, 4) and not _pe.use_gram(5, 4, 4)  # SimpleRNN
    assert _pe.use_gram(3, 4, 6) and not _pe.use_gram(3, 6, 2)  # Dense (T, in)


# --------------------------------------------------------------------------------------
# Layer by layer: closed forms vs jax.vjp of the layer (one example at a time) and vs the
# generic vmap-of-backward default
# --------------------------------------------------------------------------------------


def _ids(rng, vocab, shape, pad_frac=0.0):
    ids = rng.integers(1, vocab, shape)
    return jnp.asarray(np.where(rng.uniform(size=shape) < pad_frac, 0, ids), jnp.int32)


def _mask(rng, n, T):
    lengths = rng.integers(1, T + 1, n)
    lengths[0] = T
    return jnp.asarray(np.arange(T)[None] < lengths[:, None])


# name: (layer, in_shape, input kind, whether the generic default can run, Gram branch)
LAYERS = {
    # Dense (also in test_per_example's models): no extra axes, Gram, per-example, no bias
    "dense": (Dense(4), (5,), "float", True, None),
    "dense_T_gram": (Dense(4), (3, 5), "float", True, True),
    "dense_T_outer_nobias": (Dense(2, use_bias=False), (6, 2), "float", True, False),
    "dense_T_outer": (Dense(3), (7, 2), "float", True, False),
    # Conv2D (the CNN of MODELS has a SAME per-example and a VALID Gram layer): strides,
    # dilation, explicit/asymmetric padding, no bias, a single output position, both branches
    "conv_strided_dilated": (
        Conv2D(3, (3, 2), strides=2, dilation=(1, 2), padding=((1, 0), (2, 1)), use_bias=False),
        (9, 8, 2),
        "float",
        True,
        False,
    ),
    "conv_strides_2_3_gram": (Conv2D(8, 3, strides=(2, 3)), (5, 7, 3), "float", True, True),
    "conv_T1": (Conv2D(3, 2, padding="VALID"), (2, 2, 2), "float", True, True),
    # Embedding: Gram and per-example branches, pad rows, 1-D ids (one token per example)
    "embedding_gram_pad": (Embedding(13, 6, pad_id=0), (6,), "ids13pad", True, True),
    "embedding_outer": (Embedding(5, 2), (6,), "ids5", True, False),
    "embedding_one_token": (Embedding(9, 4), (), "ids9", True, True),
    # normalization: LayerNorm on (n, F) and (n, T, F); BatchNorm in evaluation on NHWC
    "layernorm": (LayerNorm(), (5,), "float", True, None),
    "layernorm_seq_noscale": (LayerNorm(use_scale=False), (3, 4), "float", True, None),
    "batchnorm_eval_nhwc": (BatchNorm(), (3, 2, 4), "float", False, None),
    "batchnorm_eval_nobias": (BatchNorm(use_bias=False), (4,), "float", False, None),
    # recurrent (MODELS has a masked LSTM on the Gram branch and a masked SimpleRNN with
    # return_sequences on the per-example branch): the other branch of each, with and
    # without a mask
    "rnn_masked_seq_gram": (SimpleRNN(6, return_sequences=True), (3, 4), "masked", True, True),
    "lstm_outer": (LSTM(2), (7, 2), "float", True, False),
    # backward rules (jbp.layers._feedback): Kolen–Pollack's B gets W's per-example quantity;
    # in a recurrent layer B_h replaces W_h in the recurrent delta, so its rows have no jax.vjp
    # oracle (the rule's update is not a gradient) and are checked against the generic default
    # (feedback alignment's B is state, carried in the cache)
    "conv_kolen_pollack": (Conv2D(3, 3, rule="kolen_pollack"), (5, 5, 2), "float", True, False),
    "rnn_kolen_pollack_seq_gram": (
        SimpleRNN(5, return_sequences=True, rule="kolen_pollack"),
        (3, 4),
        "float",
        True,
        True,
    ),
    "lstm_fa_masked": (LSTM(3, rule="fa"), (4, 2), "masked", True, False),
}


def _layer_setting(name, rng, n=5):
    layer, in_shape, kind, _, _ = LAYERS[name]
    if kind.startswith("ids"):
        vocab = int(kind[3:].removesuffix("pad"))
        x = _ids(rng, vocab, (n,) + in_shape, 0.3 if kind.endswith("pad") else 0.0)
        params, out_shape = layer.init(jax.random.key(2), in_shape)
        feed = x
    else:
        x = jnp.asarray(rng.standard_normal((n,) + in_shape) * rng.uniform(0.5, 2.0, in_shape))
        params, out_shape = layer.init(jax.random.key(2), in_shape)
        feed = Masked(x, _mask(rng, n, in_shape[0])) if kind == "masked" else x
    params = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) + 0.3 * jnp.asarray(rng.standard_normal(a.shape)),
        params,
    )
    state = None
    if isinstance(layer, BatchNorm):
        f = in_shape[-1]
        state = {
            "mean": jnp.asarray(rng.standard_normal(f)),
            "var": jnp.asarray(rng.uniform(0.3, 3.0, f)),
        }
    elif layer.stateful:  # feedback alignment's fixed B
        state = jbp.cast(layer.init_state(in_shape), jnp.float64)
    dy = jnp.asarray(rng.standard_normal((n,) + tuple(out_shape)))  # per example: row i = δᵢ
    return layer, params, feed, state, dy


def _values(y):
    return y.values if isinstance(y, Masked) else y


def _vjp_per_example(layer, params, feed, state, dy):
    """``∂(δᵢ · layer(xᵢ))/∂θ`` for each example alone, by ``jax.vjp`` of the forward."""

    def one(xi, di):
        xb = jax.tree.map(lambda a: a[None], xi)
        f = lambda p: _values(layer.apply(p, xb, train=False, state=state))  # noqa: E731
        return jax.vjp(f, params)[1](di[None])[0]

    return jax.vmap(one)(feed, dy)


LAYER_EXTS = (BatchGrad(), BatchL2(), SumGradSquared())  # Variance: the model-level test


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_closed_forms_equal_vjp_oracle_and_generic_default(name):
    layer, _, _, generic_runs, gram = LAYERS[name]
    rng = np.random.default_rng(sorted(LAYERS).index(name) + 100)
    layer, params, feed, state, dy = _layer_setting(name, rng)
    n = dy.shape[0]
    for ext in LAYER_EXTS:
        assert callable(getattr(layer, ext.name, None)), (name, ext.name)

    def visit(params, feed, state, dy):
        if state is None:
            _, cache = layer.forward(params, feed, train=False)
        else:
            _, cache, _ = layer.forward_with_state(params, state, feed, train=False)
        # the engine hands extensions n·dy as the per-example cotangent: call with dy / n
        grads, _ = layer.backward(params, cache, dy / n)
        return cache, LayerCall(layer, params, cache, dy / n, grads, n)

    rule = getattr(layer, "rule", "bp")

    scale = jnp.asarray(rng.uniform(0.1, 1.0, n))  # DP-SGD's clip factors sᵢ

    @jax.jit
    def run(params, feed, state, dy):
        cache, call = visit(params, feed, state, dy)
        closed = {e.name: e.compute(call) for e in LAYER_EXTS}
        if callable(getattr(layer, "scaled_grad_sum", None)):  # Σᵢ sᵢ gᵢ
            closed["scaled_grad_sum"] = layer.scaled_grad_sum(params, cache, dy, scale)
        # what ClippedGrad uses: the method, or the backward on the rescaled mean delta
        closed["scaled_mean_grad"] = scaled_mean_grad(layer, params, cache, dy / n, scale, n)
        generic = {e.name: e.default(call) for e in LAYER_EXTS} if generic_runs else {}
        not_a_gradient = rule != "bp" and isinstance(layer, (SimpleRNN, LSTM))
        oracle = None if not_a_gradient else _vjp_per_example(layer, params, feed, state, dy)
        return closed, generic, oracle

    closed, generic, G = jax.device_get(run(params, feed, state, dy))
    if G is not None:
        if rule == "kolen_pollack":  # by definition B's gradient is W's (B is not in the forward)
            G = {**G, **{b: G[w] for b, (w, _) in layer._feedback_of.items()}}
        expected = _expected(G, 1.0)
        sn = np.asarray(scale)
        expected["scaled_grad_sum"] = jax.tree.map(lambda g: np.tensordot(sn, g, 1), G)
        expected["scaled_mean_grad"] = jax.tree.map(lambda g: np.tensordot(sn, g, 1) / n, G)
        for e in [*(e.name for e in LAYER_EXTS), "scaled_mean_grad"] + (
            ["scaled_grad_sum"] if "scaled_grad_sum" in closed else []
        ):
            _assert_tree_close(closed[e], expected[e], jnp.float64, f"{name} {e}")
    for k, v in generic.items():  # elementwise rtol 1e-10, atol 1e-12
        _assert_tree_close(v, closed[k], jnp.float64, f"{name} {k} generic", atol_abs=1e-12)
    if (
        not generic_runs
    ):  # BatchNorm's eval cache has inv_std of shape (F,): why it needs closed forms
        for e in LAYER_EXTS:
            with pytest.raises(ValueError, match="closed-form"):
                jax.eval_shape(lambda *a, e=e: e.default(visit(*a)[1]), params, feed, state, dy)
    if gram is not None:  # the table's branch labels are what the layer's rule picks
        assert _pe.use_gram(*_branch_shapes(layer, params, _values(feed).shape, dy.shape)) == gram


def _branch_shapes(layer, params, x_shape, dy_shape):
    """``(T, d, p)`` of the Gram / per-example switch for the layer's main weight."""
    if isinstance(layer, Conv2D):
        kh, kw, c, f = params["W"].shape
        return dy_shape[1] * dy_shape[2], kh * kw * c, f
    if isinstance(layer, Embedding):
        return int(np.prod(x_shape[1:])), layer.vocab_size, layer.features
    if isinstance(layer, Dense):
        return int(np.prod(x_shape[1:-1])), params["W"].shape[0], layer.units
    return x_shape[1], params["W_x"].shape[0], params["W_x"].shape[1]  # recurrent: W_x


def test_embedding_repeated_ids_and_pad_rows():
    """Hand-computed case: ids [[2, 2, 0], [3, 2, 2]] with pad_id = 0; row 2 of example 0 is
    δ₀₀ + δ₀₁ (a repeated id sums its deltas, squared once), and a zero delta at the pad
    position (what a mask-aware consumer sends) leaves row pad_id without gradient."""
    layer = Embedding(4, 2, pad_id=0)
    params, _ = layer.init(jax.random.key(0), (3,))
    ids = jnp.asarray([[2, 2, 0], [3, 2, 2]], jnp.int32)
    d = np.array([[[1.0, -2.0], [0.5, 3.0], [0.0, 0.0]], [[2.0, 1.0], [-1.0, 0.25], [4.0, -1.5]]])
    _, cache = layer.forward(jbp.cast(params, jnp.float64), ids)
    G = np.zeros((2, 4, 2))
    G[0, 2] = d[0, 0] + d[0, 1]
    G[1, 3] = d[1, 0]
    G[1, 2] = d[1, 1] + d[1, 2]
    dy = jnp.asarray(d)
    np.testing.assert_array_equal(layer.batch_grad(params, cache, dy)["W"], G)
    np.testing.assert_allclose(
        layer.batch_l2(params, cache, dy)["W"], np.sum(np.square(G), axis=(1, 2)), rtol=1e-15
    )
    sgs = np.asarray(layer.sum_grad_squared(params, cache, dy)["W"])
    np.testing.assert_allclose(sgs, np.sum(np.square(G), axis=0), rtol=1e-15)
    assert not np.any(sgs[0]) and not np.any(sgs[1])  # pad row and an unused row


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_extensions_fail_with_clear_errors():
    """(More of the engine's argument errors are in tests/test_backprop.py.)"""
    model = jbp.Sequential([Dense(3)])
    with pytest.raises(TypeError, match=r"extensions\[0\].*expected a jbp.extensions.Extension"):
        jbp.backprop(model, mse, extensions=[object()])
    with pytest.raises(TypeError, match=r"got the class Variance; pass an instance, Variance\(\)"):
        jbp.backprop(model, mse, extensions=[BatchL2(), Variance])


def test_batchnorm_in_training_mode_refuses_per_example_extensions():
    model = jbp.Sequential([Dense(4), BatchNorm(), Dense(2)])
    assert model.mixes_examples(True) and not model.mixes_examples(False)
    assert BatchNorm().mixes_examples(True) and not BatchNorm().mixes_examples(False)
    params, _ = model.init(jax.random.key(0), (3,))
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.standard_normal((6, 3))), jnp.asarray(rng.standard_normal((6, 2)))
    for ext in (BatchGrad(), BatchL2(), SumGradSquared(), Variance(), ClippedGrad(1.0)):
        run = jbp.backprop(model, mse, extensions=[ext])
        with pytest.raises(ValueError, match="is a per-example quantity.*train=True"):
            jax.eval_shape(lambda p: run(p, x, y, train=True), params)
        # evaluation mode is accepted (its values are checked in the CNN row of MODELS)
        jax.eval_shape(lambda p: run(p, x, y, train=False, state=model.init_state((3,))), params)
    # called directly on a training-mode cache, the closed form names the layer
    bn = BatchNorm()
    p, _ = bn.init(jax.random.key(0), (3,))
    _, cache = bn.forward(p, x, train=True)
    with pytest.raises(ValueError, match=r"BatchNorm\(.*running statistics"):
        bn.batch_l2(p, cache, x)
