"""Record per-layer gradient norms over training, on a fixed probe batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import jax

from ._model import in_model_order
from .stats import _validate, gradient_stats_fn

if TYPE_CHECKING:
    from jax.typing import ArrayLike

    from jbp.core import Array, Layer, PyTree
    from jbp.losses import Loss

H = TypeVar("H")  # add_to_history returns the history it was given

__all__ = ["GradientNormRecord", "GradientNormHistory", "QUANTITIES"]

#: the per-layer quantities a record keeps (see :mod:`jbp.diagnostics.stats`)
QUANTITIES = (
    "bias_grad_norm",
    "delta_norm",
    "grad_W_norm",
    "W_norm",
    "grad_norm",
    "param_norm",
    "saturated",
    "dead",
)


@dataclasses.dataclass
class GradientNormRecord:
    """Per-layer gradient statistics, one entry per recorded epoch.

    ``record.layers`` names every leaf layer of the model, in order (``layers[0]``,
    ``layers[1]``, ...); ``record.epochs[k]`` is the epoch of entry ``k``; ``record.loss[k]``
    the probe loss; ``record.values[quantity][layer][k]`` the value (``nan`` where a layer
    lacks the quantity, e.g. ``saturated`` for anything but a ``Sigmoid``/``Tanh`` layer,
    ``grad_W_norm`` for a layer without parameters); ``record.present[quantity]`` lists the
    layers that have it (so a ``nan`` of an exploded run is told apart from an absent
    quantity). ``record.quantity("grad_W_norm")`` gives ``{layer: [values over epochs]}``;
    ``record.speed_of_learning()`` the same for ``bias_grad_norm``, layers with a bias only.
    """

    layers: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)
    loss: list = dataclasses.field(default_factory=list)
    values: dict = dataclasses.field(default_factory=dict)
    present: dict = dataclasses.field(default_factory=dict)

    def append(self, epoch: int, stats: dict) -> None:
        """Add one epoch from the (host) output of :func:`gradient_stats_fn`."""
        layers = list(in_model_order(stats["layers"]))
        if not self.layers:
            self.layers = layers
            self.values = {q: {name: [] for name in layers} for q in QUANTITIES}
            self.present = {
                q: [name for name in layers if q in stats["layers"][name]] for q in QUANTITIES
            }
        elif layers != self.layers:
            raise ValueError(f"GradientNormRecord: layers changed from {self.layers} to {layers}")
        self.epochs.append(int(epoch))
        self.loss.append(float(stats["loss"]))
        for q in QUANTITIES:
            for name in layers:
                s = stats["layers"][name]
                self.values[q][name].append(float(s[q]) if q in s else float("nan"))

    def quantity(self, quantity: str, *, present_only: bool = False) -> dict:
        """``{layer: [value per recorded epoch]}`` of one quantity: every layer (``nan``
        where a layer lacks it), or with ``present_only`` the layers that have it."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; recorded: {list(QUANTITIES)}")
        keep = self.present.get(quantity) if present_only else None  # None: not known
        return {
            name: list(v)
            for name, v in self.values.get(quantity, {}).items()
            if keep is None or name in keep
        }

    def speed_of_learning(self) -> dict:
        """``{layer: [‖∂C/∂bˡ‖ per recorded epoch]}`` (the layers with a bias only)."""
        return self.quantity("bias_grad_norm", present_only=True)

    def __len__(self):
        return len(self.epochs)

    def to_dict(self) -> dict:
        return {
            "layers": list(self.layers),
            "epochs": list(self.epochs),
            "loss": list(self.loss),
            "values": {q: {k: list(v) for k, v in d.items()} for q, d in self.values.items()},
            "present": {q: list(v) for q, v in self.present.items()},
        }

    def table(self, quantity: str = "bias_grad_norm") -> str:
        """A text table: one row per recorded epoch, one column per layer that has the
        quantity."""
        cols = self.quantity(quantity, present_only=True)
        names = list(cols)
        head = ["epoch"] + names
        rows = [[str(e)] + [f"{cols[n][k]:.3e}" for n in names] for k, e in enumerate(self.epochs)]
        widths = [
            max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(head)
        ]
        fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
        return "\n".join(
            [f"{quantity} per layer", fmt(head), fmt(["-" * w for w in widths])]
            + [fmt(r) for r in rows]
        )


class GradientNormHistory:
    """Opt-in recording of per-layer gradient norms during training.

    Each recorded epoch runs ONE jit-compiled call of :func:`gradient_stats_fn` on a fixed
    probe batch ``(x, y)`` and appends the per-layer norms of every leaf layer
    (``‖∂C/∂Wˡ‖``, speed of learning ``‖∂C/∂bˡ‖``, ``‖δˡ‖``, ``‖Wˡ‖``, ``‖∂C/∂θˡ‖``,
    ``‖θˡ‖``, saturated / dead fractions) to :attr:`record`, a :class:`GradientNormRecord`.
    Draw it with :func:`jbp.plotting.plot_gradient_norms`.

    With ``jbp.fit``: pass it in ``callbacks=[...]`` (it implements ``on_epoch_end(epoch,
    logs, params, state)``; ``fit``'s epochs are 1-based; the model's state — BatchNorm's
    running statistics — is used too), and call ``hist(0, params)`` (``hist(0, params,
    state)`` for a model with state) before ``fit`` to record the network at
    initialization. ``fit`` hands callbacks a copy of the epoch's logs, so the norms go
    into :attr:`record`; copy them into ``fit``'s ``History`` afterwards with
    :meth:`add_to_history`. In a hand-rolled loop call ``hist(epoch, params[, state])`` (or
    :meth:`record_epoch`) once per epoch.

    Args:
      model: the network being trained.
      loss: the loss being trained.
      probe_data: ``(x, y)``, a fixed batch (a few hundred examples is plenty).
      every: record every ``every``-th epoch (and epoch 0 when called with it).
      key: the PRNG key of the probe's forward pass.
      train: training behaviour of the probe's forward pass. The default ``train=False``
        makes the probe deterministic, so epochs are comparable (dropout off, BatchNorm's
        running statistics, so a model with state needs ``state`` at every call).
      sigmoid_eps: saturation threshold of sigmoid layers (see :mod:`jbp.diagnostics.stats`).
      tanh_eps: saturation threshold of tanh layers.
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
        sigmoid_eps: float = 0.05,
        tanh_eps: float = 0.05,
    ) -> None:
        if not (isinstance(probe_data, (tuple, list)) and len(probe_data) == 2):
            raise TypeError("GradientNormHistory: probe_data must be a pair (x, y)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"GradientNormHistory: every must be a positive integer, got {every!r}"
            )
        self.model, self.loss = model, loss
        self.x, self.y = jax.numpy.asarray(probe_data[0]), jax.numpy.asarray(probe_data[1])
        self.every, self.key, self.train = every, key, bool(train)
        self._fn = gradient_stats_fn(
            model, loss, train=train, sigmoid_eps=sigmoid_eps, tanh_eps=tanh_eps
        )
        self._checked = False
        self.record = GradientNormRecord()

    def record_epoch(self, epoch: int, params: PyTree, state: PyTree = None) -> dict | None:
        """Record ``params`` (and the model's non-trainable ``state``, if it has one) at
        ``epoch`` (if ``epoch % every == 0``); returns the host stats dict, or ``None``
        when the epoch is skipped."""
        epoch = int(epoch)
        if epoch % self.every:
            return None
        if isinstance(state, tuple) and not state:
            state = None  # a stateless model's () — one compiled probe for both spellings
        if not self._checked:
            # clear errors before the first compile
            _validate(self.model, self.loss, params, self.x, self.y, None, state, self.train)
            self._checked = True
        stats = jax.device_get(self._fn(params, self.x, self.y, self.key, None, state))
        self.record.append(epoch, stats)
        return stats

    def __call__(self, epoch: int, params: PyTree, state: PyTree = None) -> None:
        """``hist(epoch, params[, state])``: record one epoch (hand-rolled loops)."""
        self.record_epoch(epoch, params, state)
        return None

    # --- the jbp.fit callback protocol ---------------------------------------------------
    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, params: PyTree, state: PyTree = ()) -> None:
        self.record_epoch(epoch, params, state)
        return None  # never stops training

    def on_train_end(self, params: PyTree, state: PyTree = ()) -> None:
        return None

    def columns(
        self, quantities: Sequence[str] = ("grad_W_norm", "bias_grad_norm")
    ) -> dict[str, dict[int, float]]:
        """``{"<quantity>/<layer>": {epoch: value}}`` for the given quantities."""
        out = {}
        for q in quantities:
            for name, vals in self.record.quantity(q, present_only=True).items():
                out[f"{q}/{name}"] = dict(zip(self.record.epochs, vals))
        return out

    def add_to_history(
        self, history: H, quantities: Sequence[str] = ("grad_W_norm", "bias_grad_norm")
    ) -> H:
        """Add columns ``"grad_W_norm/layers[0]"``, ... to a ``jbp.fit`` ``History`` (or any
        object with ``.records``, a list of dicts with an ``"epoch"`` key), epoch by
        epoch; returns ``history``."""
        records = getattr(history, "records", None)
        if records is None:
            raise TypeError(f"add_to_history: expected a jbp History, got {type(history).__name__}")
        cols = self.columns(quantities)
        for r in records:
            for col, by_epoch in cols.items():
                if r.get("epoch") in by_epoch:
                    r[col] = by_epoch[r["epoch"]]
        return history
