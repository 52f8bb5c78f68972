"""Model plumbing shared by the diagnostics: flatten nested ``Sequential``s, name layers,
check that ``params`` belong to the model."""
from __future__ import annotations

import jax
import numpy as np

from jbp.core import Layer, Sequential, leaf_name
from jbp.layers.dense import Dense


def flatten_model(model, params):
    """``(names, layers, params)`` of the leaf layers of ``model``, nested ``Sequential``s
    unrolled in order. Names follow :func:`jbp.core.leaf_name`: ``layers[2]``,
    ``layers[1].layers[0]``; a bare (non-``Sequential``) model is named after its class.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model: expected a jbp Layer (e.g. jbp.Sequential), got {type(model).__name__}")
    names, layers, flat_params = [], [], []

    def walk(m, p, prefix):
        if isinstance(m, Sequential):
            for i, (layer, lp) in enumerate(zip(m.layers, p)):
                walk(layer, lp, f"{prefix}.layers[{i}]" if prefix else f"layers[{i}]")
        else:
            names.append(prefix or type(m).__name__)
            layers.append(m)
            flat_params.append(p)

    walk(model, params, "")
    return tuple(names), tuple(layers), tuple(flat_params)


def dense_indices(layers) -> tuple[int, ...]:
    return tuple(i for i, layer in enumerate(layers) if isinstance(layer, Dense))


def check_model_has_dense(model, layers) -> tuple[int, ...]:
    idx = dense_indices(layers)
    if not idx:
        kinds = ", ".join(type(l).__name__ for l in layers) or "no layers"
        raise ValueError(f"diagnostics: the model has no Dense layer ({kinds}); the per-layer "
                         f"gradient diagnostics read the deltas and weights of Dense layers: "
                         f"{model!r}")
    return idx


def check_params_match(model, params, in_shape) -> None:
    """Raise ``ValueError`` when ``params`` do not have the structure and shapes that
    ``model.init`` gives for inputs of shape ``in_shape`` (no batch axis)."""
    try:
        expected, _ = jax.eval_shape(lambda k: model.init(k, tuple(in_shape)), jax.random.key(0))
    except (ValueError, TypeError) as e:
        raise ValueError(f"diagnostics: the model cannot take inputs of shape {tuple(in_shape)} "
                         f"(without the batch axis): {e}") from e
    exp_leaves, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    try:
        got_leaves, got_def = jax.tree_util.tree_flatten_with_path(params)
    except Exception as e:  # pragma: no cover - exotic containers
        raise ValueError(f"diagnostics: params are not a pytree: {e}") from e
    hint = "params come from another model? use the params that this model's init returned"
    if got_def != exp_def:
        exp_names = [leaf_name(p) for p, _ in exp_leaves]
        got_names = [leaf_name(p) for p, _ in got_leaves]
        raise ValueError(f"diagnostics: params do not match the model's structure ({hint}): "
                         f"the model {model!r} expects leaves {exp_names}, got {got_names}")
    for (path, e), (_, g) in zip(exp_leaves, got_leaves):
        gshape = tuple(g.shape) if hasattr(g, "shape") else tuple(np.shape(g))
        if tuple(e.shape) != gshape:
            raise ValueError(f"diagnostics: params do not match the model ({hint}): "
                             f"{leaf_name(path)} has shape {gshape}, the model expects "
                             f"{tuple(e.shape)} for inputs of shape {tuple(in_shape)}")


def layer_order_key(name: str):
    """Sort key putting layer names in model order: ``layers[2]`` before ``layers[10]``,
    ``layers[1].layers[0]`` before ``layers[2]`` (a jitted dict comes back key-sorted)."""
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def in_model_order(layer_stats: dict) -> dict:
    return {k: layer_stats[k] for k in sorted(layer_stats, key=layer_order_key)}
