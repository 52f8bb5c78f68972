"""Token embeddings: a table lookup whose backward is a scatter-add."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jbp import initializers
from jbp._validate import check_index_range
from jbp.core import Array, Layer, PyTree, check_array, layer_error
from jbp.layers import _per_example as _pe
from jbp.layers._window import _nonneg_int, _positive_int
from jbp.layers.masking import Masked, cotangent_values

__all__ = ["Embedding"]


def _concrete(a):
    """``a`` as a numpy array when it is concrete, ``None`` while it is being traced."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    """Look up a row of ``E`` (``(vocab_size, features)``) for every integer token id.

    Input: integer ids of shape ``(batch, T)`` (any shape ``(batch, ...)`` works);
    output ``(batch, T, features)``. Forward and backward::

        y[n, t] = E[ids[n, t]]
        ∂L/∂E[v] = Σ_{(n, t): ids[n, t] = v} δ[n, t]        (scatter-add: E.at[ids].add(δ))

    Rows of tokens that do not occur get zero gradient; a token that occurs several times
    accumulates all of its deltas.

    The input is integer, so it has no gradient: ``backward`` returns as ``dx`` an array of
    JAX's ``float0`` dtype shaped like ``ids`` (what ``jax.vjp`` returns for integer
    inputs). Embedding is normally the first layer, whose ``dx`` is discarded.

    ``pad_id``: when set, the output is ``Masked(values, ids != pad_id)`` and mask-aware
    layers downstream (``SimpleRNN``, ``LSTM``, ``MeanPool1D``) skip the padded steps;
    see :mod:`jbp.layers.masking`. Padded positions still look up row ``pad_id``.

    Ids outside ``[0, vocab_size)`` raise a ``ValueError`` when the ids are concrete (not
    under ``jit``/``vmap``); traced out-of-range ids are clamped to the nearest row, in the
    forward and the backward alike.

    ``w_init``: an initializer or its name; the default ``None`` draws ``N(0, 1/features)``
    (flax's default: embedding vectors of about unit norm, which keeps a tanh RNN on top
    out of saturation). ``params = {"W": (vocab_size, features)}``; ``cache = {"x": ids}``.

    Per-example extensions (``jbp.extensions``): example ``i``'s gradient is
    ``Gᵢ = Σ_t onehot(idᵢₜ) δᵢₜᵀ`` (``(vocab, features)``, mostly zero), so, with
    ``Sᵢₜ = Σ_s [idᵢₛ = idᵢₜ] δᵢₛ`` (row ``idᵢₜ`` of ``Gᵢ``: a repeated id sums its deltas)::

        batch_grad:        Gᵢ, a scatter-add by id per example        (n, vocab, features)
        batch_l2:          ‖Gᵢ‖² = Σ_{t,s} [idᵢₜ = idᵢₛ] (δᵢₜ·δᵢₛ) = Σ_t δᵢₜ·Sᵢₜ      (n,)
        sum_grad_squared:  Σᵢ Gᵢ²: row v gets Sᵢₜ² from the FIRST t with idᵢₜ = v, per i

    without a ``(n, vocab, features)`` tensor, through the ``T × T`` id-equality matrix;
    when ``2T² > vocab·features`` (very long sequences, tiny tables) ``Gᵢ`` is formed
    instead (:func:`jbp.layers._per_example.use_gram`). Padded positions are treated as
    in ``backward``: their delta goes to row ``pad_id`` and is zero whenever the consumer
    is mask-aware (``SimpleRNN``, ``LSTM``, ``MeanPool1D`` send no delta to padding), so
    row ``pad_id`` gets no gradient.
    """

    vocab_size: int
    features: int
    w_init: Any = None
    pad_id: int | None = None

    def __post_init__(self):
        if not _positive_int(self.vocab_size):
            raise ValueError(
                f"Embedding: vocab_size must be a positive integer, got {self.vocab_size!r}"
            )
        if not _positive_int(self.features):
            raise ValueError(
                f"Embedding: features must be a positive integer, got {self.features!r}"
            )
        if self.pad_id is not None and not (
            _nonneg_int(self.pad_id) and self.pad_id < self.vocab_size
        ):
            raise ValueError(
                f"Embedding: pad_id must be None or an id in [0, {self.vocab_size}), "
                f"got {self.pad_id!r}"
            )
        if self.w_init is not None:
            initializers.get(self.w_init)

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        in_shape = tuple(int(d) for d in in_shape)
        w_init = (
            initializers.normal(1.0 / math.sqrt(self.features))
            if self.w_init is None
            else initializers.get(self.w_init)
        )
        return ({"W": w_init(key, (self.vocab_size, self.features))}, in_shape + (self.features,))

    def forward(  # type: ignore[override]  # the output carries the padding mask
        self,
        params: PyTree,
        x: Array | Masked,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array | Masked, PyTree]:
        ids = check_array("x", x)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise layer_error(
                self,
                f"expected integer token ids of shape (batch, T), got dtype "
                f"{ids.dtype} (shape {ids.shape})",
                TypeError,
            )
        if ids.ndim < 1:
            raise layer_error(self, "expected token ids with a batch axis, got a scalar")
        W = params["W"]
        if W.shape != (self.vocab_size, self.features):
            raise layer_error(
                self,
                f"expected params['W'] of shape {(self.vocab_size, self.features)}, got {W.shape}",
            )
        concrete = _concrete(ids)
        if concrete is not None and concrete.size:
            lo, hi = int(concrete.min()), int(concrete.max())
            if lo < 0 or hi >= self.vocab_size:
                raise layer_error(
                    self,
                    f"token ids must be in [0, {self.vocab_size}), got ids in "
                    f"[{lo}, {hi}] (input shape {ids.shape})",
                )
        y: Any = jnp.take(W, ids, axis=0, mode="clip")
        if self.pad_id is not None:
            if ids.ndim != 2:
                raise layer_error(self, f"pad_id needs ids of shape (batch, T), got {ids.shape}")
            y = Masked(y, ids != self.pad_id)
        return y, {"x": ids}

    def check_input(self, x: ArrayLike) -> None:
        """Check concrete token ids once, at the boundary, before anything is compiled.

        Under ``jit`` (every ``fit`` and ``evaluate``) ``forward`` can no longer see the
        values, and an id outside the vocabulary would be clamped to the nearest row; so
        ``fit``, ``evaluate`` and ``check_gradients`` call this on the whole data first.

        Args:
          x: integer token ids with a leading example axis (a tracer is not checked).

        Raises:
          TypeError: ids that are not integers.
          ValueError: ids outside ``[0, vocab_size)``, with how many and the first one.
        """
        ids = check_array("x", x)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise layer_error(
                self,
                f"expected integer token ids, got dtype {ids.dtype} (shape {ids.shape})",
                TypeError,
            )
        try:
            check_index_range("token ids", ids, self.vocab_size)
        except ValueError as e:
            raise layer_error(self, str(e)) from None

    def backward(  # type: ignore[override]  # dx: float0 zeros, ids have no gradient
        self, params: PyTree, cache: PyTree, dy: Array | Masked
    ) -> tuple[PyTree, np.ndarray]:
        ids = cache["x"]
        dy = cotangent_values(dy)
        W = params["W"]
        dW = (
            jnp.zeros(W.shape, dy.dtype)
            .at[ids.reshape(-1)]
            .add(dy.reshape(-1, W.shape[1]), mode="clip")
        )
        return {"W": dW.astype(W.dtype)}, np.zeros(ids.shape, jax.dtypes.float0)

    # --- closed forms for the per-example extensions (jbp.extensions) ------------------
    # ``dy`` here is per example: row i is the delta of example i's own loss.

    def _per_example_views(self, cache, dy):
        """``(ids (n, T) clamped to the table as in backward, δ (n, T, features))``."""
        ids = cache["x"]
        n = ids.shape[0]
        ids = jnp.clip(ids.reshape(n, -1), 0, self.vocab_size - 1)
        return ids, cotangent_values(dy).reshape(n, ids.shape[1], self.features)

    def _gram_is_cheaper(self, T):
        return _pe.use_gram(T, self.vocab_size, self.features)

    @staticmethod
    def _same_id(ids, dtype):
        """``[idᵢₜ = idᵢₛ]`` as ``(n, T, T)`` in ``dtype``."""
        return (ids[:, :, None] == ids[:, None, :]).astype(dtype)

    def batch_grad(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Gᵢ = Σ_t onehot(idᵢₜ) δᵢₜᵀ``: one scatter-add, ``(n, vocab, features)``."""
        ids, d = self._per_example_views(cache, dy)
        W = params["W"]
        rows = jnp.arange(ids.shape[0])[:, None]
        g = jnp.zeros((ids.shape[0],) + W.shape, d.dtype).at[rows, ids].add(d)
        return {"W": g.astype(W.dtype)}

    def batch_l2(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``‖Gᵢ‖² = Σ_{t,s} [idᵢₜ = idᵢₛ] (δᵢₜ·δᵢₛ)``, ``(n,)`` (see the class docstring)."""
        ids, d = self._per_example_views(cache, dy)
        W = params["W"]
        if self._gram_is_cheaper(ids.shape[1]):
            sq = jnp.sum(self._same_id(ids, d.dtype) * _pe.gram(d), axis=(1, 2))
        else:
            sq = jnp.sum(jnp.square(self.batch_grad(params, cache, dy)["W"]), axis=(1, 2))
        return {"W": sq.astype(W.dtype)}

    def sum_grad_squared(self, params: PyTree, cache: PyTree, dy: Array) -> PyTree:
        """``Σᵢ Gᵢ ⊙ Gᵢ``, ``(vocab, features)``: ``Sᵢₜ = Σ_s [idᵢₛ = idᵢₜ] δᵢₛ`` is row
        ``idᵢₜ`` of ``Gᵢ``; each (example, id) pair adds its ``Sᵢₜ²`` once (at the id's first
        position in the example) in one scatter-add over the table."""
        ids, d = self._per_example_views(cache, dy)
        W = params["W"]
        if not self._gram_is_cheaper(ids.shape[1]):
            return {"W": jnp.sum(jnp.square(self.batch_grad(params, cache, dy)["W"]), axis=0)}
        same = self._same_id(ids, d.dtype)
        rows = jnp.einsum("nts,nsf->ntf", same, d)  # Sᵢₜ
        earlier = jnp.tril(same, k=-1)  # s < t with the same id
        first = (jnp.sum(earlier, axis=2) == 0).astype(d.dtype)[:, :, None]
        sgs = (
            jnp.zeros(W.shape, d.dtype)
            .at[ids.reshape(-1)]
            .add((first * jnp.square(rows)).reshape(-1, self.features))
        )
        return {"W": sgs.astype(W.dtype)}
