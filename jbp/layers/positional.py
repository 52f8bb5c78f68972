"""Position embeddings added to a sequence: a learned table or the fixed sinusoidal one."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from jbp import initializers
from jbp.core import Array, Layer, PyTree, layer_error
from jbp.layers._window import _positive_int
from jbp.layers.masking import Masked, cotangent_values, split_masked

__all__ = ["PositionalEmbedding", "sinusoidal_table"]


def sinusoidal_table(length: int, features: int) -> np.ndarray:
    """The fixed table of Vaswani et al. (2017), ``(length, features)`` in float64::

        P[t, 2i] = sin(t / 10000^(2i/features))      P[t, 2i+1] = cos(t / 10000^(2i/features))

    Args:
      length: number of positions ``t = 0 … length − 1``.
      features: width of each row (odd widths end with a sine column).
    """
    t = np.arange(length, dtype=np.float64)[:, None]
    j = np.arange(features)
    angle = t / np.power(10000.0, (2 * (j // 2)) / features)[None, :]
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


@dataclasses.dataclass(frozen=True)
class PositionalEmbedding(Layer):
    """Add a position embedding to a sequence ``(batch, T, features)``, ``T ≤ max_len``.

    Forward and backward, with ``δ = ∂L/∂y``::

        y[n, t] = x[n, t] + P[t]
        ∂L/∂x = δ              ∂L/∂P[t] = Σ_n δ[n, t]  (t < T;  rows t ≥ T get zero)

    Learned (default): ``params = {"P": (max_len, features)}``. ``sinusoidal=True``: ``P`` is
    the fixed :func:`sinusoidal_table` (no parameters, ``params == ()``). A ``Masked`` input
    gives a ``Masked`` output with the same mask (the embedding is added at every position;
    mask-aware layers downstream ignore the padded ones). ``cache = {"x": values}``.

    Args:
      max_len: the longest sequence the layer accepts (the learned table's rows).
      sinusoidal: use the fixed sinusoidal table instead of a learned one.
      p_init: initializer (object or name) of the learned table; default ``N(0, 0.02²)``.
    """

    max_len: int
    sinusoidal: bool = False
    p_init: Any = None

    def __post_init__(self):
        if not _positive_int(self.max_len):
            raise ValueError(
                f"PositionalEmbedding: max_len must be a positive integer, got {self.max_len!r}"
            )
        if not isinstance(self.sinusoidal, bool):
            raise TypeError(
                f"PositionalEmbedding: sinusoidal must be a bool, got {self.sinusoidal!r}"
            )
        if self.p_init is not None:
            initializers.get(self.p_init)

    def _check_length(self, t, shape):
        if t > self.max_len:
            raise layer_error(
                self,
                f"sequence length T = {t} exceeds max_len = {self.max_len} (input shape {shape})",
            )

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        if len(in_shape) != 2 or min(in_shape) <= 0:
            raise layer_error(
                self,
                f"expected an input shape (time, features) without the batch axis, got {in_shape}",
            )
        self._check_length(in_shape[0], in_shape)
        if self.sinusoidal:
            return (), in_shape
        p_init = initializers.normal(0.02) if self.p_init is None else initializers.get(self.p_init)
        return {"P": p_init(key, (self.max_len, in_shape[1]))}, in_shape

    def forward(  # type: ignore[override]  # the output carries the padding mask
        self,
        params: PyTree,
        x: Array | Masked,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array | Masked, PyTree]:
        xs, mask = split_masked(self, x, rank=3)
        _, t, f = xs.shape
        self._check_length(t, xs.shape)
        if self.sinusoidal:
            table = jnp.asarray(sinusoidal_table(t, f), xs.dtype)
        else:
            if not (isinstance(params, dict) and set(params) == {"P"}):
                raise layer_error(
                    self,
                    f"expected params {{'P': ({self.max_len}, features)}}, got "
                    f"{params if not isinstance(params, dict) else sorted(params)}",
                )
            if params["P"].shape != (self.max_len, f):
                raise layer_error(
                    self,
                    f"expected input of shape (batch, T, {params['P'].shape[-1]}) "
                    f"to match params['P'] of shape {params['P'].shape} "
                    f"(max_len = {self.max_len}), got {xs.shape}",
                )
            table = params["P"][:t]
        y = xs + table
        return (y if mask is None else Masked(y, mask)), {"x": xs}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        dy = cotangent_values(dy)
        if self.sinusoidal:
            return (), dy
        P = params["P"]
        t = dy.shape[1]
        dP = jnp.pad(jnp.sum(dy, axis=0), ((0, self.max_len - t), (0, 0)))
        return {"P": dP.astype(P.dtype)}, dy.astype(cache["x"].dtype)
