"""Put a learning rule on a model's weight layers, or take every rule back to backprop."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

from jbp.core import Layer, Sequential
from jbp.layers import LSTM, Conv2D, Dense, SimpleRNN
from jbp.layers._feedback import RULES, RuleLayer
from jbp.rules.dfa import DFA

__all__ = ["RULE_LAYERS", "with_rule", "as_backprop"]

#: the layer classes that take a ``rule``
RULE_LAYERS = (Dense, Conv2D, SimpleRNN, LSTM)

_NO_WEIGHTS = (
    "has no weights: a learning rule applies to the weight layers Dense, Conv2D, SimpleRNN and LSTM"
)


def _check_rule_name(rule):
    if rule not in RULES:
        raise ValueError(
            f"with_rule: unknown rule {rule!r}; expected one of {', '.join(repr(r) for r in RULES)}"
        )


def with_rule(
    model: Layer, rule: str, *, layers: Sequence[int] | None = None, seed: int = 0
) -> Layer:
    """A copy of ``model`` whose weight layers use the backward ``rule``.

    Args:
      model: a ``Sequential`` (nested ones are walked) or a single weight layer.
      rule: ``"bp"``, ``"fa"``, ``"sign"`` or ``"kolen_pollack"`` (see :mod:`jbp.rules`).
      layers: indices into the top-level ``Sequential`` of the layers to change (every weight
        layer when ``None``). Each must be a weight layer (or a ``Sequential`` holding some).
      seed: with ``rule="fa"``, the ``k``-th weight layer of the model (in order, counting
        all of them) gets ``feedback_seed = seed + k``, so the fixed feedback matrices
        differ from layer to layer and the same ``seed`` gives the same ones (other rules
        have no seed: it stays 0).

    Returns:
      The new model. Its parameters have the same structure as the old one's, except that
      ``"kolen_pollack"`` adds a trainable ``"B"`` (``"B_x"``, ``"B_h"``) to each changed
      layer: call the new model's ``init``.

    Raises:
      ValueError: unknown rule; a selected layer without weights; a model without any
        weight layer; an index out of range.
      TypeError: ``model`` is not a layer; ``model`` is a :class:`DFA` (its rule is DFA).
    """
    _check_rule_name(rule)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"with_rule: seed must be a non-negative integer, got {seed!r}")
    if not isinstance(model, Layer):
        raise TypeError(
            f"with_rule: model must be a jbp Layer (e.g. jbp.Sequential), "
            f"got {type(model).__name__}"
        )
    if isinstance(model, DFA):
        raise TypeError(
            "with_rule: the model is a DFA (direct feedback alignment); change the "
            "rule of the Sequential inside it (DFA(...).model) instead"
        )
    counter = [int(seed)]

    def convert(m, selected: bool):
        if isinstance(m, RuleLayer):
            s = counter[0]
            counter[0] += 1
            if not selected:
                return m
            return dataclasses.replace(m, rule=rule, feedback_seed=s if rule == "fa" else 0)
        if isinstance(m, Sequential):
            return Sequential([convert(l, selected) for l in m.layers])
        return m

    if isinstance(model, RuleLayer):
        if layers is not None:
            raise ValueError(
                f"with_rule: layers= selects layers of a Sequential; got a single layer {model!r}"
            )
        return convert(model, True)
    if not isinstance(model, Sequential):
        raise ValueError(f"with_rule: {model!r} {_NO_WEIGHTS}")
    if not _has_weight_layer(model):
        kinds = ", ".join(type(l).__name__ for l in model.layers) or "no layers"
        raise ValueError(
            f"with_rule: the model ({kinds}) has no weight layer: a learning "
            f"rule applies to Dense, Conv2D, SimpleRNN and LSTM layers"
        )
    n = len(model.layers)
    if layers is None:
        chosen = set(range(n))
    else:
        chosen = set()
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not -n <= i < n:
                raise ValueError(
                    f"with_rule: layers must be indices in [0, {n}) of the "
                    f"model's layers, got {i!r}"
                )
            i = int(i) % n
            if not _has_weight_layer(model.layers[i]):
                raise ValueError(
                    f"with_rule: layers[{i}] ({type(model.layers[i]).__name__}) {_NO_WEIGHTS}"
                )
            chosen.add(i)
    return Sequential([convert(l, i in chosen) for i, l in enumerate(model.layers)])


def _has_weight_layer(m) -> bool:
    if isinstance(m, RuleLayer):
        return True
    return isinstance(m, Sequential) and any(_has_weight_layer(l) for l in m.layers)


def as_backprop(model: Layer) -> Layer:
    """The same network trained by backpropagation: every ``rule`` set to ``"bp"`` and a
    :class:`DFA` replaced by the ``Sequential`` inside it.

    The forward pass is unchanged and takes the same parameters (Kolen–Pollack's extra ``B``
    leaves are read by nobody; the backprop gradients simply have no ``"B"`` entry), so its
    ``backward`` on the rule model's forward cache gives the true gradient — what
    :func:`alignment` compares against, and what ``check_gradients`` can prove.

    Args:
      model: any jbp layer or model; layers without a rule are returned as they are.

    Returns:
      The backprop model (equal to the original one when nothing had a rule).
    """
    if isinstance(model, DFA):
        return as_backprop(model.model)
    if isinstance(model, Sequential):
        return Sequential([as_backprop(l) for l in model.layers])
    if isinstance(model, RuleLayer) and model.rule != "bp":
        return dataclasses.replace(model, rule="bp", feedback_seed=0)
    return model
