"""Weight penalties: the value and its hand-written gradient, side by side.

A regularizer is an object with ``value(params) -> scalar`` and
``grad(params) -> tree shaped like params``. ``jbp.value_and_grad(model, loss,
regularizer=...)`` (and ``fit(..., regularizer=...)``) add ``value`` to the data loss and
``grad`` to the backward pass's gradient, leaf by leaf::

    reg = jbp.regularizers.l2(1e-4)
    f = jbp.value_and_grad(model, jbp.losses.softmax_cross_entropy, regularizer=reg)
    loss_plus_penalty, grads = f(params, x, y, key=key)

==================================  ===================================  ===========================
penalty                             value (sum over the selected leaves)  grad (per selected leaf)
==================================  ===================================  ===========================
``l1(λ)``                           ``λ Σ |w|``                           ``λ sign(w)``  (0 at w = 0)
``l2(λ)``                           ``½ λ Σ w²``                          ``λ w``
``elastic_net(l1=α, l2=β)``         ``α Σ |w| + ½ β Σ w²``                ``α sign(w) + β w``
==================================  ===================================  ===========================

Conventions, stated once:

- **The ½ in L2.** ``l2(λ)`` is ``½ λ ‖w‖²`` so that its gradient is exactly ``λ w``:
  plain gradient descent then shrinks every weight by ``η λ w`` per step ("weight decay").
  (Keras' ``L2(λ)`` is ``λ ‖w‖²``, without the ½; use ``l2(2λ)`` to match it.)
- **L1 at zero.** ``|w|`` has no derivative at ``w = 0``; ``grad`` uses the subgradient
  ``sign(0) = 0`` — the minimum-norm subgradient — so an exactly-zero weight stays put.
  (``jax.grad(jnp.abs)(0.)`` returns 1, a one-sided derivative; the two agree everywhere
  else, so compare against autodiff at non-zero weights.)
- **What is penalised.** By default: every floating-point leaf with ``ndim ≥ 2`` — the
  weight matrices ``W`` of Dense layers, convolution kernels, embedding tables, recurrent
  weights. Never 1-D leaves: biases ``b`` and normalization scales/offsets are left alone
  (penalising them does not reduce capacity and can hurt). Integer leaves are never
  penalised. ``mask=`` replaces this rule:

  * a predicate on the leaf's path name, ``mask=lambda name: name.endswith(".W")``, where
    names are :func:`jbp.core.leaf_name`'s: ``layers[2].W`` for a ``Sequential``'s
    params, ``encoder.W`` for a dict;
  * or a pytree of Python bools shaped like ``params`` — or a *prefix* of it, so
    ``mask=(True, (), False)`` penalises every leaf of layer 0 and none of layer 2.

  ``reg.selected(params)`` returns the tree of bools actually used (it can be handed to
  ``jbp.optim.adamw(..., mask=reg.selected)``); ``reg.selected_names(params)`` lists them.
- **Weight decay.** Adding ``l2(λ)`` to the loss is "coupled" weight decay: with SGD it is
  the same as decaying the weights by ``η λ``; with Adam, RMSProp, … the penalty's gradient
  is rescaled by the adaptive denominator and no longer acts as a uniform decay. For
  *decoupled* weight decay (Loshchilov & Hutter) use ``jbp.optim.adamw(weight_decay=...)``
  (or ``jbp.optim.add_decayed_weights``) instead of a regularizer.

Regularizers are frozen dataclasses: hashable, so they can be closed over by ``jax.jit``
or passed as static arguments. The values are computed in the params' dtype.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.core import leaf_name

PyTree = Any

__all__ = [
    "Regularizer",
    "L1",
    "L2",
    "ElasticNet",
    "l1",
    "l2",
    "elastic_net",
    "weights_only",
]


# --------------------------------------------------------------------------------------
# Which leaves a penalty applies to
# --------------------------------------------------------------------------------------


def _is_float_leaf(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _default_rule(leaf) -> bool:
    return _is_float_leaf(leaf) and jnp.ndim(leaf) >= 2


def weights_only(params: PyTree) -> PyTree:
    """The default selection: a tree of bools, ``True`` for floating leaves with ``ndim ≥ 2``.

    Weight matrices and kernels are ``True``; biases and normalization scales/offsets
    (1-D) are ``False``. Shaped like ``params``; usable as an optimizer mask, e.g.
    ``jbp.optim.adamw(1e-3, weight_decay=1e-2, mask=jbp.regularizers.weights_only)``.
    """
    return jax.tree.map(_default_rule, params)


@dataclasses.dataclass(frozen=True)
class _TreeMask:
    """A pytree of bools, stored flat so that it is hashable."""

    treedef: Any
    values: tuple

    def __repr__(self) -> str:
        return repr(jax.tree.unflatten(self.treedef, list(self.values)))


def _normalize_mask(where: str, mask):
    if mask is None or callable(mask) and not isinstance(mask, _TreeMask):
        return mask
    if isinstance(mask, _TreeMask):
        return mask
    if isinstance(mask, (str, bytes)):
        raise TypeError(
            f"{where}: mask must be a predicate on the leaf name "
            f"(lambda name: ...) or a pytree of bools, got the string {mask!r}"
        )
    leaves, treedef = jax.tree.flatten(mask)
    values = []
    for i, v in enumerate(leaves):
        if isinstance(v, (bool, np.bool_)) or (
            isinstance(v, (np.ndarray, jax.Array)) and v.shape == () and v.dtype == bool
        ):
            values.append(bool(v))
        else:
            raise TypeError(
                f"{where}: mask must be a pytree of Python bools (or a predicate "
                f"on the leaf name); leaf {i} is {v!r} of type {type(v).__name__}"
            )
    return _TreeMask(treedef, tuple(values))


def _check_strength(where: str, arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{where}: {arg} must be a real number ≥ 0, got {value!r} "
            f"of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {arg} must be a finite number ≥ 0, got {value!r}")
    return value


# --------------------------------------------------------------------------------------
# The regularizers
# --------------------------------------------------------------------------------------


class Regularizer:
    """Base class: ``value(params)`` and hand-written ``grad(params)``.

    Subclasses implement ``_leaf_value(w)`` and ``_leaf_grad(w)`` for one selected leaf;
    the base class handles the selection (``mask``), sums the values and puts zeros in
    the gradient where the penalty is not applied.
    """

    mask: Any = None

    # --- per-leaf maths (subclasses) ----------------------------------------------------
    def _leaf_value(self, w):
        raise NotImplementedError

    def _leaf_grad(self, w):
        raise NotImplementedError

    @property
    def _name(self) -> str:
        return type(self).__name__

    # --- selection ----------------------------------------------------------------------
    def selected(self, params: PyTree) -> PyTree:
        """A tree of bools shaped like ``params``: ``True`` where the penalty applies."""
        mask = self.mask
        if mask is None:
            return weights_only(params)
        if isinstance(mask, _TreeMask):
            tree = jax.tree.unflatten(mask.treedef, list(mask.values))
            try:
                full = jax.tree.map(
                    lambda m, sub: jax.tree.map(lambda leaf: m and _is_float_leaf(leaf), sub),
                    tree,
                    params,
                )
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{self!r}: mask must be a pytree of bools shaped like params (or a prefix "
                    f"of params' structure); mask {jax.tree.structure(tree)} does not match "
                    f"params {jax.tree.structure(params)}"
                ) from e
            return full
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        out = []
        for path, leaf in paths_leaves:
            name = leaf_name(path)
            try:
                chosen = mask(name)
            except Exception as e:  # a predicate that fails should say for which leaf
                raise type(e)(f"{self!r}: mask predicate failed on leaf {name!r}: {e}") from e
            if not isinstance(chosen, (bool, np.bool_)):
                raise TypeError(
                    f"{self!r}: mask predicate must return a bool, returned "
                    f"{chosen!r} for leaf {name!r}"
                )
            out.append(bool(chosen) and _is_float_leaf(leaf))
        return jax.tree.unflatten(treedef, out)

    def selected_names(self, params: PyTree) -> list[str]:
        """Names (``layers[0].W``, ...) of the leaves the penalty applies to."""
        flags, _ = jax.tree_util.tree_flatten_with_path(self.selected(params))
        return [leaf_name(p) for p, f in flags if f]

    def check_params(self, params: PyTree) -> None:
        """Raise ``ValueError`` when an explicit ``mask`` selects no floating-point leaf of
        ``params`` (the penalty would silently be 0); ``fit`` calls this before compiling.

        Args:
          params: the model's parameters.
        """
        if self.mask is None or self.selected_names(params):
            return
        from jbp.core import named_leaves  # noqa: PLC0415

        names = [n for n, leaf in named_leaves(params) if _is_float_leaf(leaf)]
        raise ValueError(
            f"regularizer: the mask of {self!r} matches no leaf of params, so the "
            f"penalty would be 0; the floating-point leaves are "
            f"{', '.join(names) or '(none)'}"
        )

    def _pairs(self, params):
        leaves, treedef = jax.tree.flatten(params)
        selected = self.selected(params)
        if jax.tree.structure(selected) != treedef:  # never zip two trees unchecked
            from jbp._validate import check_same_structure  # noqa: PLC0415

            check_same_structure("params", params, f"the selection of {self!r}", selected)
        return leaves, jax.tree.leaves(selected), treedef

    # --- the penalty --------------------------------------------------------------------
    def value(self, params: PyTree) -> jax.Array:
        """The penalty: a scalar in the params' floating dtype (0 if nothing is selected)."""
        leaves, flags, _ = self._pairs(params)
        terms = [self._leaf_value(jnp.asarray(w)) for w, f in zip(leaves, flags) if f]
        if not terms:
            floats = [w for w in leaves if _is_float_leaf(w)]
            dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
            return jnp.zeros((), dtype)
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def grad(self, params: PyTree) -> PyTree:
        """The hand-written gradient of :meth:`value`, shaped like ``params``.

        Zeros (of each leaf's dtype) where the penalty is not applied.
        """
        leaves, flags, treedef = self._pairs(params)
        out = [
            self._leaf_grad(jnp.asarray(w)) if f else jnp.zeros_like(w)
            for w, f in zip(leaves, flags)
        ]
        return jax.tree.unflatten(treedef, out)

    def __call__(self, params: PyTree) -> jax.Array:
        return self.value(params)


@dataclasses.dataclass(frozen=True)
class L1(Regularizer):
    """``value = λ Σ |w|``, ``grad = λ sign(w)`` with the subgradient ``sign(0) = 0``."""

    strength: float
    mask: Any = None

    def __post_init__(self):
        object.__setattr__(self, "strength", _check_strength("l1", "strength", self.strength))
        object.__setattr__(self, "mask", _normalize_mask("l1", self.mask))

    def _leaf_value(self, w):
        return self.strength * jnp.sum(jnp.abs(w))

    def _leaf_grad(self, w):
        return self.strength * jnp.sign(w)


@dataclasses.dataclass(frozen=True)
class L2(Regularizer):
    """``value = ½ λ Σ w²``, ``grad = λ w`` (the ½ convention: the gradient is ``λ w``)."""

    strength: float
    mask: Any = None

    def __post_init__(self):
        object.__setattr__(self, "strength", _check_strength("l2", "strength", self.strength))
        object.__setattr__(self, "mask", _normalize_mask("l2", self.mask))

    def _leaf_value(self, w):
        return 0.5 * self.strength * jnp.sum(w * w)

    def _leaf_grad(self, w):
        return self.strength * w


@dataclasses.dataclass(frozen=True)
class ElasticNet(Regularizer):
    """``value = α Σ |w| + ½ β Σ w²``, ``grad = α sign(w) + β w`` (``α = l1``, ``β = l2``)."""

    l1: float
    l2: float
    mask: Any = None

    def __post_init__(self):
        object.__setattr__(self, "l1", _check_strength("elastic_net", "l1", self.l1))
        object.__setattr__(self, "l2", _check_strength("elastic_net", "l2", self.l2))
        object.__setattr__(self, "mask", _normalize_mask("elastic_net", self.mask))

    def _leaf_value(self, w):
        return self.l1 * jnp.sum(jnp.abs(w)) + 0.5 * self.l2 * jnp.sum(w * w)

    def _leaf_grad(self, w):
        return self.l1 * jnp.sign(w) + self.l2 * w


def l1(strength: float, *, mask: Callable[[str], bool] | PyTree | None = None) -> L1:
    """L1 (lasso) penalty ``λ Σ |w|``; gradient ``λ sign(w)``, with ``sign(0) = 0``.

    ``strength`` (λ) must be ≥ 0. ``mask``: see the module docstring (default: leaves
    with ``ndim ≥ 2``, i.e. weight matrices and kernels, not biases).
    """
    return L1(strength, mask)


def l2(strength: float, *, mask: Callable[[str], bool] | PyTree | None = None) -> L2:
    """L2 (ridge) penalty ``½ λ Σ w²``; gradient ``λ w``. Note the ½.

    ``strength`` (λ) must be ≥ 0. ``mask``: see the module docstring (default: leaves
    with ``ndim ≥ 2``, i.e. weight matrices and kernels, not biases). For decoupled
    weight decay with adaptive optimizers, use ``jbp.optim.adamw`` instead.
    """
    return L2(strength, mask)


def elastic_net(
    l1: float, l2: float, *, mask: Callable[[str], bool] | PyTree | None = None
) -> ElasticNet:
    """Elastic net ``l1 Σ |w| + ½ l2 Σ w²``; gradient ``l1 sign(w) + l2 w``.

    Both strengths must be ≥ 0. ``elastic_net(a, 0)`` equals ``l1(a)`` and
    ``elastic_net(0, b)`` equals ``l2(b)`` in value and gradient.
    """
    return ElasticNet(l1, l2, mask)
