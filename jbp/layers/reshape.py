"""Shape-only layers."""

from __future__ import annotations

import dataclasses
import math

from jbp.core import Layer, check_array


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """Flatten everything but the batch axis: ``(batch, d1, d2, ...) -> (batch, d1·d2·...)``.

    Backward reshapes ``δ`` back to the input's shape; no parameters.
    """

    def init(self, key, in_shape):
        return (), (math.prod(in_shape),)

    def forward(self, params, x, *, key=None, train=False):
        x = check_array("x", x)
        if x.ndim < 1:
            raise ValueError(f"{self!r}: expected an input with a batch axis, got a scalar")
        return x.reshape(x.shape[0], -1), {"x": x}

    def backward(self, params, cache, dy):
        return (), dy.reshape(cache["x"].shape)
