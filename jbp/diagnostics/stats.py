"""Per-layer gradient statistics from the hand-written backward pass.

Everything here is read off one forward pass and one call of
``Sequential.backward_with_deltas``: for each ``Dense`` layer ``l`` (``z = a W + b``) the
backward hands over ``δˡ = ∂C/∂zˡ`` (``C`` the batch-mean loss), and its own gradients
``∂C/∂Wˡ = aᵀ δˡ``, ``∂C/∂bˡ = Σ_batch δˡ``. No autodiff is involved.

Quantities (per ``Dense`` layer, ``n`` the batch size):

=====================  ===================================================================
``bias_grad_norm``     ``‖∂C/∂bˡ‖`` — Nielsen's *speed of learning* of the layer (ch. 5)
``delta_norm``         ``1/n Σₓ ‖δˡₓ‖`` with ``δˡₓ = ∂Cₓ/∂zˡₓ = n·δˡ[x]`` the delta of one
                       example's own loss: the batch-mean per-example delta norm
``grad_W_norm``        ``‖∂C/∂Wˡ‖`` (Frobenius)
``W_norm``             ``‖Wˡ‖`` (Frobenius)
``update_ratio``       ``‖ΔWˡ‖/‖Wˡ‖`` for a given update tree (e.g. an optimizer's
                       ``updates``); about 1e-3 per step is the usual healthy range
``saturated``          for a ``Dense`` followed by ``Sigmoid``: the fraction of the batch's
                       activations with ``a < ε`` or ``a > 1 − ε`` (``ε = sigmoid_eps``,
                       default 0.05, where ``σ' < 0.048``, under a fifth of its peak);
                       followed by ``Tanh``: the fraction with ``|a| > 1 − ε``
                       (``ε = tanh_eps``, default 0.05, where ``tanh' < 0.098``)
``dead``               for a ``Dense`` followed by ``ReLU``: the fraction of its units whose
                       pre-activation is ``≤ 0`` for every example of the batch (they pass
                       no gradient at all)
=====================  ===================================================================
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Optional

import jax
import jax.numpy as jnp

from jbp.core import Sequential
from jbp._validate import check_batch as _check_batch, check_model_and_loss as _check_model_and_loss
from jbp.layers.activations import ReLU, Sigmoid, Tanh

from ._model import check_model_has_dense, check_params_match, flatten_model, in_model_order

__all__ = [
    "gradient_stats_fn",
    "speed_of_learning",
    "layer_deltas",
    "layer_report",
    "LayerReport",
    "LayerStats",
    "safe_norm",
]


def safe_norm(x) -> jax.Array:
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


def _activation_kind(layer) -> Optional[str]:
    if isinstance(layer, Sigmoid):
        return "sigmoid"
    if isinstance(layer, Tanh):
        return "tanh"
    if isinstance(layer, ReLU):
        return "relu"
    return None


def _validate(model, loss, params, x, y, updates=None):
    """Boundary checks (trace time): returns ``(x, y, names, layers, flat_params, dense_idx)``."""
    _check_model_and_loss(model, loss)
    x, y = _check_batch(x, y)
    check_params_match(model, params, x.shape[1:])
    if updates is not None:
        try:
            check_params_match(model, updates, x.shape[1:])
        except ValueError as e:
            raise ValueError(f"updates must have the structure and shapes of params: {e}") from None
    names, layers, flat_params = flatten_model(model, params)
    idx = check_model_has_dense(model, layers)
    return x, y, names, layers, flat_params, idx


def _forward_backward(model, loss, params, x, y, key, train, updates=None):
    """Flat forward + ``backward_with_deltas``: ``(value, names, layers, flat_params,
    caches, grads, deltas, dense_idx)``."""
    x, y, names, layers, flat_params, idx = _validate(model, loss, params, x, y, updates)
    flat = Sequential(layers)
    pred, caches = flat.forward(flat_params, x, key=key, train=train)
    value = loss.value(pred, y)
    grads, _, deltas = flat.backward_with_deltas(flat_params, caches, loss.grad(pred, y))
    return value, names, layers, flat_params, caches, grads, deltas, idx, x


def _stats(model, loss, params, x, y, key=None, updates=None, *, train, sigmoid_eps, tanh_eps):
    value, names, layers, flat_params, caches, grads, deltas, idx, x = _forward_backward(
        model, loss, params, x, y, key, train, updates)
    flat_updates = flatten_model(model, updates)[2] if updates is not None else None
    n = x.shape[0]
    out = {}
    for i in idx:
        p, g, d = flat_params[i], grads[i], deltas[i]
        s = {}
        if "b" in g:
            s["bias_grad_norm"] = safe_norm(g["b"])
        per_example = (n * d).reshape(n, -1)
        s["delta_norm"] = jnp.mean(jax.vmap(safe_norm)(per_example))
        s["grad_W_norm"] = safe_norm(g["W"])
        s["W_norm"] = safe_norm(p["W"])
        if flat_updates is not None:
            s["update_ratio"] = safe_norm(flat_updates[i]["W"]) / s["W_norm"]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        kind = _activation_kind(nxt)
        if kind == "sigmoid":
            a = caches[i + 1]["y"]
            s["saturated"] = jnp.mean((a < sigmoid_eps) | (a > 1 - sigmoid_eps))
        elif kind == "tanh":
            a = caches[i + 1]["y"]
            s["saturated"] = jnp.mean(jnp.abs(a) > 1 - tanh_eps)
        elif kind == "relu":
            z = caches[i + 1]["x"]
            z2 = z.reshape(-1, z.shape[-1])
            s["dead"] = jnp.mean(jnp.all(z2 <= 0, axis=0))
        out[names[i]] = s
    return {"loss": value, "layers": out}


def _check_eps(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 < v < 0.5):
        raise ValueError(f"{name}: expected a number in (0, 0.5), got {v!r}")
    return float(v)


@functools.lru_cache(maxsize=64)
def _cached_jit(model, loss, train, sigmoid_eps, tanh_eps):
    return jax.jit(functools.partial(_stats, model, loss, train=train,
                                     sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps))


def gradient_stats_fn(model, loss, *, train: bool = True, sigmoid_eps: float = 0.05,
                      tanh_eps: float = 0.05):
    """The jit-compiled core of the diagnostics.

    Returns ``f(params, x, y, key=None, updates=None) -> {"loss": C, "layers": {name:
    {quantity: scalar}}}`` (a dict from ``jit`` comes back sorted by key: put it in model
    order with :func:`in_model_order`) — one compiled call computing, for every ``Dense`` layer, the
    quantities of this module's table (``update_ratio`` only when ``updates`` is given,
    ``saturated``/``dead`` only for layers followed by ``Sigmoid``/``Tanh``/``ReLU``,
    ``bias_grad_norm`` only for layers with a bias). Arguments are checked when ``f`` is
    traced: a model without ``Dense`` layers or params from another model raise
    ``ValueError``. Layer names are those of the params' paths: ``layers[2]``.
    """
    _check_model_and_loss(model, loss)
    sigmoid_eps = _check_eps("sigmoid_eps", sigmoid_eps)
    tanh_eps = _check_eps("tanh_eps", tanh_eps)
    train = bool(train)
    try:
        return _cached_jit(model, loss, train, sigmoid_eps, tanh_eps)
    except TypeError:  # an unhashable layer or loss: compile without the cache
        return jax.jit(functools.partial(_stats, model, loss, train=train,
                                         sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps))


def speed_of_learning(model, loss, params, x, y, *, key=None, train: bool = True) -> dict:
    """Nielsen's *speed of learning*: ``{layer name: ‖∂C/∂bˡ‖}`` for every ``Dense`` layer
    with a bias, in order from input to output.

    ``∂C/∂bˡ = Σ_batch δˡ`` is read from the hand-written deltas of one backward pass
    (``C`` the batch-mean loss). In a sigmoid network the earlier layers' values are
    smaller: they learn slower (*Neural Networks and Deep Learning*, chapter 5).
    """
    stats = gradient_stats_fn(model, loss, train=train)(params, x, y, key)
    return {name: float(s["bias_grad_norm"]) for name, s in in_model_order(stats["layers"]).items()
            if "bias_grad_norm" in s}


def layer_deltas(model, loss, params, x, y, *, key=None, train: bool = True) -> dict:
    """``{layer name: δˡ = ∂C/∂zˡ}`` for every ``Dense`` layer: the ``dy`` that the
    hand-written backward hands to the layer (shape ``(batch, ..., units)``, ``C`` the
    batch-mean loss, so row ``x`` is ``1/n`` of example ``x``'s own delta)."""
    _check_model_and_loss(model, loss)
    try:
        f = _cached_deltas_jit(model, loss, bool(train))
    except TypeError:  # unhashable model or loss
        f = jax.jit(functools.partial(_deltas, model, loss, train=bool(train)))
    return in_model_order(f(params, x, y, key))


def _deltas(model, loss, params, x, y, key=None, *, train):
    _, names, _, _, _, _, deltas, idx, _ = _forward_backward(model, loss, params, x, y, key, train)
    return {names[i]: deltas[i] for i in idx}


@functools.lru_cache(maxsize=16)
def _cached_deltas_jit(model, loss, train):
    return jax.jit(functools.partial(_deltas, model, loss, train=train))


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerStats:
    """One ``Dense`` layer's row of a :class:`LayerReport` (``None``: not applicable)."""

    name: str
    layer: str
    activation: Optional[str]
    units: int
    bias_grad_norm: Optional[float]
    delta_norm: float
    grad_W_norm: float
    W_norm: float
    update_ratio: Optional[float] = None
    saturated: Optional[float] = None
    dead: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_COLUMNS = [
    ("layer", "layer"), ("activation", "act"), ("bias_grad_norm", "‖∂C/∂b‖"),
    ("delta_norm", "‖δ‖"), ("grad_W_norm", "‖∇W‖"), ("W_norm", "‖W‖"),
    ("update_ratio", "‖ΔW‖/‖W‖"), ("saturated", "saturated"), ("dead", "dead ReLU"),
]


def _fmt(key, v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if key in ("saturated", "dead"):
        return f"{100 * v:.1f}%"
    return f"{v:.3e}"


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Per-layer gradient statistics of one batch: ``str(report)`` is a table,
    ``report.to_dict()`` plain Python, ``report["layers[0]"]`` one :class:`LayerStats`.

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
        raise KeyError(f"no Dense layer named {name!r}; layers: {[r.name for r in self.layers]}")

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    @property
    def names(self) -> list:
        return [r.name for r in self.layers]

    def column(self, quantity: str) -> dict:
        """``{layer name: value}`` of one quantity, e.g. ``report.column("grad_W_norm")``."""
        if quantity not in LayerStats.__dataclass_fields__:
            raise ValueError(f"unknown quantity {quantity!r}; known: "
                             f"{list(LayerStats.__dataclass_fields__)}")
        return {r.name: getattr(r, quantity) for r in self.layers}

    def to_dict(self) -> dict:
        return {"loss": self.loss, "sigmoid_eps": self.sigmoid_eps, "tanh_eps": self.tanh_eps,
                "layers": [r.to_dict() for r in self.layers]}

    def __str__(self) -> str:
        cols = [c for c in _COLUMNS if c[0] in ("layer", "activation", "delta_norm", "grad_W_norm",
                                              "W_norm")
                or any(getattr(r, c[0]) is not None for r in self.layers)]
        head = ["name"] + [h for _, h in cols]
        rows = [[r.name] + [_fmt(k, getattr(r, k)) for k, _ in cols] for r in self.layers]
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) if j < 3 else c.rjust(w)
                                       for j, (c, w) in enumerate(zip(cells, widths)))
        out = [line(head), line(["-" * w for w in widths])]
        out += [line(r) for r in rows]
        out.append(f"loss = {self.loss:.6g}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"LayerReport(loss={self.loss:.6g}, layers={self.names})"


def _to_float(v):
    return float(v)


def layer_report(model, loss, params, x, y, *, updates=None, key=None, train: bool = True,
                 sigmoid_eps: float = 0.05, tanh_eps: float = 0.05) -> LayerReport:
    """Per-``Dense``-layer gradient statistics of one batch, from the hand-written backward.

    Args:
      model, loss, params, x, y: as for :func:`jbp.value_and_grad`.
      updates: optional tree shaped like ``params`` (e.g. the optimizer's updates for this
        batch); gives the update-to-weight ratio ``‖ΔW‖/‖W‖``.
      key, train: handed to the forward pass (dropout and friends).
      sigmoid_eps, tanh_eps: saturation thresholds (see :mod:`jbp.diagnostics.stats`).

    Raises:
      ValueError: the model has no ``Dense`` layer, or ``params``/``updates`` do not have
        the structure and shapes of this model's parameters.
    """
    f = gradient_stats_fn(model, loss, train=train, sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps)
    stats = jax.device_get(f(params, x, y, key, updates))
    names, layers, _ = flatten_model(model, params)
    by_name = dict(zip(names, layers))
    rows = []
    for i, name in enumerate(names):
        if name not in stats["layers"]:
            continue
        s = stats["layers"][name]
        layer = by_name[name]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        act = _activation_kind(nxt) or (type(nxt).__name__ if nxt is not None else None)
        get = lambda k: _to_float(s[k]) if k in s else None
        rows.append(LayerStats(
            name=name, layer=f"Dense({layer.units})", activation=act, units=layer.units,
            bias_grad_norm=get("bias_grad_norm"), delta_norm=get("delta_norm"),
            grad_W_norm=get("grad_W_norm"), W_norm=get("W_norm"), update_ratio=get("update_ratio"),
            saturated=get("saturated"), dead=get("dead")))
    return LayerReport(layers=tuple(rows), loss=float(stats["loss"]),
                       sigmoid_eps=float(sigmoid_eps), tanh_eps=float(tanh_eps))
