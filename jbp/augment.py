"""Batched, keyed, jit-able image augmentations.

Images are batches in NHWC layout ``(N, H, W, C)`` or, without channels,
``(N, H, W)``. Every augmentation is built by a factory and is a callable
``aug(key, x) -> x'``: it draws independent randomness for each example from
``key``, returns an array of the same dtype (and, except ``random_crop`` to a
different size, the same shape), and is pure and traceable, so it runs inside
``jax.jit`` and ``lax.scan`` (``fit(..., augment=aug)`` applies it to every
minibatch inside the compiled epoch). The augmentation objects are frozen
dataclasses: hashable and comparable, so they can be static arguments.

::

    aug = compose(random_flip(), random_rotation(10.0), random_translation(2))
    x_aug = aug(key, x)            # x: (N, H, W, C) or (N, H, W)

Conventions (also for the deterministic building blocks :func:`rotate`,
:func:`translate`, :func:`flip_horizontal`, :func:`flip_vertical`):

- row 0 is the top of the image, column 0 its left (as ``plt.imshow`` draws it);
- ``translate(x, dy, dx)``: content moves ``dy`` rows *down* and ``dx`` columns
  *right* (negative: up / left); vacated pixels are 0;
- ``rotate(x, degrees)``: positive angles rotate *counter-clockwise* as
  displayed, about the image centre ``((H-1)/2, (W-1)/2)``, with bilinear
  interpolation and zero fill; for a square image ``rotate(x, 90)`` equals
  ``np.rot90(x, k=1, axes=(1, 2))`` exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "rotate",
    "translate",
    "flip_horizontal",
    "flip_vertical",
    "random_flip",
    "random_rotation",
    "random_translation",
    "random_crop",
    "gaussian_noise",
    "compose",
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomCrop",
    "GaussianNoise",
    "Compose",
]


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------


def _check_images(x: ArrayLike, who: str, arg: str = "x") -> jax.Array:
    """Return ``x`` as an array of rank 3 (NHW) or 4 (NHWC), or raise."""
    x = jnp.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{who}: argument {arg!r} must be a batch of images of rank 4 (N, H, W, C) "
            f"or rank 3 (N, H, W), got shape {tuple(x.shape)} (rank {x.ndim})"
        )
    return x


def _concrete(v):
    """``v`` as a numpy array when its value is known at trace time, else None."""
    if isinstance(v, jax.core.Tracer):
        return None
    try:
        return np.asarray(v)
    except Exception:  # pragma: no cover - tracer-like objects
        return None


def _nonneg_real(value, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"{who}: {name} must be a real number, got {value!r}")
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{who}: {name} must be a real scalar, got {value!r}")
    value = float(arr)
    if not math.isfinite(value):
        raise ValueError(f"{who}: {name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value!r}")
    return value


def _int_pair(value, name: str, who: str, allow_none: bool = False) -> tuple[int, int] | None:
    """An int or a pair of ints (rows, columns), each >= 0."""
    if allow_none and value is None:
        return None
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise TypeError(
                f"{who}: {name} must be an int or a pair of ints, got {value!r}"
            ) from None
        if len(pair) != 2 or not all(
            isinstance(p, (numbers.Integral, np.integer)) and not isinstance(p, bool) for p in pair
        ):
            raise TypeError(f"{who}: {name} must be an int or a pair of ints, got {value!r}")
        pair = (int(pair[0]), int(pair[1]))
    if pair[0] < 0 or pair[1] < 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value!r}")
    return pair


def _per_example(v, n: int, name: str, who: str, dtype):
    """Broadcast a scalar or an (N,) array of per-example values to shape (N,)."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        v = jnp.broadcast_to(v, (n,))
    elif v.shape != (n,):
        raise ValueError(
            f"{who}: {name} must be a scalar or have shape ({n},) (one per example), "
            f"got shape {tuple(v.shape)}"
        )
    return v.astype(dtype)


def _work_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _cast_back(y, dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return y.astype(dtype)
    if dtype == jnp.bool_:
        return y > 0.5
    return jnp.round(y).astype(dtype)


def _uniform_int(key, n: int, low: int, high: int):
    """``n`` integers uniform on ``{low, ..., high}`` (inclusive).

    ``low + floor(U[0, 1) * (high - low + 1))``: cheaper to compile than
    ``jax.random.randint``; the bias from float32 resolution is of order
    ``(high - low + 1) * 2**-24``, negligible for pixel shifts.
    """
    span = high - low + 1
    u = jax.random.uniform(key, (n,), jnp.float32)
    k = jnp.minimum(jnp.floor(u * span).astype(jnp.int32), span - 1)
    return k + low


def _with_channels(fn, x):
    """Apply ``fn`` (which expects NHWC) to NHWC or NHW ``x``."""
    if x.ndim == 3:
        return fn(x[..., None])[..., 0]
    return fn(x)


# ----------------------------------------------------------------------------
# deterministic building blocks
# ----------------------------------------------------------------------------


def flip_horizontal(x: ArrayLike) -> jax.Array:
    """Mirror every image left-right (reverse the width axis)."""
    x = _check_images(x, "flip_horizontal")
    return jnp.flip(x, axis=2)


def flip_vertical(x: ArrayLike) -> jax.Array:
    """Mirror every image top-bottom (reverse the height axis)."""
    x = _check_images(x, "flip_vertical")
    return jnp.flip(x, axis=1)


def translate(x: ArrayLike, dy: ArrayLike, dx: ArrayLike) -> jax.Array:
    """Shift each image by integer ``dy`` rows down and ``dx`` columns right.

    ``dy`` and ``dx`` are scalars or per-example arrays of shape ``(N,)``
    (non-integer values are rounded to the nearest integer); they may be traced.
    ``out[n, r, c] = x[n, r - dy[n], c - dx[n]]`` where that pixel exists, else 0.
    """
    who = "translate"
    x = _check_images(x, who)
    n = x.shape[0]

    def as_int(v, name):
        v = jnp.asarray(v)
        if not jnp.issubdtype(v.dtype, jnp.integer):
            v = jnp.round(v)
        return _per_example(v, n, name, who, jnp.int32)

    dy, dx = as_int(dy, "dy"), as_int(dx, "dx")
    return _translate_core(x, dy, dx)


@jax.jit
def _translate_core(x, dy, dx):
    h, w = x.shape[1:3]

    def one(img, sy, sx):  # img: (H, W, C)
        rows = jnp.arange(h) - sy
        cols = jnp.arange(w) - sx
        valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        g = img[jnp.clip(rows, 0, h - 1)][:, jnp.clip(cols, 0, w - 1)]
        return jnp.where(valid[..., None], g, jnp.zeros((), img.dtype))

    return _with_channels(lambda z: jax.vmap(one)(z, dy, dx), x)


def _cos_sin_degrees(deg):
    """cos and sin of angles in degrees, exact at multiples of 90 degrees."""
    m = jnp.mod(deg, 360.0)
    rad = jnp.deg2rad(deg)
    c = jnp.where(
        m == 0,
        1.0,
        jnp.where(m == 90, 0.0, jnp.where(m == 180, -1.0, jnp.where(m == 270, 0.0, jnp.cos(rad)))),
    )
    s = jnp.where(
        m == 0,
        0.0,
        jnp.where(m == 90, 1.0, jnp.where(m == 180, 0.0, jnp.where(m == 270, -1.0, jnp.sin(rad)))),
    )
    return c.astype(deg.dtype), s.astype(deg.dtype)


def rotate(x: ArrayLike, degrees: ArrayLike) -> jax.Array:
    """Rotate each image counter-clockwise (as displayed) by ``degrees``.

    ``degrees`` is a scalar or a per-example array of shape ``(N,)`` (may be
    traced). Rotation is about the image centre ``(cy, cx) = ((H-1)/2, (W-1)/2)``.
    Each output pixel ``(r, c)``, with ``y = r - cy`` and ``x = c - cx``, samples
    the input at ``(cy + y cos t + x sin t, cx - y sin t + x cos t)`` by bilinear
    interpolation; samples outside the image read 0. Multiples of 90 degrees use
    exact cosines and sines, so ``rotate(x, 90)`` equals
    ``np.rot90(x, k=1, axes=(1, 2))`` exactly for square images, and
    ``rotate(x, 0)`` is exactly ``x``. Integer images are rounded back.
    """
    who = "rotate"
    x = _check_images(x, who)
    conc = _concrete(degrees)
    if conc is not None and conc.size and not np.all(np.isfinite(conc.astype(np.float64))):
        raise ValueError(f"{who}: degrees must be finite, got {degrees!r}")
    n = x.shape[0]
    deg = _per_example(degrees, n, "degrees", who, _work_dtype(x))
    return _rotate_core(x, deg)


@jax.jit
def _rotate_core(x, deg):
    h, w = x.shape[1:3]
    wd = _work_dtype(x)
    cos_t, sin_t = _cos_sin_degrees(deg)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = (jnp.arange(h, dtype=wd) - cy)[:, None]  # (H, 1)
    xx = (jnp.arange(w, dtype=wd) - cx)[None, :]  # (1, W)

    def one(img, c, s):  # img: (H, W, C)
        img = img.astype(wd)
        ys = cy + yy * c + xx * s  # (H, W) source rows
        xs = cx - yy * s + xx * c  # (H, W) source cols
        y0 = jnp.floor(ys)
        x0 = jnp.floor(xs)
        wy = (ys - y0)[..., None]
        wx = (xs - x0)[..., None]
        y0 = y0.astype(jnp.int32)
        x0 = x0.astype(jnp.int32)

        def at(yi, xi):
            ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            v = img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
            return jnp.where(ok[..., None], v, jnp.zeros((), wd))

        return (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)) + wy * (
            (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
        )

    y = _with_channels(lambda z: jax.vmap(one)(z, cos_t, sin_t), x)
    return _cast_back(y, x.dtype)


# ----------------------------------------------------------------------------
# random augmentations
# ----------------------------------------------------------------------------


class _Augmentation:
    """Base: ``__call__`` validates eagerly (at trace time), then runs ``_impl``
    under a ``jit`` keyed on the (hashable) augmentation, so that eager calls
    compile once per shape; inside an outer ``jit``/``scan`` it is inlined."""

    # set by every subclass: its name in messages and its (jit-able) implementation
    _name: str
    _impl: Callable[[jax.Array, jax.Array], jax.Array]

    def _validate(self, x):
        pass

    def __call__(self, key: jax.Array, x: ArrayLike) -> jax.Array:
        x = _check_images(x, self._name)
        self._validate(x)
        try:
            hash(self)
        except TypeError:  # e.g. compose() of an unhashable callable
            return self._impl(key, x)
        return _apply(self, key, x)


@functools.partial(jax.jit, static_argnums=0)
def _apply(aug, key, x):
    return aug._impl(key, x)


@dataclasses.dataclass(frozen=True)
class RandomFlip(_Augmentation):
    """Flip each example left-right (if ``horizontal``) and, independently,
    top-bottom (if ``vertical``), each with probability 0.5."""

    horizontal: bool = True
    vertical: bool = False
    _name = "random_flip"

    def __post_init__(self):
        for name in ("horizontal", "vertical"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"random_flip: {name} must be a bool, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))

    def _impl(self, key, x):
        n = x.shape[0]
        kh, kv = jax.random.split(key)
        bshape = (n,) + (1,) * (x.ndim - 1)
        if self.horizontal:
            f = jax.random.bernoulli(kh, 0.5, (n,)).reshape(bshape)
            x = jnp.where(f, jnp.flip(x, axis=2), x)
        if self.vertical:
            f = jax.random.bernoulli(kv, 0.5, (n,)).reshape(bshape)
            x = jnp.where(f, jnp.flip(x, axis=1), x)
        return x


@dataclasses.dataclass(frozen=True)
class RandomRotation(_Augmentation):
    """Rotate each example by an angle drawn uniformly from
    ``[-max_degrees, max_degrees]`` (see :func:`rotate`: bilinear, about the
    centre, zero fill, positive = counter-clockwise)."""

    max_degrees: float
    _name = "random_rotation"

    def __post_init__(self):
        object.__setattr__(
            self, "max_degrees", _nonneg_real(self.max_degrees, "max_degrees", self._name)
        )

    def _impl(self, key, x):
        if self.max_degrees == 0:
            return x
        deg = jax.random.uniform(
            key, (x.shape[0],), _work_dtype(x), -self.max_degrees, self.max_degrees
        )
        return _rotate_core(x, deg)


@dataclasses.dataclass(frozen=True)
class RandomTranslation(_Augmentation):
    """Shift each example by integers ``dy`` in ``[-max_dy, max_dy]`` and ``dx``
    in ``[-max_dx, max_dx]``, drawn uniformly and independently (see
    :func:`translate`; zero fill). ``max_pixels`` is an int or ``(max_dy, max_dx)``."""

    max_pixels: tuple[int, int]
    _name = "random_translation"

    def __post_init__(self):
        object.__setattr__(self, "max_pixels", _int_pair(self.max_pixels, "max_pixels", self._name))

    def _impl(self, key, x):
        my, mx = self.max_pixels
        if my == 0 and mx == 0:
            return x
        n = x.shape[0]
        ky, kx = jax.random.split(key)
        dy = _uniform_int(ky, n, -my, my)
        dx = _uniform_int(kx, n, -mx, mx)
        return _translate_core(x, dy, dx)


@dataclasses.dataclass(frozen=True)
class RandomCrop(_Augmentation):
    """Zero-pad each image by ``padding`` pixels on every side (an int, or
    ``(pad_rows, pad_cols)``), then cut out a window of ``size = (h, w)`` at a
    position drawn uniformly per example. With ``size`` equal to the image size
    (or ``None``, meaning "the input's size") this is the classic pad-and-crop,
    a random translation by up to ``padding`` pixels."""

    # the field types after __post_init__ normalizes them (the constructor also takes an int)
    size: tuple[int, int] | None = None
    padding: tuple[int, int] = 0  # type: ignore[assignment]  # normalized in __post_init__
    _name = "random_crop"

    def __post_init__(self):
        size = _int_pair(self.size, "size", self._name, allow_none=True)
        if size is not None and (size[0] == 0 or size[1] == 0):
            raise ValueError(f"{self._name}: size must be positive, got {self.size!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "padding", _int_pair(self.padding, "padding", self._name))

    def _sizes(self, x):
        h, w = x.shape[1:3]
        py, px = self.padding
        ch, cw = self.size if self.size is not None else (h, w)
        return (ch, cw), (h + 2 * py, w + 2 * px)

    def _validate(self, x):
        (ch, cw), (hp, wp) = self._sizes(x)
        if ch > hp or cw > wp:
            raise ValueError(
                f"{self._name}: crop size {(ch, cw)} is larger than the padded image "
                f"{(hp, wp)} (image {tuple(x.shape[1:3])}, padding {self.padding})"
            )

    def _impl(self, key, x):
        n = x.shape[0]
        py, px = self.padding
        (ch, cw), (hp, wp) = self._sizes(x)
        pad = [(0, 0), (py, py), (px, px)] + [(0, 0)] * (x.ndim - 3)
        xp = jnp.pad(x, pad)
        ky, kx = jax.random.split(key)
        oy = _uniform_int(ky, n, 0, hp - ch)
        ox = _uniform_int(kx, n, 0, wp - cw)
        tail = x.shape[3:]

        def one(img, a, b):
            zero = jnp.zeros((), a.dtype)
            return jax.lax.dynamic_slice(img, (a, b) + (zero,) * len(tail), (ch, cw) + tail)

        return jax.vmap(one)(xp, oy, ox)


@dataclasses.dataclass(frozen=True)
class GaussianNoise(_Augmentation):
    """Add independent ``N(0, stddev^2)`` noise to every pixel (float images)."""

    stddev: float
    _name = "gaussian_noise"

    def __post_init__(self):
        object.__setattr__(self, "stddev", _nonneg_real(self.stddev, "stddev", self._name))

    def _validate(self, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self._name}: x must have a floating dtype, got {x.dtype}")

    def _impl(self, key, x):
        if self.stddev == 0:
            return x
        noise = jax.random.normal(key, x.shape, x.dtype)
        return x + jnp.asarray(self.stddev, x.dtype) * noise


@dataclasses.dataclass(frozen=True)
class Compose(_Augmentation):
    """Apply ``augs`` in order, each with its own key split from the given one."""

    augs: tuple[Callable, ...] = ()
    _name = "compose"

    def __post_init__(self):
        augs = tuple(self.augs)
        for i, a in enumerate(augs):
            if not callable(a):
                raise TypeError(
                    f"compose: argument {i} must be an augmentation aug(key, x), got {a!r}"
                )
        object.__setattr__(self, "augs", augs)

    def _impl(self, key, x):
        if not self.augs:
            return x
        keys = jax.random.split(key, len(self.augs))
        for k, a in zip(keys, self.augs):
            x = a(k, x)
        return x


def random_flip(horizontal: bool = True, vertical: bool = False) -> RandomFlip:
    """Each example flipped left-right (and/or top-bottom) with probability 0.5."""
    return RandomFlip(horizontal, vertical)


def random_rotation(max_degrees: float) -> RandomRotation:
    """Each example rotated by ``U[-max_degrees, max_degrees]`` degrees (bilinear)."""
    return RandomRotation(max_degrees)


def random_translation(max_pixels: int | tuple[int, int]) -> RandomTranslation:
    """Each example shifted by integers uniform in ``[-max, max]`` per axis (zero fill)."""
    return RandomTranslation(max_pixels)  # type: ignore[arg-type]  # normalized in __post_init__


def random_crop(
    size: tuple[int, int] | None = None, padding: int | tuple[int, int] = 0
) -> RandomCrop:
    """Zero-pad by ``padding`` then crop ``size = (h, w)`` at a random position."""
    return RandomCrop(size, padding)  # type: ignore[arg-type]  # normalized in __post_init__


def gaussian_noise(stddev: float) -> GaussianNoise:
    """Add ``N(0, stddev^2)`` noise to every pixel."""
    return GaussianNoise(stddev)


def compose(*augs: Callable[[jax.Array, jax.Array], jax.Array]) -> Compose:
    """Chain augmentations: ``compose(a, b)(key, x) = b(k2, a(k1, x))``."""
    return Compose(augs)
