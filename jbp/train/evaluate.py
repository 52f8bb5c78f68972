"""Evaluation: loss and metrics on a data set, in compiled chunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jbp._validate import (
    cached_if_hashable,
    check_data,
    check_mesh,
    check_mesh_batches,
    check_model_and_loss,
    check_model_input,
    check_params,
    check_state,
    check_targets,
    eval_batch_size,
)
from jbp.metrics import get_metrics
from jbp.train.batching import (
    auto_mesh,
    batch_plan,
    data_sharding,
    mesh_shardings,
    replicate,
    scan_batches,
    shard_data,
)

if TYPE_CHECKING:
    import numpy as np

    from jbp.core import Array, Layer, PyTree
    from jbp.losses import Loss
    from jbp.metrics import Metric

__all__ = ["evaluate", "make_eval"]


def make_eval(
    model: Layer,
    loss: Loss,
    metric_objs: Sequence[Metric],
    *,
    n: int,
    batch_size: int | None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[PyTree, PyTree, Array, Array], dict[str, Array]]:
    """``run(params, state, x, y) -> {metric: value}``: the forward pass (``train=False``)
    over ``n`` examples in chunks of ``batch_size``, metrics averaged over the examples.
    With a ``mesh``, each chunk is split by example over its ``"data"`` axis."""
    bs, nb, rem = batch_plan(n, batch_size)

    def run(params, state, x, y):
        def on_batch(carry, xb, yb, _):
            pred = model.apply(params, xb, train=False, state=state)
            return carry, {
                m.name: jnp.asarray(m.fn(pred, yb, loss), dtype=jnp.result_type(float))
                for m in metric_objs
            }

        _, means = scan_batches(
            on_batch, None, x, y, None, bs=bs, nb=nb, rem=rem, sharding=data_sharding(mesh)
        )
        return {m.name: m.finalize(means[m.name]) for m in metric_objs}

    return run


_EVAL_CACHE: dict = {}


def evaluate(
    model: Layer,
    params: PyTree,
    loss: Loss,
    data: tuple[Array | np.ndarray, Array | np.ndarray],
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    batch_size: int | None = 1024,
    state: PyTree = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data = (x, y)`` (``train=False``), as floats.

    Args:
      model: the model.
      params: its parameters.
      loss: a jbp loss.
      data: a pair ``(x, y)`` of arrays.
      metrics: names from :mod:`jbp.metrics`.
      batch_size: chunk size (``None``: all at once). The chunk means are weighted by chunk
        size, so the result is the mean over the data set whatever the chunking.
      state: the model's non-trainable state (``model.init_state`` when ``None``).
      mesh: a ``jax.sharding.Mesh`` with a ``"data"`` axis: each chunk is split by example
        over that axis, parameters and state replicated (see ``fit``). Every chunk — the
        last, shorter one too — must split evenly over the devices.

    Raises:
      TypeError, ValueError: bad arguments, named; ``mesh`` not a ``Mesh`` or without a
        ``"data"`` axis; a chunk that does not split evenly over the mesh's devices.

    The compiled evaluation is cached per (model, loss, metrics, size, chunk), so calling
    ``evaluate`` every epoch (a callback) compiles once.

    Before compiling, ``params`` are checked against ``model.init``'s shapes, the targets
    against the loss (``loss.check_targets``: labels in range, shapes) and the inputs against
    the input layer (``Embedding`` ids): under jit they would be clipped or scored silently.
    """
    check_model_and_loss(model, loss)
    metric_objs = get_metrics(metrics)
    x, y = check_data("data", data)
    n = x.shape[0]
    batch_size = eval_batch_size(batch_size, n)
    n_dev = check_mesh(mesh)
    mesh = auto_mesh(mesh)
    if n_dev is not None:
        bs, _, rem = batch_plan(n, batch_size)
        check_mesh_batches(n_dev, bs, rem, drop_last_hint=False)
    in_shape = tuple(x.shape[1:])
    out_shape = check_params(model, params, in_shape)
    check_targets(loss, y, out_shape, name="data: y")
    check_model_input(model, x, name="data: x")
    if state is None:
        state = model.init_state(in_shape)
    else:
        check_state(model, state, in_shape)

    def build():
        run = make_eval(model, loss, metric_objs, n=n, batch_size=batch_size, mesh=mesh)
        return jax.jit(run) if mesh is None else jax.jit(run, **mesh_shardings(mesh))

    fn = cached_if_hashable(
        _EVAL_CACHE, (model, loss, tuple(m.name for m in metric_objs), n, batch_size, mesh), build
    )
    if mesh is not None:
        params, state = replicate((params, state), mesh)
        x, y = shard_data((x, y), mesh)
    out = fn(params, state, x, y)
    return {m.name: float(out[m.name]) for m in metric_objs}
