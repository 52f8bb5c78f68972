"""The training step: one reader of :func:`jbp.backprop`, then the optimizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jbp._validate import check_augment, check_grad_fn, check_model_and_loss, check_optimizer
from jbp.engine import backprop
from jbp.metrics import get_metrics

if TYPE_CHECKING:
    from jbp.core import Array, Layer, PyTree
    from jbp.extensions.base import Extension
    from jbp.losses import Loss
    from jbp.optim.base import Optimizer
    from jbp.regularizers import Regularizer

__all__ = ["make_train_step", "make_recording_step", "apply_updates"]


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates`` leaf by leaf, each result in its parameter's dtype."""
    from jbp.optim import apply_updates as _apply  # noqa: PLC0415 - optim imports nothing of train

    return _apply(params, updates)


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: Optimizer,
    *,
    regularizer: Regularizer | None = None,
    grad_fn: str = "manual",
    metrics: Sequence[str] = ("loss",),
    augment: Callable[[Array, Array], Array] | None = None,
    extensions: Extension | Sequence[Extension] = (),
) -> Callable[..., tuple[PyTree, PyTree, dict[str, Any], PyTree]]:
    """The pure, jit-able training step, one signature for every model.

    Returns ``step(params, opt_state, x, y, key, state=()) -> (params, opt_state, metrics,
    state)``; ``state`` is the model's non-trainable state (``()`` for stateless models,
    ``model.init_state(in_shape)`` for stateful ones, e.g. BatchNorm).

    Inside, on the batch ``(x, y)``::

        k_aug, k_fwd = jax.random.split(key)
        x = augment(k_aug, x)                              # if augment is given
        out = jbp.backprop(model, loss, regularizer=regularizer, extensions=extensions,
                           grad_fn=grad_fn)(params, x, y, key=k_fwd, state=state)
        updates, opt_state = optimizer.update(out.grads, opt_state, params)
        params = apply_updates(params, updates)

    Args:
      model: the model, as for :func:`jbp.backprop`.
      loss: the loss, as for :func:`jbp.backprop`.
      optimizer: an optax-protocol optimizer (``jbp.optim`` or optax). One that carries
        ``extensions`` (``jbp.optim.kfac``) gets them added to the pass and its ``update`` is
        called with ``extras=out.extras``.
      metrics: names from :mod:`jbp.metrics`; ``metrics`` returned by the step is a dict of
        scalars computed on this batch *before* the update: ``"loss"`` (the data loss, without
        the penalty), ``"penalty"`` (when a regularizer is given) and the requested metrics.
        The extensions' results are under ``"extras"`` when any are requested.
      augment: ``augment(key, x) -> x``, applied to the batch first.
      regularizer: an optional regularizer, as for :func:`jbp.backprop`.
      grad_fn: ``"manual"`` or ``"autodiff"``, as for :func:`jbp.backprop`.
      extensions: extensions to compute in every step, as for :func:`jbp.backprop`; their
        results are in the step's metrics under ``"extras"``.

    """
    check_model_and_loss(model, loss, regularizer)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)
    check_augment(augment)
    grad_part, update = _parts(model, loss, optimizer, regularizer, grad_fn, metrics, augment)
    run = grad_part(extensions)

    def step(params, opt_state, x, y, key, state=()):
        grads, logs, state, extras = run(params, x, y, key, state)
        params, opt_state = update(grads, opt_state, params, extras)
        if extras:
            logs["extras"] = extras
        return params, opt_state, logs, state

    return step


def _parts(model, loss, optimizer, regularizer, grad_fn, metrics, augment):
    """``(grad_part, update)``: ``grad_part(extensions)`` is ``run(params, x, y, key, state)
    -> (grads, logs, state, extras)`` (augment, the pass, the metrics) and ``update(grads,
    opt_state, params, extras) -> (params, opt_state)`` (the optimizer)."""
    metric_objs = get_metrics(metrics)
    opt_exts = tuple(getattr(optimizer, "extensions", ()))  # curvature optimizers (optim.kfac)

    def grad_part(extensions):
        if opt_exts:
            extensions = tuple(
                extensions if isinstance(extensions, (tuple, list)) else (extensions,)
            )
            extensions += opt_exts
        run = backprop(model, loss, regularizer=regularizer, extensions=extensions, grad_fn=grad_fn)

        def grads_of(params, x, y, key, state):
            k_aug, k_fwd = jax.random.split(key)
            if augment is not None:
                x = augment(k_aug, x)
            out = run(params, x, y, key=k_fwd, state=state, train=True)
            pred = jax.lax.stop_gradient(out.pred)
            logs = {"loss": out.loss}
            if regularizer is not None:
                logs["penalty"] = out.penalty
            for m in metric_objs[1:]:
                logs[m.name] = m.fn(pred, y, loss)
            logs = {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in logs.items()}
            return out.grads, logs, out.state, out.extras

        return grads_of

    def update(grads, opt_state, params, extras):
        if opt_exts:
            updates, opt_state = optimizer.update(grads, opt_state, params, extras=extras)
        else:
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state

    return grad_part, update


def make_recording_step(
    model: Layer,
    loss: Loss,
    optimizer: Optimizer,
    record: Sequence[Extension],
    *,
    regularizer: Regularizer | None = None,
    grad_fn: str = "manual",
    metrics: Sequence[str] = ("loss",),
    augment: Callable[[Array, Array], Array] | None = None,
) -> Callable[..., tuple[PyTree, PyTree, dict[str, Any], PyTree, PyTree]]:
    """The training step of :func:`make_train_step` that computes the extensions ``record``
    only when asked: ``step(params, opt_state, x, y, key, state, on) -> (params, opt_state,
    metrics, state, results)``, with ``on`` a traced boolean.

    The pass (forward, backward, metrics) is ``lax.cond(on, the pass with the extensions,
    the plain pass)``; the optimizer update runs after it, outside the ``lax.cond``, so the
    parameters and optimizer state (the large loop-carried arrays) never pass through the
    conditional (which would copy them every step). ``results`` is ``{name: result}`` of
    each extension of ``record`` when ``on``, zeros of the same structure otherwise;
    ``step.result_shapes(params, x, y, key, state)`` gives its shapes and dtypes.
    Parameters, optimizer state, model state and metrics are those of :func:`make_train_step`
    whatever ``on`` is.

    Args:
      record: the extensions to compute when ``on`` (their ``name``s key ``results``).
      model, loss, optimizer, regularizer, grad_fn, metrics, augment: as for
        :func:`make_train_step`.
    """
    check_model_and_loss(model, loss, regularizer)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)
    check_augment(augment)
    grad_part, update = _parts(model, loss, optimizer, regularizer, grad_fn, metrics, augment)
    plain, full = grad_part(()), grad_part(tuple(record))
    names = tuple(e.name for e in record)
    has_opt_exts = bool(getattr(optimizer, "extensions", ()))

    def with_ext(kept, params, x, y, key, state):
        grads, logs, state, extras = full(params, x, y, key, state)
        return grads, logs, state, {k: extras[k] for k in kept}, {n: extras[n] for n in names}

    def structure(params, x, y, key, state):
        """``(kept, like)``: the extras the optimizer reads and the results' shapes (abstract
        evaluation, at trace time only)."""
        args = (params, x, y, key, state)
        kept = tuple(jax.eval_shape(plain, *args)[3]) if has_opt_exts else ()
        return kept, jax.eval_shape(lambda *a: with_ext(kept, *a), *args)[4]

    def step(params, opt_state, x, y, key, state, on):
        args = (params, x, y, key, state)
        kept, like = structure(*args)

        def without(params, x, y, key, state):
            grads, logs, state, extras = plain(params, x, y, key, state)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)
            return grads, logs, state, extras, zeros

        grads, logs, state, extras, results = jax.lax.cond(
            on, lambda *a: with_ext(kept, *a), without, *args
        )
        params, opt_state = update(grads, opt_state, params, extras)
        return params, opt_state, logs, state, results

    def result_shapes(params, x, y, key, state=()):
        """The shapes and dtypes of ``results`` for these inputs (``jax.ShapeDtypeStruct``)."""
        return structure(params, x, y, key, state)[1]

    step.result_shapes = result_shapes  # type: ignore[attr-defined]  # fn attr
    return step
