"""Weight initializers.

An *initializer* is a callable ``init(key, shape, dtype=jnp.float32) -> array``.
Every public name here is a *factory* that returns one, so all of them read the
same way at the call site::

    Dense(64, w_init=he_normal(), b_init=zeros())
    Dense(64, w_init=normal(0.1))
    Dense(64, w_init="xavier_uniform")        # by name, through ``get``

The initializers are small frozen dataclasses: two ``he_normal()`` compare equal
and hash equal, so layers holding them stay hashable (static under ``jit``), and
they print readably (``HeNormal()``, ``Normal(stddev=0.1)``).

Variance-scaling initializers (fans from :func:`compute_fans`), all plain
(untruncated) normal or uniform, zero mean:

==================  =================================  ==============================
name                variance                           sample
==================  =================================  ==============================
glorot / xavier     Var = 2 / (fan_in + fan_out)       normal: std = sqrt(Var)
he / kaiming        Var = 2 / fan_in                   uniform: U[-a, a], a = sqrt(3 Var)
lecun               Var = 1 / fan_in
==================  =================================  ==============================
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

__all__ = [
    "Initializer",
    "compute_fans",
    "get",
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "glorot_normal",
    "glorot_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _check_shape(shape, who: str) -> tuple:
    """Normalise ``shape`` to a tuple of positive Python ints, or raise."""
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"{who}: shape must be a tuple of ints, got {shape!r}") from None
    if any(d <= 0 for d in dims):
        raise ValueError(f"{who}: every dimension of shape must be positive, got shape {dims}")
    return dims


def _check_float_dtype(dtype, who: str):
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{who}: a random initializer needs a floating dtype, got {dt}")
    return dt


def _check_nonneg(value, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{who}: {name} must be finite and >= 0, got {value!r}")
    return value


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` for a weight of the given shape.

    - ``()``: ``fan_in = fan_out = 1``.
    - ``(n,)``: ``fan_in = fan_out = n``.
    - ``(in, out)`` (Dense, ``z = a W + b``): ``fan_in = in``, ``fan_out = out``.
    - rank >= 3, convolution kernels in HWIO layout ``(kh, kw, in, out)`` (any
      number of leading spatial axes): with ``receptive = prod(shape[:-2])``,
      ``fan_in = in * receptive`` and ``fan_out = out * receptive``.
    """
    shape = _check_shape(shape, "compute_fans")
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


# ----------------------------------------------------------------------------
# the initializer classes
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Initializer:
    """Base class: validates ``shape`` then calls ``_sample(key, shape, dtype)``."""

    def __call__(
        self, key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32
    ) -> jax.Array:
        who = repr(self)
        shape = _check_shape(shape, who)
        return self._sample(key, shape, jnp.dtype(dtype))

    def _sample(self, key, shape, dtype):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Zeros(Initializer):
    """All zeros (the usual bias initializer)."""

    def _sample(self, key, shape, dtype):
        return jnp.zeros(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Ones(Initializer):
    """All ones (the usual normalization-scale initializer)."""

    def _sample(self, key, shape, dtype):
        return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant(Initializer):
    """Every entry equal to ``value`` (a scalar)."""

    value: Any = 0.0

    def _sample(self, key, shape, dtype):
        return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class Normal(Initializer):
    """``W ~ N(0, stddev^2)`` elementwise."""

    stddev: float = 1e-2

    def _sample(self, key, shape, dtype):
        dtype = _check_float_dtype(dtype, repr(self))
        return jax.random.normal(key, shape, dtype) * jnp.asarray(self.stddev, dtype)


@dataclasses.dataclass(frozen=True)
class Uniform(Initializer):
    """``W ~ U[-scale, scale]`` elementwise (variance ``scale^2 / 3``)."""

    scale: float = 1e-2

    def _sample(self, key, shape, dtype):
        dtype = _check_float_dtype(dtype, repr(self))
        return jax.random.uniform(key, shape, dtype, -self.scale, self.scale)


@dataclasses.dataclass(frozen=True)
class _VarianceScaling(Initializer):
    """Zero-mean samples with ``Var = gain / fan`` (class attributes below)."""

    # class attributes, not dataclass fields
    gain = 1.0
    mode = "fan_in"  # "fan_in", "fan_out" or "fan_avg"
    distribution = "normal"  # "normal" or "uniform"

    def variance(self, shape) -> float:
        """The target variance of the entries for a weight of ``shape``."""
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        return self.gain / fan

    def _sample(self, key, shape, dtype):
        dtype = _check_float_dtype(dtype, repr(self))
        var = self.variance(shape)
        if self.distribution == "normal":
            return jax.random.normal(key, shape, dtype) * jnp.asarray(math.sqrt(var), dtype)
        limit = math.sqrt(3.0 * var)
        return jax.random.uniform(key, shape, dtype, -limit, limit)


@dataclasses.dataclass(frozen=True)
class GlorotNormal(_VarianceScaling):
    """Glorot/Xavier normal: ``W ~ N(0, 2 / (fan_in + fan_out))`` (untruncated)."""

    mode = "fan_avg"
    distribution = "normal"


@dataclasses.dataclass(frozen=True)
class GlorotUniform(_VarianceScaling):
    """Glorot/Xavier uniform: ``W ~ U[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``
    (so ``Var = 2 / (fan_in + fan_out)``)."""

    mode = "fan_avg"
    distribution = "uniform"


@dataclasses.dataclass(frozen=True)
class HeNormal(_VarianceScaling):
    """He/Kaiming normal: ``W ~ N(0, 2 / fan_in)`` (untruncated); for ReLU nets."""

    gain = 2.0
    mode = "fan_in"
    distribution = "normal"


@dataclasses.dataclass(frozen=True)
class HeUniform(_VarianceScaling):
    """He/Kaiming uniform: ``W ~ U[-a, a]``, ``a = sqrt(6 / fan_in)``
    (so ``Var = 2 / fan_in``)."""

    gain = 2.0
    mode = "fan_in"
    distribution = "uniform"


@dataclasses.dataclass(frozen=True)
class LecunNormal(_VarianceScaling):
    """LeCun normal: ``W ~ N(0, 1 / fan_in)`` (untruncated)."""

    mode = "fan_in"
    distribution = "normal"


@dataclasses.dataclass(frozen=True)
class LecunUniform(_VarianceScaling):
    """LeCun uniform: ``W ~ U[-a, a]``, ``a = sqrt(3 / fan_in)``
    (so ``Var = 1 / fan_in``)."""

    mode = "fan_in"
    distribution = "uniform"


@dataclasses.dataclass(frozen=True)
class Orthogonal(Initializer):
    """``scale`` times a random (semi-)orthogonal matrix.

    The weight is viewed as a matrix of ``prod(shape[:-1])`` rows and
    ``shape[-1]`` columns (for a conv kernel in HWIO layout: all leading axes
    flattened into rows, output channels as columns). A standard normal matrix
    is QR-factorised and ``Q`` is multiplied by ``sign(diag(R))`` (so the result
    is Haar-distributed). Tall or square: the columns are orthonormal,
    ``QᵀQ = I``; wide: the rows are orthonormal, ``QQᵀ = I``. Needs rank >= 2.
    """

    scale: float = 1.0

    def _sample(self, key, shape, dtype):
        who = repr(self)
        dtype = _check_float_dtype(dtype, who)
        if len(shape) < 2:
            raise ValueError(f"{who}: needs a shape of rank >= 2, got shape {shape}")
        n_rows, n_cols = math.prod(shape[:-1]), shape[-1]
        work = jnp.promote_types(dtype, jnp.float32)
        big, small = max(n_rows, n_cols), min(n_rows, n_cols)
        a = jax.random.normal(key, (big, small), work)
        q, r = jnp.linalg.qr(a)  # q: (big, small)
        d = jnp.diagonal(r)
        q = q * jnp.where(d < 0, -1.0, 1.0).astype(work)
        if n_rows < n_cols:
            q = q.T
        return (self.scale * q).reshape(shape).astype(dtype)


# ----------------------------------------------------------------------------
# the factories (the public API)
# ----------------------------------------------------------------------------


def zeros() -> Initializer:
    """Initializer filling with 0."""
    return Zeros()


def ones() -> Initializer:
    """Initializer filling with 1."""
    return Ones()


def constant(value: ArrayLike) -> Initializer:
    """Initializer filling with the scalar ``value``."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Number):
        pass
    else:
        arr = np.asarray(value)
        if arr.ndim != 0:
            raise TypeError(f"constant: value must be a scalar, got an array of shape {arr.shape}")
        value = arr.item()
    return Constant(value)


def normal(stddev: float = 1e-2) -> Initializer:
    """Initializer drawing ``N(0, stddev^2)`` (untruncated)."""
    return Normal(_check_nonneg(stddev, "stddev", "normal"))


def uniform(scale: float = 1e-2) -> Initializer:
    """Initializer drawing ``U[-scale, scale]``."""
    return Uniform(_check_nonneg(scale, "scale", "uniform"))


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal: ``N(0, 2 / (fan_in + fan_out))``."""
    return GlorotNormal()


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: ``U[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``."""
    return GlorotUniform()


def he_normal() -> Initializer:
    """He/Kaiming normal: ``N(0, 2 / fan_in)``."""
    return HeNormal()


def he_uniform() -> Initializer:
    """He/Kaiming uniform: ``U[-a, a]``, ``a = sqrt(6 / fan_in)``."""
    return HeUniform()


def lecun_normal() -> Initializer:
    """LeCun normal: ``N(0, 1 / fan_in)``."""
    return LecunNormal()


def lecun_uniform() -> Initializer:
    """LeCun uniform: ``U[-a, a]``, ``a = sqrt(3 / fan_in)``."""
    return LecunUniform()


def orthogonal(scale: float = 1.0) -> Initializer:
    """``scale`` times a random (semi-)orthogonal matrix; see :class:`Orthogonal`."""
    return Orthogonal(_check_nonneg(scale, "scale", "orthogonal"))


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "zeros": zeros,
    "ones": ones,
    "normal": normal,
    "uniform": uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": kaiming_normal,
    "kaiming_uniform": kaiming_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "orthogonal": orthogonal,
}


def get(spec: str | Callable) -> Callable:
    """Resolve ``spec`` to an initializer.

    - an initializer (any callable ``init(key, shape, dtype)``): returned as is;
    - one of this module's factories passed without calling it (``he_normal``):
      called with its defaults;
    - a name (case-insensitive): ``"zeros"``, ``"ones"``, ``"normal"``,
      ``"uniform"``, ``"glorot_normal"``, ``"glorot_uniform"``,
      ``"xavier_normal"``, ``"xavier_uniform"``, ``"he_normal"``,
      ``"he_uniform"``, ``"kaiming_normal"``, ``"kaiming_uniform"``,
      ``"lecun_normal"``, ``"lecun_uniform"``, ``"orthogonal"`` (with default
      arguments). An unknown name raises ``ValueError`` listing the known ones.
    """
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "_")
        if key not in _BY_NAME:
            raise ValueError(
                f"unknown initializer {spec!r}; known names: {', '.join(sorted(_BY_NAME))}"
            )
        return _BY_NAME[key]()
    if spec is constant:
        raise TypeError("get: constant needs a value; pass constant(value)")
    if any(spec is f for f in _BY_NAME.values()):
        return spec()
    if callable(spec):
        return spec
    raise TypeError(f"get: expected an initializer or a name, got {type(spec).__name__} {spec!r}")
