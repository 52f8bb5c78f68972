"""Shape-only layers."""

from __future__ import annotations

import dataclasses
import math

from jbp.core import Array, Layer, PyTree, check_array


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """Flatten everything but the batch axis: ``(batch, d1, d2, ...) -> (batch, d1·d2·...)``.

    Backward reshapes ``δ`` back to the input's shape; no parameters.
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return (), (math.prod(in_shape),)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        if x.ndim < 1:
            raise ValueError(f"{self!r}: expected an input with a batch axis, got a scalar")
        return x.reshape(x.shape[0], -1), {"x": x}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        return (), dy.reshape(cache["x"].shape)
