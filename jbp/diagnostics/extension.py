"""The diagnostics' extension: per-layer statistics from the engine's one backward walk.

:class:`GradientStats` is a :mod:`jbp.extensions` extension with ``params_only = False``, so
:func:`jbp.backprop` visits *every* leaf layer — ``Dense``, ``Conv2D``, ``LSTM``, ``BatchNorm``,
but also activations, pooling, ``Flatten`` — with its ``(params, cache, dy, grads)``, and
turns that visit into a row of scalars. Nothing here knows a layer type:

* the delta ``dy = ∂C/∂yˡ`` at the layer's output gives ``delta_norm`` (every layer);
* the layer's own parameters and gradients give the norms (layers with parameters), split
  into *bias* leaves — top-level keys named in ``layer.bias_leaves`` when the layer sets
  it, else :data:`BIAS_LEAVES` (``b``, ``beta``) — and *weights* (every other leaf);
* a layer with a ``unit_stats(cache, **thresholds) -> dict`` method (``Sigmoid``, ``Tanh``,
  ``ReLU``; see :mod:`jbp.layers.activations`) adds what it returns (``saturated``,
  ``dead``), computed from its own cache.

Each row is a :class:`LayerRow` — a ``dict`` ``{quantity: scalar}`` that also carries the
layer object and its per-example output shape as static pytree data, so the rows survive
``jax.jit`` and the host side can say which layer each one belongs to. The engine places
the rows in the structure of ``params``; :func:`rows_by_name` names them by their path
(``layers[2]``, nested ``layers[1].layers[0]``).

Use it on its own, next to other extensions, in any pass::

    out = jbp.backprop(model, loss, extensions=[jbp.diagnostics.GradientStats()])(params, x, y)
    jbp.diagnostics.rows_by_name(out.extras["gradient_stats"])   # {path: {quantity: value}}
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jbp.core import leaf_name
from jbp.core import unmasked as _values
from jbp.extensions.base import Extension

if TYPE_CHECKING:
    from jax.typing import ArrayLike

    from jbp.core import Layer, PyTree
    from jbp.engine import LayerCall

__all__ = [
    "GradientStats",
    "LayerDeltas",
    "LayerRow",
    "BIAS_LEAVES",
    "safe_norm",
    "per_example_norms",
    "rows_by_name",
    "with_update_ratios",
]

#: top-level parameter keys counted as a layer's bias (``∂C/∂b = Σ_batch δ``) when the layer
#: does not say otherwise with a ``bias_leaves`` attribute: ``Dense``/``Conv2D``/``SimpleRNN``/
#: ``LSTM`` ``b``, ``BatchNorm``/``LayerNorm`` ``beta``.
BIAS_LEAVES = ("b", "beta")


def safe_norm(x: ArrayLike) -> jax.Array:
    """``‖x‖₂`` of all entries, rescaled by ``max|x|`` so that huge (but finite) values
    do not overflow to ``inf`` when squared; ``nan`` if any entry is ``nan``, ``inf`` if
    any is ``±inf``."""
    x = jnp.ravel(jnp.asarray(x))
    if x.size == 0:
        return jnp.zeros((), x.dtype)
    m = jnp.max(jnp.abs(x))
    ok = jnp.isfinite(m) & (m > 0)
    safe_m = jnp.where(ok, m, 1)
    scaled = safe_m * jnp.sqrt(jnp.sum((x / safe_m) ** 2))
    return jnp.where(ok, scaled, m)


def _joint_norm(norms):
    """``‖(a, b, ...)‖`` from the leaves' norms ``‖a‖, ‖b‖, ...`` (no concatenation)."""
    return norms[0] if len(norms) == 1 else safe_norm(jnp.stack(norms))


class LayerRow(dict):
    """One layer's statistics, ``{quantity: value}``; ``.layer`` is the layer object and
    ``.out_shape`` its per-example output shape (``None`` for a non-array output). Both
    are static pytree data: a ``LayerRow`` goes through ``jax.jit`` and comes back whole."""

    def __init__(
        self, layer: Layer, out_shape: tuple[int, ...] | None, values: Mapping[str, Any]
    ) -> None:
        super().__init__(values)
        self.layer = layer
        self.out_shape = out_shape

    def __repr__(self) -> str:
        return f"LayerRow({type(self.layer).__name__}, {dict(self)!r})"


def _row_flatten_with_keys(row):
    keys = tuple(sorted(row))
    return [(jax.tree_util.DictKey(k), row[k]) for k in keys], (row.layer, row.out_shape, keys)


def _row_flatten(row):
    keys = tuple(sorted(row))
    return [row[k] for k in keys], (row.layer, row.out_shape, keys)


def _row_unflatten(aux, children):
    layer, out_shape, keys = aux
    return LayerRow(layer, out_shape, dict(zip(keys, children)))


jax.tree_util.register_pytree_with_keys(
    LayerRow, _row_flatten_with_keys, _row_unflatten, _row_flatten
)


def _is_row(v) -> bool:
    return isinstance(v, LayerRow)


def _param_leaves(layer, params):
    """``[(leaf name, is_bias, leaf)]`` of one layer's parameters, in flattening order."""
    bias = getattr(layer, "bias_leaves", BIAS_LEAVES)
    if isinstance(bias, str):
        bias = (bias,)
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        top = path[0] if path else None
        is_bias = (
            isinstance(params, Mapping)
            and isinstance(top, jax.tree_util.DictKey)
            and top.key in bias
        )
        name = jax.tree_util.keystr(path, simple=True, separator=".") if path else "<root>"
        out.append((name, is_bias, leaf))
    return out


def _check_eps(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 < v < 0.5):
        raise ValueError(f"{name}: expected a number in (0, 0.5), got {v!r}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class GradientStats(Extension):
    """``"gradient_stats"``: one :class:`LayerRow` per leaf layer (parameterless ones too).

    Quantities (``C`` the batch-mean loss, ``n`` the batch size, ``δ = ∂C/∂y`` the delta
    the hand-written backward hands to the layer's output ``y``; norms are Frobenius, over
    all entries):

    =====================  ==============================================================
    ``delta_norm``         ``1/n Σₓ ‖n·δ[x]‖``: the batch-mean norm of the per-example
                           delta (row ``x`` of ``n·δ`` is the delta of example ``x``'s own
                           loss); every layer
    ``grad_norm``          ``‖∂C/∂θˡ‖`` over all of the layer's parameters
    ``param_norm``         ``‖θˡ‖`` over all of the layer's parameters
    ``grad_W_norm``        ``‖∂C/∂Wˡ‖`` over the layer's weights: every parameter leaf but
                           the bias (``Dense``/``Conv2D``/``Embedding``: ``W``; ``SimpleRNN``/
                           ``LSTM``: ``W_x`` and ``W_h`` together; norms: ``gamma``)
    ``W_norm``             ``‖Wˡ‖`` over the same weights
    ``bias_grad_norm``     ``‖∂C/∂bˡ‖`` over the bias leaves (:data:`BIAS_LEAVES`, or the
                           layer's ``bias_leaves``): Nielsen's *speed of learning*
    ``leaves``             ``{leaf: {"grad_norm", "param_norm"}}`` per parameter leaf
                           (``"W_x"``, ``"b"``, ...)
    ``saturated``, ...     whatever the layer's ``unit_stats(cache, sigmoid_eps=...,
                           tanh_eps=...)`` returns (``Sigmoid``/``Tanh``: ``saturated``;
                           ``ReLU``: ``dead``)
    =====================  ==============================================================

    A quantity a layer does not have is absent from its row (no bias, no weights, no
    ``unit_stats``). ``update_ratio`` needs the optimizer's updates, which the walk does not
    see: :func:`with_update_ratios` adds it afterwards.

    Args:
      sigmoid_eps: saturation threshold handed to ``unit_stats`` (``Sigmoid``: ``a < ε`` or
        ``a > 1 − ε``), in ``(0, 0.5)``.
      tanh_eps: saturation threshold handed to ``unit_stats`` (``Tanh``: ``|a| > 1 − ε``),
        in ``(0, 0.5)``.
    """

    sigmoid_eps: float = 0.05
    tanh_eps: float = 0.05

    name = "gradient_stats"
    params_only = False

    def __post_init__(self):
        object.__setattr__(self, "sigmoid_eps", _check_eps("sigmoid_eps", self.sigmoid_eps))
        object.__setattr__(self, "tanh_eps", _check_eps("tanh_eps", self.tanh_eps))

    def compute(self, call: LayerCall) -> LayerRow:
        """The row of one layer: generic, from ``call`` alone, plus the layer's own
        ``unit_stats`` when it has one (found with ``getattr``, never by type).

        Args:
          call: the layer's visit (:class:`jbp.engine.LayerCall`).

        Returns:
          A :class:`LayerRow`.
        """
        layer, n = call.layer, call.n
        dy = _values(call.dy)
        values: dict[str, Any] = {
            "delta_norm": jnp.mean(per_example_norms(jax.tree.map(lambda a: n * a, dy), n))
        }

        leaves = _param_leaves(layer, call.params)
        if leaves:
            grad_leaves = jax.tree.leaves(call.grads)
            if len(grad_leaves) != len(leaves):
                raise ValueError(
                    f"{layer!r}: backward returned {len(grad_leaves)} gradient "
                    f"leaves for {len(leaves)} parameter leaves"
                )
            g = [safe_norm(a) for a in grad_leaves]
            p = [safe_norm(leaf) for _, _, leaf in leaves]
            values["grad_norm"] = _joint_norm(g)
            values["param_norm"] = _joint_norm(p)
            w = [i for i, (_, is_bias, _) in enumerate(leaves) if not is_bias]
            b = [i for i, (_, is_bias, _) in enumerate(leaves) if is_bias]
            if w:
                values["grad_W_norm"] = _joint_norm([g[i] for i in w])
                values["W_norm"] = _joint_norm([p[i] for i in w])
            if b:
                values["bias_grad_norm"] = _joint_norm([g[i] for i in b])
            values["leaves"] = {
                name: {"grad_norm": g[i], "param_norm": p[i]}
                for i, (name, _, _) in enumerate(leaves)
            }

        unit_stats = getattr(layer, "unit_stats", None)
        if callable(unit_stats):
            extra = unit_stats(call.cache, sigmoid_eps=self.sigmoid_eps, tanh_eps=self.tanh_eps)
            if not isinstance(extra, Mapping):
                raise TypeError(
                    f"{layer!r}: unit_stats must return a dict {{name: scalar}}, "
                    f"got {type(extra).__name__}"
                )
            for k, v in extra.items():
                if k in values or k == "update_ratio":
                    raise ValueError(
                        f"{layer!r}: unit_stats returned {k!r}, which is a "
                        f"gradient statistic of the diagnostics; rename it"
                    )
                v = jnp.asarray(v)
                if v.ndim != 0:
                    raise ValueError(
                        f"{layer!r}: unit_stats must return scalars, got {k!r} of shape {v.shape}"
                    )
                values[k] = v
        out_shape = tuple(dy.shape[1:]) if hasattr(dy, "shape") else None
        return LayerRow(layer, out_shape, values)


@dataclasses.dataclass(frozen=True)
class LayerDeltas(Extension):
    """``"layer_deltas"``: the delta ``dy = ∂C/∂yˡ`` handed to every leaf layer's output
    (the values of a ``Masked`` one), as a one-entry :class:`LayerRow` ``{"delta": dy}``."""

    name = "layer_deltas"
    params_only = False

    def compute(self, call: LayerCall) -> LayerRow:
        dy = _values(call.dy)
        return LayerRow(
            call.layer, tuple(dy.shape[1:]) if hasattr(dy, "shape") else None, {"delta": dy}
        )


def per_example_norms(tree: PyTree, n: int) -> jax.Array:
    """``(n,)``: ``‖tree[x]‖``, the norm of example ``x``'s rows of every leaf together.

    Args:
      tree: an array or a pytree of arrays, each with the batch axis first.
      n: the batch size.
    """
    leaves = [jnp.reshape(a, (n, -1)) for a in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((n,))
    norms = [jax.vmap(safe_norm)(a) for a in leaves]
    return norms[0] if len(norms) == 1 else jax.vmap(safe_norm)(jnp.stack(norms, axis=1))


def with_update_ratios(rows: PyTree, params: PyTree, updates: PyTree) -> PyTree:
    """Add ``update_ratio = ‖ΔWˡ‖/‖Wˡ‖`` (weights, as ``grad_W_norm``) to every row with
    weights, and ``leaves[leaf]["update_ratio"] = ‖Δleaf‖/‖leaf‖`` to every parameter leaf.

    Args:
      rows: the engine's result for :class:`GradientStats` (the structure of ``params``
        down to the layers, a :class:`LayerRow` at each leaf layer).
      params: the parameters; each row meets its own layer's sub-tree.
      updates: a tree with the structure of ``params`` (checked by the caller).

    Returns:
      ``rows`` with the ratios added.
    """

    def one(row, p, u):
        leaves = _param_leaves(row.layer, p)
        if not leaves:
            return row
        u_leaves = jax.tree.leaves(u)
        du = [safe_norm(a) for a in u_leaves]
        values = dict(row)
        values["leaves"] = {
            name: dict(
                values["leaves"][name], update_ratio=du[i] / values["leaves"][name]["param_norm"]
            )
            for i, (name, _, _) in enumerate(leaves)
        }
        w = [i for i, (_, is_bias, _) in enumerate(leaves) if not is_bias]
        if w:
            values["update_ratio"] = _joint_norm([du[i] for i in w]) / values["W_norm"]
        return LayerRow(row.layer, row.out_shape, values)

    return jax.tree.map(one, rows, params, updates, is_leaf=_is_row)


def rows_by_name(rows: PyTree) -> dict[str, LayerRow]:
    """``{path: row}`` from the engine's result tree, in flattening (model) order.

    Paths follow :func:`jbp.core.leaf_name`: ``layers[2]``, nested ``layers[1].layers[0]``;
    a bare (non-composite) model's one row is named after its class.

    Args:
      rows: the engine's result for :class:`GradientStats` (or :class:`LayerDeltas`).

    Raises:
      TypeError: a leaf of ``rows`` is not a :class:`LayerRow` (a composite layer that did
        not hand its children's visits on).
    """
    out = {}
    for path, row in jax.tree_util.tree_flatten_with_path(rows, is_leaf=_is_row)[0]:
        if not isinstance(row, LayerRow):
            raise TypeError(
                f"diagnostics: the extension result at {leaf_name(path)} is a "
                f"{type(row).__name__}, not a layer's row; a composite layer must "
                f"hand every child's visit on (see Layer.backward_ext)"
            )
        out[leaf_name(path) if path else type(row.layer).__name__] = row
    return out
