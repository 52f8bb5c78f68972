"""Boundary checks, in one place.

Everything here runs once, on concrete values (or on static shapes at trace time), before
anything is compiled; errors name the argument (or the layer path), what was expected and
what came. Nothing inside compiled code is checked again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import PyTreeDef

if TYPE_CHECKING:
    from jbp.core import Layer, PyTree

__all__ = [
    "check_array",
    "check_floating",
    "check_batch",
    "check_data",
    "check_model_and_loss",
    "check_optimizer",
    "check_grad_fn",
    "check_augment",
    "check_batch_size",
    "eval_batch_size",
    "check_epochs",
    "check_key",
    "check_positive",
    "check_same_structure",
    "cached_if_hashable",
    "check_model",
    "check_bool",
    "check_in_shape",
    "model_spec",
    "check_params",
    "check_tree",
    "check_opt_state",
    "check_state",
    "check_targets",
    "check_model_input",
    "concrete",
    "value_range",
    "check_index_range",
    "check_interval",
    "check_regularizer",
    "check_mesh",
    "check_mesh_batches",
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
        raise ValueError(
            f"x and y: expected the same number of examples, got x with "
            f"{x.shape[0]} (shape {x.shape}) and y with {y.shape[0]} (shape {y.shape})"
        )
    if x.shape[0] == 0:
        raise ValueError("x: got an empty batch (0 examples)")
    return x, y


def check_model(model) -> None:
    """``model`` is a jbp Layer."""
    from jbp.core import Layer  # noqa: PLC0415 - core imports this module

    if not isinstance(model, Layer):
        raise TypeError(
            f"model: expected a jbp Layer (e.g. jbp.Sequential), got {type(model).__name__}"
        )


def check_model_and_loss(model, loss, regularizer=None) -> None:
    """``model`` is a jbp Layer, ``loss`` has ``value``/``grad``, ``regularizer`` ``value``/``grad``."""
    check_model(model)
    if not (hasattr(loss, "value") and hasattr(loss, "grad")):
        raise TypeError(
            f"loss: expected a jbp loss with .value and .grad "
            f"(e.g. jbp.losses.mse), got {type(loss).__name__}"
        )
    if regularizer is not None and not (
        hasattr(regularizer, "value") and hasattr(regularizer, "grad")
    ):
        raise TypeError(
            f"regularizer: expected an object with .value(params) and .grad(params) "
            f"(e.g. jbp.regularizers.l2(1e-4)), got {type(regularizer).__name__}"
        )


def check_optimizer(optimizer) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer: expected an optimizer with .init(params) and "
            f".update(grads, state, params) (e.g. jbp.optim.sgd(0.1)), "
            f"got {type(optimizer).__name__}"
        )


def check_grad_fn(grad_fn) -> None:
    if grad_fn not in GRAD_FNS:
        raise ValueError(
            f"grad_fn: expected 'manual' (the hand-written backward) or "
            f"'autodiff' (jax.grad), got {grad_fn!r}"
        )


def check_augment(augment) -> None:
    if augment is not None and not callable(augment):
        raise TypeError(
            f"augment: expected a callable augment(key, x) -> x, got {type(augment).__name__}"
        )


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
        raise TypeError(
            f"{name}: expected a pair (x, y) of arrays, got "
            f"{type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
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
        raise ValueError(
            f"{name}: x and y must have the same number of examples, got "
            f"x with {x.shape[0]} (shape {tuple(x.shape)}) and y with {y.shape[0]} "
            f"(shape {tuple(y.shape)})"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty data (0 examples)")
    for part, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact) and not _all_finite(a):
            bad = int(a.size - int(np.isfinite(np.asarray(a)).sum()))
            raise ValueError(
                f"{name}: {part} contains {bad} NaN or Inf value(s); "
                f"clean or impute the data before training"
            )
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
        raise TypeError(
            f"{name}: expected None (full batch), or an integer "
            f"(1 = SGD, k = minibatch), got {batch_size!r}"
        )
    if batch_size <= 0:
        raise ValueError(f"{name}: must be a positive integer (1 = SGD), got {batch_size}")
    if batch_size > n:
        raise ValueError(
            f"{name}: {batch_size} is larger than the data ({n} examples); use "
            f"batch_size=None (or {n}) for full-batch gradient descent"
        )
    return int(batch_size)


def eval_batch_size(batch_size, n, name="batch_size"):
    """Chunk size for evaluation: ``None`` or a positive int, capped at ``n``."""
    if batch_size is None:
        return None
    return min(check_batch_size(batch_size, 2**62, name), n)


def check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
        raise TypeError(f"epochs: expected a positive integer, got {epochs!r}")
    if epochs <= 0:
        raise ValueError(f"epochs: must be a positive integer, got {epochs}")
    return int(epochs)


def check_key(key, name="key"):
    if not isinstance(key, jax.Array):
        hint = (
            f" (an int seed is not a key: use jax.random.key({key}))"
            if isinstance(key, numbers.Integral)
            else ""
        )
        raise TypeError(
            f"{name}: expected a jax.random key (jax.random.key(seed)), "
            f"got {type(key).__name__}{hint}"
        )
    return key


def check_same_structure(name_a: str, a, name_b: str, b) -> None:
    """Raise ``ValueError`` unless two pytrees have the same structure, naming every leaf
    path present in one and missing in the other."""
    # annotated: mypy does not resolve jax's own PyTreeDef annotation
    ta: PyTreeDef = jax.tree.structure(a)
    tb: PyTreeDef = jax.tree.structure(b)
    if ta == tb:
        return
    missing, extra = _leaf_name_diff(a, b, _param_name)
    parts = []
    if missing:
        parts.append(f"missing in {name_b}: {', '.join(missing)}")
    if extra:
        parts.append(f"not in {name_a}: {', '.join(extra)}")
    if not parts:
        parts.append(f"{name_a} is {ta}, {name_b} is {tb}")
    raise ValueError(f"{name_b} does not have the structure of {name_a}: " + "; ".join(parts))


def _leaf_name_diff(expected, got, namer):
    """``(missing, extra)``: leaf names of ``expected`` absent from ``got``, and the reverse."""
    exp_names = [namer(p) for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]]
    got_names = [namer(p) for p, _ in jax.tree_util.tree_flatten_with_path(got)[0]]
    return (
        [n for n in exp_names if n not in got_names],
        [n for n in got_names if n not in exp_names],
    )


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


def check_bool(name: str, value) -> bool:
    """A Python (or numpy) bool; ``TypeError`` naming the argument otherwise (``"no"``, 0, ...)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")


# --------------------------------------------------------------------------------------
# Parameters, optimizer state and model state against what the model / optimizer build
# --------------------------------------------------------------------------------------


def check_in_shape(in_shape, name: str = "in_shape") -> tuple:
    """One example's shape (no batch axis) as a tuple of ints ``>= 0``.

    An int (``64`` for ``(64,)``) is the usual slip; it gets its own message.
    """
    if isinstance(in_shape, numbers.Integral) and not isinstance(in_shape, bool):
        raise TypeError(
            f"{name}: expected a tuple of ints, the shape of one example without "
            f"the batch axis, got the int {in_shape}; write ({int(in_shape)},)"
        )
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, (tuple, list)):
        raise TypeError(
            f"{name}: expected a tuple of ints (one example's shape, without the "
            f"batch axis), got {type(in_shape).__name__} {in_shape!r}"
        )
    for i, d in enumerate(in_shape):
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0:
            raise TypeError(
                f"{name}: expected a tuple of ints >= 0, got {tuple(in_shape)!r} "
                f"(entry {i} is {d!r})"
            )
    return tuple(int(d) for d in in_shape)


_SPEC_CACHE: dict = {}


def model_spec(model, in_shape):
    """``(params_spec, out_shape)`` of ``model.init(key, in_shape)`` without creating arrays.

    ``params_spec`` is a pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape``); ``out_shape``
    the output shape (static ints, captured from inside the trace). Cached per hashable
    ``(model, in_shape)``.
    """
    in_shape = check_in_shape(in_shape)

    def build():
        box = []

        def f(k):
            p, out = model.init(k, in_shape)
            box.append(out)
            return p

        try:
            spec = jax.eval_shape(f, jax.random.key(0))
        except (ValueError, TypeError) as e:
            raise type(e)(f"the model does not accept examples of shape {in_shape}: {e}") from e
        return spec, tuple(int(d) for d in box[0])

    return cached_if_hashable(_SPEC_CACHE, (model, in_shape), build)


def _keystr_name(prefix: str):
    def name(path) -> str:
        return prefix + jax.tree_util.keystr(path)

    return name


def _param_name(path) -> str:
    from jbp.core import leaf_name  # noqa: PLC0415 - core imports this module

    return leaf_name(path)


def _shape_of(leaf):
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        return tuple(leaf.shape), jnp.dtype(leaf.dtype)
    if isinstance(leaf, (bool, numbers.Number)):
        return (), jnp.result_type(type(leaf))
    return None, None


def check_tree(
    name: str, tree, expected_name: str, expected, *, namer=None, hint: str = "", kinds: bool = True
) -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of ``expected``.

    ``expected`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
    ``jax.eval_shape``). Every mismatching leaf is listed by its path (``namer(path)``;
    default :func:`jbp.core.leaf_name`) with the expected and the found shape; a leaf that
    is missing or extra is named as such. With ``kinds``, a floating-point leaf must stay
    floating point (its precision may differ). ``TypeError`` for a leaf that is not an
    array, ``ValueError`` for the rest.
    """
    namer = namer or _param_name
    got_def: PyTreeDef  # mypy does not resolve jax's own annotation of it
    got, got_def = jax.tree_util.tree_flatten_with_path(tree)
    exp, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    suffix = f"; {hint}" if hint else ""
    if got_def != exp_def:
        missing, extra = _leaf_name_diff(expected, tree, namer)
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"unexpected {_few(extra)}")
        if not parts:
            parts.append(f"the containers differ: expected {exp_def}, found {got_def}")
        raise ValueError(
            f"{name}: the structure differs from {expected_name}: " + "; ".join(parts) + suffix
        )
    bad = []
    for (path, g), (_, e) in zip(got, exp):
        where = namer(path)
        g_shape, g_dtype = _shape_of(g)
        if g_shape is None:
            raise TypeError(
                f"{name}: {where} is a {type(g).__name__}, expected an array of "
                f"shape {tuple(e.shape)}{suffix}"
            )
        e_shape = tuple(e.shape)
        if g_shape != e_shape:
            note = " (transposed?)" if len(e_shape) == 2 and g_shape == e_shape[::-1] else ""
            bad.append(f"{where}: expected shape {e_shape}, found {g_shape}{note}")
        elif (
            kinds
            and jnp.issubdtype(e.dtype, jnp.floating)
            and not jnp.issubdtype(g_dtype, jnp.floating)
        ):
            bad.append(f"{where}: expected a floating-point array, found dtype {g_dtype}")
    if bad:
        raise ValueError(f"{name}: shapes differ from {expected_name}: " + "; ".join(bad) + suffix)


def _few(names, k: int = 6) -> str:
    """``a, b, c`` — at most ``k`` names, then how many more."""
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def check_params(
    model: Layer, params: PyTree, in_shape: Sequence[int], *, name: str = "params"
) -> tuple[int, ...]:
    """Check ``params`` against ``model.init(key, in_shape)``; return the output shape.

    The expected structure and shapes come from ``jax.eval_shape`` of ``model.init`` (no
    arrays are made). A missing or extra leaf, a wrong shape (a ``Dense`` ``W`` whose width
    is not ``units``, a bias that would broadcast, a transposed matrix) or a non-floating
    leaf where the model has a floating one raises ``ValueError`` naming the leaf path
    (``layers[2].W``), the expected and the found shape.

    Args:
      model: a jbp layer (e.g. ``jbp.Sequential``).
      params: the parameter pytree to check.
      in_shape: the shape of one example, without the batch axis (``x.shape[1:]``).
      name: how ``params`` is called in messages.

    Returns:
      The model's output shape for one example (``model.init``'s second result).
    """
    check_model(model)
    in_shape = check_in_shape(in_shape)
    spec, out_shape = model_spec(model, in_shape)
    check_tree(
        name,
        params,
        f"model.init(key, {in_shape})",
        spec,
        hint="were they made by this model's init, for examples of this shape?",
    )
    return out_shape


def check_opt_state(optimizer, opt_state, params, *, name: str = "opt_state") -> None:
    """``opt_state`` must have the structure and leaf shapes of ``optimizer.init(params)``
    (``jax.eval_shape``: nothing is allocated); e.g. a state from another optimizer is named
    here instead of failing with an ``AttributeError`` inside the step."""
    expected = jax.eval_shape(optimizer.init, params)
    check_tree(
        name,
        opt_state,
        "optimizer.init(params)",
        expected,
        namer=_keystr_name(name),
        hint="is it the state of this optimizer, for these params?",
        kinds=False,
    )


def check_state(model, state, in_shape, *, name: str = "state") -> None:
    """A stateful model's ``state`` against ``model.init_state(in_shape)``."""
    expected = jax.eval_shape(lambda: model.init_state(check_in_shape(in_shape)))
    check_tree(
        name,
        state,
        f"model.init_state({tuple(in_shape)})",
        expected,
        hint="is it the state of this model?",
    )


# --------------------------------------------------------------------------------------
# Targets and ids: concrete range checks that cannot run under jit
# --------------------------------------------------------------------------------------


def concrete(a):
    """``a`` itself when it holds concrete values, ``None`` while it is being traced."""
    return None if isinstance(a, jax.core.Tracer) else a


@jax.jit
def _min_max_jax(a):
    return jnp.min(a), jnp.max(a)


def value_range(a):
    """``(min, max)`` of a concrete, non-empty array as Python numbers (one pass)."""
    if isinstance(a, (np.ndarray, np.generic)):
        lo, hi = np.min(a), np.max(a)
    else:
        lo, hi = jax.device_get(_min_max_jax(a))
    return lo.item(), hi.item()


def _first_outside(a, lo, hi, closed: bool) -> str:
    """``"x[i, j] = v"`` for the first entry outside the interval (only on failure)."""
    a = np.asarray(a)
    bad = (a < lo) | ((a > hi) if closed else (a >= hi))
    if a.dtype.kind == "f":
        bad |= np.isnan(a)
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"[{', '.join(map(str, idx))}] = {a[idx]}"


def check_index_range(what: str, a, n: int) -> None:
    """Concrete integer ``a`` must lie in ``[0, n)`` (class labels, token ids); a tracer or
    an empty array passes. The message gives the range found, how many entries are out and
    the first one."""
    a = concrete(a)
    if a is None or a.size == 0:
        return
    lo, hi = value_range(a)
    if lo < 0 or hi >= n:
        count = int(np.sum((np.asarray(a) < 0) | (np.asarray(a) >= n)))
        raise ValueError(
            f"{what} must lie in [0, {n}), got values in [{lo}, {hi}]: {count} of "
            f"{a.size} out of range, the first at {_first_outside(a, 0, n, False)}"
        )


def check_interval(what: str, a, lo: float, hi: float) -> None:
    """Concrete ``a`` must lie in the closed interval ``[lo, hi]``; a tracer passes."""
    a = concrete(a)
    if a is None or a.size == 0:
        return
    mn, mx = value_range(a)
    if not (mn >= lo and mx <= hi):
        count = int(np.sum(~((np.asarray(a) >= lo) & (np.asarray(a) <= hi))))
        raise ValueError(
            f"{what} must lie in [{lo:g}, {hi:g}], got values in [{mn}, {mx}]: "
            f"{count} of {a.size} outside, the first at "
            f"{_first_outside(a, lo, hi, True)}"
        )


def check_targets(loss, y, out_shape, *, name: str = "y") -> None:
    """Run ``loss.check_targets(y, out_shape)`` (when the loss has one) on concrete targets,
    prefixing its message with ``name`` (``train_data: y``, ``validation_data: y``)."""
    check = getattr(loss, "check_targets", None)
    if check is None or concrete(y) is None:
        return
    try:
        check(y, tuple(out_shape))
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name}: {e}") from None


def _input_layers(model):
    """The layers that see the raw input: the model, and (through ``Sequential``-like
    ``layers``) its first layer, recursively."""
    out = [model]
    layers = getattr(model, "layers", None)
    if isinstance(layers, (tuple, list)) and layers:
        out += _input_layers(layers[0])
    return out


def check_model_input(model, x, *, name: str = "x") -> None:
    """Run the ``check_input(x)`` of every layer that sees the raw input (an ``Embedding``
    checks its ids against the vocabulary) on concrete ``x``; the message names ``name``."""
    if concrete(x) is None:
        return
    for i, layer in enumerate(_input_layers(model)):
        check = getattr(layer, "check_input", None)
        if check is None:
            continue
        try:
            check(x)
        except (ValueError, TypeError) as e:
            where = ".".join(["layers[0]"] * i)
            prefix = f"{name}: " + (f"{where} ({type(layer).__name__}): " if i else "")
            raise type(e)(prefix + str(e)) from None


def check_regularizer(regularizer, params) -> None:
    """A regularizer with an explicit ``mask`` must select at least one leaf of ``params``
    (``regularizer.check_params(params)`` when it has one)."""
    check = getattr(regularizer, "check_params", None)
    if check is not None:
        check(params)


# --------------------------------------------------------------------------------------
# Device meshes (data parallelism)
# --------------------------------------------------------------------------------------


def check_mesh(mesh, name: str = "mesh"):
    """``None``, or the number of devices on the ``"data"`` axis of a ``jax.sharding.Mesh``.

    Raises:
      TypeError: ``mesh`` is not a ``jax.sharding.Mesh`` (or ``None``).
      ValueError: the mesh has no ``"data"`` axis.
    """
    if mesh is None:
        return None
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(
            f"{name}: expected a jax.sharding.Mesh with a 'data' axis (e.g. "
            f"jbp.distributed.data_mesh()), or None, got {type(mesh).__name__}"
        )
    if "data" not in mesh.axis_names:
        raise ValueError(
            f"{name}: expected a mesh with a 'data' axis to shard the batch over, "
            f"got axes {tuple(mesh.axis_names)}; build one with "
            f"jax.make_mesh((n,), ('data',)) or jbp.distributed.data_mesh()"
        )
    return int(mesh.shape["data"])


def check_mesh_batches(
    n_devices, bs: int, rem: int, *, name: str = "batch_size", drop_last_hint: bool = True
) -> None:
    """Every batch (the full ones of ``bs`` rows and the remainder of ``rem``) must split
    evenly over the ``n_devices`` of the mesh's ``"data"`` axis. No padding is done."""
    if n_devices is None:
        return
    if bs % n_devices:
        down, up = bs - bs % n_devices, bs + n_devices - bs % n_devices
        eg = f"{down} or {up}" if down else f"{up}"
        raise ValueError(
            f"{name}: {bs} examples per batch do not split evenly over the "
            f"{n_devices} devices of the mesh's 'data' axis; use a multiple of "
            f"{n_devices} (e.g. {eg})"
        )
    if rem % n_devices:
        hint = " or drop_last=True" if drop_last_hint else ""
        raise ValueError(
            f"{name}: the last batch of the epoch has {rem} examples (the data "
            f"size mod {bs}), which does not split evenly over the {n_devices} "
            f"devices of the mesh's 'data' axis; make the number of examples a "
            f"multiple of {n_devices} (or of {bs}){hint}"
        )
