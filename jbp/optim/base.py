"""The optimizer protocol (optax's), `chain`, `apply_updates` and tree helpers.

An optimizer is a pair of pure functions::

    init(params)                          -> state
    update(grads, state, params=None)     -> (updates, state)

held in the NamedTuple :class:`Optimizer` (the same shape as optax's
``GradientTransformation``, so optax transformations drop into ``chain`` and
jbp optimizers drop into optax code). ``apply_updates(params, updates)`` adds
the updates leaf by leaf and casts each result back to the parameter's dtype.

Every state built here is a NamedTuple whose first field ``count`` is an
int32 scalar array: the number of updates made so far. States are pytrees of
arrays only, so they go in and out of ``jax.jit`` and ``lax.scan`` and
round-trip through ``jax.tree_util`` flatten/unflatten.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

__all__ = [
    "Optimizer",
    "GradientTransformation",
    "CountState",
    "ChainState",
    "identity",
    "chain",
    "apply_updates",
]

_INT32_MAX = np.iinfo(np.int32).max


class Optimizer(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[Any], Any]
    update: Callable[..., Any]


#: optax's name for the same protocol.
GradientTransformation = Optimizer


class CountState(NamedTuple):
    """State of a transformation that keeps nothing but its step count."""

    count: jax.Array  # shape (), int32


class ChainState(NamedTuple):
    """State of :func:`chain`: its own step count and the inner states, in order."""

    count: jax.Array  # shape (), int32
    states: tuple


# ----------------------------------------------------------------------------
# small helpers shared by the transformations
# ----------------------------------------------------------------------------

def zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping (as optax)."""
    count = jnp.asarray(count)
    return jnp.where(count < _INT32_MAX, count + 1, count).astype(jnp.int32)


def cast_like(tree, like):
    """Cast each leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, l: jnp.asarray(x).astype(jnp.result_type(l)), tree, like)


def scalar_like(value, leaf):
    """``value`` as a scalar array of ``leaf``'s dtype (keeps float32 float32 under x64)."""
    return jnp.asarray(value).astype(jnp.result_type(leaf))


def _concrete_float(value):
    """``float(value)`` if it is a concrete real scalar, else None (e.g. a tracer)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        arr = np.asarray(value)  # raises for tracers
    except Exception:  # noqa: BLE001 - tracers, odd objects: do not validate
        return None
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
        return None
    return float(arr)


def check_real(name: str, value, *, low=None, high=None, low_open=False,
               high_open=False, where: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval.

    ``low``/``high`` are bounds (None = unbounded); ``*_open`` makes a bound strict.
    Tracers (a hyperparameter passed through ``jit``) are accepted unchecked.
    """
    v = _concrete_float(value)
    if v is None:
        if isinstance(value, bool) or not (
            isinstance(value, (numbers.Real, np.ndarray, np.generic)) or hasattr(value, "dtype")
        ):
            raise TypeError(f"{where}{name} must be a real number, got {value!r}")
        return
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = math.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{where}{name} must be in {interval}, got {value!r}")


def check_learning_rate(learning_rate, where: str = "") -> None:
    """A learning rate is a callable schedule ``step -> lr`` or a number > 0."""
    if callable(learning_rate):
        return
    check_real("learning_rate", learning_rate, low=0.0, low_open=True, where=where)


def _fmt_path(path) -> str:
    s = keystr(path)
    return s if s else "<root>"


def check_tree_match(tree, reference, *, name: str = "grads",
                     reference_name: str = "the optimizer state (built by init(params))",
                     where: str = "") -> None:
    """Raise ``ValueError`` unless ``tree`` has ``reference``'s structure and leaf shapes.

    The message names the first path at which the two trees differ. Runs on
    static information only (tree structure, shapes), so under ``jit`` it fires
    at trace time, before anything is compiled.
    """
    leaves_a, tdef_a = tree_flatten_with_path(tree)
    leaves_b, tdef_b = tree_flatten_with_path(reference)
    if tdef_a != tdef_b:
        paths_a = [p for p, _ in leaves_a]
        paths_b = [p for p, _ in leaves_b]
        first = None
        for pa, pb in zip(paths_a, paths_b):
            if pa != pb:
                first = f"{name} has a leaf at {_fmt_path(pa)} where {reference_name} has {_fmt_path(pb)}"
                break
        if first is None and len(paths_a) != len(paths_b):
            if len(paths_a) > len(paths_b):
                first = (f"{name} has an extra leaf at {_fmt_path(paths_a[len(paths_b)])} "
                         f"that {reference_name} lacks")
            else:
                first = (f"{name} lacks the leaf at {_fmt_path(paths_b[len(paths_a)])} "
                         f"that {reference_name} has")
        if first is None:  # same key paths, different node types (e.g. tuple vs list)
            first = f"same leaf paths but different containers: {tdef_a} vs {tdef_b}"
        raise ValueError(
            f"{where}{name} tree does not match {reference_name}: first difference: {first}")
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        sa, sb = np.shape(a), np.shape(b)
        if sa != sb:
            raise ValueError(
                f"{where}{name} leaf at {_fmt_path(path)} has shape {sa}, "
                f"but {reference_name} has shape {sb} there")


def _check_transform(t, position: int) -> None:
    if not (hasattr(t, "init") and hasattr(t, "update") and callable(t.init) and callable(t.update)):
        raise TypeError(
            f"chain: argument {position} must be an Optimizer/GradientTransformation "
            f"(with callable .init and .update), got {type(t).__name__}")


# ----------------------------------------------------------------------------
# identity, chain, apply_updates
# ----------------------------------------------------------------------------

def identity() -> Optimizer:
    """The transformation that returns the updates unchanged: ``u = g``."""

    def init(params):
        del params
        return CountState(count=zero_count())

    def update(grads, state, params=None):
        del params
        return grads, CountState(count=increment(state.count))

    return Optimizer(init, update)


def chain(*transforms) -> Optimizer:
    """Compose transformations left to right: ``u = t_k(...t_2(t_1(g)))``.

    ``chain(clip_by_global_norm(1.0), adam(1e-3))`` clips the raw gradient and
    then runs Adam on it; the order matters. Any object with optax's
    ``init``/``update`` protocol may appear (an optax transformation included).
    The state is ``ChainState(count, states)`` with one inner state per
    transformation, in order. When ``params`` is passed to ``update``, the grads
    must have its structure and leaf shapes (``ValueError`` naming the first
    differing path otherwise).
    """
    for i, t in enumerate(transforms):
        _check_transform(t, i)
    transforms = tuple(transforms)

    def init(params):
        return ChainState(count=zero_count(), states=tuple(t.init(params) for t in transforms))

    def update(grads, state, params=None):
        if not isinstance(state, ChainState) or len(state.states) != len(transforms):
            raise ValueError(
                f"chain.update: state must be the ChainState with {len(transforms)} inner states "
                f"that this chain's init returned, got {type(state).__name__}")
        if params is not None:
            check_tree_match(grads, params, reference_name="params", where="update: ")
        new_states = []
        updates = grads
        for t, s in zip(transforms, state.states):
            updates, s = t.update(updates, s, params)
            new_states.append(s)
        return updates, ChainState(count=increment(state.count), states=tuple(new_states))

    return Optimizer(init, update)


def apply_updates(params, updates):
    """``p ← p + u`` leaf by leaf; each result keeps its parameter's dtype.

    Raises ``ValueError`` naming the first differing path when ``updates``
    does not have the structure (and leaf shapes) of ``params``.
    """
    check_tree_match(updates, params, name="updates", reference_name="params",
                     where="apply_updates: ")
    return jax.tree.map(
        lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)
