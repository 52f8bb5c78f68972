"""Activation functions as layers, each with its hand-written derivative.

Element-wise activations ``a = f(z)`` share one backward::

    δ = ∂L/∂z = ∂L/∂a ⊙ f'(z)

where ``f'`` is written out per activation (often in terms of the output ``a``, which
the cache keeps next to the input ``z``). ``Softmax`` is not element-wise; its backward
is the full Jacobian-vector product.

``Sigmoid``, ``Tanh`` and ``ReLU`` also have ``unit_stats(cache, **thresholds)``: the
fraction of saturated (sigmoid, tanh) or dead (ReLU) units of a batch, read from the cache
by :mod:`jbp.diagnostics` (any layer with a ``unit_stats`` method gets the same columns).
Thresholds come by keyword; each layer reads its own (``sigmoid_eps``, ``tanh_eps``) and
ignores the others.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jbp.core import Array, Layer, PyTree, check_array, check_floating


class Activation(Layer):
    """An element-wise activation: no parameters, ``cache = {"x": z, "y": a}``.

    Subclasses define ``fn(z)`` and ``derivative(z, a) = f'(z)``.
    """

    def fn(self, z: Array) -> Array:
        raise NotImplementedError

    def derivative(self, z: Array, a: Array) -> Array:
        raise NotImplementedError

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return (), tuple(in_shape)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        y = self.fn(x)
        return y, {"x": x, "y": y}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        return (), dy * self.derivative(cache["x"], cache["y"])


@dataclasses.dataclass(frozen=True)
class Identity(Activation):
    """``f(z) = z``, ``f'(z) = 1``."""

    def fn(self, z: Array) -> Array:
        return z

    def derivative(self, z: Array, a: Array) -> Array:
        return jnp.ones_like(z)

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        return (), dy

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``f''(z) = 0``."""
        return jnp.zeros_like(z)


@dataclasses.dataclass(frozen=True)
class Sigmoid(Activation):
    """``σ(z) = 1 / (1 + e^{-z})``, ``σ'(z) = σ(z)(1 − σ(z))``."""

    def fn(self, z: Array) -> Array:
        return jax.nn.sigmoid(z)

    def derivative(self, z: Array, a: Array) -> Array:
        return a * (1 - a)

    def unit_stats(
        self, cache: PyTree, *, sigmoid_eps: float = 0.05, **thresholds: float
    ) -> dict[str, Array]:
        """``{"saturated": fraction of the batch's activations with a < ε or a > 1 − ε}``.

        With the default ``ε = 0.05`` that is ``|z| > log(19) ≈ 2.944``, where
        ``σ'(z) < 0.048``, under a fifth of its peak ``1/4``.

        Args:
          cache: this layer's forward cache (``{"x": z, "y": a}``).
          sigmoid_eps: ``ε`` in ``(0, 0.5)``.
          **thresholds: other layers' thresholds (``tanh_eps``, ...), ignored.
        """
        a = cache["y"]
        return {"saturated": jnp.mean((a < sigmoid_eps) | (a > 1 - sigmoid_eps))}

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``σ''(z) = σ(1 − σ)(1 − 2σ)``."""
        return a * (1 - a) * (1 - 2 * a)


@dataclasses.dataclass(frozen=True)
class Tanh(Activation):
    """``tanh(z)``, ``tanh'(z) = 1 − tanh(z)²``."""

    def fn(self, z: Array) -> Array:
        return jnp.tanh(z)

    def derivative(self, z: Array, a: Array) -> Array:
        return 1 - a * a

    def unit_stats(
        self, cache: PyTree, *, tanh_eps: float = 0.05, **thresholds: float
    ) -> dict[str, Array]:
        """``{"saturated": fraction of the batch's activations with |a| > 1 − ε}``.

        With the default ``ε = 0.05`` that is ``|z| > atanh(0.95) ≈ 1.832``, where
        ``tanh'(z) < 0.098``, under a tenth of its peak ``1``.

        Args:
          cache: this layer's forward cache (``{"x": z, "y": a}``).
          tanh_eps: ``ε`` in ``(0, 0.5)``.
          **thresholds: other layers' thresholds (``sigmoid_eps``, ...), ignored.
        """
        return {"saturated": jnp.mean(jnp.abs(cache["y"]) > 1 - tanh_eps)}

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``tanh''(z) = −2 tanh(z)(1 − tanh(z)²)``."""
        return -2 * a * (1 - a * a)


@dataclasses.dataclass(frozen=True)
class ReLU(Activation):
    """``max(z, 0)``, ``f'(z) = 1 if z > 0 else 0`` (0 at z = 0, as ``jax.nn.relu``)."""

    def fn(self, z: Array) -> Array:
        return jax.nn.relu(z)

    def derivative(self, z: Array, a: Array) -> Array:
        return (z > 0).astype(z.dtype)

    def unit_stats(self, cache: PyTree, **thresholds: float) -> dict[str, Array]:
        """``{"dead": fraction of units whose input is ≤ 0 for every example of the batch}``.

        A unit is one entry of the last (feature) axis: a ``Dense`` unit, a ``Conv2D``
        channel, a recurrent feature; it is dead when ``z ≤ 0`` at every example *and*
        every other position (pixels, time steps), so it passes no gradient at all
        (``f'(z) = 0``; an exact ``0`` counts as dead, as in :meth:`derivative`).

        Args:
          cache: this layer's forward cache (``{"x": z, "y": a}``).
          **thresholds: other layers' thresholds (``sigmoid_eps``, ...), ignored.
        """
        z = cache["x"]
        units = z.shape[-1] if z.ndim > 1 else 1  # (batch,) alone: one unit
        return {"dead": jnp.mean(jnp.all(z.reshape(-1, units) <= 0, axis=0))}

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``f''(z) = 0`` (everywhere but at 0, where it is not defined)."""
        return jnp.zeros_like(z)


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Activation):
    """``z if z ≥ 0 else s·z``, ``f'(z) = 1 if z ≥ 0 else s`` (``s = negative_slope``)."""

    negative_slope: float = 0.01

    def __post_init__(self):
        if not math.isfinite(self.negative_slope):
            raise ValueError(
                f"LeakyReLU: negative_slope must be finite, got {self.negative_slope!r}"
            )

    def fn(self, z: Array) -> Array:
        return jnp.where(z >= 0, z, self.negative_slope * z)

    def derivative(self, z: Array, a: Array) -> Array:
        return jnp.where(z >= 0, 1.0, self.negative_slope).astype(z.dtype)

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``f''(z) = 0`` (everywhere but at 0)."""
        return jnp.zeros_like(z)


@dataclasses.dataclass(frozen=True)
class ELU(Activation):
    """``z if z > 0 else α(eᶻ − 1)``, ``f'(z) = 1 if z > 0 else a + α``."""

    alpha: float = 1.0

    def __post_init__(self):
        if (
            not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha))
            or self.alpha < 0
        ):
            raise ValueError(f"ELU: alpha must be a finite number ≥ 0, got {self.alpha!r}")

    def fn(self, z: Array) -> Array:
        return jax.nn.elu(z, self.alpha)

    def derivative(self, z: Array, a: Array) -> Array:
        return jnp.where(z > 0, 1.0, a + self.alpha).astype(z.dtype)

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``f''(z) = 0 if z > 0 else αeᶻ = a + α``."""
        return jnp.where(z > 0, 0.0, a + self.alpha).astype(z.dtype)


@dataclasses.dataclass(frozen=True)
class Softplus(Activation):
    """``log(1 + eᶻ)`` (stable form), ``f'(z) = σ(z)``."""

    def fn(self, z: Array) -> Array:
        return jnp.logaddexp(z, 0.0).astype(z.dtype)

    def derivative(self, z: Array, a: Array) -> Array:
        return jax.nn.sigmoid(z)

    def second_derivative(self, z: Array, a: Array) -> Array:
        """``f''(z) = σ(z)(1 − σ(z))``."""
        s = jax.nn.sigmoid(z)
        return s * (1 - s)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GELU(Activation):
    """Gaussian error linear unit.

    Exact (default): ``f(z) = z Φ(z)``, ``f'(z) = Φ(z) + z φ(z)``.
    ``approximate=True``: ``f(z) = ½ z (1 + tanh u)``, ``u = √(2/π)(z + 0.044715 z³)``,
    ``f'(z) = ½(1 + tanh u) + ½ z (1 − tanh² u) √(2/π)(1 + 3·0.044715 z²)``.
    """

    approximate: bool = False

    def fn(self, z: Array) -> Array:
        return jax.nn.gelu(z, approximate=self.approximate)

    def derivative(self, z: Array, a: Array) -> Array:
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
            return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du
        cdf = 0.5 * (1 + jax.lax.erf(z / math.sqrt(2.0)))
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
        return cdf + z * pdf

    def second_derivative(self, z: Array, a: Array) -> Array:
        """Exact: ``f''(z) = 2φ(z) + zφ'(z) = φ(z)(2 − z²)``. ``approximate=True``, with
        ``t = tanh u``, ``u' = √(2/π)(1 + 3·0.044715 z²)``, ``u'' = 6·0.044715 √(2/π) z``:
        ``f''(z) = (1 − t²)u' + ½ z (1 − t²)(u'' − 2 t u'²)``."""
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z * z)
            d2u = _SQRT_2_OVER_PI * 6 * 0.044715 * z
            return (1 - t * t) * du + 0.5 * z * (1 - t * t) * (d2u - 2 * t * du * du)
        return _INV_SQRT_2PI * jnp.exp(-0.5 * z * z) * (2 - z * z)


@dataclasses.dataclass(frozen=True)
class Softmax(Layer):
    """Softmax over the last axis: ``a_j = e^{z_j} / Σ_k e^{z_k}``.

    Its Jacobian is ``∂a_j/∂z_k = a_j (1[j=k] − a_k)``, so the backward is the full
    Jacobian-vector product ``δ = a ⊙ (dy − Σ_k dy_k a_k)``. (To train a classifier,
    prefer ``losses.softmax_cross_entropy`` on the logits: same result, stabler.)
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return (), tuple(in_shape)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        y = jax.nn.softmax(x, axis=-1)
        return y, {"x": x, "y": y}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        a = cache["y"]
        return (), a * (dy - jnp.sum(dy * a, axis=-1, keepdims=True))
