"""How far a learning rule is from backpropagation: per-layer angles and norm ratios."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jbp._validate import check_batch as _check_batch
from jbp._validate import check_model_and_loss as _check_model_and_loss
from jbp.core import Array, Layer, PyTree, Sequential
from jbp.engine import backprop
from jbp.extensions.base import Extension
from jbp.layers._feedback import RuleLayer
from jbp.rules.convert import as_backprop
from jbp.rules.dfa import DFA

if TYPE_CHECKING:
    from jax.typing import ArrayLike
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from jbp.engine import SeedContext
    from jbp.losses import Loss

__all__ = [
    "QUANTITIES",
    "Alignment",
    "alignment",
    "angle",
    "AlignmentRecord",
    "AlignmentHistory",
    "plot_alignment",
]

#: the per-layer quantities :func:`alignment` returns
QUANTITIES = ("grad_angle", "feedback_angle", "norm_ratio")

_LABELS = {
    "grad_angle": "angle between the rule's ∇W and backprop's (degrees)",
    "feedback_angle": "angle between B and W (degrees)",
    "norm_ratio": "‖B‖ / ‖W‖",
}


def _entries(model):
    """``[(name, path, layer, kind)]``: every layer with a rule other than ``"bp"``
    (``kind="rule"``) and every hidden weight layer of a :class:`DFA` (``kind="dfa"``);
    ``path`` indexes params and grads (tuples of ``Sequential``/``DFA`` positions)."""
    out = []

    def join(prefix, i):
        return f"{prefix}.layers[{i}]" if prefix else f"layers[{i}]"

    def walk(m, path, name):
        if isinstance(m, DFA):
            for i in m.targets:
                out.append((join(name, i), path + (i,), m.model.layers[i], "dfa"))
        elif isinstance(m, Sequential):
            for i, layer in enumerate(m.layers):
                walk(layer, path + (i,), join(name, i))
        elif isinstance(m, RuleLayer) and m.rule != "bp":
            out.append((name or type(m).__name__, path, m, "rule"))

    walk(model, (), "")
    return out


def _at(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _cache_at(model, cache, path):
    """The forward cache of the layer at ``path`` (through a :class:`DFA`'s ``"layers"``)."""
    for i in path:
        if isinstance(model, DFA):
            model, cache = model.model, cache["layers"]
        model, cache = model.layers[i], cache[i]
    return cache


def _empty(state) -> bool:
    return isinstance(state, tuple) and len(state) == 0


def _flat(arrays: Sequence[ArrayLike]) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in arrays])


def angle(
    a: ArrayLike | list[ArrayLike] | tuple[ArrayLike, ...],
    b: ArrayLike | list[ArrayLike] | tuple[ArrayLike, ...],
) -> jax.Array:
    """The angle in degrees between two arrays (or lists of arrays, concatenated), as
    ``2·atan2(‖â − b̂‖, ‖â + b̂‖)`` with ``â = a/‖a‖`` (exact near 0° and 180°, unlike
    ``arccos``); NaN when either is zero."""
    a, b = (
        _flat(a if isinstance(a, (list, tuple)) else [a]),
        _flat(b if isinstance(b, (list, tuple)) else [b]),
    )
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    ok = (na > 0) & (nb > 0)
    ua, ub = a / jnp.where(ok, na, 1), b / jnp.where(ok, nb, 1)
    rad = 2 * jnp.arctan2(jnp.linalg.norm(ua - ub), jnp.linalg.norm(ua + ub))
    return jnp.where(ok, jnp.degrees(rad), jnp.nan)


def _weights(layer):
    """The weight names whose feedback a layer swaps (``W``; ``W_x``, ``W_h``)."""
    return [w for w, _ in layer._feedback_of.values()]


class _RuleGrads(Extension):
    """The rule's own parameter gradient of every layer, as the main walk computes it (the
    ``grads`` of each visit: the same arrays, no extra work); read by :class:`Alignment`."""

    name = "alignment_rule_grads"
    params_only = True

    def compute(self, call):
        return call.grads

    def __eq__(self, other):
        return type(other) is _RuleGrads

    def __hash__(self):
        return hash(_RuleGrads)


class _RuleDeltas(Extension):
    """The delta ``δ_rule`` each layer receives in the main walk (the ``dy`` of each visit:
    the same arrays, no extra work); read by :class:`Alignment`'s Gram form."""

    name = "alignment_rule_deltas"
    params_only = True

    def compute(self, call):
        return call.dy

    def __eq__(self, other):
        return type(other) is _RuleDeltas

    def __hash__(self):
        return hash(_RuleDeltas)


#: how :class:`Alignment` forms ``∠(∇W_rule, ∇W_bp)`` of a ``Dense`` layer
METHODS = ("auto", "gram", "direct")


def _diverges(layer) -> bool:
    """Whether ``layer``'s backward sends a delta other than backprop's (a rule layer, or a
    ``Sequential`` holding one; a :class:`DFA` always)."""
    if isinstance(layer, DFA):
        return True
    if isinstance(layer, Sequential):
        return any(_diverges(l) for l in layer.layers)
    return isinstance(layer, RuleLayer) and layer.rule != "bp"


def _bp_deltas(model, params, cache, dy, rule_deltas, wanted, path=(), same=True):
    """Backpropagation's delta at every layer of ``wanted`` (paths), walked on the rule
    model's forward cache: ``(dx, same, found)`` with ``found[path] = (δ_bp, bp_layer)``, or
    ``None`` where ``δ_bp`` is *identically* the rule's ``δ`` (no layer above it changes the
    delta: e.g. the output layer). While that holds nothing is computed (the main walk's
    deltas are used); from the first diverging layer down, each layer's ``as_backprop``
    backward runs once, of which only ``dx`` (and, for a layer of ``wanted``, its weight
    gradient, if the caller reads it) survives XLA's dead-code elimination."""
    found = {}
    if isinstance(model, DFA):
        layers, caches = model.model.layers, cache["layers"]
        inner_rd = rule_deltas
        for i in reversed(range(len(layers))):
            p = path + (i,)
            d_here = _at(inner_rd, (i,)) if same else dy
            if p in wanted:
                found[p] = (None if same else d_here, as_backprop(layers[i]))
            if same:  # only the output layer: then every hidden layer gets B e
                dy = as_backprop(layers[i]).backward(params[i], caches[i], d_here)[1]
                same = False
            else:
                dx, _, sub = _bp_deltas(layers[i], params[i], caches[i], dy, None, wanted, p, False)
                found.update(sub)
                dy = dx
        return dy, False, found
    if isinstance(model, Sequential):
        for i in reversed(range(len(model.layers))):
            rd = None if rule_deltas is None else rule_deltas[i]
            dy, same, sub = _bp_deltas(
                model.layers[i], params[i], cache[i], dy, rd, wanted, path + (i,), same
            )
            found.update(sub)
        return dy, same, found
    if path in wanted:
        found[path] = (None if same else dy, as_backprop(model))
    if same and not _diverges(model):
        return None, True, found  # the main walk's delta continues: nothing to compute
    d = rule_deltas if same else dy
    return as_backprop(model).backward(params, cache, d)[1], False, found


def _feedback_stats(Bs, Ws):
    """``(∠(B, W), ‖B‖/‖W‖)`` from three sums ``‖B‖²``, ``‖W‖²``, ``‖B − W‖²`` (no
    normalised copies): ``‖B̂ − Ŵ‖² = (‖B − W‖² − (‖B‖ − ‖W‖)²) / (‖B‖‖W‖)``
    and the angle ``2·atan2(‖B̂ − Ŵ‖, ‖B̂ + Ŵ‖)`` with ``‖B̂ + Ŵ‖² = 4 − ‖B̂ − Ŵ‖²``. Exact
    (0) for ``B = W`` and accurate near 0° while ``‖B‖ ≈ ‖W‖`` (Kolen–Pollack); elsewhere
    the float32 rounding of the sums is ~1e-3°. NaN when either is zero."""
    sbb = sum(jnp.sum(jnp.square(B)) for B in Bs)
    sww = sum(jnp.sum(jnp.square(W)) for W in Ws)
    sdd = sum(jnp.sum(jnp.square(B - W)) for B, W in zip(Bs, Ws))
    nb, nw = jnp.sqrt(sbb), jnp.sqrt(sww)
    ok = (nb > 0) & (nw > 0)
    dd = jnp.clip((sdd - jnp.square(nb - nw)) / jnp.where(ok, nb * nw, 1), 0, 4)
    rad = 2 * jnp.arctan2(jnp.sqrt(dd), jnp.sqrt(4 - dd))
    return jnp.where(ok, jnp.degrees(rad), jnp.nan), nb / nw


def _use_gram(layer, x, d, method) -> bool:
    """Gram form for a ``Dense`` layer when asked, or (``"auto"``) when it needs fewer
    multiply-adds: ``N²(in + 2·out) < N·in·out`` with ``N`` the rows of ``x``."""
    from jbp.layers import Dense  # noqa: PLC0415

    if method == "direct" or not isinstance(layer, Dense):
        return False
    if not (isinstance(x, jax.Array) and isinstance(d, jax.Array)):
        return False  # masked sequences and the like: the direct form
    if method == "gram":
        return True
    n_in, n_out = x.shape[-1], d.shape[-1]
    rows = math.prod(x.shape[:-1])
    return rows * (n_in + 2 * n_out) < n_in * n_out


def _gram_angle(x, d_rule, d_bp, g_rule):
    """``∠(xᵀδ_rule, xᵀδ_bp)`` without forming ``xᵀδ_bp``: with ``G = x xᵀ`` (N×N),
    ``‖xᵀδ_bp‖² = ⟨G, δ_bp δ_bpᵀ⟩`` and ``‖ĝ_rule − ĝ_bp‖² = ⟨G, D Dᵀ⟩`` for
    ``D = δ_rule/‖g_rule‖ − δ_bp/‖g_bp‖``; the angle is ``2·atan2(‖ĝ_r − ĝ_b‖, ‖ĝ_r + ĝ_b‖)``
    with ``‖ĝ_r + ĝ_b‖² = 4 − ‖ĝ_r − ĝ_b‖²``. ``N²(in + 2·out)`` multiply-adds."""
    x2 = x.reshape(-1, x.shape[-1])
    dr = d_rule.reshape(-1, d_rule.shape[-1])
    db = d_bp.reshape(-1, d_bp.shape[-1])
    G = x2 @ x2.T
    nr = jnp.linalg.norm(g_rule)
    nb = jnp.sqrt(jnp.maximum(jnp.sum(G * (db @ db.T)), 0))
    ok = (nr > 0) & (nb > 0)
    D = dr / jnp.where(ok, nr, 1) - db / jnp.where(ok, nb, 1)
    dd = jnp.clip(jnp.sum(G * (D @ D.T)), 0, 4)
    rad = 2 * jnp.arctan2(jnp.sqrt(dd), jnp.sqrt(4 - dd))
    return jnp.where(ok, jnp.degrees(rad), jnp.nan)


@dataclasses.dataclass(frozen=True)
class Alignment(Extension):
    """Engine extension: how far each learning-rule layer is from backpropagation, on the
    batch of the pass (``jbp.backprop(model, loss, extensions=[Alignment()])`` →
    ``Pass.extras["alignment"]``).

    The main walk is the rule's own backward: every layer is visited with the delta ``δ``
    the rule sends it and records its gradient ``∇W_rule = aᵀδ`` and that ``δ``
    (extensions ``"alignment_rule_grads"`` and ``"alignment_rule_deltas"``, required, which
    appear in ``Pass.extras`` too: the same arrays, no extra work; the first is
    ``Pass.grads`` before any regularizer). The *true* gradient needs the true delta
    ``δ_bp``, which no rule computes: at layer ``l`` it is ``e`` carried down through
    ``Wᵀ`` of every layer above, while the rule carries it through ``B``. So ``Alignment``
    is a seeded extension with its own walk on the same forward cache (no second forward
    pass), which does only what the angles need:

    - Above the first layer whose backward differs from backprop (the output layer, say),
      ``δ_bp`` *is* the rule's ``δ``: nothing is recomputed and such a layer's
      ``grad_angle`` is exactly 0. From there down, each layer's :func:`as_backprop`
      backward runs once for its input delta ``δ_bp Wᵀ`` (one matmul per layer between
      the first diverging layer and the lowest rule layer; below it nothing).
    - ``∠(aᵀδ_rule, aᵀδ_bp)`` of a ``Dense`` layer (inputs ``a``: ``N × in``, ``N`` =
      batch × positions; deltas ``N × out``) is taken in the *Gram form* when that is
      cheaper (``method="auto"``: ``N(in + 2·out) < in·out``): with ``G = a aᵀ``,
      ``‖aᵀδ_bp‖² = ⟨G, δ_bp δ_bpᵀ⟩`` and ``‖ĝ_rule − ĝ_bp‖² = ⟨G, DDᵀ⟩`` for
      ``D = δ_rule/‖g_rule‖ − δ_bp/‖g_bp‖`` — ``N²(in + 2·out)`` multiply-adds instead of
      the ``N·in·out`` of forming ``aᵀδ_bp``. Otherwise (and for ``Conv2D``, ``SimpleRNN``,
      ``LSTM``) the direct form: the backprop weight gradient, then :func:`angle`.
    - ``feedback_angle`` and ``norm_ratio`` come from three sums over ``B`` and ``W``
      (``‖B‖²``, ``‖W‖²``, ``‖B − W‖²``), no normalised copies.

    **Cost.** The exact angle of a layer needs at least ``min(N·in·out, N²(in + 2·out))``
    multiply-adds on top of the step's ``2·N·in·out`` (forward and ``aᵀδ``) for that
    layer (the Gram form reaches the bound); for the MLP 784-256-10 of ``bench/rules.py``
    at batch 128 that is 1.41× an AdamW step in FLOPs (measured 1.33-1.48× for FA, DFA and
    Kolen-Pollack on a shared 2-core CPU, 1.52-1.91× before), 1.10× at batch 32 (measured
    1.18-1.34×: the rest is memory traffic over ``∇W_rule``, ``B`` and ``W``). Per step,
    1.1× is out of reach at batch 128; for training curves record the angles on every
    ``k``-th step inside ``fit``'s compiled epoch instead (``fit(..., record=[Alignment()],
    record_every=k)``: ``1 + 0.4/k`` per step, 1.07× measured for ``k = 10``; the history
    gets the epoch means, read by :meth:`AlignmentRecord.from_history`), or on a probe
    batch every epoch (:class:`AlignmentHistory`: a 512-example probe is ~6 steps of
    work, against 469 steps in a Fashion-MNIST epoch at batch 128).

    The result is ``{name: {...}}`` with, for every layer whose rule is not ``"bp"`` (named
    like ``layers[2]``, in model order)::

        grad_angle      ∠(∇W_rule, ∇W_bp)   in degrees (W; W_x and W_h together for RNNs)
        feedback_angle  ∠(B, W)             the feedback matrix the backward used vs W
        norm_ratio      ‖B‖ / ‖W‖

    and for every hidden weight layer of a :class:`DFA` only ``grad_angle`` (its ``B``
    maps the output error, not this layer's output: no ``W`` to compare it with). Both
    gradients are those of the mean data loss of the batch (no regularizer); ``∇W`` of a
    layer means its weights only (``W``; ``W_x`` and ``W_h`` concatenated), not biases.
    Angles are ``2·atan2(‖â−b̂‖, ‖â+b̂‖)`` (as :func:`angle`); NaN where a vector is zero.
    In float32 the Gram form is within ~0.01° of the direct one.
    ``grad_angle`` of an output layer is 0 (it receives ``e`` under every rule); below
    90° the rule's update is a descent direction for that layer.

    Args:
      method: ``"auto"`` (default: the cheaper form per ``Dense`` layer), ``"gram"``
        (the Gram form for every ``Dense`` layer) or ``"direct"`` (never).

    Raises:
      ValueError: an unknown ``method`` (at once); the model has no layer with a rule
        other than ``"bp"`` and is no DFA (when the pass runs).
    """

    name = "alignment"
    seeded = True
    params_only = True
    requires = (_RuleGrads(), _RuleDeltas())

    method: str = "auto"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"Alignment: method must be one of {', '.join(map(repr, METHODS))}, "
                f"got {self.method!r}"
            )

    def walk(self, model: Layer, params: PyTree, cache: PyTree, ctx: SeedContext) -> PyTree:
        entries = _entries(model)
        if not entries:
            raise ValueError(
                f"alignment: the model has no layer with a learning rule other than "
                f"'bp' and is not a DFA, so it is backpropagation already: {model!r}"
            )
        grads = ctx.extras[_RuleGrads.name]
        rule_deltas = ctx.extras[_RuleDeltas.name]
        wanted = {path for _, path, _, _ in entries}
        _, _, bp = _bp_deltas(model, params, cache, ctx.dpred, rule_deltas, wanted)
        layers = {}
        for name, path, layer, kind in entries:
            names = _weights(layer)
            g, c = _at(grads, path), _cache_at(model, cache, path)
            d_bp, bp_layer = bp[path]
            if d_bp is None:  # δ_bp is the rule's δ: the same gradient
                rec = {"grad_angle": jnp.zeros((), g[names[0]].dtype)}
            elif _use_gram(layer, c.get("x") if isinstance(c, dict) else None, d_bp, self.method):
                rec = {"grad_angle": _gram_angle(c["x"], _at(rule_deltas, path), d_bp, g["W"])}
            else:
                gb = bp_layer.backward(_at(params, path), c, d_bp)[0]
                rec = {"grad_angle": angle([g[w] for w in names], [gb[w] for w in names])}
            if kind == "rule":
                p = _at(params, path)
                Ws = [p[w] for w in names]
                Bs = [layer.feedback(p, c, w) for w in names]
                rec["feedback_angle"], rec["norm_ratio"] = _feedback_stats(Bs, Ws)
            layers[name] = rec
        return layers


def alignment(model: Layer, loss: Loss) -> Callable[..., dict[str, Any]]:
    """Per-layer alignment of a learning rule with backpropagation, on one batch: a reader
    of the :class:`Alignment` extension.

    Returns the pure, jit-able ``f(params, x, y, *, state=None, key=None, train=False)``,
    which runs ``jbp.backprop(model, loss, extensions=[Alignment()])`` (ONE forward pass,
    the rule's backward and backprop's backward on the same cache; ``state=None`` or ``()``
    means ``model.init_state``) and returns ``{"loss": L, "layers": extras["alignment"]}``
    (the quantities are defined in :class:`Alignment`). Note ``train=False`` by default
    (deterministic probe), unlike ``jbp.backprop``.

    Args:
      model: a model containing at least one layer with a rule other than ``"bp"``, or a
        :class:`DFA`.
      loss: a jbp loss.

    Raises:
      ValueError: the model has no such layer.
    """
    _check_model_and_loss(model, loss)
    entries = _entries(model)
    if not entries:
        raise ValueError(
            f"alignment: the model has no layer with a learning rule other than "
            f"'bp' and is not a DFA, so it is backpropagation already: {model!r}"
        )
    run = backprop(model, loss, extensions=[Alignment()])

    def f(params, x, y, *, state=None, key=None, train=False):
        if state is not None and _empty(state):
            state = None
        out = run(params, x, y, key=key, state=state, train=train)
        return {"loss": out.loss, "layers": out.extras["alignment"]}

    f.layer_names = tuple(name for name, *_ in entries)  # type: ignore[attr-defined]  # fn attr
    return f


@dataclasses.dataclass
class AlignmentRecord:
    """Alignment per layer, one entry per recorded epoch.

    ``record.epochs[k]`` is the epoch of entry ``k``, ``record.loss[k]`` the probe loss,
    ``record.values[quantity][layer][k]`` the value (NaN where a layer lacks the quantity:
    DFA layers have no ``feedback_angle``). ``record.quantity("grad_angle")`` gives
    ``{layer: [values over epochs]}``.
    """

    layers: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)
    loss: list = dataclasses.field(default_factory=list)
    values: dict = dataclasses.field(default_factory=dict)

    def append(self, epoch: int, stats: dict) -> None:
        """Add one epoch from the (host) output of :func:`alignment`."""
        from jbp.diagnostics._model import in_model_order

        layers = list(in_model_order(stats["layers"]))
        if not self.layers:
            self.layers = layers
            self.values = {q: {name: [] for name in layers} for q in QUANTITIES}
        elif layers != self.layers:
            raise ValueError(f"AlignmentRecord: layers changed from {self.layers} to {layers}")
        self.epochs.append(int(epoch))
        self.loss.append(float(stats["loss"]))
        for q in QUANTITIES:
            for name in layers:
                self.values[q][name].append(float(stats["layers"][name].get(q, math.nan)))

    @classmethod
    def from_history(cls, history: Any, name: str = "alignment") -> AlignmentRecord:
        """The record of ``fit(..., record=[Alignment()], record_every=k)``: its history's
        columns ``"<name>/<layer>/<quantity>"`` (per epoch, the mean over the epoch's
        recorded steps; NaN where an epoch has none, e.g. before a resume that turned
        recording on). ``loss`` is the history's train ``loss`` (the epoch mean).

        Args:
          history: a :class:`jbp.History` (or its ``to_dict()``).
          name: the extension's name (``Alignment.name``).

        Raises:
          ValueError: the history has no ``"<name>/..."`` column.
        """
        from jbp.diagnostics._model import in_model_order

        cols = history.to_dict() if hasattr(history, "to_dict") else dict(history)
        found: dict = {}
        for col in cols:
            parts = col.split("/")
            if len(parts) == 3 and parts[0] == name and parts[2] in QUANTITIES:
                found.setdefault(parts[1], {})[parts[2]] = col
        if not found:
            raise ValueError(
                f"AlignmentRecord.from_history: no '{name}/<layer>/<quantity>' column in the "
                f"history (train with fit(..., record=[Alignment()])); columns: "
                f"{', '.join(cols)}"
            )
        layers = list(in_model_order(found))
        epochs = [int(e) for e in cols["epoch"]]
        nan = [math.nan] * len(epochs)
        values = {
            q: {k: [float(v) for v in cols.get(found[k].get(q, ""), nan)] for k in layers}
            for q in QUANTITIES
        }
        loss = [float(v) for v in cols.get("loss", nan)]
        return cls(layers=layers, epochs=epochs, loss=loss, values=values)

    def quantity(self, quantity: str) -> dict:
        if quantity not in QUANTITIES:
            raise ValueError(
                f"AlignmentRecord: unknown quantity {quantity!r}; recorded: {', '.join(QUANTITIES)}"
            )
        return {name: list(v) for name, v in self.values.get(quantity, {}).items()}

    def __len__(self):
        return len(self.epochs)

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "epochs": list(self.epochs),
            "loss": list(self.loss),
            "values": {q: {k: list(v) for k, v in d.items()} for q, d in self.values.items()},
        }

    def table(self, quantity: str = "grad_angle") -> str:
        """A text table: one row per recorded epoch, one column per layer."""
        cols = self.quantity(quantity)
        head = ["epoch"] + list(cols)
        rows = [[str(e)] + [f"{cols[n][k]:.2f}" for n in cols] for k, e in enumerate(self.epochs)]
        widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(head)]
        fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
        return "\n".join(
            [f"{quantity} per layer", fmt(head), fmt(["-" * w for w in widths])]
            + [fmt(r) for r in rows]
        )


class AlignmentHistory:
    """Opt-in recording of :func:`alignment` during training (a ``jbp.fit`` callback).

    Every ``every``-th epoch runs ONE jit-compiled call of :func:`alignment` on a fixed
    probe batch with the epoch's parameters and model state (so feedback alignment's ``B``
    is the state ``fit`` trains with), appends the result to :attr:`record` (an
    :class:`AlignmentRecord`) and adds the quantities named in ``log`` to ``fit``'s epoch
    logs as ``"grad_angle/layers[0]"``, ... — they appear in the progress line and the
    returned ``History``. Call ``hist(0, params, state)`` before ``fit`` to record the
    network at initialization. Draw the record with :func:`plot_alignment`.

    Args:
      model: the network (with its rules) being trained.
      loss: the loss being trained.
      probe_data: ``(x, y)``, a fixed batch (a few hundred examples is plenty).
      every: record every ``every``-th epoch.
      key: the PRNG key of the probe's forward pass.
      train: training behaviour of the probe's forward pass; the default ``train=False``
        keeps the probe deterministic (dropout off, BatchNorm on its running statistics).
      log: quantities from :data:`QUANTITIES` to add to ``fit``'s logs (``()``: none).
    """

    def __init__(
        self,
        model: Layer,
        loss: Loss,
        probe_data: tuple[ArrayLike, ArrayLike],
        *,
        every: int = 1,
        key: Array | None = None,
        train: bool = False,
        log: str | Sequence[str] = ("grad_angle",),
    ) -> None:
        if not (isinstance(probe_data, (tuple, list)) and len(probe_data) == 2):
            raise TypeError("AlignmentHistory: probe_data must be a pair (x, y) of arrays")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"AlignmentHistory: every must be a positive integer, got {every!r}")
        log = (log,) if isinstance(log, str) else tuple(log)
        bad = [q for q in log if q not in QUANTITIES]
        if bad:
            raise ValueError(
                f"AlignmentHistory: log must name quantities from "
                f"{', '.join(QUANTITIES)}, got {bad}"
            )
        x, y = _check_batch(jnp.asarray(probe_data[0]), jnp.asarray(probe_data[1]))
        self.model, self.loss, self.x, self.y = model, loss, x, y
        self.every, self.key, self.train, self.log = every, key, bool(train), log
        fn = alignment(model, loss)
        self._fn = jax.jit(lambda p, s, x, y: fn(p, x, y, state=s, key=key, train=self.train))
        self._checked = False
        self.record = AlignmentRecord()

    def _state(self, state):
        if not self.model.stateful:
            return None
        if state is None or _empty(state):
            return self.model.init_state(tuple(self.x.shape[1:]))
        return state

    def record_epoch(self, epoch: int, params: PyTree, state: PyTree = None) -> dict | None:
        """Record ``params`` (and ``state``) at ``epoch`` if ``epoch % every == 0``; returns
        the host result of :func:`alignment`, or ``None`` when the epoch is skipped."""
        epoch = int(epoch)
        if epoch % self.every:
            return None
        if not self._checked:  # clear errors before the first compile
            from jbp.diagnostics._model import check_params_match

            try:
                check_params_match(self.model, params, self.x.shape[1:])
            except ValueError as e:
                raise ValueError(str(e).replace("diagnostics: ", "AlignmentHistory: ", 1)) from None
            self._checked = True
        stats = jax.device_get(self._fn(params, self._state(state), self.x, self.y))
        self.record.append(epoch, stats)
        return stats

    def __call__(
        self, epoch: int, params: PyTree, state: PyTree = None, *args: Any, **kwargs: Any
    ) -> None:
        """``hist(epoch, params, state=None)``: record one epoch (hand-rolled loops)."""
        self.record_epoch(epoch, params, state)
        return None

    # --- the jbp.fit callback protocol ---------------------------------------------------
    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, params: PyTree, state: PyTree = ()) -> None:
        stats = self.record_epoch(epoch, params, state)
        if stats is not None:
            for q in self.log:
                for name, vals in stats["layers"].items():
                    if q in vals:
                        logs[f"{q}/{name}"] = float(vals[q])
        return None  # never stops training

    def on_train_end(self, params: PyTree, state: PyTree = ()) -> None:
        return None


def plot_alignment(
    record: AlignmentRecord | Any,
    path: str | os.PathLike[str] | None = None,
    *,
    quantity: str = "grad_angle",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw an alignment quantity over epochs, one line per layer (with a dashed line at
    90° for the angles: below it the rule's update still descends).

    Args:
      record: an :class:`AlignmentRecord` (``AlignmentHistory.record``), or the
        :class:`jbp.History` of ``fit(..., record=[Alignment()])`` (read with
        :meth:`AlignmentRecord.from_history`).
      path: save the figure there; ``None``: don't.
      quantity: ``"grad_angle"`` (default), ``"feedback_angle"`` or ``"norm_ratio"``.
      title: the axes' title.
      ax: draw into these axes instead of a new figure.

    Returns:
      The matplotlib ``Figure`` (drawn by :func:`jbp.plotting.plot_gradient_norms`).
    """
    from jbp.history import History
    from jbp.plotting import plot_gradient_norms, save_figure

    if isinstance(record, History):
        record = AlignmentRecord.from_history(record)
    if not isinstance(record, AlignmentRecord):
        raise TypeError(
            f"plot_alignment: expected an AlignmentRecord (AlignmentHistory.record) or the "
            f"History of fit(..., record=[Alignment()]), got {type(record).__name__}"
        )
    if quantity not in QUANTITIES:
        raise ValueError(
            f"plot_alignment: quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}"
        )
    fig = plot_gradient_norms(
        record,
        None,
        quantity=quantity,
        ax=ax,
        log=False,
        title=title if title is not None else _LABELS[quantity],
    )
    axes = ax if ax is not None else fig.axes[0]
    if quantity != "norm_ratio":
        axes.axhline(90.0, color="grey", linestyle="--", linewidth=1)
    axes.set_ylabel(_LABELS[quantity])
    if path is not None:
        save_figure(fig, path, close=False)
    return fig
