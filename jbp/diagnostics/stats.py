"""Per-layer gradient statistics, read off the one engine (:func:`jbp.backprop`).

Everything here is one call of ``jbp.backprop(model, loss, extensions=[GradientStats()])``:
the engine runs the forward pass, the loss and the hand-written backward, and visits every
leaf layer of the model — whatever its type: ``Dense``, ``Conv2D``, pooling, ``BatchNorm``,
``LayerNorm``, ``Embedding``, ``SimpleRNN``/``LSTM``, activations, nested ``Sequential``\\ s —
with its cache, the delta ``δˡ = ∂C/∂yˡ`` at its output and its parameter gradient. No
autodiff is involved, and nothing here checks a layer's type. Layers are named by their
path in the params tree: ``layers[2]``, nested ``layers[1].layers[0]``.

Quantities (per leaf layer ``l``; ``C`` the batch-mean loss, ``n`` the batch size; a layer
that does not have one lacks it, ``None`` in a report):

=====================  ===================================================================
``delta_norm``         ``1/n Σₓ ‖δˡₓ‖`` with ``δˡₓ = n·δˡ[x]`` the delta of one example's own
                       loss at the layer's output: the batch-mean per-example delta norm
                       (every layer; for a ``Dense`` ``δ = ∂C/∂z``, for an activation
                       ``∂C/∂a``)
``bias_grad_norm``     ``‖∂C/∂bˡ‖`` — Nielsen's *speed of learning* of the layer (ch. 5);
                       bias leaves are the parameters named ``b`` (``Dense``, ``Conv2D``,
                       ``SimpleRNN``, ``LSTM``) or ``beta`` (``BatchNorm``, ``LayerNorm``),
                       or those a layer lists in its ``bias_leaves`` attribute
``grad_W_norm``        ``‖∂C/∂Wˡ‖`` over the layer's weights, i.e. every parameter leaf but
                       the bias (``W``; ``W_x`` and ``W_h`` of a recurrent layer together;
                       ``gamma`` of a norm layer)
``W_norm``             ``‖Wˡ‖`` over the same weights
``grad_norm``          ``‖∂C/∂θˡ‖`` over all of the layer's parameters
``param_norm``         ``‖θˡ‖`` over all of the layer's parameters
``update_ratio``       ``‖ΔWˡ‖/‖Wˡ‖`` (weights) for a given update tree (e.g. an optimizer's
                       ``updates``); about 1e-3 per step is the usual healthy range
``saturated``          on a ``Sigmoid`` layer: the fraction of the batch's activations with
                       ``a < ε`` or ``a > 1 − ε`` (``ε = sigmoid_eps``, default 0.05, where
                       ``σ' < 0.048``, under a fifth of its peak); on a ``Tanh`` layer: the
                       fraction with ``|a| > 1 − ε`` (``ε = tanh_eps``, default 0.05, where
                       ``tanh' < 0.098``)
``dead``               on a ``ReLU`` layer: the fraction of its units (entries of the last
                       axis: a ``Dense`` unit, a conv channel) whose input is ``≤ 0`` for
                       every example (and every position) of the batch
=====================  ===================================================================

Per parameter leaf (``W_x``, ``b``, ...), a report row's ``leaves`` holds ``grad_norm``,
``param_norm`` and, given updates, ``update_ratio``. ``saturated`` and ``dead`` come from
the layer's own ``unit_stats(cache, **thresholds)`` method (:mod:`jbp.layers.activations`):
give your own layer one and its statistics appear here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from jbp._validate import cached_if_hashable
from jbp._validate import check_batch as _check_batch
from jbp._validate import check_model_and_loss as _check_model_and_loss
from jbp.engine import backprop

if TYPE_CHECKING:
    import numpy as np

    from jbp.core import Array, Layer, PyTree
    from jbp.losses import Loss

from ._model import check_params_match, in_model_order
from .extension import (
    GradientStats,
    LayerDeltas,
    _check_eps,
    rows_by_name,
    safe_norm,
    with_update_ratios,
)

__all__ = [
    "gradient_stats_fn",
    "speed_of_learning",
    "layer_deltas",
    "layer_report",
    "LayerReport",
    "LayerStats",
    "safe_norm",
]


def _validate(model, loss, params, x, y, updates=None, state=None, train=True):
    """Boundary checks (trace time): returns ``(x, y)``."""
    _check_model_and_loss(model, loss)
    x, y = _check_batch(x, y)
    check_params_match(model, params, x.shape[1:])
    if updates is not None:
        try:
            check_params_match(model, updates, x.shape[1:])
        except ValueError as e:
            raise ValueError(f"updates must have the structure and shapes of params: {e}") from None
    if state is None and not train and model.stateful:
        raise ValueError(
            "state: the model has non-trainable state (e.g. BatchNorm's running "
            "statistics), which train=False uses; pass state= (from fit's history."
            "state, the train step, or model.init_state(in_shape) at "
            "initialization)"
        )
    return x, y


def _named_rows(model, loss, ext, train, params, x, y, key, state):
    """One engine pass with ``ext``: ``(loss, rows tree, {name: row})``."""
    try:
        out = backprop(model, loss, extensions=[ext])(
            params, x, y, key=key, state=state, train=train
        )
    except KeyError as e:  # the walk visited no layer (an empty Sequential): no result
        if e.args != (ext.name,):
            raise
        raise ValueError(f"diagnostics: the model has no layers: {model!r}") from None
    rows = out.extras[ext.name]
    named = rows_by_name(rows)
    if not named:
        raise ValueError(f"diagnostics: the model has no layers: {model!r}")
    return out.loss, rows, named


def _stats(
    model, loss, params, x, y, key=None, updates=None, state=None, *, train, sigmoid_eps, tanh_eps
):
    x, y = _validate(model, loss, params, x, y, updates, state, train)
    ext = GradientStats(sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps)
    value, rows, named = _named_rows(model, loss, ext, train, params, x, y, key, state)
    if updates is not None:
        named = rows_by_name(with_update_ratios(rows, params, updates))
    return {"loss": value, "layers": named}


_STATS_JITS: dict = {}
_DELTAS_JITS: dict = {}


def gradient_stats_fn(
    model: Layer,
    loss: Loss,
    *,
    train: bool = True,
    sigmoid_eps: float = 0.05,
    tanh_eps: float = 0.05,
) -> Callable[..., dict[str, Any]]:
    """The jit-compiled core of the diagnostics.

    Args:
      model: any jbp layer (``jbp.Sequential``, nested or not, of any layers).
      loss: a jbp loss.
      train: training behaviour of the forward pass (dropout on, batch statistics).
      sigmoid_eps: saturation threshold of sigmoid layers, in ``(0, 0.5)`` (see
        :mod:`jbp.diagnostics.stats`).
      tanh_eps: saturation threshold of tanh layers, in ``(0, 0.5)``.

    Returns:
      ``f(params, x, y, key=None, updates=None, state=None) -> {"loss": C, "layers": {name:
        {quantity: scalar}}}`` — one compiled call computing, for every leaf layer, the
        quantities of this module's table that it has (``update_ratio`` only when
        ``updates`` is given). Each ``{quantity: scalar}`` is a
        :class:`~jbp.diagnostics.LayerRow`, whose ``.layer`` is the layer object. A dict
        from ``jit`` comes back sorted by key: put it in model order with
        :func:`in_model_order`. ``state`` is the model's non-trainable state (needed with
        ``train=False`` by a model that has one, e.g. ``BatchNorm``). Arguments are checked
        when ``f`` is traced: params from another model raise ``ValueError``.
    """
    _check_model_and_loss(model, loss)
    sigmoid_eps = _check_eps("sigmoid_eps", sigmoid_eps)
    tanh_eps = _check_eps("tanh_eps", tanh_eps)
    train = bool(train)

    def build():
        return jax.jit(
            lambda params, x, y, key=None, updates=None, state=None: _stats(
                model,
                loss,
                params,
                x,
                y,
                key,
                updates,
                state,
                train=train,
                sigmoid_eps=sigmoid_eps,
                tanh_eps=tanh_eps,
            )
        )

    return cached_if_hashable(
        _STATS_JITS, (model, loss, train, sigmoid_eps, tanh_eps), build, max_size=64
    )


def speed_of_learning(
    model: Layer,
    loss: Loss,
    params: PyTree,
    x: Array | np.ndarray,
    y: Array | np.ndarray,
    *,
    key: Array | None = None,
    train: bool = True,
    state: PyTree = None,
) -> dict[str, float]:
    """Nielsen's *speed of learning*: ``{layer name: ‖∂C/∂bˡ‖}`` for every layer with a
    bias, in order from input to output.

    ``∂C/∂bˡ`` is the layer's hand-written bias gradient from one backward pass (``C`` the
    batch-mean loss; for ``Dense`` it is ``Σ_batch δˡ``). In a sigmoid network the earlier
    layers' values are smaller: they learn slower (*Neural Networks and Deep Learning*,
    chapter 5).

    Args:
      model: the model, as for :func:`jbp.value_and_grad`.
      loss: the loss, as for :func:`jbp.value_and_grad`.
      params: the model's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      key: the forward pass's PRNG key (dropout and friends).
      train: training behaviour of the forward pass (see :func:`gradient_stats_fn`).
      state: the model's non-trainable state (see :func:`gradient_stats_fn`).

    Raises:
      ValueError: no layer of the model has a bias (``b``/``beta``, see
        :mod:`jbp.diagnostics.stats`), or ``params`` do not belong to the model.
    """
    stats = gradient_stats_fn(model, loss, train=train)(params, x, y, key, None, state)
    out = {
        name: float(s["bias_grad_norm"])
        for name, s in in_model_order(stats["layers"]).items()
        if "bias_grad_norm" in s
    }
    if not out:
        raise ValueError(
            f"speed_of_learning: no layer of the model has a bias (a parameter "
            f"named 'b' or 'beta', or listed in the layer's bias_leaves): {model!r}"
        )
    return out


def layer_deltas(
    model: Layer,
    loss: Loss,
    params: PyTree,
    x: Array | np.ndarray,
    y: Array | np.ndarray,
    *,
    key: Array | None = None,
    train: bool = True,
    state: PyTree = None,
) -> dict[str, Array]:
    """``{layer name: δˡ = ∂C/∂yˡ}`` for every leaf layer: the ``dy`` that the hand-written
    backward hands to the layer's output (shape ``(batch, *out_shape)``, ``C`` the
    batch-mean loss, so row ``x`` is ``1/n`` of example ``x``'s own delta). For a ``Dense``
    that is ``∂C/∂z``, for an activation ``∂C/∂a``; for a layer whose output is ``Masked``
    the values' delta.

    Args:
      model: the model, as for :func:`jbp.value_and_grad`.
      loss: the loss, as for :func:`jbp.value_and_grad`.
      params: the model's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      key: the forward pass's PRNG key (dropout and friends).
      train: training behaviour of the forward pass (see :func:`gradient_stats_fn`).
      state: the model's non-trainable state (see :func:`gradient_stats_fn`).
    """
    _check_model_and_loss(model, loss)
    train = bool(train)

    def build():
        def f(params, x, y, key=None, state=None):
            x, y = _validate(model, loss, params, x, y, None, state, train)
            _, _, named = _named_rows(model, loss, LayerDeltas(), train, params, x, y, key, state)
            return {name: row["delta"] for name, row in named.items()}

        return jax.jit(f)

    f = cached_if_hashable(_DELTAS_JITS, (model, loss, train), build)
    return in_model_order(f(params, x, y, key, state))


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """One leaf layer's row of a :class:`LayerReport` (``None``: the layer lacks it).

    ``layer`` is the layer's class name, ``out_shape`` its per-example output shape and
    ``units`` that shape's last axis; ``activation`` is the lower-case class name of a
    layer that reports unit statistics (``"sigmoid"``, ``"tanh"``, ``"relu"``), else
    ``None``. ``leaves`` maps each parameter leaf (``"W"``, ``"b"``, ``"W_h"``, ...) to its
    ``{"grad_norm", "param_norm"[, "update_ratio"]}``; ``extra`` holds any other quantity a
    layer's ``unit_stats`` returned. See :mod:`jbp.diagnostics.stats` for the rest.
    """

    name: str
    layer: str
    activation: str | None
    units: int | None
    bias_grad_norm: float | None
    delta_norm: float
    grad_W_norm: float | None
    W_norm: float | None
    update_ratio: float | None = None
    saturated: float | None = None
    dead: float | None = None
    grad_norm: float | None = None
    param_norm: float | None = None
    out_shape: tuple | None = None
    leaves: dict | None = None
    extra: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: the scalar quantities of a row, in the order of LayerStats' fields
_SCALARS = (
    "bias_grad_norm",
    "delta_norm",
    "grad_W_norm",
    "W_norm",
    "update_ratio",
    "saturated",
    "dead",
    "grad_norm",
    "param_norm",
)

_COLUMNS = [
    ("layer", "layer"),
    ("out_shape", "output"),
    ("bias_grad_norm", "‖∂C/∂b‖"),
    ("delta_norm", "‖δ‖"),
    ("grad_W_norm", "‖∇W‖"),
    ("W_norm", "‖W‖"),
    ("update_ratio", "‖ΔW‖/‖W‖"),
    ("saturated", "saturated"),
    ("dead", "dead"),
]


def _fmt(key, v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return str(v)
    if key in ("saturated", "dead"):
        return f"{100 * v:.1f}%"
    return f"{v:.3e}"


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Per-layer gradient statistics of one batch, one row per leaf layer in model order:
    ``str(report)`` is a table, ``report.to_dict()`` plain Python, ``report["layers[0]"]``
    one :class:`LayerStats`.

    See :mod:`jbp.diagnostics.stats` for the definition of each quantity.
    """

    layers: tuple
    loss: float
    sigmoid_eps: float = 0.05
    tanh_eps: float = 0.05

    def __getitem__(self, name) -> LayerStats:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r}; layers: {[r.name for r in self.layers]}")

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    @property
    def names(self) -> list:
        return [r.name for r in self.layers]

    def column(self, quantity: str) -> dict:
        """``{layer name: value}`` of one quantity, e.g. ``report.column("grad_W_norm")``
        (``None`` for the layers that lack it)."""
        if quantity not in LayerStats.__dataclass_fields__:
            raise ValueError(
                f"unknown quantity {quantity!r}; known: {list(LayerStats.__dataclass_fields__)}"
            )
        return {r.name: getattr(r, quantity) for r in self.layers}

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "sigmoid_eps": self.sigmoid_eps,
            "tanh_eps": self.tanh_eps,
            "layers": [r.to_dict() for r in self.layers],
        }

    def __str__(self) -> str:
        cols = [
            c
            for c in _COLUMNS
            if c[0] in ("layer", "out_shape", "delta_norm")
            or any(getattr(r, c[0]) is not None for r in self.layers)
        ]
        head = ["name"] + [h for _, h in cols]
        rows = [[r.name] + [_fmt(k, getattr(r, k)) for k, _ in cols] for r in self.layers]
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
        line = lambda cells: "  ".join(
            c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))
        )
        out = [line(head), line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        out.append(f"loss = {self.loss:.6g}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"LayerReport(loss={self.loss:.6g}, layers={self.names})"


def _row_stats(name, row) -> LayerStats:
    layer = row.layer
    get = lambda k: float(row[k]) if k in row else None
    has_units = callable(getattr(layer, "unit_stats", None))
    leaves = (
        {leaf: {k: float(v) for k, v in q.items()} for leaf, q in row["leaves"].items()}
        if "leaves" in row
        else None
    )
    extra = {k: float(v) for k, v in row.items() if k not in _SCALARS and k != "leaves"}
    out_shape = row.out_shape
    scalars: dict[str, Any] = {k: get(k) for k in _SCALARS}  # delta_norm: every layer
    return LayerStats(
        name=name,
        layer=type(layer).__name__,
        activation=type(layer).__name__.lower() if has_units else None,
        units=(out_shape[-1] if out_shape else 1) if out_shape is not None else None,
        **scalars,
        out_shape=out_shape,
        leaves=leaves,
        extra=extra or None,
    )


def layer_report(
    model: Layer,
    loss: Loss,
    params: PyTree,
    x: Array | np.ndarray,
    y: Array | np.ndarray,
    *,
    updates: PyTree = None,
    key: Array | None = None,
    train: bool = True,
    sigmoid_eps: float = 0.05,
    tanh_eps: float = 0.05,
    state: PyTree = None,
) -> LayerReport:
    """Per-layer gradient statistics of one batch, from the hand-written backward, for every
    leaf layer of any model (one row each, named by its path).

    Args:
      model: the model, as for :func:`jbp.value_and_grad`.
      loss: the loss, as for :func:`jbp.value_and_grad`.
      params: the model's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      updates: optional tree shaped like ``params`` (e.g. the optimizer's updates for this
        batch); gives the update-to-weight ratio ``‖ΔW‖/‖W‖``.
      key: the forward pass's PRNG key (dropout and friends).
      train: training behaviour of the forward pass.
      sigmoid_eps: saturation threshold of sigmoid layers (see :mod:`jbp.diagnostics.stats`).
      tanh_eps: saturation threshold of tanh layers.
      state: the model's non-trainable state (BatchNorm's running statistics); required
        with ``train=False`` when the model has some.

    Raises:
      ValueError: ``params``/``updates`` do not have the structure and shapes of this
        model's parameters, or ``state`` is missing.
    """
    f = gradient_stats_fn(model, loss, train=train, sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps)
    stats = jax.device_get(f(params, x, y, key, updates, state))
    rows = tuple(_row_stats(name, row) for name, row in in_model_order(stats["layers"]).items())
    return LayerReport(
        layers=rows,
        loss=float(stats["loss"]),
        sigmoid_eps=float(sigmoid_eps),
        tanh_eps=float(tanh_eps),
    )
