"""Padding masks for variable-length sequences: the ``Masked`` pair, ``Masking``, ``MeanPool1D``.

**The mechanism.** A padded batch of sequences travels between layers as
``Masked(values, mask)``: ``values`` of shape ``(batch, T, ...)`` and a boolean ``mask``
of shape ``(batch, T)``, ``True`` at real steps and ``False`` at padding. ``Masked`` is a
``NamedTuple``, hence a pytree: it passes through ``jit``, ``vmap`` and ``Sequential``
unchanged. The model's own input stays a plain array (so ``value_and_grad``,
``check_gradients`` and ``fit`` need no change); a layer *creates* the mask from it:

- ``Embedding(vocab, features, pad_id=0)``: integer ids, ``mask = ids != pad_id``;
- ``Masking(mask_value=0.0)``: float sequences, a step is padding when all of its
  features equal ``mask_value`` (Keras' convention).

Mask-aware layers (``SimpleRNN``, ``LSTM``, ``MeanPool1D``) accept either a plain array
(every step real) or a ``Masked``; ``SimpleRNN``/``LSTM`` with ``return_sequences=True``
hand the mask on. Layers that know nothing of masks (``Dense``, activations) reject a
``Masked`` with a ``TypeError``: reduce over time first (``MeanPool1D`` or an RNN with
``return_sequences=False``). Called directly, a mask-aware layer also takes
``Masked(x, mask)`` built by hand.

**Gradients.** The mask is data, not a parameter: it receives no gradient. The ``dy``
handed to the backward of a layer whose output is ``Masked`` is a plain array shaped like
``values`` (a ``Masked`` is accepted too; its mask part is ignored), and a layer whose
input was ``Masked`` returns ``dx`` shaped like the input's ``values``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbp.core import Array, Layer, PyTree, check_array, check_floating, layer_error

__all__ = ["Masked", "Masking", "MeanPool1D", "split_masked", "cotangent_values"]


class Masked(NamedTuple):
    """A padded sequence batch: ``values`` ``(batch, T, ...)`` and ``mask`` ``(batch, T)``
    (``True`` = a real step, ``False`` = padding)."""

    values: jax.Array
    mask: jax.Array


def split_masked(
    layer: Layer, x: Any, *, rank: int | None = None, floating: bool = True
) -> tuple[Array, Array | None]:
    """``(values, mask or None)`` from an array or a ``Masked``, checked for ``layer``.

    ``rank``: the required rank of ``values`` (e.g. 3 for ``(batch, T, features)``). The
    mask must have shape ``values.shape[:2]``; it is returned as a boolean array. Errors
    name the layer and the shapes.
    """
    mask = None
    if isinstance(x, Masked):
        x, mask = x.values, x.mask
    x = check_array("x", x)
    if floating:
        check_floating("x", x)
    if rank is not None and x.ndim != rank:
        want = "(batch, time, features)" if rank == 3 else f"rank {rank}"
        raise layer_error(
            layer, f"expected input of shape {want}, got shape {x.shape} (rank {x.ndim})"
        )
    if x.ndim < 2:
        raise layer_error(layer, f"expected input of shape (batch, time, ...), got shape {x.shape}")
    if mask is not None:
        mask = check_array("mask", mask)
        if mask.shape != x.shape[:2]:
            raise layer_error(
                layer,
                f"mask of shape {mask.shape} does not match the input of shape "
                f"{x.shape}: expected (batch, time) = {x.shape[:2]}",
            )
        if mask.dtype != jnp.bool_:
            mask = mask != 0
    return x, mask


def cotangent_values(dy: Array | Masked) -> Array:
    """The ``values`` part of a cotangent that may come as a ``Masked``."""
    return dy.values if isinstance(dy, Masked) else dy


def _broadcast_mask(mask, ndim, dtype):
    """``(batch, T)`` -> ``(batch, T, 1, ...)`` in ``dtype``."""
    return mask.reshape(mask.shape + (1,) * (ndim - 2)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Masking(Layer):
    """Derive a padding mask from a float sequence ``(batch, T, features)``.

    A step is padding when every one of its features equals ``mask_value``::

        mask[n, t] = any_f (x[n, t, f] ≠ mask_value)          y = Masked(x, mask)

    The values pass through unchanged, so the backward is the identity: ``∂L/∂x = δ``.
    """

    mask_value: float = 0.0

    def __post_init__(self):
        if not isinstance(self.mask_value, (int, float)) or isinstance(self.mask_value, bool):
            raise ValueError(f"Masking: mask_value must be a number, got {self.mask_value!r}")

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        if len(in_shape) < 2:
            raise layer_error(
                self,
                f"expected an input shape (time, features, ...) without the "
                f"batch axis, got {tuple(in_shape)}",
            )
        return (), tuple(in_shape)

    def forward(  # type: ignore[override]  # the output carries the padding mask
        self,
        params: PyTree,
        x: Array | Masked,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array | Masked, PyTree]:
        x, _ = split_masked(self, x)
        if x.ndim < 3:
            raise layer_error(
                self, f"expected input of shape (batch, time, features), got {x.shape}"
            )
        mask = jnp.any(x != self.mask_value, axis=tuple(range(2, x.ndim)))
        return Masked(x, mask), {"x": x}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        return (), cotangent_values(dy)


@dataclasses.dataclass(frozen=True)
class MeanPool1D(Layer):
    """Mean over the time axis, counting only real (unmasked) steps.

    Input ``(batch, T, ...)`` or ``Masked``; output ``(batch, ...)``. With ``m[n, t] ∈ {0, 1}``
    (all ones without a mask) and ``c_n = max(Σ_t m[n, t], 1)``::

        y[n] = (1 / c_n) Σ_t m[n, t] x[n, t]          ∂L/∂x[n, t] = m[n, t] δ[n] / c_n

    A sequence with no real step gives zeros (and no gradient).
    ``cache = {"x": values, "mask": mask}`` (``mask`` is ``None`` without one).
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        if len(in_shape) < 2:
            raise layer_error(
                self,
                f"expected an input shape (time, features, ...) without the "
                f"batch axis, got {tuple(in_shape)}",
            )
        return (), tuple(in_shape[1:])

    def _weights(self, x, mask):
        """``m / c`` broadcast against ``x``; ``None`` means ``1/T`` everywhere."""
        if mask is None:
            return None
        w = mask.astype(x.dtype)
        w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1)
        return _broadcast_mask(w, x.ndim, x.dtype)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x, mask = split_masked(self, x)
        if x.ndim < 3:
            raise layer_error(
                self, f"expected input of shape (batch, time, features), got {x.shape}"
            )
        w = self._weights(x, mask)
        y = jnp.mean(x, axis=1) if w is None else jnp.sum(w * x, axis=1)
        return y, {"x": x, "mask": mask}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        x, mask = cache["x"], cache["mask"]
        w = self._weights(x, mask)
        if w is None:
            w = jnp.full((1, x.shape[1]) + (1,) * (x.ndim - 2), 1 / x.shape[1], x.dtype)
        return (), (w * dy[:, None]).astype(x.dtype)
