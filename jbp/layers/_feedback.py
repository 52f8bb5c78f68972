"""Swappable backward rules for the weight layers: which matrix carries the delta back.

Backpropagation sends a layer's delta to its input through the transpose of the forward
weights, ``∂L/∂a = δ Wᵀ``. The rules of :data:`RULES` keep the forward pass and the
parameter gradients ``aᵀδ`` exactly as they are and replace only that ``W`` by a
*feedback matrix* ``B`` of the same shape (:meth:`RuleLayer.feedback`):

==================  ===================================================================
``rule``            feedback matrix used in place of ``W`` in the backward pass
==================  ===================================================================
``"bp"``            ``W`` itself: backpropagation (the default; nothing changes)
``"fa"``            feedback alignment (Lillicrap et al. 2016): a fixed random ``B``,
                    non-trainable **state** of the layer (see below)
``"sign"``          uniform sign symmetry (Liao, Leibo & Poggio 2016, "uSF"):
                    ``B = sign(W) · mean|W|`` — the signs of the current weights, every
                    entry with the magnitude of the layer's mean absolute weight
``"kolen_pollack"`` Kolen–Pollack (Akrout et al. 2019): ``B`` is an extra *trainable*
                    parameter whose gradient is defined to be ``W``'s gradient, so any
                    optimizer gives ``B`` and ``W`` the same update and the same weight
                    decay; ``B − W`` then shrinks (by ``(1 − ηλ)`` per SGD step with
                    decay ``λ``) and ``B`` comes to equal ``W``
==================  ===================================================================

``Dense`` and ``Conv2D`` have one feedback matrix ``"B"`` (the shape of ``"W"``);
``SimpleRNN`` and ``LSTM`` two, ``"B_x"`` in place of ``W_x`` (the delta sent to the input
sequence, ``∂L/∂x_t = δ_t B_xᵀ``) and ``"B_h"`` in place of ``W_h`` (the recurrent delta of
backpropagation through time, ``∂L/∂h_{t−1} += δ_t B_hᵀ``).

**Feedback alignment's B is state.** A layer with ``rule="fa"`` is ``stateful``:
``init_state(in_shape)`` returns ``{"B": ...}`` (``{"B_x", "B_h"}`` for recurrent layers),
drawn — in float32, like the weights — from the layer's own weight initializer
(``w_init``; ``recurrent_init`` for ``B_h``), i.e. from the same distribution as ``W``,
with the key ``feedback_key(feedback_seed, j)`` (``j`` = 0, 1 for ``B_x``, ``B_h``; the key
is tagged so that it does not coincide with the keys that draw weights). ``feedback_seed``
is a field of the layer (default 0), so ``B`` is reproducible without a key in
``init_state``; give the layers of one network different seeds (``jbp.rules.with_rule``
does). ``forward_with_state`` puts the state's ``B`` into the cache, where ``backward``
reads it: the state is what ``fit`` trains with, and setting it (e.g. ``B := W``) changes
the rule. The stateless entry ``forward`` — used by ``value_and_grad``,
``check_gradients`` and the per-example functions — has no state; ``backward`` then draws
the *same* ``B`` from ``feedback_seed`` (from a constant key, inside the compiled function).

Default layers (``rule="bp"``) keep their repr, their hash and their behaviour: the two new
fields are left out of both (they still take part in ``==``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from jbp import initializers
from jbp.core import Array, Layer, PyTree

__all__ = ["RULES", "RuleLayer", "rule_field", "seed_field", "feedback_key"]

#: the backward rules a weight layer accepts
RULES = ("bp", "fa", "sign", "kolen_pollack")

#: folded into every key that draws a feedback matrix, so that it does not coincide with a
#: key that draws weights: ``split(k, n)[i]`` equals ``fold_in(k, i)`` in JAX, so without the
#: tag ``key(0)`` for ``init`` and ``feedback_seed=0`` would give ``B = W`` in layer 0.
FEEDBACK_TAG = 0x66656564  # "feed"


def feedback_key(key: int | jax.Array, j: int) -> jax.Array:
    """The key of feedback matrix ``j`` under ``key``: ``fold_in(fold_in(key, FEEDBACK_TAG), j)``.
    ``key`` is an int seed (``jax.random.key(seed)`` is used) or a key."""
    if isinstance(key, int):
        key = jax.random.key(key)
    return jax.random.fold_in(jax.random.fold_in(key, FEEDBACK_TAG), j)


def rule_field() -> Any:
    """The ``rule`` field: in ``==``, out of ``repr`` (shown by ``RuleLayer.__repr__`` when
    not ``"bp"``) and out of ``hash`` (so default layers hash as before)."""
    return dataclasses.field(default="bp", repr=False, hash=False)


def seed_field() -> Any:
    """The ``feedback_seed`` field (feedback alignment's ``B``), like :func:`rule_field`."""
    return dataclasses.field(default=0, repr=False, hash=False)


class RuleLayer(Layer):
    """Mixin of the weight layers that take a backward ``rule`` (see the module docstring).

    A subclass is a frozen dataclass with the fields ``rule`` and ``feedback_seed`` and a
    class attribute ``_feedback_of = {"B": ("W", "w_init")}`` naming, per feedback matrix,
    the weight it stands in for and the field holding that weight's initializer. Its
    ``backward`` uses ``self.feedback(params, cache, "W")`` where backpropagation uses
    ``W``, and returns ``self.rule_grads(grads)``.
    """

    _feedback_of: dict = {"B": ("W", "w_init")}

    if TYPE_CHECKING:  # dataclass fields of every subclass (rule_field, seed_field)
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
        rule: str
        feedback_seed: int

    # --- construction ---------------------------------------------------------------
    def check_rule(self) -> None:
        """Raise ``ValueError`` for an unknown ``rule`` or a bad ``feedback_seed``."""
        if self.rule not in RULES:
            raise ValueError(
                f"{type(self).__name__}: unknown rule {self.rule!r}; expected one of "
                f"{', '.join(repr(r) for r in RULES)}"
            )
        seed = self.feedback_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(
                f"{type(self).__name__}: feedback_seed must be an integer in "
                f"[0, 2**32), got {seed!r}"
            )

    def __repr__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr]
        if self.rule != "bp":
            parts.append(f"rule={self.rule!r}")
            if self.rule == "fa":
                parts.append(f"feedback_seed={self.feedback_seed!r}")
        return f"{type(self).__qualname__}({', '.join(parts)})"

    def _feedback_name(self, weight: str) -> str:
        for name, (w, _) in self._feedback_of.items():
            if w == weight:
                return name
        raise KeyError(weight)  # pragma: no cover - a programming error in a layer

    # --- the feedback matrix ----------------------------------------------------------
    def draw_feedback(self, name: str, shape: Sequence[int]) -> jax.Array:
        """Feedback alignment's fixed ``B`` called ``name``: the layer's weight initializer,
        float32, key ``feedback_key(feedback_seed, j)``."""
        j = list(self._feedback_of).index(name)
        init = initializers.get(getattr(self, self._feedback_of[name][1]))
        return init(feedback_key(self.feedback_seed, j), tuple(shape), jnp.float32)

    def feedback(self, params: PyTree, cache: PyTree, weight: str = "W") -> jax.Array:
        """The matrix the backward pass uses in place of ``params[weight]``, in its dtype.

        ``"bp"``: ``W``; ``"sign"``: ``sign(W) · mean|W|`` (the mean over the whole matrix,
        recomputed from the current ``W`` at every call); ``"kolen_pollack"``: the parameter
        ``B``; ``"fa"``: ``B`` from the cache (put there by ``forward_with_state``), else
        drawn from ``feedback_seed`` (the stateless path).

        Args:
          params: the layer's parameters.
          cache: the cache of its forward pass.
          weight: the weight whose feedback is asked for (``"W"``; ``"W_x"``, ``"W_h"``).
        """
        W = params[weight]
        if self.rule == "bp":
            return W
        if self.rule == "sign":
            return jnp.sign(W) * jnp.mean(jnp.abs(W))
        name = self._feedback_name(weight)
        if self.rule == "kolen_pollack":
            return params[name].astype(W.dtype)
        B = cache.get(name)
        if B is None:
            B = self.draw_feedback(name, W.shape)
        return B.astype(W.dtype)

    def cache_axes(self, cache: PyTree) -> PyTree:
        """Feedback alignment's ``B`` in the cache is shared by the batch (axis ``None``)."""
        axes = super().cache_axes(cache)
        if isinstance(cache, dict):
            axes = {k: (None if k in self._feedback_of else v) for k, v in axes.items()}
        return axes

    def rule_grads(self, grads: dict) -> dict:
        """Kolen–Pollack: the gradient of each ``B`` is its weight's gradient (a copy)."""
        if self.rule != "kolen_pollack":
            return grads
        grads = dict(grads)
        for name, (weight, _) in self._feedback_of.items():
            grads[name] = grads[weight]
        return grads

    def rule_params(self, key: jax.Array, params: dict) -> dict:
        """Kolen–Pollack: add each trainable ``B``, drawn like its weight (same initializer
        and shape) from ``feedback_key(key, j)`` (``key``: the layer's ``init`` key); other
        rules: ``params`` unchanged."""
        if self.rule != "kolen_pollack":
            return params
        params = dict(params)
        for j, (name, (weight, init)) in enumerate(self._feedback_of.items()):
            W = params[weight]
            params[name] = initializers.get(getattr(self, init))(
                feedback_key(key, j), W.shape, W.dtype
            )
        return params

    # --- feedback alignment's state ---------------------------------------------------
    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.rule == "fa"

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        """``{"B": ...}`` for ``rule="fa"`` (see the module docstring), else ``()``."""
        if self.rule != "fa":
            return ()
        params = jax.eval_shape(lambda k: self.init(k, tuple(in_shape))[0], jax.random.key(0))
        shapes = {w: params[w].shape for w, _ in self._feedback_of.values()}
        return {
            name: self.draw_feedback(name, shapes[w]) for name, (w, _) in self._feedback_of.items()
        }

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        """``forward``, with feedback alignment's ``B`` from ``state`` put into the cache."""
        y, cache = self.forward(params, x, key=key, train=train)
        if self.rule == "fa":
            names = tuple(self._feedback_of)
            if not isinstance(state, dict) or set(state) != set(names):
                got = sorted(state) if isinstance(state, dict) else type(state).__name__
                raise ValueError(
                    f"{self!r}: expected the state {{{', '.join(names)}}} made by "
                    f"init_state, got {got}"
                )
            cache = {**cache, **{name: state[name] for name in names}}
        return y, cache, state

    # --- per-example gradient norms ------------------------------------------------------
