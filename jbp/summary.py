"""``jbp.summary``: a table of a model's layers, output shapes, parameter counts and dtypes.

Nothing is computed: shapes and dtypes come from ``jax.eval_shape`` over each layer's
``init`` (and ``init_state`` for non-trainable state such as BatchNorm's running
statistics), or from the ``params`` you pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jbp.core import Layer, PyTree, Sequential

__all__ = ["summary", "Row"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: ``name`` (the layer's path, e.g. ``layers[1].block``),
    ``kind`` (its class), ``depth`` (nesting level), ``out_shape`` (without the batch axis),
    ``params`` / ``state`` (element counts, a composite's include its children's) and
    ``dtypes`` (the parameters' dtypes)."""

    name: str
    kind: str
    depth: int
    out_shape: tuple
    params: int
    state: int
    dtypes: tuple


def _count(tree) -> int:
    return sum(math.prod(jnp.shape(a)) for a in jax.tree.leaves(tree))


def _dtypes(tree) -> tuple:
    return tuple(
        sorted(
            {
                str(jnp.result_type(a) if not hasattr(a, "dtype") else a.dtype)
                for a in jax.tree.leaves(tree)
            }
        )
    )


def _abstract_init(layer: Layer, in_shape: tuple):
    """``(params as ShapeDtypeStructs, out_shape)`` without running the initializers."""
    box = []

    def f(k):
        params, out = layer.init(k, in_shape)
        box.append(tuple(int(d) for d in out))
        return params

    params = jax.eval_shape(f, jax.random.key(0))
    return params, box[0]


def _children(layer: Layer, params, in_shape):
    """``[(suffix, child, child_params, child_in_shape), ...]`` of a composite (else [])."""
    if isinstance(layer, Sequential):
        out, shape = [], in_shape
        for i, child in enumerate(layer.layers):
            p = params[i] if params is not None else None
            out.append((f"layers[{i}]", child, p, shape))
            shape = _abstract_init(child, shape)[1]
        return out
    block = getattr(layer, "block", None)
    if isinstance(block, Layer):  # Residual, PositionWise: params are the block's own
        return [("block", block, params, in_shape)]
    return []


def _walk(layer, params, in_shape, name, depth, rows):
    abstract, out_shape = _abstract_init(layer, in_shape)
    if params is None:
        params_view = abstract
    else:
        params_view = params
        if jax.tree.structure(params) != jax.tree.structure(abstract):
            raise ValueError(
                f"summary: params of {name} ({type(layer).__name__}) do not match "
                f"the model's structure: expected {jax.tree.structure(abstract)}, "
                f"got {jax.tree.structure(params)}"
            )
    state = jax.eval_shape(lambda: layer.init_state(in_shape)) if layer.stateful else ()
    rows.append(
        Row(
            name,
            type(layer).__name__,
            depth,
            out_shape,
            _count(params_view),
            _count(state),
            _dtypes(params_view),
        )
    )
    for suffix, child, p, shape in _children(layer, params, in_shape):
        _walk(child, p, shape, f"{name}.{suffix}" if name else suffix, depth + 1, rows)


def rows(model: Layer, in_shape: Sequence[int], *, params: PyTree = None) -> list[Row]:
    """The table's rows, the whole model first (depth 0), then its layers depth-first."""
    if not isinstance(model, Layer):
        raise TypeError(f"summary: model must be a jbp Layer, got {type(model).__name__}")
    try:
        in_shape = tuple(int(d) for d in in_shape)
    except TypeError:
        raise TypeError(
            f"summary: in_shape must be a tuple of ints (without the batch axis), got {in_shape!r}"
        ) from None
    if any(d <= 0 for d in in_shape):
        raise ValueError(f"summary: in_shape must have positive sizes, got {in_shape}")
    out: list[Row] = []
    _walk(model, params, in_shape, "", 0, out)
    return out


def _fmt_shape(shape) -> str:
    return "(None" + "".join(f", {d}" for d in shape) + ")"


def summary(
    model: Layer,
    in_shape: Sequence[int],
    *,
    params: PyTree = None,
    dtype: DTypeLike = jnp.float32,
    print_fn: Callable[[str], Any] | None = None,
) -> str:
    """A table of ``model``'s layers with output shapes, parameter counts and dtypes.

    Layers are named by their path in ``params`` (``layers[2]``, ``layers[0].block.layers[1]``)
    and indented by nesting; a composite's counts include its children's. The totals count
    trainable parameters and, separately, non-trainable state (BatchNorm's running mean and
    variance). Nothing runs: shapes come from ``jax.eval_shape``.

    Args:
      model: a :class:`jbp.Layer` (usually a ``Sequential``).
      in_shape: one example's input shape, without the batch axis, e.g. ``(64,)``.
      params: the parameters to describe (their dtypes and sizes); default: what
        ``model.init`` would create.
      dtype: the input's dtype (e.g. ``jnp.int32`` for token ids); the model's output dtype
        on the last line is derived from it with ``jax.eval_shape``.
      print_fn: if given, called with the table (e.g. ``print``).

    Returns:
      The table as a string.

    Raises:
      TypeError: ``model`` is not a Layer or ``in_shape`` not a tuple of ints.
      ValueError: ``in_shape`` has a non-positive size, or ``params`` does not fit the model.
    """
    table = rows(model, in_shape, params=params)
    in_shape = tuple(int(d) for d in in_shape)
    head = ("Layer", "Output shape", "Params", "Dtype")
    lines = [
        (
            ("  " * max(r.depth - 1, 0)) + (f"{r.name} " if r.name else "") + r.kind,
            _fmt_shape(r.out_shape),
            f"{r.params:,}" + (f" (+{r.state:,} state)" if r.state else ""),
            ",".join(r.dtypes) or "-",
        )
        for r in table[1:] or table
    ]
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(
        c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    rule = "─" * len(fmt(tuple("x" * w for w in widths)))
    total = table[0]
    p_struct = (
        params
        if params is not None
        else jax.eval_shape(lambda k: model.init(k, in_shape)[0], jax.random.key(0))
    )
    x = jax.ShapeDtypeStruct((1, *in_shape), jnp.dtype(dtype))
    if model.stateful:
        st = jax.eval_shape(lambda: model.init_state(in_shape))
        y = jax.eval_shape(
            lambda p, s, x: model.forward_with_state(p, s, x, train=False)[0], p_struct, st, x
        )
    else:
        y = jax.eval_shape(lambda p, x: model.forward(p, x, train=False)[0], p_struct, x)
    y_dtype = getattr(getattr(y, "values", y), "dtype", "?")
    out = [
        f"{type(model).__name__} on input (None, {', '.join(map(str, in_shape))}) {jnp.dtype(dtype)}".replace(
            ", )", ")"
        ),
        rule,
        fmt(head),
        rule,
        *map(fmt, lines),
        rule,
        f"Trainable params: {total.params:,} ({', '.join(total.dtypes) or '-'})",
        f"Non-trainable state: {total.state:,}",
        f"Output: {_fmt_shape(total.out_shape)} {y_dtype}",
    ]
    text = "\n".join(out)
    if print_fn is not None:
        print_fn(text)
    return text
