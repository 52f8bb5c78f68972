"""Composite layers that wrap one block: ``Residual`` (a skip connection) and ``PositionWise``.

``Residual(block)`` computes ``y = x + block(x)``. Its backward is the block's backward plus
the skip path: with ``δ = ∂L/∂y``, the block gets the same ``δ`` and::

    (∂L/∂θ_block, ∂L/∂x_block) = block.backward(δ)          ∂L/∂x = δ + ∂L/∂x_block

``PositionWise(layer)`` lets a layer that treats every position on its own (``LayerNorm``,
``Dense``, activations, or a ``Sequential`` of them) run on a padded ``Masked`` sequence: the
layer sees the ``values``, and the mask is handed on unchanged (see
:mod:`jbp.layers.masking`). Those layers reject a ``Masked`` by themselves, so that nothing
drops a mask silently; wrapping them says "this layer is position-wise, pass the mask by".

Both are transparent wrappers: their parameters, state and cache are exactly the wrapped
block's (so parameter names do not change), and their backward is one short method.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from jbp.core import Array, Layer, PyTree, Visit, layer_error
from jbp.layers.masking import Masked, cotangent_values

__all__ = ["Residual", "PositionWise"]


def _values_and_mask(x):
    return (x.values, x.mask) if isinstance(x, Masked) else (x, None)


def _shape(y):
    return _values_and_mask(y)[0].shape


class _Wrapper(Layer):
    """Shared plumbing of a composite around one child ``self.block``: state is the child's,
    and the child's errors come back prefixed with ``block (ChildType): ``."""

    if TYPE_CHECKING:  # a dataclass field of every subclass
        block: Layer

    def _check_block(self):
        if not isinstance(self.block, Layer):
            raise TypeError(
                f"{type(self).__name__}: block must be a jbp Layer (e.g. "
                f"Sequential([LayerNorm(), Dense(16)])), got {type(self.block).__name__}"
            )

    def _context(self, err: Exception) -> Exception:
        return type(err)(f"{type(self).__name__}.block ({type(self.block).__name__}): {err}")

    def _call_block(self, fn, *args, masked=False, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as e:
            err = self._context(e)
            if masked and isinstance(e, TypeError):
                err = TypeError(
                    f"{err} (the input is Masked: wrap position-wise layers such as "
                    f"LayerNorm, Dense and activations in PositionWise(...) so that "
                    f"the mask is handed on)"
                )
            raise err from e

    @property
    def stateful(self):
        return self.block.stateful

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        return self.block.init_state(in_shape)

    def mixes_examples(self, train: bool) -> bool:
        return self.block.mixes_examples(train)

    def _dx(self, dy, dx_block):
        """The wrapper's input gradient from the block's (identity for a plain wrapper)."""
        return dx_block

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        dy = cotangent_values(dy)
        grads, dx_block = self.block.backward(params, cache, dy)
        return grads, self._dx(dy, dx_block)

    def backward_ext(
        self, params: PyTree, cache: PyTree, dy: Array, visit: Visit
    ) -> tuple[PyTree, Array, dict[str, Any]]:
        """The block is walked with the same ``δ`` (extensions see its layers)."""
        dy = cotangent_values(dy)
        grads, dx_block, results = self.block.backward_ext(params, cache, dy, visit)
        return grads, self._dx(dy, dx_block), results


@dataclasses.dataclass(frozen=True)
class Residual(_Wrapper):
    """Skip connection around a block: ``y = x + block(x)``.

    Forward and backward, with ``δ = ∂L/∂y``::

        y = x + f(x; θ)
        ∂L/∂θ, ∂L/∂x_f = f.backward(δ)          ∂L/∂x = δ + ∂L/∂x_f

    The block must map its input shape to the same shape (checked in ``init`` and in
    ``forward``, naming both). It may have no parameters (then ``params == ()``), be a
    ``Sequential``, or carry non-trainable state (``BatchNorm``): ``stateful``,
    ``init_state`` and ``forward_with_state`` are the block's.

    Padded sequences: a ``Masked(values, mask)`` input is handed to the block as it is (so
    the block must accept one: ``MultiHeadAttention``, or position-wise layers wrapped in
    :class:`PositionWise`); the output is ``Masked(values + block(x).values, mask)`` with the
    input's mask, and ``∂L/∂x`` is shaped like ``values``.

    Args:
      block: the layer ``f``. ``params``, ``state`` and ``cache`` are exactly the block's
        (no extra nesting), so leaf names read like the block's own.
    """

    block: Layer

    def __post_init__(self):
        self._check_block()

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        params, out_shape = self._call_block(self.block.init, key, in_shape)
        if tuple(out_shape) != in_shape:
            raise layer_error(
                self,
                f"the block maps input shape {in_shape} to output shape "
                f"{tuple(out_shape)}; a residual connection x + block(x) needs "
                f"them equal",
            )
        return params, in_shape

    def _add(self, x, y_block):
        xv, mask = _values_and_mask(x)
        yv, _ = _values_and_mask(y_block)
        if yv.shape != xv.shape:
            raise layer_error(
                self,
                f"the block maps an input of shape {xv.shape} to an output of "
                f"shape {yv.shape}; a residual connection needs them equal",
            )
        y = xv + yv
        return y if mask is None else Masked(y, mask)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        y, cache = self._call_block(
            self.block.forward, params, x, key=key, train=train, masked=isinstance(x, Masked)
        )
        return self._add(x, y), cache

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        y, cache, state = self._call_block(
            self.block.forward_with_state,
            params,
            state,
            x,
            key=key,
            train=train,
            masked=isinstance(x, Masked),
        )
        return self._add(x, y), cache, state

    def _dx(self, dy, dx_block):
        """``∂L/∂x = δ + ∂L/∂x_block``; the block's grads are the residual's grads."""
        return dy + dx_block


@dataclasses.dataclass(frozen=True)
class PositionWise(_Wrapper):
    """Run a position-wise layer on the values of a padded sequence and hand the mask on.

    For ``Masked(x, m)``: ``y = Masked(f(x), m)``; a plain array goes straight to ``f``. The
    backward is the layer's own (``∂L/∂x = f.backward(δ)``); the mask gets no gradient. Padded
    positions are computed like any other (their values are ignored by mask-aware layers
    downstream), which is correct only for layers that mix nothing across positions:
    ``Dense``, ``LayerNorm``, activations, and ``Sequential``s of those. Do not wrap a layer
    that mixes positions (``BatchNorm`` statistics would include the padding; attention and
    recurrent layers take the mask themselves).

    Args:
      block: the position-wise layer ``f``; ``params``, ``state`` and ``cache`` are its own.
    """

    block: Layer

    def __post_init__(self):
        self._check_block()

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return self._call_block(self.block.init, key, in_shape)

    @staticmethod
    def _wrap(y, mask):
        return y if mask is None else Masked(y, mask)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        xv, mask = _values_and_mask(x)
        y, cache = self._call_block(self.block.forward, params, xv, key=key, train=train)
        return self._wrap(y, mask), cache

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        xv, mask = _values_and_mask(x)
        y, cache, state = self._call_block(
            self.block.forward_with_state, params, state, xv, key=key, train=train
        )
        return self._wrap(y, mask), cache, state
