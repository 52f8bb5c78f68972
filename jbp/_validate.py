"""Boundary checks, in one place.

Everything here runs once, on concrete values (or on static shapes at trace time), before
anything is compiled; errors name the argument (or the layer path), what was expected and
what came. Nothing inside compiled code is checked again.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_array", "check_floating", "check_batch", "check_data", "check_model_and_loss",
    "check_optimizer", "check_grad_fn", "check_augment", "check_batch_size",
    "eval_batch_size", "check_epochs", "check_key", "check_positive", "check_same_structure",
    "cached_if_hashable",
]

GRAD_FNS = ("manual", "autodiff")


def check_array(name: str, value: Any):
    """Return ``value`` as an array, or raise ``TypeError`` naming the argument."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return value
    raise TypeError(
        f"{name}: expected an array (jax.Array or numpy.ndarray), got {type(value).__name__}"
    )


def check_floating(name: str, x) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating-point dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")


def check_batch(x, y):
    """``(x, y)`` with a common, non-empty leading batch axis (shapes only: jit-safe).

    ``x`` may also be a ``Masked(values, mask)`` (a padded sequence batch)."""
    if hasattr(x, "values") and hasattr(x, "mask"):
        check_batch(x.values, y)
        return x, y
    x = check_array("x", x)
    y = check_array("y", y)
    if x.ndim == 0:
        raise ValueError("x: expected a leading batch axis, got a scalar")
    if y.ndim == 0:
        raise ValueError("y: expected a leading batch axis, got a scalar")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y: expected the same number of examples, got x with "
                         f"{x.shape[0]} (shape {x.shape}) and y with {y.shape[0]} (shape {y.shape})")
    if x.shape[0] == 0:
        raise ValueError("x: got an empty batch (0 examples)")
    return x, y


def check_model_and_loss(model, loss, regularizer=None) -> None:
    """``model`` is a jbp Layer, ``loss`` has ``value``/``grad``, ``regularizer`` ``value``/``grad``."""
    from jbp.core import Layer  # noqa: PLC0415 - core imports this module

    if not isinstance(model, Layer):
        raise TypeError(f"model: expected a jbp Layer (e.g. jbp.Sequential), got {type(model).__name__}")
    if not (hasattr(loss, "value") and hasattr(loss, "grad")):
        raise TypeError(f"loss: expected a jbp loss with .value and .grad "
                        f"(e.g. jbp.losses.mse), got {type(loss).__name__}")
    if regularizer is not None and not (hasattr(regularizer, "value") and hasattr(regularizer, "grad")):
        raise TypeError(f"regularizer: expected an object with .value(params) and .grad(params) "
                        f"(e.g. jbp.regularizers.l2(1e-4)), got {type(regularizer).__name__}")


def check_optimizer(optimizer) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer: expected an optimizer with .init(params) and "
                        f".update(grads, state, params) (e.g. jbp.optim.sgd(0.1)), "
                        f"got {type(optimizer).__name__}")


def check_grad_fn(grad_fn) -> None:
    if grad_fn not in GRAD_FNS:
        raise ValueError(f"grad_fn: expected 'manual' (the hand-written backward) or "
                         f"'autodiff' (jax.grad), got {grad_fn!r}")


def check_augment(augment) -> None:
    if augment is not None and not callable(augment):
        raise TypeError(f"augment: expected a callable augment(key, x) -> x, "
                        f"got {type(augment).__name__}")


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real number ``> 0`` (``≥ 0`` with ``allow_zero``), as a float."""
    ok_type = isinstance(value, numbers.Real) and not isinstance(value, bool)
    v = float(value) if ok_type else float("nan")
    if not ok_type or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return v


def check_data(name: str, data):
    """A pair ``(x, y)`` of numeric arrays with the same number of examples, all finite."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name}: expected a pair (x, y) of arrays, got "
                        f"{type(data).__name__}" + (f" of length {len(data)}"
                                                    if isinstance(data, (tuple, list)) else ""))
    x, y = data
    out = []
    for part, a in (("x", x), ("y", y)):
        if not isinstance(a, (jax.Array, np.ndarray)):
            given = type(a).__name__
            try:
                a = np.asarray(a)
            except Exception:
                a = np.asarray(None)
            if a.dtype == object:
                raise TypeError(f"{name}: {part} must be a numeric array, got {given}")
        if a.ndim == 0:
            raise ValueError(f"{name}: {part} needs a leading example axis, got a scalar")
        if not (jnp.issubdtype(a.dtype, jnp.number) or jnp.issubdtype(a.dtype, jnp.bool_)):
            raise TypeError(f"{name}: {part} must be numeric, got dtype {a.dtype}")
        out.append(a)
    x, y = out
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x and y must have the same number of examples, got "
                         f"x with {x.shape[0]} (shape {tuple(x.shape)}) and y with {y.shape[0]} "
                         f"(shape {tuple(y.shape)})")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty data (0 examples)")
    for part, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact) and not _all_finite(a):
            bad = int(a.size - int(np.isfinite(np.asarray(a)).sum()))
            raise ValueError(f"{name}: {part} contains {bad} NaN or Inf value(s); "
                             f"clean or impute the data before training")
    return jnp.asarray(x), jnp.asarray(y)


@jax.jit
def _all_finite_jax(a):
    return jnp.all(jnp.isfinite(a))


def _all_finite(a) -> bool:
    """One fused pass, no array-sized temporary (min/max propagate NaN; ±Inf show)."""
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a.min()) and np.isfinite(a.max()))
    return bool(_all_finite_jax(a))


def check_batch_size(batch_size, n, name="batch_size"):
    """``None`` (full batch) or an integer in ``[1, n]``."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{name}: expected None (full batch), or an integer "
                        f"(1 = SGD, k = minibatch), got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"{name}: must be a positive integer (1 = SGD), got {batch_size}")
    if batch_size > n:
        raise ValueError(f"{name}: {batch_size} is larger than the data ({n} examples); use "
                         f"batch_size=None (or {n}) for full-batch gradient descent")
    return int(batch_size)


def eval_batch_size(batch_size, n, name="batch_size"):
    """Chunk size for evaluation: ``None`` or a positive int, capped at ``n``."""
    if batch_size is None:
        return None
    return min(check_batch_size(batch_size, 2 ** 62, name), n)


def check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
        raise TypeError(f"epochs: expected a positive integer, got {epochs!r}")
    if epochs <= 0:
        raise ValueError(f"epochs: must be a positive integer, got {epochs}")
    return int(epochs)


def check_key(key, name="key"):
    if not isinstance(key, jax.Array):
        hint = (f" (an int seed is not a key: use jax.random.key({key}))"
                if isinstance(key, numbers.Integral) else "")
        raise TypeError(f"{name}: expected a jax.random key (jax.random.key(seed)), "
                        f"got {type(key).__name__}{hint}")
    return key


def check_same_structure(name_a: str, a, name_b: str, b) -> None:
    """Raise ``ValueError`` unless two pytrees have the same structure, naming every leaf
    path present in one and missing in the other."""
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta == tb:
        return
    from jbp.core import named_leaves  # noqa: PLC0415

    na = [n for n, _ in named_leaves(a)]
    nb = [n for n, _ in named_leaves(b)]
    missing = [n for n in na if n not in nb]
    extra = [n for n in nb if n not in na]
    parts = []
    if missing:
        parts.append(f"missing in {name_b}: {', '.join(missing)}")
    if extra:
        parts.append(f"not in {name_a}: {', '.join(extra)}")
    if not parts:
        parts.append(f"{name_a} is {ta}, {name_b} is {tb}")
    raise ValueError(f"{name_b} does not have the structure of {name_a}: " + "; ".join(parts))


def cached_if_hashable(cache: dict, key, build, *, max_size: int = 32):
    """``cache[key]``, built by ``build()`` on a miss; ``build()`` uncached when ``key`` is
    not hashable (an unhashable model or loss). Oldest entries go first past ``max_size``."""
    try:
        hash(key)
    except TypeError:
        return build()
    value = cache.get(key)
    if value is None:
        if len(cache) >= max_size:
            cache.pop(next(iter(cache)))
        value = cache[key] = build()
    return value
