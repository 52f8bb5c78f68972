"""How far a learning rule is from backpropagation: per-layer angles and norm ratios."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jbp._validate import check_batch as _check_batch
from jbp._validate import check_model_and_loss as _check_model_and_loss
from jbp.core import Layer, Sequential
from jbp.engine import backprop
from jbp.extensions.base import Extension
from jbp.layers._feedback import RuleLayer
from jbp.rules.convert import as_backprop
from jbp.rules.dfa import DFA

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


def _bp_cache(model, cache):
    """The rule model's forward cache seen by :func:`as_backprop`'s model."""
    if isinstance(model, DFA):
        return _bp_cache(model.model, cache["layers"])
    if isinstance(model, Sequential):
        return tuple(_bp_cache(l, c) for l, c in zip(model.layers, cache))
    return cache


def _empty(state) -> bool:
    return isinstance(state, tuple) and len(state) == 0


def _flat(arrays):
    return jnp.concatenate([jnp.ravel(a) for a in arrays])


def angle(a, b) -> jax.Array:
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


class Alignment(Extension):
    """Engine extension: how far each learning-rule layer is from backpropagation, on the
    batch of the pass (``jbp.backprop(model, loss, extensions=[Alignment()])`` →
    ``Pass.extras["alignment"]``).

    The main walk is the rule's own backward: every layer is visited with the delta ``δ``
    the rule sends it and records its gradient ``∇W_rule = aᵀδ`` (extension
    ``"alignment_rule_grads"``, required, which appears in ``Pass.extras`` too — it is
    ``Pass.grads`` before any regularizer). The *true* gradient needs the true delta
    ``δ_bp``, which no rule computes: at layer ``l`` it is ``e`` carried down through
    ``Wᵀ`` of every layer above, while the rule carries it through ``B``. So ``Alignment``
    is a seeded extension with its own walk: it backpropagates the same output delta
    ``e = ∂L/∂ŷ`` through :func:`as_backprop`'s backward on the same forward cache (no
    second forward pass) and compares, per layer. The cost is one more backward pass (its
    input deltas and weight gradients), not a forward.

    The result is ``{name: {...}}`` with, for every layer whose rule is not ``"bp"`` (named
    like ``layers[2]``, in model order)::

        grad_angle      ∠(∇W_rule, ∇W_bp)   in degrees (W; W_x and W_h together for RNNs)
        feedback_angle  ∠(B, W)             the feedback matrix the backward used vs W
        norm_ratio      ‖B‖ / ‖W‖

    and for every hidden weight layer of a :class:`DFA` only ``grad_angle`` (its ``B``
    maps the output error, not this layer's output: no ``W`` to compare it with). Both
    gradients are those of the mean data loss of the batch (no regularizer); ``∇W`` of a
    layer means its weights only (``W``; ``W_x`` and ``W_h`` concatenated), not biases.
    Angles use :func:`angle` (``2·atan2(‖â−b̂‖, ‖â+b̂‖)``); NaN where a vector is zero.
    ``grad_angle`` of an output layer is 0 (it receives ``e`` under every rule); below
    90° the rule's update is a descent direction for that layer.

    Raises (when the pass runs):
      ValueError: the model has no layer with a rule other than ``"bp"`` and is no DFA.
    """

    name = "alignment"
    seeded = True
    params_only = True
    requires = (_RuleGrads(),)

    def __eq__(self, other):
        return type(other) is Alignment

    def __hash__(self):
        return hash(Alignment)

    def walk(self, model, params, cache, ctx):
        entries = _entries(model)
        if not entries:
            raise ValueError(
                f"alignment: the model has no layer with a learning rule other than "
                f"'bp' and is not a DFA, so it is backpropagation already: {model!r}"
            )
        grads = ctx.extras[_RuleGrads.name]
        bp_grads, _ = as_backprop(model).backward(params, _bp_cache(model, cache), ctx.dpred)
        layers = {}
        for name, path, layer, kind in entries:
            names = _weights(layer)
            g, gb = _at(grads, path), _at(bp_grads, path)
            rec = {"grad_angle": angle([g[w] for w in names], [gb[w] for w in names])}
            if kind == "rule":
                p, c = _at(params, path), _at(cache, path)
                Ws = [p[w] for w in names]
                Bs = [layer.feedback(p, c, w) for w in names]
                rec["feedback_angle"] = angle(Bs, Ws)
                rec["norm_ratio"] = jnp.linalg.norm(_flat(Bs)) / jnp.linalg.norm(_flat(Ws))
            layers[name] = rec
        return layers


def alignment(model: Layer, loss):
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
      model, loss: the network (with its rules) and the loss being trained.
      probe_data: ``(x, y)``, a fixed batch (a few hundred examples is plenty).
      every: record every ``every``-th epoch.
      key, train: handed to the probe's forward pass; the default ``train=False`` keeps the
        probe deterministic (dropout off, BatchNorm on its running statistics).
      log: quantities from :data:`QUANTITIES` to add to ``fit``'s logs (``()``: none).
    """

    def __init__(
        self,
        model,
        loss,
        probe_data,
        *,
        every: int = 1,
        key=None,
        train: bool = False,
        log=("grad_angle",),
    ):
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

    def record_epoch(self, epoch: int, params, state=None) -> dict | None:
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

    def __call__(self, epoch: int, params, state=None, *args, **kwargs):
        """``hist(epoch, params, state=None)``: record one epoch (hand-rolled loops)."""
        self.record_epoch(epoch, params, state)
        return None

    # --- the jbp.fit callback protocol ---------------------------------------------------
    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch, logs, params, state=()):
        stats = self.record_epoch(epoch, params, state)
        if stats is not None:
            for q in self.log:
                for name, vals in stats["layers"].items():
                    if q in vals:
                        logs[f"{q}/{name}"] = float(vals[q])
        return None  # never stops training

    def on_train_end(self, params, state=()):
        return None


def plot_alignment(record, path=None, *, quantity: str = "grad_angle", title=None, ax=None):
    """Draw an alignment quantity over epochs, one line per layer (with a dashed line at
    90° for the angles: below it the rule's update still descends).

    Args:
      record: an :class:`AlignmentRecord` (``AlignmentHistory.record``).
      path: save the figure there; ``None``: don't.
      quantity: ``"grad_angle"`` (default), ``"feedback_angle"`` or ``"norm_ratio"``.
      title: the axes' title.
      ax: draw into these axes instead of a new figure.

    Returns:
      The matplotlib ``Figure`` (drawn by :func:`jbp.plotting.plot_gradient_norms`).
    """
    from jbp.plotting import plot_gradient_norms, save_figure

    if not isinstance(record, AlignmentRecord):
        raise TypeError(
            f"plot_alignment: expected an AlignmentRecord (AlignmentHistory.record), "
            f"got {type(record).__name__}"
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
