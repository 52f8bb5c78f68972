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
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import PyTreeDef, keystr, tree_flatten_with_path

PyTree = Any

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

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count; shape (), int32


class ChainState(NamedTuple):
    """State of :func:`chain`: its own step count and the inner states, in order."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count; shape (), int32
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


def acc_dtype(x):
    """The dtype optimizer arithmetic and statistics use for a leaf like ``x``: float32 or
    wider for floating leaves (bfloat16/float16 → float32; float32 and float64 unchanged),
    the leaf's own dtype otherwise. In bfloat16, ``1 − 0.999 == 0``: Adam's bias correction
    would divide by zero."""
    dt = jnp.result_type(x)
    return jnp.promote_types(dt, jnp.float32) if jnp.issubdtype(dt, jnp.floating) else dt


def widen(x, *others):
    """``x`` cast to the widest of :func:`acc_dtype` of ``x`` and the dtypes of ``others``."""
    dt = acc_dtype(x)
    for o in others:
        dt = jnp.promote_types(dt, jnp.result_type(o))
    return jnp.asarray(x).astype(dt)


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


def check_real(
    name: str, value, *, low=None, high=None, low_open=False, high_open=False, where: str = ""
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the interval.

    ``low``/``high`` are bounds (None = unbounded); ``*_open`` makes a bound strict.
    ``±inf`` and NaN are refused whatever the bounds (``lr=inf`` is a slip, not a setting).
    Tracers (a hyperparameter passed through ``jit``) are accepted unchecked.
    """
    v = _concrete_float(value)
    if v is None:
        if isinstance(value, bool) or not (
            isinstance(value, (numbers.Real, np.ndarray, np.generic)) or hasattr(value, "dtype")
        ):
            raise TypeError(f"{where}{name} must be a real number, got {value!r}")
        return
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if math.isinf(v):
        raise ValueError(f"{where}{name} must be a finite number in {interval}, got {value!r}")
    bad = math.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"{where}{name} must be in {interval}, got {value!r}")


def check_learning_rate(learning_rate, where: str = "") -> None:
    """A learning rate is a finite number > 0, or a schedule ``step -> lr`` whose values are
    finite and ``>= 0`` (see :func:`check_schedule`)."""
    if callable(learning_rate):
        check_schedule("learning_rate", learning_rate, where=where)
        return
    check_real("learning_rate", learning_rate, low=0.0, low_open=True, where=where)


#: Steps at which :func:`check_schedule` evaluates a schedule: every step up to 4096, then
#: 256 steps spread geometrically up to 2**20 (about a million updates).
_PROBE_STEPS = np.unique(
    np.concatenate([np.arange(4096), np.round(np.geomspace(4096, 2**20, 256))])
).astype(np.int32)
_PROBED: dict = {}


def check_schedule(name: str, schedule, *, where: str = "") -> None:
    """Evaluate ``schedule`` at the steps ``0 … 4095`` and at 256 steps spread up to
    ``2**20``; raise ``ValueError`` naming the first step whose value is negative, NaN or
    infinite (a rate of 0 is allowed: warmups start there, cosine decay ends there).

    The schedule is called once on an ``int32`` array of steps (as a jbp or optax schedule
    allows); one that cannot take an array is called step by step on the first 64 steps
    and a few later ones. A schedule that fails on a concrete step raises its own error
    here, naming it; one whose values are not concrete (closed over a tracer) is not checked.

    Args:
      name: how the schedule is called in messages (``learning_rate``).
      schedule: a callable ``step -> value``.
      where: a prefix naming the caller (``"sgd: "``).
    """
    try:
        key = (schedule, where, name)
        if _PROBED.get(key):
            return
    except TypeError:  # unhashable callable: check every time
        key = None
    steps = _PROBE_STEPS
    try:
        values = np.broadcast_to(np.asarray(schedule(jnp.asarray(steps))), steps.shape)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    except Exception:  # noqa: BLE001 - not vectorised: evaluate step by step
        steps = np.concatenate([np.arange(64), [100, 1000, 10**4, 10**5, 10**6]])
        try:
            values = np.array([np.asarray(schedule(jnp.asarray(t, jnp.int32))) for t in steps])
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return
        except Exception as e:
            raise type(e)(f"{where}{name}: the schedule fails at a concrete step: {e}") from e
    if values.dtype.kind not in "biuf":
        raise TypeError(
            f"{where}{name}: a schedule must return real numbers, got dtype {values.dtype}"
        )
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where}{name}: the schedule yields {values[i].item():g} at step "
            f"{int(steps[i])}; a learning rate must be finite and >= 0 at every "
            f"step (bound a growing schedule, e.g. with end_value=)"
        )
    if key is not None:
        if len(_PROBED) > 256:
            _PROBED.clear()
        _PROBED[key] = True


def _fmt_path(path) -> str:
    s = keystr(path)
    return s if s else "<root>"


def check_tree_match(
    tree,
    reference,
    *,
    name: str = "grads",
    reference_name: str = "the optimizer state (built by init(params))",
    where: str = "",
) -> None:
    """Raise ``ValueError`` unless ``tree`` has ``reference``'s structure and leaf shapes.

    The message names the first path at which the two trees differ. Runs on
    static information only (tree structure, shapes), so under ``jit`` it fires
    at trace time, before anything is compiled.
    """
    tdef_a: PyTreeDef  # mypy does not resolve jax's own annotation of it
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
                first = (
                    f"{name} has an extra leaf at {_fmt_path(paths_a[len(paths_b)])} "
                    f"that {reference_name} lacks"
                )
            else:
                first = (
                    f"{name} lacks the leaf at {_fmt_path(paths_b[len(paths_a)])} "
                    f"that {reference_name} has"
                )
        if first is None:  # same key paths, different node types (e.g. tuple vs list)
            first = f"same leaf paths but different containers: {tdef_a} vs {tdef_b}"
        raise ValueError(
            f"{where}{name} tree does not match {reference_name}: first difference: {first}"
        )
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        sa, sb = np.shape(a), np.shape(b)
        if sa != sb:
            raise ValueError(
                f"{where}{name} leaf at {_fmt_path(path)} has shape {sa}, "
                f"but {reference_name} has shape {sb} there"
            )


def _check_transform(t, position: int) -> None:
    if not (
        hasattr(t, "init") and hasattr(t, "update") and callable(t.init) and callable(t.update)
    ):
        raise TypeError(
            f"chain: argument {position} must be an Optimizer/GradientTransformation "
            f"(with callable .init and .update), got {type(t).__name__}"
        )


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


def chain(*transforms: Optimizer) -> Optimizer:
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
                f"that this chain's init returned, got {type(state).__name__}"
            )
        if params is not None:
            check_tree_match(grads, params, reference_name="params", where="update: ")
        new_states = []
        updates = grads
        for t, s in zip(transforms, state.states):
            updates, s = t.update(updates, s, params)
            new_states.append(s)
        return updates, ChainState(count=increment(state.count), states=tuple(new_states))

    return Optimizer(init, update)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``p ← p + u`` leaf by leaf; each result keeps its parameter's dtype.

    Raises ``ValueError`` naming the first differing path when ``updates``
    does not have the structure (and leaf shapes) of ``params``.
    """
    check_tree_match(
        updates, params, name="updates", reference_name="params", where="apply_updates: "
    )
    return jax.tree.map(lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)), params, updates)
