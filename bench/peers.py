"""jbp against the libraries a user would pick instead: one table of medians and ratios.

Every contender runs in this one process, on the same data, from the same parameter
values (jbp's initialisation, copied into each library's layout by bench/peer_models.py;
biases are drawn non-zero so a misplaced bias would show). Each case: a check (below),
a warm-up (compile), then rounds that alternate between the contenders so drifting load
on a shared machine hits them alike; the median per-call (or per-epoch) time is
reported with its ratio to jbp's (``> 1``: jbp is faster), and the ratio of the fastest
rounds ("min ratio", as in bench/layers.py: the steadier number on a shared machine). Float32 throughout.

**Checked.** Before timing, every contender computes one number the same way as jbp and
the ``checked`` column shows the largest relative difference to jbp's (``ok`` within the
case's float32 tolerance, ``FAIL`` past it): a benchmark of different work is worthless.

Workloads (``--only``):

``step``
  One training step — forward, softmax cross-entropy, backward, SGD update — on the MLP
  784-512-512-10 (ReLU) and the CNN of bench/layers.py (conv16-pool-conv32-pool-dense on
  28x28x1), batch 128. jbp: ``jax.jit`` of ``jbp.value_and_grad`` + SGD (bench/step.py's
  ``make_step``); Equinox + optax (``eqx.filter_jit``, the model ``jax.vmap``-ed over the
  batch); Flax NNX + optax (``nnx.jit``, as in Flax's tutorials, and with
  ``nnx.cached_partial``, Flax's documented way to cut ``nnx.jit``'s Python overhead);
  PyTorch (eager, CPU). Checked: the loss before the step and the loss decrease after one
  step, from the same parameters on the same batch.
``epoch``
  One epoch in Nielsen's configuration (bench/epoch.py): [784, 30, 10] sigmoid, quadratic
  cost, SGD lr 3.0, minibatches of 10, 50,000 examples. ``jbp.fit`` (one compiled
  ``lax.scan`` per epoch; the ``seconds`` it reports, compilation excluded); jbp's own
  Python loop of a jitted ``make_train_step``; a Python loop of an Equinox/optax step under
  ``eqx.filter_jit``; PyTorch (1 thread, its fastest for this tiny net); a faithful NumPy
  port of Nielsen's ``network.py`` (bench/nielsen_numpy.py: per-example backprop in a
  Python loop, float64 parameters as in the book) — timed on a fraction of the epoch
  (``--nielsen-fraction``) and extrapolated, as the output says. Checked: the loss before
  and after one step on the first minibatch.
``per_example``
  Per-example gradient norms ``‖∇ℓᵢ‖`` and the mean of the per-example clipped gradients
  ``(1/n) Σ min(1, C/‖∇ℓᵢ‖) ∇ℓᵢ`` (``C`` = the median norm, so about half are clipped),
  batch 256, MLP and CNN. jbp (``jbp.per_example_grad_norms``,
  ``jbp.per_example_clipped_grad``: from the (input, delta) pairs of one batched backward);
  ``vmap(jax.grad)`` of jbp's forward (materialises the per-example gradients); Opacus
  ``grad_sample_mode="hooks"`` (per-sample gradients materialised by module hooks; the
  clipped mean through ``DPOptimizer.pre_step`` with ``noise_multiplier=0``) and
  ``grad_sample_mode="ghost"`` (ghost norms for ``nn.Linear``; Opacus has no ghost norm for
  ``nn.Conv2d``, whose per-sample gradients its hooks still materialise, layer by layer;
  the clipped mean is its second backward, then ``pre_step``), both set up by
  ``PrivacyEngine.make_private``. Checked: the norms; the clipped mean gradient.
``extensions``
  BackPACK-style quantities from one backward pass, batch 128, MLP and CNN: the first-order
  set (per-example gradients, their squared norms, gradient variance, sum of squared
  per-example gradients) and the exact GGN diagonal. jbp (``jbp.backprop(model, loss,
  extensions=...)``, run only when this jbp has it); BackPACK (``backpack.extend`` and
  ``with backpack(BatchGrad(), BatchL2Grad(), Variance(), SumGradSquared())`` /
  ``DiagGGNExact()``); a plain-JAX reference (``vmap(jax.grad)`` for the first-order set,
  per-example ``vjp`` of the loss Hessian's square-root columns for the GGN diagonal).
  Conventions (BackPACK's; loss = mean over the batch): ``batch_grad[i] = ∇ℓᵢ / n``,
  ``batch_l2[i] = ‖batch_grad[i]‖²`` per parameter tensor, ``variance = mean_i batch_grad[i]² −
  (mean_i batch_grad[i])²`` (the variance of the ``batch_grad`` rows, i.e. of ``∇ℓᵢ`` over
  ``n²``), ``sum_grad_squared = Σᵢ batch_grad[i]²``, ``diag_ggn = diag((1/n) Σᵢ
  Jᵢᵀ Hᵢ Jᵢ)``. Checked: every quantity (for jbp, a different power-of-n scaling is
  accepted and named in the column).

Contenders whose library is not importable are skipped with a note; so is a jbp API
this build lacks. ``pip install -e '.[bench]'`` installs the peers (see pyproject.toml).

    python bench/peers.py                    # everything installed, full sizes
    python bench/peers.py --quick            # a smoke run: few rounds, 5,000-example epoch
    python bench/peers.py --only per_example --libs jbp,jax,opacus
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import statistics
import sys
import time
import traceback
import warnings
from importlib import metadata

import epoch as epoch_bench  # bench/epoch.py: Nielsen's net, data, jbp.fit and loop contenders
import jax
import jax.numpy as jnp
import models as bench_models  # bench/models.py: the benchmarks' CNN
import nielsen_numpy  # bench/nielsen_numpy.py: the faithful NumPy port
import numpy as np
import peer_models as pm  # bench/peer_models.py: the same net in every library
from step import make_step  # bench/step.py: jit(jbp.value_and_grad + SGD)

import jbp
from jbp import losses, optim
from jbp.layers import Dense, ReLU

WORKLOADS = ("step", "epoch", "per_example", "extensions")
LIBS = ("jbp", "jax", "equinox", "flax", "torch", "opacus", "backpack", "numpy")
CE = losses.softmax_cross_entropy


@dataclasses.dataclass
class Config:
    """Sizes and repetitions (``--quick`` and ``--tiny`` override some)."""

    repeats: int = 7  # timed rounds per contender (step, per_example, extensions)
    iters: int = 10  # calls per timed round, at most ...
    round_s: float = 0.3  # ... and about this many seconds (slow contenders: fewer calls)
    epoch_repeats: int = 5  # timed epochs per contender
    step_batch: int = 128
    pe_batch: int = 256
    ext_batch: int = 128
    hidden: int = 512
    image: int = 28
    examples: int = 50_000
    nielsen_batch: int = 10
    nielsen_lr: float = 3.0
    nielsen_fraction: float = 0.1
    libs: tuple = LIBS
    models: tuple = ("mlp", "cnn")


QUICK = dict(repeats=3, iters=3, round_s=0.1, epoch_repeats=2, examples=5_000, nielsen_fraction=0.2)
TINY = dict(
    repeats=1,
    iters=1,
    epoch_repeats=1,
    step_batch=8,
    pe_batch=8,
    ext_batch=8,
    hidden=16,
    image=8,
    examples=100,
    nielsen_fraction=0.5,
)


class Skip(Exception):
    """A contender that cannot run here (library absent, API missing); the reason is shown."""


# --- contenders ----------------------------------------------------------------------------


class Contender:
    """One library's way of doing a case's work.

    ``call()`` does one unit of work, ``sync()`` waits for it, ``check()`` returns the
    value compared with jbp's, ``round(iters)`` returns the seconds per unit.
    """

    lib = "?"
    name = "?"
    note = ""

    def call(self):
        raise NotImplementedError

    def sync(self):
        pass

    def check(self):
        raise NotImplementedError

    def round(self, iters):
        t0 = time.perf_counter()
        for _ in range(iters):
            self.call()
        self.sync()
        return (time.perf_counter() - t0) / iters


class JaxFn(Contender):
    """A jitted ``fn(*args)`` called repeatedly (its check value: ``post(fn(*args))``)."""

    def __init__(self, lib, name, fn, args, post=None, note=""):
        self.lib, self.name, self.fn, self.args, self.note = lib, name, fn, args, note
        self.post = post or (lambda out: jax.tree.map(np.asarray, out))
        self.out = None

    def call(self):
        self.out = self.fn(*self.args)

    def sync(self):
        jax.block_until_ready(self.out)

    def check(self):
        return self.post(jax.block_until_ready(self.fn(*self.args)))


def _require(*modules):
    for m in modules:
        try:
            __import__(m)
        except Exception as e:  # ImportError, or a broken install
            raise Skip(f"{m} not importable ({type(e).__name__})") from None


def _torch_threads():
    import torch

    return torch.get_num_threads()


# --- shared setup --------------------------------------------------------------------------


def mlp(cfg):
    h = cfg.hidden
    return (
        jbp.Sequential([Dense(h), ReLU(), Dense(h), ReLU(), Dense(10)]),
        (784,),
        f"MLP 784-{h}-{h}-10",
    )


def cnn(cfg):
    s = cfg.image
    model = bench_models.cnn()
    return model, (s, s, 1), f"CNN c16-p-c32-p-d {s}x{s}"


MODELS = {"mlp": mlp, "cnn": cnn}


def init_params(model, in_shape, seed=0):
    """jbp's initialisation in float32, biases redrawn from N(0, 0.1²) (non-zero on purpose)."""
    params, _ = model.init(jax.random.key(seed), in_shape)
    params = jbp.cast(params, jnp.float32)
    rng = np.random.default_rng(seed + 1)
    return tuple(
        {**p, "b": jnp.asarray(0.1 * rng.standard_normal(p["b"].shape), jnp.float32)}
        if isinstance(p, dict) and "b" in p
        else p
        for p in params
    )


def make_batch(in_shape, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(in_shape)).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)


def rel_err(got, ref):
    """max over leaves of max|got − ref| / max|ref| (structures must match)."""
    sg, sr = jax.tree.structure(got), jax.tree.structure(ref)
    if sg != sr:
        raise ValueError(f"structure differs from jbp's: {sg} vs {sr}")
    errs = [
        float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64))))
        / max(float(np.max(np.abs(np.asarray(r, np.float64)))), 1e-30)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref))
        if np.asarray(r).size
    ]
    return max(errs) if errs else 0.0


def elementwise_rel_err(got, ref):
    """max_i |got_i − ref_i| / |ref_i| (for vectors of norms)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} differs from jbp's {ref.shape}")
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)))


def loss_pair_err(got, ref):
    """For (loss before, loss after one step): the larger of the relative difference of the
    loss and of the loss *decrease* (sensitive to the gradient and the update)."""
    (g0, g1), (r0, r1) = got, ref
    return max(abs(g0 - r0) / abs(r0), abs((g1 - g0) - (r1 - r0)) / max(abs(r1 - r0), 1e-30))


# --- 1. one training step -------------------------------------------------------------------


class StepContender(Contender):
    """A training step on a fixed batch; ``check`` = (loss before, loss after one step)."""

    def __init__(self, lib, name, make, note=""):
        self.lib, self.name, self.note = lib, name, note
        self.make = make  # () -> step_fn() returning the loss (a fresh model each time)
        self.step = make()
        self.loss = None

    def call(self):
        self.loss = self.step()

    def sync(self):
        if isinstance(self.loss, jax.Array):  # a torch step has already finished
            jax.block_until_ready(self.loss)

    def check(self):
        step = self.make()
        return float(step()), float(step())


def jbp_step(model, params, x, y, lr):
    step = make_step(model, CE, True, lr)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def make():
        state = {"p": params}

        def run():
            state["p"], v = step(state["p"], xj, yj)
            return v

        return run

    return make


def equinox_train_step(loss_fn, lr):
    """The Equinox/optax step of Equinox's docs: filter_jit, filter_value_and_grad, vmap."""
    import equinox as eqx
    import optax

    opt = optax.sgd(lr)

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        def objective(m):
            return loss_fn(jax.vmap(m)(x), y)

        loss, grads = eqx.filter_value_and_grad(objective)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    return opt, step


def _optax_ce(logits, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def equinox_step(desc, x, y, lr):
    _require("equinox", "optax")
    import equinox as eqx

    opt, step = equinox_train_step(_optax_ce, lr)
    xj, yj = jnp.asarray(pm.channels_first(x)), jnp.asarray(y)

    def make():
        model = pm.equinox_model(desc)
        state = {"m": model, "o": opt.init(eqx.filter(model, eqx.is_array))}

        def run():
            state["m"], state["o"], loss = step(state["m"], state["o"], xj, yj)
            return loss

        return run

    return make


def flax_step(desc, x, y, lr, cached):
    _require("flax", "optax")
    import optax
    from flax import nnx

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def make():
        model = pm.flax_model(desc)
        optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
        if cached:
            f = nnx.cached_partial(train_step, model, optimizer)
            return lambda: f(xj, yj)
        return lambda: train_step(model, optimizer, xj, yj)

    return make


def torch_step(desc, x, y, lr):
    _require("torch")
    import torch
    import torch.nn.functional as F

    xt, yt = pm.torch_input(x), torch.from_numpy(y.astype(np.int64))

    def make():
        net = pm.torch_model(desc)
        opt = torch.optim.SGD(net.parameters(), lr=lr)

        def run():
            loss = F.cross_entropy(net(xt), yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        return run

    return make


def step_cases(cfg):
    lr = 0.1
    for key in cfg.models:
        model, in_shape, title = MODELS[key](cfg)
        params = init_params(model, in_shape)
        x, y = make_batch(in_shape, cfg.step_batch)
        desc = pm.describe(model, params, in_shape)
        th = lambda: f"{_torch_threads()} threads"
        makers = [
            (
                "jbp",
                "jbp: jit(value_and_grad + SGD)",
                lambda: StepContender("jbp", "", jbp_step(model, params, x, y, lr)),
            ),
            (
                "equinox",
                "Equinox + optax (eqx.filter_jit)",
                lambda: StepContender("equinox", "", equinox_step(desc, x, y, lr)),
            ),
            (
                "flax",
                "Flax NNX + optax (nnx.jit)",
                lambda: StepContender("flax", "", flax_step(desc, x, y, lr, cached=False)),
            ),
            (
                "flax",
                "Flax NNX + optax (nnx.cached_partial)",
                lambda: StepContender("flax", "", flax_step(desc, x, y, lr, cached=True)),
            ),
            (
                "torch",
                "PyTorch CPU (eager)",
                lambda: StepContender("torch", "", torch_step(desc, x, y, lr), note=th()),
            ),
        ]
        yield Case("step", f"{title} b{cfg.step_batch}", "step", makers, loss_pair_err, 2e-3)


# --- 2. one epoch, Nielsen's configuration --------------------------------------------------


class EpochContender(Contender):
    """Wraps an object whose ``epoch()`` returns the seconds of one epoch."""

    def __init__(self, lib, name, obj, check, note="", torch_threads=None):
        self.lib, self.name, self.obj, self._check, self.note = lib, name, obj, check, note
        self.torch_threads = torch_threads

    def round(self, iters):
        if self.torch_threads is None:
            return self.obj.epoch()
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)  # only for this contender's epochs
        try:
            return self.obj.epoch()
        finally:
            torch.set_num_threads(saved)

    def check(self):
        return self._check()


class EquinoxLoop:
    """A Python loop of a jitted Equinox/optax step over numpy minibatches (as PythonLoop)."""

    def __init__(self, desc, x, y, batch, lr):
        import equinox as eqx

        self.opt, self.step = equinox_train_step(_quadratic, lr)
        self.model = pm.equinox_model(desc)
        self.opt_state = self.opt.init(eqx.filter(self.model, eqx.is_array))
        self.x, self.y, self.batch = x, y, batch
        self.rng = np.random.default_rng(1)

    def epoch(self):
        t0 = time.perf_counter()
        order = self.rng.permutation(len(self.x))
        xs, ys = self.x[order], self.y[order]
        m, s, b = self.model, self.opt_state, self.batch
        for i in range(0, len(xs), b):
            m, s, loss = self.step(m, s, xs[i : i + b], ys[i : i + b])
        jax.block_until_ready(m)
        self.model, self.opt_state = m, s
        return time.perf_counter() - t0


def _quadratic(a, y):
    """Nielsen's cost ``1/(2m) Σ ‖y − a‖²`` (jbp.losses.mse)."""
    return 0.5 * jnp.sum(jnp.square(a - y)) / a.shape[0]


class NumpyNielsenEpoch:
    """Nielsen's ``SGD`` epoch body (shuffle, slice, ``update_mini_batch`` per minibatch),
    the minibatch loop stopped after a fraction and extrapolated to the whole epoch."""

    def __init__(self, desc, x, y, batch, lr, fraction):
        dense = [d for d in desc if d["kind"] == "dense"]
        self.weights = [d["W"].T.astype(np.float64) for d in dense]
        self.biases = [d["b"].reshape(-1, 1).astype(np.float64) for d in dense]
        self.net = nielsen_numpy.Network(self.weights, self.biases)
        self.data = nielsen_numpy.as_training_data(x, y)
        self.batch, self.lr = batch, lr
        self.total = -(-len(self.data) // batch)
        self.nb = max(1, min(self.total, round(fraction * self.total)))
        random.seed(1)

    def epoch(self):
        t0 = time.perf_counter()
        random.shuffle(self.data)
        n, k = len(self.data), self.batch
        mini_batches = [self.data[j : j + k] for j in range(0, n, k)]
        t1 = time.perf_counter()
        for mb in mini_batches[: self.nb]:
            self.net.update_mini_batch(mb, self.lr)
        t2 = time.perf_counter()
        return (t1 - t0) + (t2 - t1) * self.total / self.nb

    def loss_pair(self):
        net = nielsen_numpy.Network(self.weights, self.biases)
        mb = nielsen_numpy.as_training_data(*self._first)
        before = net.cost(mb)
        net.update_mini_batch(mb, self.lr)
        return before, net.cost(mb)


def epoch_cases(cfg):
    b, lr = cfg.nielsen_batch, cfg.nielsen_lr
    model = epoch_bench.nielsen_net()
    params = jbp.cast(model.init(jax.random.key(0), (784,))[0], jnp.float32)
    x, y = epoch_bench.make_data(cfg.examples)
    desc = pm.describe(model, params, (784,))
    xb, yb = x[:b], y[:b]

    def jbp_fit():
        obj = epoch_bench.JbpFit(model, params, x, y, b, lr)

        def check():
            _, hist = jbp.fit(
                model,
                params,
                losses.mse,
                optim.sgd(lr),
                (jnp.asarray(xb), jnp.asarray(yb)),
                batch_size=b,
                epochs=2,
                key=jax.random.key(0),
                metrics=("loss",),
                verbose=0,
            )
            return float(hist["loss"][0]), float(hist["loss"][1])

        return EpochContender("jbp", "", obj, check, note="fit's seconds: compile excluded")

    def jbp_loop():
        obj = epoch_bench.PythonLoop(model, params, x, y, b, lr)

        def check():
            p, s1, m0, _ = obj.step(params, optim.sgd(lr).init(params), xb, yb, obj.key)
            _, _, m1, _ = obj.step(p, s1, xb, yb, obj.key)
            return float(m0["loss"]), float(m1["loss"])

        return EpochContender("jbp", "", obj, check)

    def eqx_loop():
        _require("equinox", "optax")
        import equinox as eqx

        obj = EquinoxLoop(desc, x, y, b, lr)

        def check():
            m = pm.equinox_model(desc)
            s = obj.opt.init(eqx.filter(m, eqx.is_array))
            m, s, l0 = obj.step(m, s, xb, yb)
            _, _, l1 = obj.step(m, s, xb, yb)
            return float(l0), float(l1)

        return EpochContender("equinox", "", obj, check)

    def torch_loop():
        _require("torch")
        if epoch_bench.torch is None:
            raise Skip("torch not importable in bench/epoch.py")
        import torch

        saved = torch.get_num_threads()
        obj = epoch_bench.TorchLoop(x, y, b, lr, threads=1)  # (it sets the global count)
        torch.set_num_threads(saved)
        obj.net = pm.torch_model(desc)
        obj.opt = torch.optim.SGD(obj.net.parameters(), lr=lr)

        def check():
            net = pm.torch_model(desc)
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)
            out = []
            for _ in range(2):
                loss = 0.5 * ((net(xt) - yt) ** 2).sum() / b
                out.append(float(loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return tuple(out)

        return EpochContender("torch", "", obj, check, note="1 thread", torch_threads=1)

    def numpy_port():
        obj = NumpyNielsenEpoch(desc, x, y, b, lr, cfg.nielsen_fraction)
        obj._first = (xb, yb)
        return EpochContender(
            "numpy",
            "",
            obj,
            obj.loss_pair,
            note=f"timed {obj.nb}/{obj.total} minibatches, extrapolated",
        )

    makers = [
        ("jbp", "jbp.fit (compiled epoch)", jbp_fit),
        ("jbp", "jbp: Python loop of jitted steps", jbp_loop),
        ("equinox", "Equinox + optax: Python loop, filter_jit", eqx_loop),
        ("torch", "PyTorch CPU", torch_loop),
        ("numpy", "NumPy: Nielsen's network.py, faithful", numpy_port),
    ]
    title = f"Nielsen [784,30,10] {cfg.examples:,} ex, mb {b}"
    yield Case("epoch", title, "epoch", makers, loss_pair_err, 2e-3)


# --- 3. per-example gradient norms and clipping --------------------------------------------


def vmap_grads(model, loss):
    """``vmap(jax.grad)`` of jbp's forward: per-example gradients, materialised."""

    def one(p, xi, yi):
        return loss.value(model.apply(p, xi[None]), yi[None])

    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))


def _row_norms(g):
    n = jax.tree.leaves(g)[0].shape[0]
    return jnp.sqrt(sum(jnp.sum(jnp.square(l.reshape(n, -1)), axis=1) for l in jax.tree.leaves(g)))


class OpacusPerExample(Contender):
    """Opacus via ``PrivacyEngine.make_private`` (``noise_multiplier=0``), hooks or ghost."""

    def __init__(self, desc, x, y, mode, what, clip):
        import torch
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        self.lib, self.desc, self.mode, self.what = "opacus", desc, mode, what
        self.x = pm.torch_input(x)
        self.y = torch.from_numpy(np.asarray(y, np.int64))
        net = pm.torch_model(desc)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        crit = torch.nn.CrossEntropyLoss()
        loader = DataLoader(TensorDataset(self.x, self.y), batch_size=len(self.x))
        out = PrivacyEngine().make_private(
            module=net,
            optimizer=opt,
            criterion=crit,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=float(clip),
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
        self.model, self.opt = out[0], out[1]
        self.crit = out[2] if mode == "ghost" else crit
        self.plain = torch.nn.CrossEntropyLoss()
        self.note = f"{_torch_threads()} threads"
        self.result = None

    def call(self):
        import torch

        self.opt.zero_grad(set_to_none=True)
        if self.what == "norms":
            loss = self.plain(self.model(self.x), self.y)
            loss.backward()
            if self.mode == "ghost":
                self.result = self.model.get_norm_sample()
            else:
                ps = [p for p in self.model.parameters() if p.requires_grad]
                self.result = torch.stack(
                    [p.grad_sample.reshape(len(self.x), -1).norm(2, dim=1) for p in ps], dim=1
                ).norm(2, dim=1)
        else:
            loss = self.crit(self.model(self.x), self.y)
            loss.backward()  # ghost: both backward passes
            self.opt.pre_step()  # clip (hooks), noise (0), divide by n
            self.result = None

    def check(self):
        self.call()
        if self.what == "norms":
            return self.result.detach().numpy()
        ps = [p.grad.detach().numpy() for p in self.model.parameters()]
        return pm.oi_to_jbp(self.desc, zip(ps[0::2], ps[1::2]))


def per_example_cases(cfg):
    for key in cfg.models:
        model, in_shape, title = MODELS[key](cfg)
        params = init_params(model, in_shape)
        x, y = make_batch(in_shape, cfg.pe_batch, seed=2)
        desc = pm.describe(model, params, in_shape)
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        norms_fn = jax.jit(jbp.per_example_grad_norms(model, CE))
        clip = float(np.median(np.asarray(norms_fn(params, xj, yj))))
        pe = vmap_grads(model, CE)

        @jax.jit
        def vmap_norms(p, x, y):
            return _row_norms(pe(p, x, y))

        @jax.jit
        def vmap_clipped(p, x, y):
            g = pe(p, x, y)
            s = jnp.minimum(1.0, clip / jnp.maximum(_row_norms(g), jnp.finfo(jnp.float32).tiny))
            return jax.tree.map(lambda l: jnp.tensordot(s, l, axes=1) / l.shape[0], g)

        jbp_clipped = jax.jit(
            lambda p, x, y: jbp.per_example_clipped_grad(model, CE, clip)(p, x, y)[0]
        )
        args = (params, xj, yj)

        def opacus(mode, what):
            def make():
                _require("torch", "opacus")
                return OpacusPerExample(desc, x, y, mode, what, clip)

            return make

        for what, label, jfn, vfn in (
            ("norms", "per-example grad norms", norms_fn, vmap_norms),
            ("clipped", "clipped mean grad", jbp_clipped, vmap_clipped),
        ):
            makers = [
                (
                    "jbp",
                    f"jbp.per_example_{'grad_norms' if what == 'norms' else 'clipped_grad'}",
                    lambda jfn=jfn: JaxFn("jbp", "", jfn, args),
                ),
                (
                    "jax",
                    "JAX vmap(jax.grad), materialised",
                    lambda vfn=vfn: JaxFn("jax", "", vfn, args),
                ),
                ("opacus", "Opacus hooks (per-sample grads)", opacus("hooks", what)),
                ("opacus", "Opacus ghost clipping", opacus("ghost", what)),
            ]
            compare = elementwise_rel_err if what == "norms" else rel_err
            extra = "" if what == "norms" else f", C={clip:.3g}"
            yield Case(
                "per_example",
                f"{title} b{cfg.pe_batch}: {label}{extra}",
                "call",
                makers,
                compare,
                1e-4,
            )


# --- 4. BackPACK-style extensions ----------------------------------------------------------

FIRST_ORDER = ("batch_grad", "batch_l2", "variance", "sum_grad_squared")


def jax_extension_reference(model, loss, which):
    """The quantities of the module docstring in plain JAX (BackPACK's conventions)."""
    grads1 = vmap_grads(model, loss)

    def first(p, x, y):
        n = x.shape[0]
        g = grads1(p, x, y)
        bg = jax.tree.map(lambda a: a / n, g)
        return {
            "batch_grad": bg,
            "batch_l2": jax.tree.map(lambda a: jnp.sum(jnp.square(a.reshape(n, -1)), axis=1), bg),
            "variance": jax.tree.map(lambda a: jnp.mean(a * a, 0) - jnp.square(jnp.mean(a, 0)), bg),
            "sum_grad_squared": jax.tree.map(lambda a: jnp.sum(a * a, 0), bg),
        }

    def ggn(p, x, y):
        # diag(Jᵀ H J) = Σ_c (Jᵀ S[:, c])², H = softmax Hessian = S Sᵀ, S = diag(√π) − π √πᵀ
        def one(xi):
            z, vjp = jax.vjp(lambda q: model.apply(q, xi[None])[0], p)
            pr = jax.nn.softmax(z)
            s = jnp.sqrt(pr)
            S = jnp.diag(s) - jnp.outer(pr, s)
            cols = jax.vmap(lambda v: vjp(v)[0])(S.T)
            return jax.tree.map(lambda c: jnp.sum(c * c, 0), cols)

        acc, _ = jax.lax.scan(
            lambda a, xi: (jax.tree.map(jnp.add, a, one(xi)), None),
            jax.tree.map(jnp.zeros_like, p),
            x,
        )
        return {"diag_ggn": jax.tree.map(lambda a: a / x.shape[0], acc)}

    return jax.jit(first if which == "first" else ggn)


def jbp_extensions(model, which):
    if not hasattr(jbp, "backprop"):
        raise Skip("jbp.backprop not in this build")
    E = jbp.extensions
    if which == "first":
        exts = (E.BatchGrad(), E.BatchL2(), E.Variance(), E.SumGradSquared())
    else:
        if not hasattr(E, "DiagGGN"):
            raise Skip("jbp.extensions.DiagGGN not in this build")
        exts = (E.DiagGGN(),)
    f = jbp.backprop(model, CE, extensions=exts)
    return jax.jit(lambda p, x, y: dict(f(p, x, y).extras))


class BackpackExtensions(Contender):
    FIELDS = {
        "batch_grad": "grad_batch",
        "batch_l2": "batch_l2",
        "variance": "variance",
        "sum_grad_squared": "sum_grad_squared",
        "diag_ggn": "diag_ggn_exact",
    }

    def __init__(self, desc, x, y, which):
        import torch
        from backpack import backpack, extend
        from backpack import extensions as bx

        self.lib, self.desc, self.backpack = "backpack", desc, backpack
        self.net = extend(pm.torch_model(desc))
        self.lossf = extend(torch.nn.CrossEntropyLoss())
        self.x = pm.torch_input(x)
        self.y = torch.from_numpy(np.asarray(y, np.int64))
        self.keys = FIRST_ORDER if which == "first" else ("diag_ggn",)
        self.exts = (
            (bx.BatchGrad(), bx.BatchL2Grad(), bx.Variance(), bx.SumGradSquared())
            if which == "first"
            else (bx.DiagGGNExact(),)
        )
        self.note = f"{_torch_threads()} threads"

    def call(self):
        self.net.zero_grad(set_to_none=True)
        loss = self.lossf(self.net(self.x), self.y)
        with self.backpack(*self.exts):
            loss.backward()

    def check(self):
        self.call()
        out = {}
        for k in self.keys:
            if k == "batch_l2":  # one (n,) vector per parameter tensor: no layout to convert
                vals = [p.batch_l2.detach().numpy() for p in self.net.parameters()]
                out[k] = _per_layer(self.desc, zip(vals[0::2], vals[1::2]))
            else:
                out[k] = pm.torch_params_to_jbp(
                    self.desc, self.net, self.FIELDS[k], lead=1 if k == "batch_grad" else 0
                )
        return out


def _per_layer(desc, pairs):
    """``(weight_value, bias_value)`` pairs (no layout) placed in jbp's parameter tree."""
    pairs = list(pairs)
    out = []
    for d in desc:
        if d["kind"] in ("dense", "conv"):
            w, b = pairs.pop(0)
            out.append({"W": w, "b": b})
        else:
            out.append(())
    return tuple(out)


def extensions_err(n, allow_scaling):
    """Largest relative difference over the quantities; jbp may use another power of n."""

    def compare(got, ref):
        missing = [k for k in ref if k not in got]
        if missing:
            raise ValueError(f"missing quantities {missing}; got {sorted(got)}")
        worst, notes = 0.0, []
        for k in ref:
            g = jax.tree.map(np.asarray, got[k])
            scales = (1.0, n, 1.0 / n, n * n, 1.0 / (n * n)) if allow_scaling else (1.0,)
            errs = {s: rel_err(jax.tree.map(lambda a: a * s, g), ref[k]) for s in scales}
            s = min(errs, key=errs.get)
            if s != 1.0:
                notes.append(f"{k}x{s:g}")
            worst = max(worst, errs[s])
        return (worst, " ".join(notes)) if notes else worst

    return compare


def extension_cases(cfg):
    for key in cfg.models:
        model, in_shape, title = MODELS[key](cfg)
        params = init_params(model, in_shape)
        x, y = make_batch(in_shape, cfg.ext_batch, seed=3)
        desc = pm.describe(model, params, in_shape)
        args = (params, jnp.asarray(x), jnp.asarray(y))
        n = cfg.ext_batch
        for which, label in (
            ("first", "BatchGrad+BatchL2+Variance+SumGradSquared"),
            ("ggn", "DiagGGN (exact)"),
        ):

            def bp(which=which):
                _require("torch", "backpack")
                return BackpackExtensions(desc, x, y, which)

            makers = [
                (
                    "jbp",
                    "jbp.backprop(extensions=...)",
                    lambda which=which: JaxFn("jbp", "", jbp_extensions(model, which), args),
                ),
                ("backpack", "BackPACK (extend + with backpack(...))", bp),
                (
                    "jax",
                    "JAX reference: "
                    + (
                        "vmap(jax.grad)"
                        if which == "first"
                        else "per-example vjp of Hessian factor"
                    ),
                    lambda which=which: JaxFn(
                        "jax", "", jax_extension_reference(model, CE, which), args
                    ),
                ),
            ]
            yield Case(
                "extensions",
                f"{title} b{n}: {label}",
                "call",
                makers,
                extensions_err(n, allow_scaling=False),
                1e-4,
                scaled_compare=extensions_err(n, allow_scaling=True),
            )


# --- the harness ---------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    workload: str
    title: str
    unit: str
    makers: list  # (lib, row name, factory() -> Contender); the first row is jbp's
    compare: object  # compare(got, ref) -> err or (err, note)
    tol: float
    scaled_compare: object = None  # used for jbp's own row when jbp is not the reference


@dataclasses.dataclass
class Row:
    case: str
    name: str
    median: float | None
    ratio: str = ""
    checked: str = ""
    note: str = ""
    best_ratio: str = ""


def fmt_time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


COLS = "  {:<46} {:>11} {:>8} {:>9}  {:<18} {}"


def print_row(row):
    print(
        COLS.format(
            row.name, fmt_time(row.median), row.ratio, row.best_ratio, row.checked, row.note
        ).rstrip(),
        flush=True,
    )


def run_case(case, cfg):
    """Build, check, warm up and time a case's contenders; print and return its rows."""
    built, rows = [], []
    for lib, name, factory in case.makers:
        if lib not in cfg.libs:
            continue
        try:
            c = factory()
            c.name = name
            built.append(c)
        except Skip as e:
            rows.append(Row(case.title, name, None, checked="skipped", note=str(e)))
        except Exception as e:  # a peer's API changed: say so, keep the other rows
            traceback.print_exc(file=sys.stderr)
            rows.append(
                Row(case.title, name, None, checked="ERROR", note=f"{type(e).__name__}: {e}")
            )

    # Check: every contender against the first built one (jbp's, unless jbp is absent).
    checks, ok = {}, []
    ref = None
    for c in built:
        try:
            val = c.check()
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            checks[c.name] = f"ERROR {type(e).__name__}: {e}"[:60]
            continue
        if ref is None:
            ref, ref_name = val, c.name
            checks[c.name] = "ref" if c.lib == "jbp" else "ref (no jbp)"
            ok.append(c)
            continue
        compare = case.compare
        # jbp's per-example quantities are those of each example's own loss; BackPACK's
        # (and the plain-JAX reference's) are of its 1/n share: compare up to a power of n,
        # which the check column names, whichever side jbp is on.
        if case.scaled_compare is not None and (c.lib == "jbp" or checks[ref_name] == "ref"):
            compare = case.scaled_compare
        try:
            err = compare(val, ref)
        except Exception as e:
            checks[c.name] = f"FAIL ({e})"[:60]
            ok.append(c)
            continue
        err, note = err if isinstance(err, tuple) else (err, "")
        checks[c.name] = f"{'ok' if err <= case.tol else 'FAIL'} {err:.1e}" + (
            f" {note}" if note else ""
        )
        ok.append(c)

    # Warm up (compile), size each contender's rounds, then interleaved rounds.
    repeats = cfg.epoch_repeats if case.unit == "epoch" else cfg.repeats
    iters = {}
    for c in ok:
        t = c.round(1)
        if case.unit != "epoch":
            t = c.round(1)
        # a round of about cfg.round_s seconds: up to cfg.iters calls, at least one
        iters[c.name] = max(1, min(cfg.iters, int(cfg.round_s / max(t, 1e-9))))
    samples = {c.name: [] for c in ok}
    for _ in range(repeats):
        for c in ok:
            samples[c.name].append(c.round(iters[c.name]))
    med = {k: statistics.median(v) for k, v in samples.items()}
    best = {k: min(v) for k, v in samples.items()}
    base = ok[0] if ok else None
    for c in built:
        m = med.get(c.name)
        ratio = best_ratio = ""
        if m is not None and base is not None:
            star = "" if base.lib == "jbp" else "*"
            ratio = f"{m / med[base.name]:.2f}x{star}"
            best_ratio = f"{best[c.name] / best[base.name]:.2f}x{star}"
        rows.append(Row(case.title, c.name, m, ratio, checks.get(c.name, ""), c.note, best_ratio))
    order = [name for _, name, _ in case.makers]
    rows.sort(key=lambda r: order.index(r.name))
    print(f"{case.workload}: {case.title}  (median per {case.unit})")
    for r in rows:
        print_row(r)
    return rows


def header(cfg, argv_note):
    def ver(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    dev = jax.devices()[0]
    torch_v = ver("torch")
    threads = ""
    if torch_v != "absent" and "torch" in cfg.libs:
        try:
            threads = f" ({_torch_threads()} intra-op threads; 1 in the epoch)"
        except Exception:
            threads = " (not importable)"
    env = " ".join(
        f"{k}={os.environ[k]}"
        for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if k in os.environ
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores ({usable} usable); {platform.system()} "
        f"{platform.machine()}; load average {load} at start"
    )
    print(
        f"python {platform.python_version()}; jax {jax.__version__} on {jax.default_backend()} "
        f"({dev.device_kind}; XLA's default intra-op threads: all usable cores); numpy {np.__version__}; "
        f"jbp {jbp.__version__}"
    )
    print(
        f"peers: equinox {ver('equinox')}; flax {ver('flax')}; optax {ver('optax')}; "
        f"torch {torch_v}{threads}; opacus {ver('opacus')}; backpack-for-pytorch "
        f"{ver('backpack-for-pytorch')}" + (f"; env {env}" if env else "")
    )
    print(
        f"float32; median of {cfg.repeats} interleaved rounds of up to {cfg.iters} calls "
        f"(~{cfg.round_s:g} s; {cfg.epoch_repeats} epochs for the epoch) after warm-up; {argv_note}"
    )
    print(
        "ratio = contender's median / jbp's (> 1: jbp is faster; * = jbp absent, ratio to the "
        "first row); min ratio = the same for the fastest\nrounds (steadier on a loaded machine); "
        "checked = max relative difference to jbp's numbers (see the docstring)\n"
    )
    print(COLS.format("contender", "median", "ratio", "min ratio", "checked", "notes"))
    print("-" * 110)


def cases_for(workload, cfg):
    return {
        "step": step_cases,
        "epoch": epoch_cases,
        "per_example": per_example_cases,
        "extensions": extension_cases,
    }[workload](cfg)


def parse_config(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="few rounds, a 5,000-example epoch: a smoke run"
    )
    ap.add_argument("--tiny", action="store_true", help="minimal sizes (tests/test_bench_peers.py)")
    ap.add_argument(
        "--only", choices=WORKLOADS, action="append", help="run this workload only (repeatable)"
    )
    ap.add_argument(
        "--libs",
        default=",".join(LIBS),
        help=f"comma-separated contenders' libraries to run (default: {','.join(LIBS)})",
    )
    ap.add_argument(
        "--models", default="mlp,cnn", help="mlp, cnn or both (steps, per-example, extensions)"
    )
    ap.add_argument("--repeats", type=int, help="timed rounds per contender")
    ap.add_argument("--iters", type=int, help="calls per timed round")
    ap.add_argument(
        "--torch-threads",
        type=int,
        help="torch.set_num_threads for the PyTorch-based rows (default: torch's own, "
        "the core count; the Nielsen epoch always uses 1)",
    )
    ap.add_argument(
        "--tune-malloc",
        action="store_true",
        help="call jbp.cpu.tune_malloc() first (glibc's mmap threshold; process-wide, so "
        "every contender runs with it)",
    )
    ap.add_argument(
        "--nielsen-fraction",
        type=float,
        help="fraction of the epoch the NumPy port is timed on (then extrapolated)",
    )
    args = ap.parse_args(argv)
    cfg = Config()
    for preset, on in ((QUICK, args.quick), (TINY, args.tiny)):
        if on:
            cfg = dataclasses.replace(cfg, **preset)
    libs = tuple(s.strip() for s in args.libs.split(",") if s.strip())
    bad = [l for l in libs if l not in LIBS]
    if bad:
        ap.error(f"--libs: unknown {bad}; expected a subset of {list(LIBS)}")
    models = tuple(s.strip() for s in args.models.split(",") if s.strip())
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models: expected mlp, cnn or both, got {args.models!r}")
    cfg = dataclasses.replace(cfg, libs=libs, models=models)
    for k in ("repeats", "iters", "nielsen_fraction"):
        if getattr(args, k) is not None:
            cfg = dataclasses.replace(cfg, **{k: getattr(args, k)})
    if cfg.repeats < 1 or cfg.iters < 1 or not 0 < cfg.nielsen_fraction <= 1:
        ap.error("--repeats and --iters must be >= 1, --nielsen-fraction in (0, 1]")
    return cfg, tuple(args.only or WORKLOADS), args


def quiet_peer_warnings():
    """Opacus and torch warn on every call about things that do not apply here."""
    for msg in (
        "Secure RNG turned off",
        "Full backward hook is firing",
        "Optimal order is the largest alpha",
    ):
        warnings.filterwarnings("ignore", message=msg)


def main(argv=None):
    cfg, workloads, args = parse_config(argv)
    quiet_peer_warnings()
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise SystemExit("--torch-threads: expected >= 1")
        try:
            import torch

            torch.set_num_threads(args.torch_threads)
        except ImportError:
            pass
    if args.tune_malloc and not jbp.cpu.tune_malloc():
        raise SystemExit("--tune-malloc: glibc did not accept the settings (not Linux/glibc?)")
    note = " ".join(f"--{k}" for k in ("quick", "tiny") if getattr(args, k)) or "full sizes"
    note += (
        "; malloc tuned (jbp.cpu.tune_malloc)" if args.tune_malloc else "; glibc malloc defaults"
    )
    header(cfg, note)
    rows = []
    for w in workloads:
        for case in cases_for(w, cfg):
            rows += run_case(case, cfg)
    if hasattr(os, "getloadavg"):
        print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return rows


if __name__ == "__main__":
    main()
