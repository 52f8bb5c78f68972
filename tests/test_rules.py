"""Alternative learning rules (jbp.rules, the ``rule`` field of the weight layers).

References are independent of the code under test: NumPy forward/backward written out
(MLP, SimpleRNN, DFA), ``jax.vjp`` of the *backprop* layer's forward with the feedback
matrix substituted as the weight (the input gradient of a layer linear in its input),
and ``jax.vjp`` through a ``custom_vjp`` matmul whose backward uses ``B`` (LSTM).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import optim
from jbp.layers import LSTM, BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU, SimpleRNN, Tanh
from jbp.rules import DFA, alignment, as_backprop, dfa, with_rule
from tests._layer_checks import RTOL, assert_close

CE = jbp.losses.softmax_cross_entropy
DTYPES = (jnp.float64, jnp.float32)


def rand(rng, shape, dtype=jnp.float64, scale=1.0):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


def randomize(tree, rng, dtype, scale=0.5):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype) + rand(rng, a.shape, dtype, scale), tree)


def close(got, ref, dtype, what=""):
    rtol = RTOL[jnp.dtype(dtype)]
    assert_close(got, ref, rtol, rtol * 1e-3, what)


def np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def softmax_ce_grad(z, y):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


# --------------------------------------------------------------------------------------
# Default layers: nothing changes
# --------------------------------------------------------------------------------------


def test_default_layers_keep_repr_hash_and_state():
    assert (
        repr(Dense(3)) == "Dense(units=3, w_init='glorot_uniform', b_init='zeros', use_bias=True)"
    )
    assert repr(LSTM(2)) == (
        "LSTM(features=2, return_sequences=False, w_init='glorot_uniform', "
        "recurrent_init='orthogonal', b_init='zeros', forget_bias=1.0)"
    )
    for layer in (Dense(3), Conv2D(2, 3), SimpleRNN(4), LSTM(4)):
        bp = dataclasses.replace(layer, rule="bp")
        assert bp == layer and hash(bp) == hash(layer) and repr(bp) == repr(layer)
        assert (
            not layer.stateful
            and layer.init_state((5, 5, 1) if isinstance(layer, Conv2D) else (3, 2)) == ()
        )
        fa = dataclasses.replace(layer, rule="fa", feedback_seed=7)
        assert fa != layer and fa.stateful
        assert repr(fa).endswith("rule='fa', feedback_seed=7)")
    assert repr(Dense(3, rule="sign")).endswith("use_bias=True, rule='sign')")


def test_feedback_matrices_are_not_the_weights_for_equal_seeds():
    """init key(s) and feedback_seed s draw different matrices (JAX's split(k, n)[i] equals
    fold_in(k, i): without a tag, layer 0's B would be its W)."""
    for seed in (0, 1):
        model = with_rule(
            jbp.Sequential([Dense(6), ReLU(), Dense(6), ReLU(), Dense(6)]), "fa", seed=seed
        )
        params, _ = model.init(jax.random.key(seed), (6,))
        state = model.init_state((6,))
        Bs = [np.asarray(state[i]["B"]) for i in (0, 2, 4)]
        for i, B in zip((0, 2, 4), Bs):
            for j in (0, 2, 4):
                assert np.max(np.abs(B - np.asarray(params[j]["W"]))) > 0.1, (seed, i, j)
        assert np.max(np.abs(Bs[1] - Bs[2])) > 0.1
    kp = Dense(6, rule="kolen_pollack")
    p, _ = kp.init(jax.random.key(0), (6,))
    assert np.max(np.abs(np.asarray(p["B"] - p["W"]))) > 0.1


# --------------------------------------------------------------------------------------
# Every rule on single layers: against independent references
# --------------------------------------------------------------------------------------


def _layer_case(name, dtype, rng):
    """(layer factory, params, x, dy) with random non-uniform values."""
    if name == "dense":
        make, in_shape, x_shape = (lambda **k: Dense(5, **k)), (4,), (6, 4)
    elif name == "conv":
        make, in_shape, x_shape = (
            (lambda **k: Conv2D(3, (3, 2), strides=(2, 1), **k)),
            (7, 5, 2),
            (2, 7, 5, 2),
        )
    elif name == "rnn":
        make, in_shape, x_shape = (
            (lambda **k: SimpleRNN(4, return_sequences=True, **k)),
            (5, 3),
            (3, 5, 3),
        )
    else:
        make, in_shape, x_shape = (lambda **k: LSTM(3, **k)), (4, 2), (3, 4, 2)
    params, out = make().init(jax.random.key(1), in_shape)
    params = randomize(params, rng, dtype)
    x = rand(rng, x_shape, dtype)
    dy = rand(rng, (x_shape[0],) + out, dtype)
    return make, in_shape, params, x, dy


def _fb_matmul():
    """``a @ W`` whose backward sends ``g Bᵀ`` to ``a`` (and ``aᵀ g`` to ``W``)."""

    @jax.custom_vjp
    def mm(a, W, B):
        return a @ W

    def fwd(a, W, B):
        return a @ W, (a, W, B)

    def bwd(res, g):
        a, W, B = res
        return g @ B.T, a.T @ g, jnp.zeros_like(B)

    mm.defvjp(fwd, bwd)
    return mm


def _lstm_reference(params, Bx, Bh, x, n):
    """LSTM forward with every W_x / W_h product through the feedback matmul."""
    mm = _fb_matmul()
    h = c = jnp.zeros((x.shape[0], n), x.dtype)
    for t in range(x.shape[1]):
        z = mm(x[:, t], params["W_x"], Bx) + mm(h, params["W_h"], Bh) + params["b"]
        i, f, o = (jax.nn.sigmoid(z[:, k * n : (k + 1) * n]) for k in (0, 1, 3))
        g = jnp.tanh(z[:, 2 * n : 3 * n])
        c = f * c + i * g
        h = o * jnp.tanh(c)
    return h


def _rnn_numpy(params, Bx, Bh, x, dy):
    """SimpleRNN (return_sequences) forward and BPTT with B_x, B_h, in NumPy float64."""
    Wx, Wh, b = (np.asarray(params[k], np.float64) for k in ("W_x", "W_h", "b"))
    x, dy, Bx, Bh = (np.asarray(a, np.float64) for a in (x, dy, Bx, Bh))
    n, T, _ = x.shape
    hs, h = [], np.zeros((n, Wh.shape[0]))
    for t in range(T):
        h = np.tanh(x[:, t] @ Wx + h @ Wh + b)
        hs.append(h)
    g = {k: np.zeros_like(v) for k, v in (("W_x", Wx), ("W_h", Wh), ("b", b))}
    dx, carry = np.zeros_like(x), np.zeros((n, Wh.shape[0]))
    for t in reversed(range(T)):
        delta = (carry + dy[:, t]) * (1 - hs[t] ** 2)
        h_prev = hs[t - 1] if t else np.zeros_like(hs[0])
        g["W_x"] += x[:, t].T @ delta
        g["W_h"] += h_prev.T @ delta
        g["b"] += delta.sum(0)
        dx[:, t] = delta @ Bx.T
        carry = delta @ Bh.T
    return g, dx


RULE_NAMES = ("fa", "sign", "kolen_pollack")


@pytest.mark.parametrize("name", ["dense", "conv", "rnn", "lstm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rules_backward_match_references(name, dtype):
    """Per layer and dtype, in ONE jitted function:

    - FA with its state B := W is bitwise the BP layer's backward, and both equal jax.vjp;
    - each rule's (grads, dx) equals an independent reference built with its feedback
      matrix: FA's B from init_state, sign's sign(W)·mean|W| (NumPy), Kolen–Pollack's
      parameter B; for Kolen–Pollack grads["B"] is grads["W"].
    """
    rng = np.random.default_rng(0)
    make, in_shape, params, x, dy = _layer_case(name, dtype, rng)
    bp = make()
    layers = {r: make(rule=r, feedback_seed=5) for r in RULE_NAMES}
    names = layers["fa"]._feedback_of
    fa_state = layers["fa"].init_state(in_shape)
    assert {k: v.shape for k, v in fa_state.items()} == {
        b: params[w].shape for b, (w, _) in names.items()
    }
    fa_state = jbp.cast(fa_state, dtype)
    kp_init, _ = layers["kolen_pollack"].init(jax.random.key(1), in_shape)
    assert set(kp_init) == set(params) | set(names)
    kp_params = {**params, **{b: rand(rng, params[w].shape, dtype) for b, (w, _) in names.items()}}
    sign = {
        b: jnp.asarray(
            np.sign(np.asarray(params[w], np.float64))
            * np.mean(np.abs(np.asarray(params[w], np.float64))),
            dtype,
        )
        for b, (w, _) in names.items()
    }
    feedback = {"fa": fa_state, "sign": sign, "kolen_pollack": {b: kp_params[b] for b in names}}
    same = {b: params[w] for b, (w, _) in names.items()}  # B := W

    def reference(B):
        """(grads, dx) of the BP layer's forward with B in the backward of x (and h)."""
        if name in ("dense", "conv"):
            # linear in x: dx is the input-vjp of the BP layer with B as its weight; the
            # parameter gradients are the BP layer's (aᵀδ, unchanged by the rule)
            _, pull_x = jax.vjp(lambda v: bp.apply({**params, "W": B["B"]}, v), x)
            _, pull_p = jax.vjp(lambda p: bp.apply(p, x), params)
            return pull_p(dy)[0], pull_x(dy)[0]
        if name == "lstm":
            _, pull = jax.vjp(lambda p, v: _lstm_reference(p, B["B_x"], B["B_h"], v, 3), params, x)
            return pull(dy)
        return None

    @jax.jit
    def run(params, kp_params, fa_state, same, x, dy):
        out = {}
        _, cache, new_state = layers["fa"].forward_with_state(params, same, x, train=True)
        out["fa=bp"] = layers["fa"].backward(params, cache, dy)
        out["new_state"] = new_state
        _, cache = bp.forward(params, x, train=True)
        out["bp"] = bp.backward(params, cache, dy)
        _, pull = jax.vjp(lambda p, v: bp.apply(p, v), params, x)
        out["vjp"] = pull(dy)
        for r, layer in layers.items():
            p = kp_params if r == "kolen_pollack" else params
            s = fa_state if r == "fa" else ()
            _, cache, _ = layer.forward_with_state(p, s, x, train=True)
            out[r] = layer.backward(p, cache, dy)
            out[f"ref_{r}"] = reference(feedback[r])
        return out

    out = run(params, kp_params, fa_state, same, x, dy)
    for a, b in zip(jax.tree.leaves(out["fa=bp"]), jax.tree.leaves(out["bp"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    close(out["fa=bp"], out["vjp"], dtype, f"{name} FA(B=W) vs jax.vjp")
    for b in same:  # B is never updated
        np.testing.assert_array_equal(np.asarray(out["new_state"][b]), np.asarray(same[b]))
    for r in RULE_NAMES:
        grads, dx = out[r]
        if name == "rnn":
            ref_g, ref_dx = _rnn_numpy(params, feedback[r]["B_x"], feedback[r]["B_h"], x, dy)
            ref_g = jax.tree.map(lambda a: jnp.asarray(a, dtype), ref_g)
            ref_dx = jnp.asarray(ref_dx, dtype)
        else:
            ref_g, ref_dx = out[f"ref_{r}"]
        if r == "kolen_pollack":
            for b, (w, _) in names.items():  # B's gradient is W's gradient
                np.testing.assert_array_equal(np.asarray(grads[b]), np.asarray(grads[w]))
            grads = {k: v for k, v in grads.items() if k not in names}
        close(grads, ref_g, dtype, f"{name}/{r} grads")
        close(dx, ref_dx, dtype, f"{name}/{r} dx")


def test_fa_mlp_deltas_match_numpy():
    """A two-layer FA MLP, deltas and gradients written out in NumPy."""
    rng = np.random.default_rng(2)
    model = with_rule(jbp.Sequential([Dense(7), ReLU(), Dense(4)]), "fa", seed=11)
    for dtype in DTYPES:
        params = randomize(model.init(jax.random.key(0), (5,))[0], rng, dtype)
        state = jbp.cast(model.init_state((5,)), dtype)
        x, y = rand(rng, (9, 5), dtype), jnp.asarray(rng.integers(0, 4, 9))

        @jax.jit
        def run(params, state, x, y):
            pred, cache, _ = model.forward_with_state(params, state, x)
            return model.backward_with_deltas(params, cache, CE.grad(pred, y))

        grads, dx, deltas = run(params, state, x, y)

        (W1, b1), (W2, b2) = [
            (np.asarray(params[i]["W"], np.float64), np.asarray(params[i]["b"], np.float64))
            for i in (0, 2)
        ]
        B1, B2 = (np.asarray(state[i]["B"], np.float64) for i in (0, 2))
        xn = np.asarray(x, np.float64)
        z1 = xn @ W1 + b1
        a1 = np.maximum(z1, 0)
        e = softmax_ce_grad(a1 @ W2 + b2, np.asarray(y))
        d1 = (e @ B2.T) * (z1 > 0)  # FA: B2 where BP has W2
        ref = ({"W": xn.T @ d1, "b": d1.sum(0)}, (), {"W": a1.T @ e, "b": e.sum(0)})
        close(grads, jax.tree.map(lambda a: jnp.asarray(a, dtype), ref), dtype, "FA MLP grads")
        close(dx, jnp.asarray(d1 @ B1.T, dtype), dtype, "FA MLP dx")
        close(deltas[0], jnp.asarray(d1, dtype), dtype, "FA MLP delta of layer 0")
        # B are distinct per layer and reproducible from the seed
        assert not np.allclose(B1[:4, :4], W1[:4, :4])
        np.testing.assert_array_equal(
            np.asarray(model.init_state((5,))[0]["B"]), np.asarray(model.init_state((5,))[0]["B"])
        )


def test_sign_on_positive_weights_is_mean_times_ones():
    """All-positive W: sign(W) is all ones, so B = mean(W)·1 and ∂L/∂a_i = mean(W)·Σ_j δ_j."""
    rng = np.random.default_rng(3)
    W = np.abs(rng.standard_normal((4, 3))) + 0.1
    params = {"W": jnp.asarray(W), "b": jnp.asarray(rng.standard_normal(3))}
    x, dy = rand(rng, (5, 4)), rand(rng, (5, 3))
    layer = Dense(3, rule="sign")
    _, cache = layer.forward(params, x)
    grads, dx = layer.backward(params, cache, dy)
    want = W.mean() * np.asarray(dy).sum(axis=1, keepdims=True) * np.ones((1, 4))
    np.testing.assert_allclose(np.asarray(dx), want, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(grads["W"]), np.asarray(x).T @ np.asarray(dy), rtol=1e-13)
    # unit scale: W with |w| = 1 everywhere gives B = sign(W) = W, i.e. backprop exactly
    Ws = np.sign(rng.standard_normal((4, 3)))
    p1 = {"W": jnp.asarray(Ws), "b": params["b"]}
    _, dx1 = layer.backward(p1, cache, dy)
    np.testing.assert_array_equal(np.asarray(dx1), np.asarray(dy) @ Ws.T)


# --------------------------------------------------------------------------------------
# Kolen–Pollack
# --------------------------------------------------------------------------------------


def test_kolen_pollack_B_converges_to_W_under_weight_decay():
    """grads["B"] = grads["W"], so with SGD + weight decay λ, B − W ← (1 − ηλ)(B − W)."""
    rng = np.random.default_rng(4)
    model = with_rule(jbp.Sequential([Dense(6), Tanh(), Dense(3)]), "kolen_pollack")
    params = jbp.cast(model.init(jax.random.key(2), (4,))[0], jnp.float64)
    assert set(params[0]) == {"W", "b", "B"}
    assert not np.allclose(params[0]["B"], params[0]["W"])  # B starts independent of W
    x, y = rand(rng, (32, 4)), jnp.asarray(rng.integers(0, 3, 32))
    eta, lam, steps = 0.1, 0.5, 20
    opt = optim.chain(optim.add_decayed_weights(lam), optim.sgd(eta))
    step = jax.jit(jbp.make_train_step(model, CE, opt))
    opt_state = opt.init(params)
    diff0 = [np.asarray(params[i]["B"] - params[i]["W"]) for i in (0, 2)]
    for k in range(steps):
        params, opt_state, _, _ = step(params, opt_state, x, y, jax.random.key(k))
    for d0, i in zip(diff0, (0, 2)):
        d = np.asarray(params[i]["B"] - params[i]["W"])
        np.testing.assert_allclose(d, (1 - eta * lam) ** steps * d0, rtol=1e-10, atol=1e-14)
    _, grads = jax.jit(jbp.value_and_grad(model, CE))(params, x, y)
    for i in (0, 2):
        np.testing.assert_array_equal(np.asarray(grads[i]["B"]), np.asarray(grads[i]["W"]))


# --------------------------------------------------------------------------------------
# DFA
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dfa_one_hidden_layer_matches_numpy(dtype):
    rng = np.random.default_rng(5)
    model = dfa(jbp.Sequential([Dense(8), Tanh(), Dense(3)]), seed=9)
    params = randomize(model.init(jax.random.key(0), (5,))[0], rng, dtype)
    state = model.init_state((5,))
    assert [b.shape for b in state["B"]] == [(3, 8)]
    x, y = rand(rng, (10, 5), dtype), jnp.asarray(rng.integers(0, 3, 10))

    @jax.jit
    def run(params, state, x, y):
        pred, cache, _ = model.forward_with_state(params, state, x)
        g_state, _ = model.backward(params, cache, CE.grad(pred, y))
        _, g_stateless = jbp.value_and_grad(model, CE)(params, x, y)  # B drawn from the seed
        return g_state, g_stateless

    g_state, g_stateless = run(params, jbp.cast(state, dtype), x, y)
    p = np64(params)
    B = np.asarray(state["B"][0], np.float64)
    xn = np.asarray(x, np.float64)
    a1 = np.tanh(xn @ p[0]["W"] + p[0]["b"])
    e = softmax_ce_grad(a1 @ p[2]["W"] + p[2]["b"], np.asarray(y))
    d1 = (e @ B) * (1 - a1**2)  # δ₁ = (e B₁) ⊙ f'(z₁)
    ref = ({"W": xn.T @ d1, "b": d1.sum(0)}, (), {"W": a1.T @ e, "b": e.sum(0)})
    ref = jax.tree.map(lambda a: jnp.asarray(a, dtype), ref)
    close(g_state, ref, dtype, "DFA grads")
    close(g_stateless, ref, dtype, "DFA grads (stateless path)")


def test_dfa_deep_conv_net_injects_B_e_after_each_hidden_layer():
    """Conv → ReLU → Flatten → Dense → ReLU → Dropout → Dense: every hidden weight layer
    receives B_k e passed back through the layers before the next weight layer only."""
    rng = np.random.default_rng(6)
    net = jbp.Sequential(
        [Conv2D(2, 3), ReLU(), Flatten(), Dense(6), ReLU(), Dropout(0.3), Dense(4)]
    )
    model = dfa(net, seed=1)
    assert model.targets == (0, 3)
    params = randomize(model.init(jax.random.key(0), (5, 5, 1))[0], rng, jnp.float64)
    state = jbp.cast(model.init_state((5, 5, 1)), jnp.float64)
    assert [b.shape for b in state["B"]] == [(4, 50), (4, 6)]  # to Dense's input, to the output's
    x, y = rand(rng, (3, 5, 5, 1)), jnp.asarray(rng.integers(0, 4, 3))
    key = jax.random.key(3)

    @jax.jit
    def run(params, state, x, y):
        pred, cache, _ = model.forward_with_state(params, state, x, key=key, train=True)
        e = CE.grad(pred, y)
        grads, _, deltas = model.backward_with_deltas(params, cache, e)
        # reference: jax.vjp of each segment, seeded with B_k e at its injection point
        caches = cache["layers"]
        z3 = caches[3]["x"] @ params[3]["W"] + params[3]["b"]  # Dense(6)'s output
        seg = lambda z: net.layers[5].forward(
            (), jax.nn.relu(z), key=jax.random.fold_in(key, 5), train=True
        )[0]
        a6, pull = jax.vjp(seg, z3)
        (d3,) = pull(e @ state["B"][1])
        _, pull = jax.vjp(lambda p: jax.nn.relu(net.layers[0].apply(p, x)), params[0])
        (g0,) = pull((e @ state["B"][0]).reshape(3, 5, 5, 2))
        out_ref = {"W": caches[6]["x"].T @ e, "b": e.sum(0)}
        return grads, deltas, (a6, caches[6]["x"]), d3, g0, out_ref

    grads, deltas, (a6, a6_cache), d3, g0, out_ref = run(params, state, x, y)
    np.testing.assert_array_equal(np.asarray(a6), np.asarray(a6_cache))  # same dropout mask
    close(deltas[3], d3, jnp.float64, "delta of the hidden Dense")
    close(grads[0], g0, jnp.float64, "conv kernel gradient under DFA")
    close(grads[6], out_ref, jnp.float64, "output layer")


def test_dfa_per_example_functions_work():
    rng = np.random.default_rng(7)
    model = dfa(jbp.Sequential([Dense(6), ReLU(), Dense(5), ReLU(), Dense(3)]))
    params = randomize(model.init(jax.random.key(0), (4,))[0], rng, jnp.float64)
    x, y = rand(rng, (6, 4)), jnp.asarray(rng.integers(0, 3, 6))

    @jax.jit
    def run(params, x, y):
        return (
            jbp.per_example_grads(model, CE)(params, x, y),
            jbp.value_and_grad(model, CE)(params, x, y)[1],
            jbp.per_example_grad_norms(model, CE)(params, x, y),
        )

    pe, batch, norms = run(params, x, y)
    close(jax.tree.map(lambda a: a.mean(0), pe), batch, jnp.float64, "mean of per-example")
    ref = np.sqrt(sum(np.sum(np.asarray(l).reshape(6, -1) ** 2, 1) for l in jax.tree.leaves(pe)))
    np.testing.assert_allclose(np.asarray(norms), ref, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Per-example functions and the stateless path of per-layer rules
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["fa", "kolen_pollack"])
def test_per_example_grads_and_norms_with_rules(rule):
    rng = np.random.default_rng(8)
    net = jbp.Sequential([Conv2D(2, 3, padding="VALID"), Tanh(), Flatten(), Dense(3)])
    model = with_rule(net, rule, seed=4)
    params = randomize(model.init(jax.random.key(0), (4, 4, 1))[0], rng, jnp.float64)
    x, y = rand(rng, (5, 4, 4, 1)), jnp.asarray(rng.integers(0, 3, 5))
    state = jbp.cast(model.init_state((4, 4, 1)), jnp.float64) if rule == "fa" else ()

    @jax.jit
    def run(params, state, x, y):
        out = (
            jbp.per_example_grads(model, CE)(params, x, y),
            jbp.value_and_grad(model, CE)(params, x, y)[1],
            jbp.per_example_grad_norms(model, CE)(params, x, y),
        )
        if rule != "fa":
            return out, None, None
        pred, cache, _ = model.forward_with_state(params, state, x)
        # per-example norms also read caches that carry B (from forward_with_state)
        return (
            out,
            model.backward(params, cache, CE.grad(pred, y))[0],
            jbp.per_example_grad_norms(model, CE)(params, x, y, state=state) ** 2,
        )

    (pe, batch, norms), g_state, sq = run(params, state, x, y)
    close(jax.tree.map(lambda a: a.mean(0), pe), batch, jnp.float64, "mean of per-example")
    ref = np.sqrt(sum(np.sum(np.asarray(l).reshape(5, -1) ** 2, 1) for l in jax.tree.leaves(pe)))
    np.testing.assert_allclose(np.asarray(norms), ref, rtol=1e-10)
    if rule == "fa":
        # the stateless path draws the same B as init_state: equal to the stateful gradient
        close(g_state, batch, jnp.float64, "stateful vs stateless FA")
        np.testing.assert_allclose(np.sqrt(np.asarray(sq)), ref, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Alignment metrics
# --------------------------------------------------------------------------------------


def _angle_np(a, b):
    """Angle in degrees, well conditioned near 0° and 180° (2·atan2(‖â−b̂‖, ‖â+b̂‖); arccos
    of the cosine would carry an error of degrees(√(2ε)) ≈ 1e-6° for nearly equal vectors)."""
    a, b = np.ravel(a), np.ravel(b)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return np.degrees(2 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_alignment_against_numpy_and_jax_grad(dtype):
    rng = np.random.default_rng(9)
    model = with_rule(jbp.Sequential([Dense(7), Tanh(), Dense(6), ReLU(), Dense(3)]), "fa", seed=2)
    params = randomize(model.init(jax.random.key(0), (5,))[0], rng, dtype)
    state = jbp.cast(model.init_state((5,)), dtype)
    x, y = rand(rng, (12, 5), dtype), jnp.asarray(rng.integers(0, 3, 12))
    tol = {jnp.float64: 1e-10, jnp.float32: 1e-4}[dtype]
    align = alignment(model, CE)

    @jax.jit
    def run(params, state, x, y):
        pred, cache, _ = model.forward_with_state(params, state, x)
        g_fa, _ = model.backward(params, cache, CE.grad(pred, y))
        g_true = jax.grad(lambda p: CE.value(model.apply(p, x), y))(params)  # autodiff
        return align(params, x, y, state=state), g_fa, g_true

    out, g_fa, g_true = run(params, state, x, y)
    assert sorted(out["layers"]) == ["layers[0]", "layers[2]", "layers[4]"]
    for i in (0, 2, 4):
        rec = out["layers"][f"layers[{i}]"]
        assert rec["grad_angle"].dtype == dtype
        W, B = np.asarray(params[i]["W"], np.float64), np.asarray(state[i]["B"], np.float64)
        gf, gt = (np.asarray(g[i]["W"], np.float64) for g in (g_fa, g_true))
        np.testing.assert_allclose(float(rec["grad_angle"]), _angle_np(gf, gt), atol=1e3 * tol)
        np.testing.assert_allclose(float(rec["feedback_angle"]), _angle_np(B, W), rtol=tol)
        np.testing.assert_allclose(
            float(rec["norm_ratio"]), np.linalg.norm(B) / np.linalg.norm(W), rtol=tol
        )
    assert float(out["layers"]["layers[4]"]["grad_angle"]) == 0.0  # the output layer gets e
    assert float(out["layers"]["layers[0]"]["grad_angle"]) > 1.0
    # B := W everywhere: every angle exactly 0, ratios 1
    same = tuple({"B": p["W"]} if "W" in p else s for p, s in zip(params, state))
    out = jax.jit(align)(params, x, y, state=same)
    for rec in out["layers"].values():
        assert float(rec["grad_angle"]) < 1e3 * tol and float(rec["feedback_angle"]) < 1e3 * tol
        np.testing.assert_allclose(float(rec["norm_ratio"]), 1.0, rtol=tol)


def test_alignment_sign_kp_dfa_recurrent():
    rng = np.random.default_rng(10)
    x, y = rand(rng, (4, 3, 2)), jnp.asarray(rng.integers(0, 2, 4))
    rnn = jbp.Sequential([SimpleRNN(3, rule="sign"), Dense(2)])
    params = randomize(rnn.init(jax.random.key(0), (3, 2))[0], rng, jnp.float64)
    rec = jax.jit(alignment(rnn, CE))(params, x, y)["layers"]["layers[0]"]
    W = np.concatenate([np.ravel(params[0]["W_x"]), np.ravel(params[0]["W_h"])])
    B = np.concatenate(
        [np.sign(params[0][k]).ravel() * np.abs(params[0][k]).mean() for k in ("W_x", "W_h")]
    )
    np.testing.assert_allclose(float(rec["feedback_angle"]), _angle_np(B, W), rtol=1e-10)
    mlp = jbp.Sequential([Dense(5), ReLU(), Dense(2)])
    d = dfa(mlp)
    p = randomize(d.init(jax.random.key(1), (6,))[0], rng, jnp.float64)
    xm = rand(rng, (8, 6))
    ym = jnp.asarray(rng.integers(0, 2, 8))

    @jax.jit
    def run(p, xm, ym):
        return (
            alignment(d, CE)(p, xm, ym)["layers"],
            jbp.value_and_grad(d, CE)(p, xm, ym)[1],
            jax.grad(lambda q: CE.value(mlp.apply(q, xm), ym))(p),
        )

    out, g_dfa, g_true = run(p, xm, ym)
    assert list(out) == ["layers[0]"] and set(out["layers[0]"]) == {"grad_angle"}
    np.testing.assert_allclose(
        float(out["layers[0]"]["grad_angle"]), _angle_np(g_dfa[0]["W"], g_true[0]["W"]), atol=1e-6
    )


# --------------------------------------------------------------------------------------
# Training: fit, Dropout, BatchNorm state, jit/scan, the callback
# --------------------------------------------------------------------------------------


def test_fit_trains_fa_mlp_with_dropout_and_batchnorm_and_records_alignment():
    (x, y), (xt, yt) = jbp.datasets.digits()
    net = jbp.Sequential(
        [Dense(64, w_init="he_normal"), BatchNorm(), ReLU(), Dropout(0.1), Dense(10)]
    )
    model = with_rule(net, "fa", seed=0)
    assert model.stateful
    params, _ = model.init(jax.random.key(0), (64,))
    hist = jbp.rules.AlignmentHistory(model, CE, (xt[:200], yt[:200]))
    hist(0, params)
    params, history = jbp.fit(
        model,
        params,
        CE,
        optim.adam(1e-2),
        (x, y),
        batch_size=64,
        epochs=3,
        key=jax.random.key(1),
        verbose=0,
        callbacks=[hist],
    )
    loss = history["loss"]
    assert loss[-1] < 0.25 * loss[0]
    angles = hist.record.quantity("grad_angle")["layers[0]"]
    assert len(angles) == 4 and angles[-1] < 80.0 and angles[-1] < angles[0] - 10
    assert hist.record.quantity("grad_angle")["layers[4]"] == [0.0] * 4  # the output layer
    assert history["grad_angle/layers[0]"][-1] == angles[-1]  # the callback's log column
    # the B in the final state is the initial one: never trained
    np.testing.assert_array_equal(
        np.asarray(history.state[0]["B"]), np.asarray(model.init_state((64,))[0]["B"])
    )
    acc = jbp.evaluate(model, params, CE, (xt, yt), state=history.state)["accuracy"]
    assert acc > 0.85


def test_fit_trains_dfa_model():
    (x, y), _ = jbp.datasets.digits()
    model = dfa(jbp.Sequential([Dense(32, w_init="he_normal"), ReLU(), Dense(10)]))
    params, _ = model.init(jax.random.key(0), (64,))
    params, history = jbp.fit(
        model,
        params,
        CE,
        optim.adam(1e-2),
        (x, y),
        batch_size=128,
        epochs=3,
        key=jax.random.key(1),
        verbose=0,
    )
    assert history["loss"][-1] < 0.6 * history["loss"][0]


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors():
    with pytest.raises(
        ValueError,
        match=r"Dense: unknown rule 'feedback'.*'bp', 'fa', 'sign', "
        r"'kolen_pollack'",
    ):
        Dense(3, rule="feedback")
    with pytest.raises(ValueError, match="LSTM: unknown rule"):
        LSTM(3, rule="dfa")
    with pytest.raises(ValueError, match="feedback_seed"):
        Conv2D(3, 2, rule="fa", feedback_seed=-1)
    with pytest.raises(ValueError, match=r"last layer must be a Dense.*got ReLU"):
        dfa(jbp.Sequential([Dense(4), ReLU()]))
    with pytest.raises(ValueError, match="nothing to train"):
        dfa(jbp.Sequential([Flatten(), Dense(4)]))
    with pytest.raises(TypeError, match="Sequential"):
        dfa(Dense(4))
    with pytest.raises(ValueError, match=r"ReLU\(\) has no weights"):
        with_rule(ReLU(), "fa")
    with pytest.raises(ValueError, match=r"layers\[1\] \(ReLU\) has no weights"):
        with_rule(jbp.Sequential([Dense(4), ReLU(), Dense(2)]), "fa", layers=[1])
    with pytest.raises(ValueError, match="no weight layer"):
        with_rule(jbp.Sequential([ReLU(), Flatten()]), "sign")
    with pytest.raises(ValueError, match="unknown rule 'dfa'"):
        with_rule(jbp.Sequential([Dense(4)]), "dfa")
    with pytest.raises(TypeError, match="is a DFA"):
        with_rule(dfa(jbp.Sequential([Dense(4), ReLU(), Dense(2)])), "fa")
    with pytest.raises(ValueError, match="already"):
        alignment(jbp.Sequential([Dense(4), ReLU(), Dense(2)]), CE)
    fa = Dense(3, rule="fa")
    params, _ = fa.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match=r"rule='fa'.*expected the state \{B\}"):
        fa.forward_with_state(params, (), jnp.ones((1, 2)))
    model = dfa(jbp.Sequential([Dense(4), ReLU(), Dense(2)]))
    p, _ = model.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match="dfa: expected the state"):
        model.forward_with_state(p, (), jnp.ones((1, 3)))


def test_with_rule_and_as_backprop_round_trip():
    net = jbp.Sequential([Dense(4), ReLU(), jbp.Sequential([Dense(3), Tanh()]), Dense(2)])
    fa = with_rule(net, "fa", seed=10)
    seeds = [fa[0].feedback_seed, fa[2][0].feedback_seed, fa[3].feedback_seed]
    assert seeds == [10, 11, 12] and {fa[0].rule, fa[2][0].rule, fa[3].rule} == {"fa"}
    assert as_backprop(fa) == net and as_backprop(dfa(net)) == net
    only = with_rule(net, "sign", layers=[3])
    assert (only[0].rule, only[3].rule, only[3].feedback_seed) == ("bp", "sign", 0)
    assert isinstance(dfa(net), DFA) and hash(dfa(net)) == hash(dfa(net))


# --------------------------------------------------------------------------------------
# The Alignment engine extension (one forward, the rule's walk + backprop's walk)
# --------------------------------------------------------------------------------------


def _old_alignment(model, loss, params, x, y, state):
    """The former stand-alone implementation of ``alignment`` (its own forward, the rule's
    backward and ``as_backprop``'s backward), kept as a reference for the extension."""
    from jbp.rules.alignment import _at, _entries, _flat, _weights, angle

    def _bp_cache(model, cache):  # the rule model's cache, seen by as_backprop's model
        if isinstance(model, DFA):
            return _bp_cache(model.model, cache["layers"])
        if isinstance(model, jbp.Sequential):
            return tuple(_bp_cache(l, c) for l, c in zip(model.layers, cache))
        return cache

    pred, cache, _ = model.forward_with_state(params, state, x)
    e = loss.grad(pred, y)
    grads, _ = model.backward(params, cache, e)
    bp_grads, _ = as_backprop(model).backward(params, _bp_cache(model, cache), e)
    out = {}
    for name, path, layer, kind in _entries(model):
        names = _weights(layer)
        g, gb = _at(grads, path), _at(bp_grads, path)
        rec = {"grad_angle": angle([g[w] for w in names], [gb[w] for w in names])}
        if kind == "rule":
            p, c = _at(params, path), _at(cache, path)
            Ws, Bs = [p[w] for w in names], [layer.feedback(p, c, w) for w in names]
            rec["feedback_angle"] = angle(Bs, Ws)
            rec["norm_ratio"] = jnp.linalg.norm(_flat(Bs)) / jnp.linalg.norm(_flat(Ws))
        out[name] = rec
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_alignment_extension_vs_numpy_rule_and_jax_grad(dtype):
    rng = np.random.default_rng(21)
    model = jbp.Sequential(
        [
            Dense(7, rule="fa", feedback_seed=3),
            Tanh(),
            Dense(6, rule="kolen_pollack"),
            ReLU(),
            Dense(5, rule="sign"),
            Tanh(),
            Dense(3),
        ]
    )
    params = randomize(model.init(jax.random.key(0), (4,))[0], rng, dtype)
    state = jbp.cast(model.init_state((4,)), dtype)
    x, y = rand(rng, (10, 4), dtype), jnp.asarray(rng.integers(0, 3, 10))
    tol = {jnp.float64: 1e-9, jnp.float32: 2e-3}[dtype]
    run = jax.jit(
        lambda p, s, x, y: jbp.backprop(model, CE, extensions=[jbp.rules.Alignment()])(
            p, x, y, state=s, train=False
        )
    )
    out = run(params, state, x, y)
    ext = out.extras["alignment"]
    assert list(ext) == ["layers[0]", "layers[2]", "layers[4]"]
    # the old two-walk path gives the same numbers
    old = jax.jit(lambda p, s, x, y: _old_alignment(model, CE, p, x, y, s))(params, state, x, y)
    for name in ext:
        for q in ext[name]:
            np.testing.assert_allclose(float(ext[name][q]), float(old[name][q]), rtol=tol, atol=tol)
    # independent: the rule's gradient by a NumPy walk, the true one by jax.grad of the bp net
    P = np64(params)
    W = [P[i]["W"] for i in (0, 2, 4, 6)]
    b = [P[i]["b"] for i in (0, 2, 4, 6)]
    Bs = [np.asarray(state[0]["B"], np.float64), P[2]["B"], np.sign(W[2]) * np.abs(W[2]).mean()]
    a0 = np.asarray(x, np.float64)
    z1 = a0 @ W[0] + b[0]
    a1 = np.tanh(z1)
    z2 = a1 @ W[1] + b[1]
    a2 = np.maximum(z2, 0)
    z3 = a2 @ W[2] + b[2]
    a3 = np.tanh(z3)
    z4 = a3 @ W[3] + b[3]
    pr = np.exp(z4 - z4.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    e = (pr - np.eye(3)[np.asarray(y)]) / len(a0)
    d3 = (e @ W[3].T) * (1 - a3**2)  # output layer is bp
    d2 = (d3 @ Bs[2].T) * (z2 > 0)  # sign feedback
    d1 = (d2 @ Bs[1].T) * (1 - a1**2)  # Kolen-Pollack feedback
    g_rule = {0: a0.T @ d1, 2: a1.T @ d2, 4: a2.T @ d3}
    g_true = np64(jax.grad(lambda p: CE.value(as_backprop(model).apply(p, x), y))(params))
    for i, B in zip((0, 2, 4), Bs):
        rec = ext[f"layers[{i}]"]
        assert rec["grad_angle"].dtype == dtype
        np.testing.assert_allclose(
            float(rec["grad_angle"]), _angle_np(g_rule[i], g_true[i]["W"]), rtol=tol, atol=1e2 * tol
        )
        np.testing.assert_allclose(
            float(rec["feedback_angle"]), _angle_np(B, W[i // 2]), rtol=tol, atol=1e2 * tol
        )
        np.testing.assert_allclose(
            float(rec["norm_ratio"]), np.linalg.norm(B) / np.linalg.norm(W[i // 2]), rtol=tol
        )
    # the reader returns the extension's numbers, and the extension refuses a bp model
    red = jax.jit(alignment(model, CE))(params, x, y, state=state)
    assert float(red["loss"]) == float(out.loss)
    close(red["layers"], ext, dtype)
    with pytest.raises(ValueError, match="no layer with a learning rule"):
        jbp.backprop(jbp.Sequential([Dense(2)]), CE, extensions=[jbp.rules.Alignment()])(
            jbp.Sequential([Dense(2)]).init(jax.random.key(0), (3,))[0], x[:, :3], y % 2
        )


# --------------------------------------------------------------------------------------
# Alignment: the Gram form, the skipped top layers, the one-pass feedback statistics
# --------------------------------------------------------------------------------------


def _angle64(a, b):
    """The angle in float64, accurate near 0 (not arccos)."""
    a, b = (np.ravel(np.asarray(v, np.float64)) for v in (a, b))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return np.degrees(2 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


_ANGLE_TOL = {jnp.float64: 1e-9, jnp.float32: 2e-2}  # degrees (float32: Gram-form rounding)


@pytest.mark.parametrize("dtype", DTYPES)
def test_alignment_gram_and_direct_forms_match_jax_grad(dtype):
    # here "auto" is "gram" (N(in + 2·out) < in·out for both hidden layers)
    rng = np.random.default_rng(31)
    net = jbp.Sequential([Dense(24), Tanh(), Dense(20), ReLU(), Dense(3)])
    x, y = rand(rng, (4, 30), dtype), jnp.asarray(rng.integers(0, 3, 4))
    tol = _ANGLE_TOL[dtype]
    for model in (with_rule(net, "fa", seed=1), dfa(net, seed=2)):
        params = randomize(model.init(jax.random.key(0), (30,))[0], rng, dtype)
        state = jbp.cast(model.init_state((30,)), dtype)

        @jax.jit
        def run(p, s, model=model):
            exts = [jbp.rules.Alignment(m) for m in ("gram", "direct")]
            outs = [
                jbp.backprop(model, CE, extensions=[e])(p, x, y, state=s, train=False) for e in exts
            ]
            g_true = jax.grad(lambda q: CE.value(as_backprop(model).apply(q, x), y))(p)
            return [o.extras["alignment"] for o in outs], outs[0].grads, g_true

        exts, g_rule, g_true = run(params, state)
        names = [f"layers[{i}]" for i in (0, 2)] + ([] if isinstance(model, DFA) else ["layers[4]"])
        for ext in exts:
            assert list(ext) == names
            for name in names:
                i = int(name[7])
                ref = _angle64(g_rule[i]["W"], g_true[i]["W"])
                got = ext[name]["grad_angle"]
                assert got.dtype == dtype
                np.testing.assert_allclose(float(got), ref, rtol=tol, atol=tol, err_msg=name)
            if not isinstance(model, DFA):  # the output layer's delta is e: exactly 0
                assert float(ext["layers[4]"]["grad_angle"]) == 0.0
                assert float(ext["layers[0]"]["grad_angle"]) > 1.0


def test_alignment_auto_picks_the_gram_form_by_multiply_adds():
    from jbp.rules.alignment import _use_gram

    d = Dense(256)
    x, dy = jnp.zeros((128, 784)), jnp.zeros((128, 256))
    assert _use_gram(d, x, dy, "auto")  # 128²·(784 + 512) < 128·784·256
    assert not _use_gram(d, jnp.zeros((512, 784)), jnp.zeros((512, 256)), "auto")
    assert _use_gram(d, jnp.zeros((512, 784)), jnp.zeros((512, 256)), "gram")
    assert not _use_gram(d, x, dy, "direct")
    assert not _use_gram(Conv2D(4, 3), x, dy, "gram")  # the Gram form is for Dense only
    with pytest.raises(ValueError, match="method must be one of"):
        jbp.rules.Alignment("fast")


@pytest.mark.parametrize("dtype", DTYPES)
def test_alignment_gram_form_on_sequence_inputs_and_a_single_layer(dtype):
    rng = np.random.default_rng(32)
    model = jbp.Sequential([Dense(16, rule="fa", feedback_seed=4), Tanh(), Dense(2, rule="fa")])
    params = randomize(model.init(jax.random.key(0), (5, 12))[0], rng, dtype)
    state = jbp.cast(model.init_state((5, 12)), dtype)
    x, y = rand(rng, (3, 5, 12), dtype), rand(rng, (3, 5, 2), dtype)
    mse = jbp.losses.mse
    tol = _ANGLE_TOL[dtype]

    @jax.jit
    def run(p, s):
        out = {
            m: jbp.backprop(model, mse, extensions=[jbp.rules.Alignment(m)])(
                p, x, y, state=s, train=False
            )
            for m in ("gram", "direct")
        }
        g_true = jax.grad(lambda q: mse.value(as_backprop(model).apply(q, x), y))(p)
        return {m: o.extras["alignment"] for m, o in out.items()}, out["gram"].grads, g_true

    ext, g_rule, g_true = run(params, state)
    ref = _angle64(g_rule[0]["W"], g_true[0]["W"])
    for m in ("gram", "direct"):
        np.testing.assert_allclose(
            float(ext[m]["layers[0]"]["grad_angle"]), ref, rtol=tol, atol=tol
        )
        assert float(ext[m]["layers[2]"]["grad_angle"]) == 0.0
    # a lone rule layer: its gradient is exact, only B vs W differs
    lone = Dense(3, rule="fa", feedback_seed=7)
    p1 = randomize(lone.init(jax.random.key(1), (4,))[0], rng, dtype)
    s1 = jbp.cast(lone.init_state((4,)), dtype)
    rec = jax.jit(jbp.rules.alignment(lone, CE))(p1, x[:, 0, :4], jnp.asarray([0, 2, 1]), state=s1)
    rec = rec["layers"]["Dense"]
    assert float(rec["grad_angle"]) == 0.0
    np.testing.assert_allclose(
        float(rec["feedback_angle"]), _angle64(s1["B"], p1["W"]), rtol=10 * tol, atol=tol
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_feedback_angle_is_accurate_near_zero(dtype):
    from jbp.rules.alignment import _feedback_stats

    rng = np.random.default_rng(33)
    W = rng.standard_normal((30, 20))
    for eps in (1e-2, 1e-4):  # Kolen-Pollack late in training: B = W + a small difference
        B = W + eps * rng.standard_normal(W.shape)
        ang, ratio = _feedback_stats([jnp.asarray(B, dtype)], [jnp.asarray(W, dtype)])
        ref = _angle64(B, W)
        rtol = {jnp.float64: 1e-9, jnp.float32: 1e-3}[dtype]
        np.testing.assert_allclose(float(ang), ref, rtol=rtol)  # arccos would be off by ~0.02°
        np.testing.assert_allclose(
            float(ratio), np.linalg.norm(B) / np.linalg.norm(W), rtol=rtol / 100
        )
    same = jnp.asarray(W, dtype)
    assert float(_feedback_stats([same], [same])[0]) == 0.0
    two = _feedback_stats([jnp.asarray(W, dtype)[:3], -same[3:]], [same[:3], same[3:]])
    np.testing.assert_allclose(
        float(two[0]), _angle64(np.concatenate([W[:3], -W[3:]]), W), rtol=rtol
    )
    assert np.isnan(float(_feedback_stats([same * 0], [same])[0]))
