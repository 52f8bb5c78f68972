"""Losses: the value and its hand-written gradient, side by side.

Every loss is mean-reduced over the batch (axis 0) and summed over the remaining axes of
one example, so ``grad`` is the batch-averaged ``∂L/∂pred`` that seeds the backward pass.
A loss object is callable: ``loss(pred, target)`` is ``loss.value(pred, target)``.

=========================  =============================================  ==========================
loss                       value (n = batch size)                         grad ∂L/∂pred
=========================  =============================================  ==========================
``mse``                    ``1/(2n) Σᵢ ‖yᵢ − ŷᵢ‖²``                        ``(ŷ − y)/n``
``binary_cross_entropy``   ``1/n Σᵢ Σⱼ softplus(zᵢⱼ) − tᵢⱼ zᵢⱼ``           ``(σ(z) − t)/n``
``softmax_cross_entropy``  ``1/n Σᵢ Σⱼ tᵢⱼ (logsumexp(zᵢ) − zᵢⱼ)``          ``(softmax(z)·Σⱼtᵢⱼ − t)/n``
=========================  =============================================  ==========================

Cross-entropies take logits ``z`` (not probabilities) and are computed in the stable form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jbp._validate import check_index_range, check_interval
from jbp.core import Array, check_array

__all__ = ["Loss", "mse", "binary_cross_entropy", "softmax_cross_entropy", "get", "accuracy"]


def _concrete(a):
    """``a`` as a numpy array when it is concrete, ``None`` while it is being traced."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_samples(who, samples) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"{who}: samples must be a positive integer, got {samples!r}")
    return int(samples)


def _unit_columns(pred, scale=None):
    """``(m, *pred.shape)``: column ``c`` is ``e_c`` (times ``scale[:, c]``) in every example,
    ``m = prod(pred.shape[1:])``: the factor of a Hessian that is diagonal per example."""
    n, m = pred.shape[0], math.prod(pred.shape[1:])
    eye = jnp.eye(m, dtype=pred.dtype)[:, None, :]  # (m, 1, m)
    cols = jnp.broadcast_to(eye, (m, n, m)) if scale is None else eye * scale.reshape(n, m)[None]
    return cols.reshape((m,) + pred.shape)


class Loss:
    name = "loss"

    def value(self, pred: Array, target: ArrayLike) -> Array:
        raise NotImplementedError

    def grad(self, pred: Array, target: ArrayLike) -> Array:
        raise NotImplementedError

    def value_and_grad(self, pred: Array, target: ArrayLike) -> tuple[Array, Array]:
        """``(value, grad)`` in one pass, sharing the work both need (what the engines call)."""
        return self.value(pred, target), self.grad(pred, target)

    def __call__(self, pred: Array, target: ArrayLike) -> Array:
        return self.value(pred, target)

    # --- curvature (jbp.extensions.curvature) ---------------------------------------------
    # ``ℓᵢ`` is the loss of example ``i`` alone (a batch of one: no 1/n), ``Hᵢ = ∂²ℓᵢ/∂predᵢ²``
    # its Hessian w.r.t. that example's prediction (flattened to ``m = prod(pred.shape[1:])``).

    def hessian_factor(self, pred: Array, target: ArrayLike) -> Array:
        """A symmetric factor of each example's loss Hessian w.r.t. its prediction.

        Returns ``S`` of shape ``(C, *pred.shape)`` with ``Σ_c S[c, i] S[c, i]ᵀ = Hᵢ`` for every
        example ``i`` (each ``S[c, i]`` flattened): the columns the curvature extensions
        backpropagate. Per example, not divided by ``n``.

        Args:
          pred: the model's output, leading batch axis.
          target: the targets, as for ``value``.
        """
        raise TypeError(
            f"{self.name}: this loss has no hessian_factor(pred, target); the "
            f"curvature extensions need one (mse, binary_cross_entropy and "
            f"softmax_cross_entropy have it)"
        )

    def sample_targets(self, key: Array, pred: Array, samples: int = 1) -> Array:
        """``samples`` targets per example drawn from the model's predictive distribution
        at ``pred``; shape ``(samples, *target_shape)``.

        Args:
          key: a ``jax.random`` key.
          pred: the model's output, leading batch axis.
          samples: how many targets per example.
        """
        raise TypeError(
            f"{self.name}: this loss has no sample_targets(key, pred, samples); "
            f"the Monte-Carlo curvature extensions need one"
        )

    def sampled_grads(self, key: Array, pred: Array, target: ArrayLike, samples: int = 1) -> Array:
        """``∂ℓᵢ(predᵢ, ŷᵢ)/∂predᵢ`` at targets ``ŷ`` drawn by :meth:`sample_targets`, shape
        ``(samples, *pred.shape)``: per example (``n ·`` the mean-loss ``grad``), so that
        ``E[g gᵀ] = Hᵢ`` — the Monte-Carlo columns of ``DiagGGNMC`` and ``KFAC``.

        ``target`` only fixes the scale where the Hessian depends on it (softmax
        cross-entropy with unnormalised soft targets); the loss's own ``grad`` does the rest.

        Args:
          key: a ``jax.random`` key.
          pred: the model's output, leading batch axis.
          target: the true targets (validated as for ``value``).
          samples: how many sampled gradients per example.
        """
        samples = _check_samples(self.name, samples)
        pred, _ = self._check(pred, target)
        ys = self.sample_targets(key, pred, samples)
        return jax.vmap(lambda t: self.grad(pred, t) * pred.shape[0])(ys)

    def __repr__(self) -> str:
        return f"jbp.losses.{self.name}"

    def _check(self, pred, target):
        pred = check_array("pred", pred)
        target = check_array("target", target)
        if not jnp.issubdtype(pred.dtype, jnp.floating):
            raise TypeError(f"{self.name}: pred must be floating point, got dtype {pred.dtype}")
        if pred.ndim == 0:
            raise ValueError(f"{self.name}: pred must have a leading batch axis, got a scalar")
        return pred, target

    # --- boundary checks on concrete targets (fit, evaluate, check_gradients call them) ---
    def check_targets(self, target: Array | np.ndarray, out_shape: Sequence[int]) -> None:
        """Check concrete targets for predictions of shape ``(n, *out_shape)``, before jit.

        Under ``jit`` a label out of range, a binary target outside ``[0, 1]`` or a target
        of the wrong shape can no longer raise (it would be clipped or scored silently), so
        ``fit``, ``evaluate`` and ``check_gradients`` call this once on the whole data.
        The base class checks nothing; each loss overrides it.

        Args:
          target: the targets of all examples (leading example axis).
          out_shape: the model's output shape for one example (``model.init``'s second result).

        Raises:
          ValueError / TypeError: naming the loss, what was expected and what came.
        """

    def _target_shape(self, target, out_shape, what) -> None:
        """``target.shape[1:]`` is ``out_shape`` (or ``()`` for ``out_shape == (1,)``)."""
        target = check_array("target", target)
        if target.ndim == 0:
            raise ValueError(f"{self.name}: target needs a leading example axis, got a scalar")
        if tuple(target.shape[1:]) == tuple(out_shape) or (
            tuple(out_shape) == (1,) and target.ndim == 1
        ):
            return
        raise ValueError(
            f"{self.name}: target must have the {what} shape "
            f"(n, {', '.join(map(str, out_shape))}) = "
            f"{(target.shape[0],) + tuple(out_shape)}, got {tuple(target.shape)}"
        )

    def _same_shape(self, pred, target, what):
        """``target`` shaped like ``pred``; ``(n,)`` is accepted for ``(n, 1)`` predictions."""
        if target.shape == pred.shape:
            return target
        if pred.ndim == 2 and pred.shape[1] == 1 and target.shape == pred.shape[:1]:
            return target[:, None]
        raise ValueError(
            f"{self.name}: target must have the {what} shape {pred.shape}, got {target.shape}"
        )


@dataclasses.dataclass(frozen=True, repr=False)
class MSE(Loss):
    """Mean squared error with the seed's convention ``L = 1/(2n) Σᵢ ‖yᵢ − ŷᵢ‖²``.

    The ½ makes the gradient clean: ``∂L/∂ŷ = (ŷ − y)/n``. (Note: this is half of the
    "mean of squares" that some libraries report, and sums over an example's outputs.)
    """

    name = "mse"

    def check_targets(self, target: Array | np.ndarray, out_shape: Sequence[int]) -> None:
        """Targets shaped like the predictions (``(n,)`` for outputs of shape ``(1,)``)."""
        self._target_shape(target, out_shape, "prediction's")

    def _check(self, pred, target):
        pred, target = super()._check(pred, target)
        target = self._same_shape(pred, target, "prediction's")
        return pred, target.astype(pred.dtype)

    def value(self, pred: Array, target: ArrayLike) -> Array:
        pred, target = self._check(pred, target)
        return 0.5 * jnp.sum((pred - target) ** 2) / pred.shape[0]

    def grad(self, pred: Array, target: ArrayLike) -> Array:
        pred, target = self._check(pred, target)
        return (pred - target) / pred.shape[0]

    def value_and_grad(self, pred: Array, target: ArrayLike) -> tuple[Array, Array]:
        pred, target = self._check(pred, target)
        r = pred - target
        return 0.5 * jnp.sum(r * r) / pred.shape[0], r / pred.shape[0]

    def hessian_factor(self, pred: Array, target: ArrayLike) -> Array:
        """``ℓᵢ = ½‖yᵢ − ŷᵢ‖²`` (the ½ of the 1/(2n) convention), so ``Hᵢ = I``: ``S`` is the
        identity, ``m = prod(pred.shape[1:])`` columns, column ``c`` = ``e_c`` in every example."""
        pred, _ = self._check(pred, target)
        return _unit_columns(pred)

    def sample_targets(self, key: Array, pred: Array, samples: int = 1) -> Array:
        """``ŷ ~ N(pred, I)`` (the Gaussian whose negative log-likelihood is ``ℓ`` up to a
        constant): ``∂ℓ/∂pred = pred − ŷ = −ε`` with ``E[εεᵀ] = I = Hᵢ``."""
        samples = _check_samples(self.name, samples)
        pred = jax.lax.stop_gradient(pred)
        return pred + jax.random.normal(key, (samples,) + pred.shape, pred.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class BinaryCrossEntropy(Loss):
    """Binary cross-entropy from logits ``z``, targets ``t ∈ [0, 1]``.

    ``L = 1/n Σᵢ Σⱼ [softplus(zᵢⱼ) − tᵢⱼ zᵢⱼ]``, which equals
    ``−[t log σ(z) + (1 − t) log(1 − σ(z))]`` without forming ``log σ``.
    Gradient: ``∂L/∂z = (σ(z) − t)/n``. A target of shape ``(n,)`` is accepted for
    logits of shape ``(n, 1)``.
    """

    name = "binary_cross_entropy"

    def check_targets(self, target: Array | np.ndarray, out_shape: Sequence[int]) -> None:
        """Targets shaped like the logits (``(n,)`` for ``(1,)``), every value in ``[0, 1]``
        (under jit a target of 3 would just scale the gradient)."""
        self._target_shape(target, out_shape, "logits'")
        check_interval(f"{self.name}: targets", target, 0.0, 1.0)

    def _check(self, pred, target):
        pred, target = super()._check(pred, target)
        target = self._same_shape(pred, target, "logits'")
        t = _concrete(target)
        if t is not None and t.size and (np.min(t) < 0 or np.max(t) > 1):
            raise ValueError(
                f"binary_cross_entropy: targets must lie in [0, 1], got values in "
                f"[{np.min(t)}, {np.max(t)}]"
            )
        return pred, target.astype(pred.dtype)

    def value(self, pred: Array, target: ArrayLike) -> Array:
        z, t = self._check(pred, target)
        return jnp.sum(jnp.logaddexp(z, 0.0) - t * z) / z.shape[0]

    def grad(self, pred: Array, target: ArrayLike) -> Array:
        z, t = self._check(pred, target)
        return (jax.nn.sigmoid(z) - t) / z.shape[0]

    def value_and_grad(self, pred: Array, target: ArrayLike) -> tuple[Array, Array]:
        z, t = self._check(pred, target)
        n = z.shape[0]
        return jnp.sum(jnp.logaddexp(z, 0.0) - t * z) / n, (jax.nn.sigmoid(z) - t) / n

    def hessian_factor(self, pred: Array, target: ArrayLike) -> Array:
        """``∂²ℓ/∂z² = σ(z)(1 − σ(z))``, independently per output: diagonal ``Hᵢ``, so ``S`` has
        one column per output, column ``c`` = ``√(σ(z_c)(1 − σ(z_c))) e_c``."""
        z, _ = self._check(pred, target)
        s = jax.nn.sigmoid(z)
        return _unit_columns(z, jnp.sqrt(s * (1 - s)))

    def sample_targets(self, key: Array, pred: Array, samples: int = 1) -> Array:
        """``t ~ Bernoulli(σ(z))`` per output: ``∂ℓ/∂z = σ − t`` has ``E[(σ − t)²] = σ(1 − σ)``
        and independent outputs, so ``E[g gᵀ] = Hᵢ``."""
        samples = _check_samples(self.name, samples)
        p = jax.nn.sigmoid(jax.lax.stop_gradient(pred))
        return jax.random.bernoulli(key, p, (samples,) + pred.shape).astype(pred.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy from logits ``z`` of shape ``(n, k)``.

    Targets are integer class labels of shape ``(n,)`` in ``[0, k)``, or one-hot /
    probability vectors of shape ``(n, k)``:
    ``L = 1/n Σᵢ Σⱼ tᵢⱼ (logsumexp(zᵢ) − zᵢⱼ)``,
    ``∂L/∂zᵢ = (softmax(zᵢ) Σⱼ tᵢⱼ − tᵢ)/n`` (``= (softmax(zᵢ) − tᵢ)/n`` for one-hot).
    """

    name = "softmax_cross_entropy"

    def check_targets(self, target: Array | np.ndarray, out_shape: Sequence[int]) -> None:
        """Logits of shape ``(k,)`` per example; integer labels of shape ``(n,)`` in
        ``[0, k)`` (under jit an out-of-range label one-hot encodes to zeros: loss 0, no
        gradient) or non-negative probabilities of shape ``(n, k)``."""
        target = check_array("target", target)
        out_shape = tuple(out_shape)
        if len(out_shape) != 1:
            raise ValueError(
                f"{self.name}: logits must have shape (batch, classes), but the "
                f"model's output per example has shape {out_shape}"
            )
        k = out_shape[0]
        if jnp.issubdtype(target.dtype, jnp.integer):
            if target.ndim != 1:
                raise ValueError(
                    f"{self.name}: integer labels must have shape (n,), got {tuple(target.shape)}"
                )
            check_index_range(f"{self.name}: labels ({k} classes)", target, k)
            return
        if (
            not jnp.issubdtype(target.dtype, jnp.floating)
            or target.ndim != 2
            or target.shape[1] != k
        ):
            raise ValueError(
                f"{self.name}: target must be integer labels of shape (n,) or "
                f"probabilities of shape (n, {k}), got {target.dtype} "
                f"{tuple(target.shape)}"
            )
        check_interval(f"{self.name}: target probabilities", target, 0.0, float("inf"))

    def _targets(self, pred, target):
        pred, target = self._check(pred, target)
        if pred.ndim != 2:
            raise ValueError(
                f"softmax_cross_entropy: logits must have shape (batch, classes), got {pred.shape}"
            )
        k = pred.shape[1]
        if jnp.issubdtype(target.dtype, jnp.integer):
            if target.shape != pred.shape[:1]:
                raise ValueError(
                    f"softmax_cross_entropy: integer labels must have shape "
                    f"({pred.shape[0]},), got {target.shape}"
                )
            t = _concrete(target)
            if t is not None and t.size and (t.min() < 0 or t.max() >= k):
                raise ValueError(
                    f"softmax_cross_entropy: labels must lie in [0, {k}) for {k} "
                    f"classes, got values in [{t.min()}, {t.max()}]"
                )
            return pred, jax.nn.one_hot(target, k, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(
                f"softmax_cross_entropy: target must be integer labels of shape "
                f"({pred.shape[0]},) or probabilities of shape {pred.shape}, "
                f"got {target.dtype} {target.shape}"
            )
        return pred, target.astype(pred.dtype)

    def value(self, pred: Array, target: ArrayLike) -> Array:
        z, t = self._targets(pred, target)
        lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
        return jnp.sum(t * (lse - z)) / z.shape[0]

    def grad(self, pred: Array, target: ArrayLike) -> Array:
        z, t = self._targets(pred, target)
        return (jax.nn.softmax(z, axis=-1) * jnp.sum(t, axis=-1, keepdims=True) - t) / z.shape[0]

    def value_and_grad(self, pred: Array, target: ArrayLike) -> tuple[Array, Array]:
        """One ``logsumexp`` serves both: ``softmax(z) = exp(z − logsumexp(z))``."""
        z, t = self._targets(pred, target)
        n = z.shape[0]
        shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
        e = jnp.exp(shifted)
        s = jnp.sum(e, axis=-1, keepdims=True)
        log_p = shifted - jnp.log(s)
        t_sum = jnp.sum(t, axis=-1, keepdims=True)
        return -jnp.sum(t * log_p) / n, ((e / s) * t_sum - t) / n

    def hessian_factor(self, pred: Array, target: ArrayLike) -> Array:
        """With ``p = softmax(z)`` and ``τ = Σⱼ tⱼ`` (1 for labels, one-hot or probabilities),
        ``ℓ = τ logsumexp(z) − t·z`` has ``H = τ (diag(p) − p pᵀ)``. Its factor
        ``S = √τ (diag(√p) − p √pᵀ)``: column ``c`` is ``√τ √p_c (e_c − p)`` — ``√p_c`` times
        the gradient the loss would have for label ``c``. Check:
        ``S Sᵀ/τ = diag(p) − p pᵀ − p pᵀ + p (√pᵀ√p) pᵀ = diag(p) − p pᵀ`` since ``Σ p = 1``.
        ``k`` columns; shape ``(k, n, k)``."""
        z, t = self._targets(pred, target)
        p = jax.nn.softmax(z, axis=-1)
        k = z.shape[1]
        eye = jnp.eye(k, dtype=z.dtype)[:, None, :]  # (k, 1, k): e_c
        root = jnp.sqrt(p * jnp.sum(t, axis=-1, keepdims=True))  # √(τ p_c), (n, k)
        return root.T[:, :, None] * (eye - p[None])

    def sample_targets(self, key: Array, pred: Array, samples: int = 1) -> Array:
        """Labels ``ŷ ~ Categorical(softmax(z))``, integer ``(samples, n)``: ``∂ℓ/∂z = p − e_ŷ``
        has ``E[g gᵀ] = Σ_c p_c (p − e_c)(p − e_c)ᵀ = diag(p) − p pᵀ``."""
        samples = _check_samples(self.name, samples)
        z = jax.lax.stop_gradient(pred)
        if z.ndim != 2:
            raise ValueError(
                f"softmax_cross_entropy: logits must have shape (batch, classes), got {z.shape}"
            )
        return jax.random.categorical(key, z, axis=-1, shape=(samples, z.shape[0]))

    def sampled_grads(self, key: Array, pred: Array, target: ArrayLike, samples: int = 1) -> Array:
        """As :meth:`Loss.sampled_grads`, times ``√τ`` (``τ = Σⱼ tᵢⱼ`` of the true targets, 1
        for labels and probabilities) so that ``E[g gᵀ]`` is this loss's ``Hᵢ``."""
        z, t = self._targets(pred, target)
        g = super().sampled_grads(key, z, t, samples)
        return g * jnp.sqrt(jnp.sum(t, axis=-1, keepdims=True))


mse = MSE()
binary_cross_entropy = BinaryCrossEntropy()
softmax_cross_entropy = SoftmaxCrossEntropy()

_BY_NAME = {l.name: l for l in (mse, binary_cross_entropy, softmax_cross_entropy)}


def get(spec: str | Loss) -> Loss:
    """A loss by object or name (``"mse"``, ``"binary_cross_entropy"``, ``"softmax_cross_entropy"``)."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec]
    raise ValueError(f"loss: unknown loss {spec!r}; known: {sorted(_BY_NAME)}")


def accuracy(pred: ArrayLike, target: ArrayLike) -> Array:
    """Fraction of correct predictions.

    Logits of shape ``(n, k)``: argmax against integer labels (or the argmax of one-hot
    targets). Logits of shape ``(n,)``/``(n, 1)``: ``z > 0`` against targets ``> 0.5``.
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.ndim == 2 and pred.shape[1] > 1:
        labels = target if target.ndim == 1 else jnp.argmax(target, axis=-1)
        return jnp.mean(jnp.argmax(pred, axis=-1) == labels)
    return jnp.mean(
        (pred.reshape(pred.shape[0], -1) > 0) == (target.reshape(pred.shape[0], -1) > 0.5)
    )
