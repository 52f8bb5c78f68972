"""Pooling layers on NHWC input: max, average, global average."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from jbp.core import Array, Layer, PyTree, check_array, check_floating, layer_error
from jbp.layers import _window

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


class _Pool2D(Layer):
    """Shared geometry: ``window``, ``strides`` (default: the window), ``padding``."""

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "window", _window.pair(self.window, "window", name))
        strides = self.window if self.strides is None else self.strides
        object.__setattr__(self, "strides", _window.pair(strides, "strides", name))
        object.__setattr__(self, "padding", _window.padding_spec(self.padding, name))
        if not isinstance(self.padding, str) and any(
            max(lo, hi) >= k for (lo, hi), k in zip(self.padding, self.window)
        ):
            raise ValueError(
                f"{name}: explicit padding {self.padding} must be smaller than the "
                f"window {self.window} (a window of padding only has no input)"
            )

    def _geometry(self, size):
        pads = _window.explicit_pads(self.padding, size, self.window, self.strides)
        _window.check_fits(self, "window", size, pads, self.window)
        return pads, _window.out_size(size, pads, self.window, self.strides)

    def _check_input(self, x):
        x = check_array("x", x)
        check_floating("x", x)
        if x.ndim != 4:
            raise layer_error(
                self,
                f"expected NHWC input of rank 4 (batch, height, width, channels), "
                f"got shape {x.shape} (rank {x.ndim})",
            )
        return x

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 3 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (height, width, channels) without the "
                f"batch axis, got {in_shape}",
            )
        _, (ho, wo) = self._geometry(in_shape[:2])
        return (), (ho, wo, in_shape[2])

    def _strided_patch(self, xp, i, j, out):
        """``xp[:, i + p·sh, j + q·sw, :]`` for every output ``(p, q)``: offset ``(i, j)``."""
        return _window.strided_window(xp, (i, j), self.strides, out)

    def _unpatch(self, v, i, j, padded):
        """Transpose of :meth:`_strided_patch`: put ``v`` back at offset ``(i, j)``, zeros elsewhere."""
        (sh, sw) = self.strides
        ho, wo = v.shape[1:3]
        zero = jnp.zeros((), v.dtype)
        return lax.pad(
            v,
            zero,
            (
                (0, 0, 0),
                (i, padded[0] - i - (ho - 1) * sh - 1, sh - 1),
                (j, padded[1] - j - (wo - 1) * sw - 1, sw - 1),
                (0, 0, 0),
            ),
        )


@dataclasses.dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """Max pooling over ``window`` (``kh×kw``) with ``strides`` (default: the window).

    Forward, with ``x̃`` the input padded with ``−∞``::

        y[n, p, q, c] = max_{i<kh, j<kw} x̃[n, p·sh + i, q·sw + j, c]

    computed as a running maximum over the ``kh·kw`` window offsets in row-major order
    (``i`` then ``j``), which records alongside ``y`` the offset ``k* = argmax`` that
    attained it; a later offset replaces it only when strictly greater, so ties go to the
    FIRST maximal element (smallest ``i``, then smallest ``j``), deterministically.

    Backward: each ``δ[n, p, q, c]`` is routed to that one position::

        ∂L/∂x[n, p·sh + i − top, q·sw + j − left, c] += δ[n, p, q, c] · 1[(i, j) = k*[n, p, q, c]]

    Overlapping windows (``strides < window``) accumulate. The argmax is kept in the cache
    rather than re-derived in the backward by testing ``x == y``: inside one ``jit`` XLA
    may recompute a fused producer of ``x`` with different rounding, and an exact-equality
    test would then silently drop gradient.

    ``padding``: ``"VALID"`` (default), ``"SAME"``, or explicit (smaller than the
    window). ``cache = {"x": x, "argmax": k*}`` (int32, shaped like ``y``).
    Floating-point input only.
    """

    window: Any
    strides: Any = None
    padding: Any = "VALID"

    def _tiled(self, pads):
        """Non-overlapping windows without padding: a reshape replaces the strided slices."""
        return self.strides == self.window and pads == ((0, 0), (0, 0))

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = self._check_input(x)
        pads, (ho, wo) = self._geometry(x.shape[1:3])
        (kh, kw), n, c = self.window, x.shape[0], x.shape[3]
        if self._tiled(pads):
            # (n, ho·kh, wo·kw, c) -> (n, ho, kh, wo, kw, c); rows/columns beyond are unused
            xr = x[:, : ho * kh, : wo * kw].reshape(n, ho, kh, wo, kw, c)
            patch = lambda i, j: xr[:, :, i, :, j, :]  # noqa: E731
        else:
            xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=-jnp.inf)
            patch = lambda i, j: self._strided_patch(xp, i, j, (ho, wo))  # noqa: E731
        y, idx = patch(0, 0), jnp.zeros((n, ho, wo, c), jnp.int32)
        for k in range(1, kh * kw):  # row-major window order
            v = patch(k // kw, k % kw)
            better = v > y  # strict: the first max wins
            y, idx = jnp.where(better, v, y), jnp.where(better, k, idx)
        return y, {"x": x, "argmax": idx}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x, idx = cache["x"], cache["argmax"]
        pads, (ho, wo) = self._geometry(x.shape[1:3])
        (kh, kw), (n, h, w, c) = self.window, x.shape
        if self._tiled(pads):
            # one-hot over the window offsets, all at once: (n, ho, kh, wo, kw, c)
            offsets = jnp.arange(kh * kw, dtype=jnp.int32).reshape(1, 1, kh, 1, kw, 1)
            d = jnp.where(idx[:, :, None, :, None, :] == offsets, dy[:, :, None, :, None, :], 0)
            dx = d.reshape(n, ho * kh, wo * kw, c)
            return (), jnp.pad(dx, ((0, 0), (0, h - ho * kh), (0, w - wo * kw), (0, 0))).astype(
                x.dtype
            )
        padded = (h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1])
        dxp = jnp.zeros((n,) + padded + (c,), dy.dtype)
        for k in range(kh * kw):
            dxp = dxp + self._unpatch(jnp.where(idx == k, dy, 0), k // kw, k % kw, padded)
        (top, _), (left, _) = pads
        return (), dxp[:, top : top + h, left : left + w, :].astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """Average pooling over ``window`` with ``strides`` (default: the window).

    Forward, averaging only the input elements inside the window (padding is not
    counted: ``count_include_pad=False``, as in flax and Keras)::

        y[n, p, q, c] = (1 / N[p, q]) Σ_{(i, j) valid} x[n, p·sh + i − top, q·sw + j − left, c]

    where ``N[p, q]`` is the number of real (non-padding) pixels in window ``(p, q)``
    (``kh·kw`` everywhere with ``"VALID"``). Backward spreads each delta evenly over the
    pixels it averaged; overlapping windows accumulate::

        ∂L/∂x[h, w] = Σ_{windows (p, q) ∋ (h, w)} δ[p, q] / N[p, q]

    computed as one ``reduce_window`` sum of ``δ / N`` dilated by the strides (the
    transpose of a strided window sum). ``cache = {"x": x}``.
    """

    window: Any
    strides: Any = None
    padding: Any = "VALID"

    def _counts(self, size, pads, out):
        """``N[p, q]`` as a static numpy array of shape ``(Ho, Wo)``."""
        per_axis = []
        for n, (lo, _), k, s, o in zip(size, pads, self.window, self.strides, out):
            start = np.arange(o) * s - lo
            per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
        return np.outer(per_axis[0], per_axis[1])

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = self._check_input(x)
        pads, out = self._geometry(x.shape[1:3])
        s = lax.reduce_window(
            x,
            0.0,
            lax.add,
            (1,) + self.window + (1,),
            (1,) + self.strides + (1,),
            ((0, 0),) + tuple(pads) + ((0, 0),),
        )
        counts = self._counts(x.shape[1:3], pads, out)
        return s / jnp.asarray(counts[None, :, :, None], x.dtype), {"x": x}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x = cache["x"]
        size = x.shape[1:3]
        pads, out = self._geometry(size)
        g = dy / jnp.asarray(self._counts(size, pads, out)[None, :, :, None], dy.dtype)
        (kh, kw), (sh, sw) = self.window, self.strides
        # g dilated by the strides and padded by k − 1: a stride-1 window sum of it gives,
        # at every padded-input pixel, the sum of δ/N over the windows that contain it.
        gd = lax.pad(
            g,
            jnp.zeros((), g.dtype),
            ((0, 0, 0), (kh - 1, kh - 1, sh - 1), (kw - 1, kw - 1, sw - 1), (0, 0, 0)),
        )
        dxp = lax.reduce_window(gd, 0.0, lax.add, (1, kh, kw, 1), (1, 1, 1, 1), "VALID")
        # dxp covers the padded input up to the last window; crop the padding, and pad
        # with zeros the bottom/right rows no window reached.
        (top, _), (left, _) = pads
        dx = dxp[:, top : top + size[0], left : left + size[1], :]
        dx = jnp.pad(dx, ((0, 0), (0, size[0] - dx.shape[1]), (0, size[1] - dx.shape[2]), (0, 0)))
        return (), dx.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: ``(batch, H, W, C) -> (batch, C)``.

    Forward ``y[n, c] = (1 / HW) Σ_{h, w} x[n, h, w, c]``; backward
    ``∂L/∂x[n, h, w, c] = δ[n, c] / (HW)``. ``cache = {"x": x}``.
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 3 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (height, width, channels) without the "
                f"batch axis, got {in_shape}",
            )
        return (), (in_shape[2],)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        if x.ndim != 4:
            raise layer_error(
                self,
                f"expected NHWC input of rank 4 (batch, height, width, channels), "
                f"got shape {x.shape} (rank {x.ndim})",
            )
        return jnp.mean(x, axis=(1, 2)), {"x": x}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x = cache["x"]
        n, h, w, c = x.shape
        dx = jnp.broadcast_to((dy / (h * w))[:, None, None, :], x.shape)
        return (), dx.astype(x.dtype)
