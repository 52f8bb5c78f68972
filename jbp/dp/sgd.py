r"""DP-SGD (Abadi et al. 2016) as a reader of the engine: clip, sum, noise, divide.

One private step on a batch ``B`` drawn by Poisson sampling (each of the ``N`` training
examples joins independently with probability ``q``)::

    gᵢ      = ∇ℓᵢ(θ)                                  per-example gradient, i ∈ B
    ḡᵢ      = gᵢ · min(1, C / ‖gᵢ‖)                    clipped to L2 norm C  (flat clipping)
    g̃       = (Σ_{i∈B} ḡᵢ + σ C ξ) / (q N),   ξ ∼ N(0, I)
    θ       ← optimizer(θ, g̃)

``C = max_norm``, ``σ = noise_multiplier``, ``q N = expected_batch_size``. Dividing by the
*expected* batch size (not the realised ``|B|``, which depends on the data) keeps the
released quantity a fixed function of the noisy sum, as the accountant
(:mod:`jbp.dp.accounting`) assumes: its sensitivity is ``C`` and its noise ``σ C``.

**How the engine computes it.** ``jbp.backprop(..., extensions=(ClippedGrad(C),))`` runs one
forward and one backward pass. The backward gives every parameterised layer's per-example
squared norms (``BatchL2``, closed forms); once all layers are visited the global norms
give the factors ``sᵢ = min(1, C/‖gᵢ‖)`` and each layer's clipped gradient is its own
parameter gradient for its delta with row ``i`` scaled by ``sᵢ`` ("book-keeping", Bu et al.
2023: a layer's backward is linear in its delta and rows do not mix; ``Conv2D`` reuses the
per-example gradients its norms formed). No second backward pass through the network;
``extras["clipped_grad"]`` is ``(1/n) Σᵢ ḡᵢ`` over the ``n`` rows of the batch, so the
clipped sum is ``n ×`` it.

**Per-layer clipping** (``clipping="per_layer"``): each parameterised leaf layer ``l``
(``Dense``, ``Conv2D``, ...: its weights and bias together form one group) is clipped on its
own to ``C_l = C / √L``, ``L`` the number of such layers. Then
``‖ḡᵢ‖² = Σ_l ‖ḡᵢˡ‖² ≤ Σ_l C²/L = C²``: the sensitivity of the clipped sum is still ``C``
and the accounting is unchanged (McMahan et al. 2018, "equal budget" split). It needs no
second full backward either: each layer's parameter gradient is recomputed from its delta
with its rows rescaled, as for flat clipping.

**Padded rows.** Fixed-shape batches (``lax.scan`` needs them) carry a 0/1 row weight
``weights``; the loss gradient of a row of weight 0 is set to zero *before* the backward,
so its per-example gradient is exactly 0: it adds nothing to the clipped sum, its norm is
0, and it changes no metric (metrics are means over the rows of weight 1). Only 0/1
weights are meaningful for privacy (a weight ``w > 1`` would scale the sensitivity).

**Poisson sampling in a compiled epoch** (:func:`poisson_batch`): every step draws
``uᵢ ∼ U(0, 1)`` for all ``N`` examples; example ``i`` is sampled iff ``uᵢ < q``. The batch
is the ``B_max`` examples of smallest ``uᵢ`` (``lax.top_k``), with weight ``[uᵢ < q]``: a
fixed shape ``B_max`` whatever the realised size. If more than ``B_max`` examples are
sampled (*overflow*), the batch keeps a uniformly random ``B_max`` of them (the ``uᵢ``
of the sampled ones are i.i.d. uniform on ``[0, q)``) and the rest are dropped for this step.
This is the one deviation from the analysed mechanism: dropping examples can only remove
terms of the clipped sum, but the accountant does not cover it formally, and the step is
then biased towards a smaller gradient by the fraction dropped. The default
``B_max = ⌈qN + 4√(qN(1−q))⌉ + 1`` (the mean plus four standard deviations of the
binomial size, capped at ``N``) makes overflow rare: :meth:`DPConfig.overflow_probability`
gives the exact binomial tail per step, and the step reports the number of dropped
examples (``dp_dropped``); pass a larger ``max_batch_size`` (up to ``N``: never any
overflow) when it matters.

Noise keys: the step's key ``k`` is split as in :func:`jbp.train.make_train_step`
(``k_aug, k_fwd = split(k)``); the noise uses ``fold_in(k, 0x4450)``, one subkey per
parameter leaf. Poisson sampling in :func:`make_private_epoch` uses ``fold_in(k, 0x5053)``.

References:
    M. Abadi et al. Deep Learning with Differential Privacy. CCS 2016, arXiv:1607.00133.
    Z. Bu, Y.-X. Wang, S. Zha, G. Karypis. Differentially Private Optimization on Large
    Model at Small Cost. ICML 2023, arXiv:2210.00038 (book-keeping).
    H. B. McMahan, D. Ramage, K. Talwar, L. Zhang. Learning Differentially Private
    Recurrent Language Models. ICLR 2018, arXiv:1710.06963 (per-layer clipping).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp._validate import check_augment, check_model_and_loss, check_optimizer
from jbp.dp.accounting import _real, epsilon
from jbp.engine import backprop
from jbp.extensions.base import Extension
from jbp.extensions.firstorder import (
    BatchL2,
    ClippedGrad,
    clip_factors,
    global_sq_norms,
    scaled_mean_grad,
)
from jbp.metrics import get_metrics
from jbp.train.step import apply_updates

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree
    from jbp.engine import LayerCall
    from jbp.losses import Loss
    from jbp.optim.base import Optimizer
    from jbp.regularizers import Regularizer
    from jbp.train.progress import Progress

__all__ = [
    "DPConfig",
    "CLIPPINGS",
    "PerLayerClippedGrad",
    "private_grad",
    "make_private_step",
    "poisson_batch",
    "make_private_epoch",
    "default_max_batch_size",
    "check_fit_privacy",
]

#: Clipping schemes: ``"flat"`` (one global norm per example) or ``"per_layer"``
#: (``C / √L`` per parameterised leaf layer).
CLIPPINGS = ("flat", "per_layer")

_NOISE_SALT = 0x4450  # "DP"
_SAMPLE_SALT = 0x5053  # "PS"


# ---------------------------------------------------------------------------------------
# Validation (concrete values, before anything is traced)
# ---------------------------------------------------------------------------------------


def _check_clipping(where, clipping):
    if clipping not in CLIPPINGS:
        raise ValueError(f"{where}: clipping must be one of {CLIPPINGS}, got {clipping!r}")
    return clipping


def _check_private_model(where, model):
    if model.mixes_examples(True):
        raise ValueError(
            f"{where}: DP-SGD clips every example's own gradient, but the model mixes the "
            f"examples of a batch in training mode (BatchNorm normalises with batch "
            f"statistics, so one example's gradient depends on the others and the clipped "
            f"sum has no per-example sensitivity); replace BatchNorm by LayerNorm, or drop it"
        )


def _check_int(where, name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{where}: {name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def default_max_batch_size(n: int, sample_rate: float, stds: float = 4.0) -> int:
    """``B_max = min(N, ⌈qN + stds·√(qN(1−q))⌉ + 1)``: the padded Poisson batch size."""
    m = sample_rate * n
    return int(min(n, math.ceil(m + stds * math.sqrt(m * (1.0 - sample_rate))) + 1))


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings for ``jbp.fit(..., privacy=DPConfig(...))``.

    Args:
      noise_multiplier: σ ≥ 0; the noise on the clipped sum has standard deviation ``σ C``.
        (Pick it with :func:`jbp.dp.noise_multiplier_for` for a target ε.)
      max_norm: C > 0, the per-example clipping norm.
      sample_rate: q ∈ (0, 1], the Poisson sampling probability (expected batch size / N).
      delta: δ ∈ (0, 1) for the ε reported each epoch (choose δ ≪ 1/N).
      max_batch_size: ``B_max``, the padded batch shape (``None``:
        :func:`default_max_batch_size`, mean + 4 standard deviations); see the module
        docstring for what happens on overflow.
      steps_per_epoch: Poisson steps per epoch (``None``: ``round(1/q)``, so one epoch
        samples N examples in expectation).
      clipping: ``"flat"`` or ``"per_layer"`` (``C/√L`` per layer).
    """

    noise_multiplier: float
    max_norm: float
    sample_rate: float
    delta: float
    max_batch_size: int | None = None
    steps_per_epoch: int | None = None
    clipping: str = "flat"

    def __post_init__(self):
        where = "DPConfig"
        _real(where, "noise_multiplier", self.noise_multiplier, low=0.0)
        _real(where, "max_norm", self.max_norm, low=0.0, low_open=True)
        _real(where, "sample_rate", self.sample_rate, low=0.0, high=1.0, low_open=True)
        _real(where, "delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.max_batch_size is not None:
            _check_int(where, "max_batch_size", self.max_batch_size, 1)
        if self.steps_per_epoch is not None:
            _check_int(where, "steps_per_epoch", self.steps_per_epoch, 1)
        _check_clipping(where, self.clipping)

    def batch_size_for(self, n: int) -> int:
        """``B_max`` for a training set of ``n`` examples (checked against ``n``)."""
        if self.max_batch_size is None:
            return default_max_batch_size(n, float(self.sample_rate))
        if self.max_batch_size > n:
            raise ValueError(
                f"DPConfig: max_batch_size={self.max_batch_size} exceeds the {n} training examples"
            )
        return int(self.max_batch_size)

    def steps_for(self) -> int:
        """Steps per epoch."""
        if self.steps_per_epoch is not None:
            return int(self.steps_per_epoch)
        return max(1, round(1.0 / float(self.sample_rate)))

    def epsilon_after(self, epochs: int) -> float:
        """ε after ``epochs`` epochs (``epochs · steps_per_epoch`` steps) at ``delta``."""
        return epsilon(
            self.noise_multiplier, self.sample_rate, epochs * self.steps_for(), self.delta
        )

    def overflow_probability(self, n: int) -> float:
        """``P[Binomial(n, q) > B_max]``: the chance that one step drops sampled examples."""
        q, b = float(self.sample_rate), self.batch_size_for(n)
        if b >= n:
            return 0.0
        k = np.arange(b + 1, n + 1)
        logp = (
            np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
            + k * math.log(q)
            + ((n - k) * math.log1p(-q) if q < 1 else 0.0)
        )
        mx = logp.max()
        return float(min(1.0, math.exp(mx) * np.exp(logp - mx).sum()))


# ---------------------------------------------------------------------------------------
# Row weights: padded rows contribute nothing
# ---------------------------------------------------------------------------------------


class _RowWeighted:
    """A loss whose gradient rows are multiplied by ``weights`` (0 for padded rows) and
    whose value is the weighted mean of the per-example losses over the real rows."""

    def __init__(self, loss, weights):
        self.loss, self.weights = loss, weights

    def per_example(self, pred, y):
        return jax.vmap(lambda p, t: self.loss.value(p[None], t[None]))(pred, y)

    def value(self, pred, y):
        w = self.weights.astype(pred.dtype)
        return jnp.sum(w * self.per_example(pred, y)) / jnp.maximum(jnp.sum(w), 1.0)

    def grad(self, pred, y):
        g = self.loss.grad(pred, y)
        w = self.weights.reshape((-1,) + (1,) * (g.ndim - 1))
        return jnp.where(w > 0, g * w.astype(g.dtype), jnp.zeros_like(g))


def _weighted_metric(m, loss, pred, y, w):
    """``Σ wᵢ m(predᵢ, yᵢ) / Σ wᵢ``: a batch-mean metric over the real rows only."""
    per = jax.vmap(lambda p, t: m.fn(p[None], t[None], loss))(pred, y)
    w = w.astype(per.dtype)
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1.0)


# ---------------------------------------------------------------------------------------
# Per-layer clipping: a (non-seeded) extension
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerLayerClippedGrad(Extension):
    """``"per_layer_clipped_grad"``: ``(1/n) Σᵢ min(1, C_l/‖gᵢˡ‖) gᵢˡ`` for each layer ``l``.

    ``‖gᵢˡ‖`` is the norm of example ``i``'s gradient restricted to the layer's parameters
    (``BatchL2`` of that layer, summed over its leaves); the layer's parameter gradient is
    then recomputed from its delta with row ``i`` scaled by the factor
    (:func:`jbp.extensions.firstorder.scaled_mean_grad`: the layer's ``scaled_grad_sum``, or
    its ``backward``, which is linear in the delta for a fixed cache), so nothing
    per-example is materialised when the layer has closed forms. ``max_norm`` is the
    per-layer bound ``C_l``.
    """

    max_norm: float = 1.0
    name = "per_layer_clipped_grad"
    per_example = True

    def compute(self, call: LayerCall) -> PyTree:
        scale = clip_factors(global_sq_norms(BatchL2().compute(call)), self.max_norm)
        return scaled_mean_grad(call.layer, call.params, call.cache, call.dy, scale, call.n)


@dataclasses.dataclass(frozen=True)
class _CountLayers(Extension):
    name = "_dp_count_layers"

    def compute(self, call):
        return jnp.zeros((), jnp.int8)


def _count_param_layers(model, loss, params, x, y, state) -> int:
    run = backprop(model, loss, extensions=(_CountLayers(),))
    shapes = jax.eval_shape(
        lambda p, a, b, s: run(p, a, b, state=s, train=False).extras, params, x, y, state
    )
    return len(jax.tree.leaves(shapes["_dp_count_layers"]))


# ---------------------------------------------------------------------------------------
# The private gradient and the private step
# ---------------------------------------------------------------------------------------


def private_grad(
    model: Layer,
    loss: Loss,
    *,
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    clipping: str = "flat",
) -> Callable[..., tuple[PyTree, Any, dict[str, Array]]]:
    """The DP-SGD gradient ``g̃ = (Σᵢ wᵢ-rows clipped gᵢ + σ C ξ) / (q N)``.

    Args:
      model: the model, as for :func:`jbp.backprop` (no BatchNorm in training mode).
      loss: the loss, as for :func:`jbp.backprop`.
      max_norm: C > 0.
      noise_multiplier: σ ≥ 0 (0: no noise, the clipped sum over ``expected_batch_size``).
      expected_batch_size: ``q N`` > 0, the divisor.
      clipping: ``"flat"`` or ``"per_layer"`` (see the module docstring).

    Returns:
      ``g(params, x, y, key, *, state=(), weights=None) -> (grads, out, info)``: ``grads``
      the noisy gradient (the structure of ``params``), ``out`` the engine's ``Pass`` (its
      ``loss`` is the mean over the rows of weight 1), ``info`` a dict of scalars:
      ``"clipped"`` (fraction of real rows whose full gradient norm exceeds C: the rows
      flat clipping rescales; with per-layer clipping a row below C may still have a
      layer clipped) and ``"rows"``
      (number of real rows). ``key`` is the step's key (noise from ``fold_in(key, 0x4450)``;
      the forward pass gets ``split(key)[1]``, as in ``make_train_step``); ``weights``: 0/1
      per row (``None``: all 1).
    """
    where = "private_grad"
    check_model_and_loss(model, loss)
    _check_private_model(where, model)
    c = _real(where, "max_norm", max_norm, low=0.0, low_open=True)
    sigma = _real(where, "noise_multiplier", noise_multiplier, low=0.0)
    denom = _real(where, "expected_batch_size", expected_batch_size, low=0.0, low_open=True)
    _check_clipping(where, clipping)

    def g(params, x, y, key, *, state=(), weights=None):
        n = x.shape[0]
        w = jnp.ones((n,), jnp.result_type(float)) if weights is None else jnp.asarray(weights)
        if w.shape != (n,):
            raise ValueError(f"weights: expected shape ({n},) (one per row of x), got {w.shape}")
        wl = _RowWeighted(loss, w)
        _, k_fwd = jax.random.split(key)
        if clipping == "flat":
            ext, bound = ClippedGrad(c), c
        else:
            layers = _count_param_layers(model, wl, params, x, y, state)
            ext, bound = PerLayerClippedGrad(c / math.sqrt(layers)), c
        out = backprop(model, wl, extensions=(ext, BatchL2()))(
            params, x, y, key=k_fwd, state=state, train=True
        )
        mean_clipped = out.extras[ext.name]
        leaves, tree = jax.tree.flatten(mean_clipped)
        noise_keys = jax.random.split(jax.random.fold_in(key, _NOISE_SALT), max(1, len(leaves)))
        noisy = [
            (a * n + (sigma * c) * jax.random.normal(k, a.shape, a.dtype)) / denom
            for a, k in zip(leaves, noise_keys)
        ]
        rows = jnp.sum((w > 0).astype(jnp.result_type(float)))
        hit = jnp.sqrt(global_sq_norms(out.extras["batch_l2"])) > bound
        clipped = jnp.sum(jnp.where(w > 0, hit, False)) / jnp.maximum(rows, 1.0)
        return jax.tree.unflatten(tree, noisy), out, {"clipped": clipped, "rows": rows}

    return g


def make_private_step(
    model: Layer,
    loss: Loss,
    optimizer: Optimizer,
    *,
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    clipping: str = "flat",
    regularizer: Regularizer | None = None,
    metrics: Sequence[str] = ("loss",),
    augment: Callable[[Array, Array], Array] | None = None,
) -> Callable[..., tuple[PyTree, PyTree, dict[str, Array], PyTree]]:
    """The DP-SGD training step, with :func:`jbp.train.make_train_step`'s signature.

    Returns ``step(params, opt_state, x, y, key, state=(), weights=None) -> (params,
    opt_state, metrics, state)``. The update uses :func:`private_grad`'s noisy gradient
    (plus ``regularizer.grad(params)``, which reads no data and costs no privacy).
    ``metrics`` are means over the rows of weight 1 (``"loss"`` first), plus
    ``"dp_clipped"`` (fraction of real rows clipped) and ``"dp_rows"`` (their number).

    Args:
      model: the model, as for :func:`jbp.train.make_train_step`.
      loss: the loss, as for :func:`jbp.train.make_train_step`.
      optimizer: the optimizer, as for :func:`jbp.train.make_train_step`.
      max_norm: the clipping bound C > 0, as for :func:`private_grad`.
      noise_multiplier: σ ≥ 0, as for :func:`private_grad`.
      expected_batch_size: ``q N`` > 0, as for :func:`private_grad`.
      clipping: ``"flat"`` or ``"per_layer"``, as for :func:`private_grad`.
      regularizer: an optional regularizer, as for :func:`jbp.train.make_train_step`.
      metrics: metric names, as for :func:`jbp.train.make_train_step`.
      augment: ``augment(key, x) -> x``, as for :func:`jbp.train.make_train_step`.

    Raises:
      ValueError: BatchNorm in training mode (per-example clipping is undefined), σ < 0,
        C ≤ 0, ``expected_batch_size`` ≤ 0, an unknown ``clipping``.
    """
    check_model_and_loss(model, loss, regularizer)
    check_optimizer(optimizer)
    check_augment(augment)
    _check_private_model("make_private_step", model)
    metric_objs = get_metrics(metrics)
    grad = private_grad(
        model,
        loss,
        max_norm=max_norm,
        noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size,
        clipping=clipping,
    )

    def step(params, opt_state, x, y, key, state=(), weights=None):
        k_aug, _ = jax.random.split(key)
        if augment is not None:
            x = augment(k_aug, x)
        grads, out, info = grad(params, x, y, key, state=state, weights=weights)
        if regularizer is not None:
            grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = apply_updates(params, updates)
        pred = jax.lax.stop_gradient(out.pred)
        w = jnp.ones((x.shape[0],)) if weights is None else jnp.asarray(weights)
        logs = {"loss": out.loss}
        if regularizer is not None:
            logs["penalty"] = regularizer.value(params)
        for m in metric_objs[1:]:
            logs[m.name] = _weighted_metric(m, loss, pred, y, w)
        logs["dp_clipped"] = info["clipped"]
        logs["dp_rows"] = info["rows"]
        logs = {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in logs.items()}
        return params, opt_state, logs, out.state

    return step


# ---------------------------------------------------------------------------------------
# Poisson sampling inside one compiled epoch
# ---------------------------------------------------------------------------------------


def poisson_batch(
    key: Array, n: int, sample_rate: float, max_batch_size: int
) -> tuple[Array, Array, Array]:
    """Indices and weights of one Poisson-sampled batch, padded to ``max_batch_size``.

    ``uᵢ ∼ U(0,1)`` for the ``n`` examples; the batch is the ``max_batch_size`` indices of
    smallest ``uᵢ``, weight ``[uᵢ < q]`` (1 = sampled, 0 = padding). Returns
    ``(idx, weights, dropped)``: ``dropped`` = number of sampled examples beyond
    ``max_batch_size`` (overflow, see the module docstring).
    """
    u = jax.random.uniform(key, (n,))
    neg, idx = jax.lax.top_k(-u, max_batch_size)
    sampled = -neg < sample_rate
    dropped = jnp.sum(u < sample_rate) - jnp.sum(sampled)
    return idx, sampled.astype(jnp.result_type(float)), dropped


def check_fit_privacy(
    config: DPConfig, *, batch_size: int | None, n: int, grad_fn: str, drop_last: bool
) -> None:
    """``fit(..., privacy=config)``'s checks, before anything is compiled."""
    if not isinstance(config, DPConfig):
        raise TypeError(
            f"privacy: expected a jbp.dp.DPConfig(noise_multiplier=..., "
            f"max_norm=..., sample_rate=..., delta=...), got "
            f"{type(config).__name__}"
        )
    if batch_size is not None and batch_size != n:
        raise ValueError(
            f"privacy: DP-SGD draws its batches by Poisson sampling (expected "
            f"size sample_rate·N = {config.sample_rate * n:g}); leave "
            f"batch_size=None, got batch_size={batch_size}"
        )
    if grad_fn != "manual":
        raise ValueError(
            f"privacy: DP-SGD reads per-example norms from the hand-written "
            f"backward; it needs grad_fn='manual', got {grad_fn!r}"
        )
    if drop_last:
        raise ValueError("privacy: drop_last has no meaning with Poisson sampling; leave it False")
    config.batch_size_for(n)


def make_private_epoch(
    config: DPConfig,
    model: Layer,
    loss: Loss,
    optimizer: Optimizer,
    *,
    n: int,
    regularizer: Regularizer | None = None,
    metrics: Sequence[str] = ("loss",),
    augment: Callable[[Array, Array], Array] | None = None,
    finalizers: Mapping[str, Callable[[Array], Array]] | None = None,
    progress: Progress | None = None,
) -> Callable[..., tuple[Any, dict[str, Array]]]:
    """``epoch(carry, x, y, key) -> (carry, means)``: ``steps_per_epoch`` Poisson steps in
    one ``lax.scan`` (the contract of ``fit``'s epoch). Step ``j`` gets key
    ``split(key, steps)[j]``; its batch comes from ``fold_in(that key, 0x5053)``. Means are
    weighted by the real rows of each step; ``dp_dropped`` is the total overflow of the
    epoch and ``dp_rows`` the mean batch size. ``progress``: a
    :class:`jbp.train.progress.Progress` (lines from inside the epoch)."""
    if not isinstance(config, DPConfig):
        raise TypeError(f"privacy: expected a jbp.dp.DPConfig, got {type(config).__name__}")
    bmax = config.batch_size_for(n)
    steps = config.steps_for()
    q = float(config.sample_rate)
    step = make_private_step(
        model,
        loss,
        optimizer,
        max_norm=config.max_norm,
        noise_multiplier=config.noise_multiplier,
        expected_batch_size=q * n,
        clipping=config.clipping,
        regularizer=regularizer,
        metrics=metrics,
        augment=augment,
    )
    finalizers = finalizers or {}

    def body(carry, k, x, y):
        params, opt_state, state = carry
        idx, w, dropped = poisson_batch(jax.random.fold_in(k, _SAMPLE_SALT), n, q, bmax)
        xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
        params, opt_state, m, state = step(params, opt_state, xb, yb, k, state, weights=w)
        m["dp_dropped"] = dropped.astype(m["loss"].dtype)
        return (params, opt_state, state), m

    def epoch(carry, x, y, key):
        keys = jax.random.split(key, steps)

        def body_k(c, k):
            return body(c, k, x, y)

        if progress is None:
            carry, ms = jax.lax.scan(body_k, carry, keys)
        else:  # the carry gains a step counter and running sums (jbp.train.progress)
            carry, ms = jax.lax.scan(progress.wrap(body_k), progress.begin(carry), keys)
            carry = progress.end(carry)
        rows = ms["dp_rows"]
        total = jnp.maximum(jnp.sum(rows), 1.0)
        means = {
            k: jnp.sum(v * rows) / total
            for k, v in ms.items()
            if k not in ("dp_rows", "dp_dropped")
        }
        means["dp_rows"] = jnp.mean(rows)
        means["dp_dropped"] = jnp.sum(ms["dp_dropped"])
        return carry, {k: finalizers.get(k, _same)(v) for k, v in means.items()}

    return epoch


def _same(v):
    return v
