"""Model plumbing shared by the diagnostics: check that ``params`` belong to the model, put
layer names in model order."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.tree_util import PyTreeDef

from jbp.core import Layer, PyTree, leaf_name


def check_params_match(model: Layer, params: PyTree, in_shape: Sequence[int]) -> None:
    """Raise ``ValueError`` when ``params`` do not have the structure and shapes that
    ``model.init`` gives for inputs of shape ``in_shape`` (no batch axis)."""
    try:
        expected, _ = jax.eval_shape(lambda k: model.init(k, tuple(in_shape)), jax.random.key(0))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"diagnostics: the model cannot take inputs of shape {tuple(in_shape)} "
            f"(without the batch axis): {e}"
        ) from e
    exp_def: PyTreeDef  # mypy does not resolve jax's own annotation of it
    exp_leaves, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    try:
        got_leaves, got_def = jax.tree_util.tree_flatten_with_path(params)
    except Exception as e:  # pragma: no cover - exotic containers
        raise ValueError(f"diagnostics: params are not a pytree: {e}") from e
    hint = "params come from another model? use the params that this model's init returned"
    if got_def != exp_def:
        exp_names = [leaf_name(p) for p, _ in exp_leaves]
        got_names = [leaf_name(p) for p, _ in got_leaves]
        raise ValueError(
            f"diagnostics: params do not match the model's structure ({hint}): "
            f"the model {model!r} expects leaves {exp_names}, got {got_names}"
        )
    for (path, want), (_, g) in zip(exp_leaves, got_leaves):
        gshape = tuple(g.shape) if hasattr(g, "shape") else tuple(np.shape(g))
        if tuple(want.shape) != gshape:
            raise ValueError(
                f"diagnostics: params do not match the model ({hint}): "
                f"{leaf_name(path)} has shape {gshape}, the model expects "
                f"{tuple(want.shape)} for inputs of shape {tuple(in_shape)}"
            )


def layer_order_key(name: str) -> list[int | str]:
    """Sort key putting layer names in model order: ``layers[2]`` before ``layers[10]``,
    ``layers[1].layers[0]`` before ``layers[2]`` (a jitted dict comes back key-sorted)."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def in_model_order(layer_stats: dict) -> dict:
    return {k: layer_stats[k] for k in sorted(layer_stats, key=layer_order_key)}
