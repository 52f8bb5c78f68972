"""The one engine: forward → loss → hand-written backward, with extensions.

Every other part of jbp — ``value_and_grad``, the training step, the per-example functions,
the diagnostics and ``check_gradients`` — reads the :class:`Pass` that :func:`backprop`
returns. Nothing else writes forward → loss → backward.

::

    f = jbp.backprop(model, loss, regularizer=None, extensions=(), grad_fn="manual")
    out = f(params, x, y, key=None, state=None, train=True)
    out.loss      # the data loss (mean over the batch)
    out.penalty   # the regularizer's value (0 without one)
    out.grads     # ∇(loss + penalty), the structure of params
    out.pred      # the model's output
    out.state     # the new non-trainable state (() for stateless models)
    out.extras    # {extension name: result}, e.g. out.extras["batch_l2"]

**State is always threaded.** ``state=None`` means ``model.init_state(x.shape[1:])``; a
stateless model's state is ``()`` and passes through. No caller branches on "stateful".

**Extensions** (:mod:`jbp.extensions`) compute more quantities from the same backward walk:
each layer is *visited* with its ``(params, cache, dy, grads)`` — ``cache`` holds its input,
``dy`` is the delta at its output — and the extension turns that into one more result per
layer (per-example gradients and norms, second moments, variance, ...). Results mirror the
structure of ``params``. An extension may also *seed* cotangents of its own (curvature
factors, sampled targets, per-example rescaled deltas): the engine backpropagates each seeded
column through the same hand-written backward (``vmap`` over the columns) and visits the
layers with those deltas instead. See :class:`jbp.extensions.Extension`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jbp._validate import check_batch, check_grad_fn, check_model_and_loss
from jbp.core import unmasked as _values

if TYPE_CHECKING:
    from jax.typing import ArrayLike

    from jbp.core import Array, Layer
    from jbp.extensions.base import Extension
    from jbp.losses import Loss
    from jbp.regularizers import Regularizer

__all__ = [
    "Pass",
    "LayerCall",
    "SeedContext",
    "backprop",
    "value_and_grad",
    "autodiff_value_and_grad",
    "loss_value_and_grad",
]

PyTree = Any


class Pass(NamedTuple):
    """What one forward + backward pass produced (see :func:`backprop`)."""

    loss: jax.Array
    penalty: jax.Array
    grads: PyTree
    pred: Any
    state: PyTree
    extras: dict


class LayerCall(NamedTuple):
    """One layer's visit during the backward walk, handed to ``Extension.compute``.

    Attributes:
      layer: the (leaf) layer object.
      params: its parameters.
      cache: what its ``forward`` kept (its input, at least).
      dy: the delta at its output, ``∂L/∂y`` for the mean loss ``L`` of the batch (or, in a
        seeded walk, the backpropagated seed column).
      grads: its parameter gradient from this ``dy`` (the batch-mean gradient in the main walk).
      n: the batch size.
    """

    layer: Any
    params: PyTree
    cache: PyTree
    dy: Any
    grads: PyTree
    n: int

    @property
    def per_example_dy(self) -> jax.Array:
        """``n · dy``: row ``i`` is the delta of example ``i``'s own loss ``ℓᵢ``."""
        return _values(self.dy) * self.n


class SeedContext(NamedTuple):
    """What an extension's ``seed`` may read: the loss, the prediction, targets, the output
    delta of the mean loss, a key of its own (or ``None``), the batch size, and the results
    of the extensions computed in the main walk (``extras``)."""

    loss: Any
    pred: Any
    y: Any
    dpred: Any
    key: Any
    n: int
    extras: dict


def loss_value_and_grad(loss: Loss, pred: Array, y: ArrayLike) -> tuple[Array, Array]:
    """``(loss.value, loss.grad)``, in one pass when the loss offers ``value_and_grad``."""
    if hasattr(loss, "value_and_grad"):
        return loss.value_and_grad(pred, y)
    return loss.value(pred, y), loss.grad(pred, y)


def _resolve(extensions) -> tuple:
    """Extension objects in order, each requirement before its dependants, names unique."""
    from jbp.extensions.base import Extension  # noqa: PLC0415 - jbp.extensions imports the engine

    if isinstance(extensions, Extension):
        extensions = (extensions,)
    if not isinstance(extensions, (tuple, list)):
        raise TypeError(
            f"extensions: expected a sequence of jbp.extensions objects, "
            f"got {type(extensions).__name__}"
        )
    out: dict[str, Extension] = {}

    def add(e, where):
        if isinstance(e, type) and issubclass(e, Extension):
            raise TypeError(
                f"{where}: got the class {e.__name__}; pass an instance, {e.__name__}()"
            )
        if not isinstance(e, Extension):
            raise TypeError(
                f"{where}: expected a jbp.extensions.Extension (e.g. "
                f"jbp.extensions.BatchL2()), got {type(e).__name__}"
            )
        if not isinstance(e.name, str) or not e.name:
            raise TypeError(
                f"{where}: {type(e).__name__} has no name (set the class attribute `name`)"
            )
        for r in e.requires:
            add(r, f"{where} ({e.name}) requires")
        old = out.get(e.name)
        if old is not None and old != e:
            raise ValueError(
                f"extensions: two different extensions named {e.name!r}: {old!r} and {e!r}"
            )
        out.setdefault(e.name, e)

    for i, e in enumerate(extensions):
        add(e, f"extensions[{i}]")
    return tuple(out.values())


def _visitor(exts, n):
    """``visit(layer, params, cache, dy, grads) -> {name: result}`` for a leaf layer."""

    def visit(layer, params, cache, dy, grads):
        call = LayerCall(layer, params, cache, dy, grads, n)
        empty = not jax.tree.leaves(params)
        return {e.name: (params if (empty and e.params_only) else e.compute(call)) for e in exts}

    return visit


def backprop(
    model: Layer,
    loss: Loss,
    *,
    regularizer: Regularizer | None = None,
    extensions: Extension | Sequence[Extension] = (),
    grad_fn: str = "manual",
) -> Callable[..., Pass]:
    """The engine: forward, loss, hand-written backward, and extensions, in one pass.

    Args:
      model: a jbp layer (``jbp.Sequential`` or any :class:`jbp.Layer`).
      loss: a jbp loss (``value``, ``grad``; e.g. ``jbp.losses.softmax_cross_entropy``).
      regularizer: optional, with ``value(params)`` and ``grad(params)``
        (``jbp.regularizers``); its value is ``Pass.penalty`` and its gradient is added to
        ``Pass.grads``.
      extensions: objects from :mod:`jbp.extensions` (``BatchGrad()``, ``BatchL2()``,
        ``SumGradSquared()``, ``Variance()``, ``ClippedGrad(C)``, or your own); their
        results are ``Pass.extras[name]``.
      grad_fn: ``"manual"`` (the hand-written backward) or ``"autodiff"``
        (``jax.value_and_grad`` of the same forward: the reference; no extensions).

    Returns:
      ``f(params, x, y, *, key=None, state=None, train=True) -> Pass``. ``key`` feeds the
      forward pass (dropout) and, folded in, any extension that samples; ``state`` is the
      model's non-trainable state (``None``: ``model.init_state(x.shape[1:])``); ``train``
      selects training behaviour (dropout on, batch statistics). Works under ``jax.jit``
      and ``jax.vmap``; every check runs at trace time on static shapes.

    Raises:
      TypeError / ValueError: a bad model, loss, regularizer, extension or ``grad_fn``
        (immediately); a per-example extension on a model that mixes examples (BatchNorm
        with ``train=True``), or a sampling extension without ``key`` (when ``f`` is called).
    """
    check_model_and_loss(model, loss, regularizer)
    check_grad_fn(grad_fn)
    exts = _resolve(extensions)
    if exts and grad_fn != "manual":
        raise ValueError(
            f"extensions: {[e.name for e in exts]} read the hand-written backward; "
            f"they need grad_fn='manual', got grad_fn={grad_fn!r}"
        )
    main = tuple(e for e in exts if not e.seeded)
    seeded = tuple(e for e in exts if e.seeded)

    def f(params, x, y, *, key=None, state=None, train=True) -> Pass:
        x, y = check_batch(x, y)
        n = _values(x).shape[0]
        if state is None:
            state = model.init_state(tuple(_values(x).shape[1:]))
        for e in exts:
            if e.per_example and model.mixes_examples(train):
                raise ValueError(
                    f"extensions: {e.name} is a per-example quantity, but the model "
                    f"mixes the examples of a batch with train={train} (BatchNorm "
                    f"uses batch statistics in training mode); call with "
                    f"train=False, or drop BatchNorm"
                )
            if e.needs_key and key is None:
                raise ValueError(
                    f"extensions: {e.name} samples random numbers and needs a key: "
                    f"call f(params, x, y, key=jax.random.key(...))"
                )

        if grad_fn == "autodiff":

            def objective(p):
                pred, _, new_state = model.forward_with_state(p, state, x, key=key, train=train)
                data_loss = loss.value(pred, y)
                penalty = regularizer.value(p) if regularizer is not None else 0.0
                return data_loss + penalty, (data_loss, penalty, pred, new_state)

            (_, (value, penalty, pred, new_state)), grads = jax.value_and_grad(
                objective, has_aux=True
            )(params)
            penalty = jnp.asarray(penalty, dtype=jnp.result_type(value))
            return Pass(value, penalty, grads, pred, new_state, {})

        pred, cache, new_state = model.forward_with_state(params, state, x, key=key, train=train)
        value, dpred = loss_value_and_grad(loss, pred, y)
        if main:
            grads, _, extras = model.backward_ext(params, cache, dpred, _visitor(main, n))
            for e in main:  # a model with no layers (Sequential([])) visits none
                extras.setdefault(e.name, params)
        else:
            grads, _ = model.backward(params, cache, dpred)
            extras = {}
        for i, e in enumerate(seeded):
            k = None if key is None else jax.random.fold_in(jax.random.fold_in(key, 0x6A6270), i)
            ctx = SeedContext(loss, pred, y, dpred, k, n, dict(extras))
            if callable(getattr(e, "walk", None)):  # its own walk (columns appear mid-way)
                extras[e.name] = e.walk(model, params, cache, ctx)
                continue
            seeds = e.seed(ctx)
            visit = _visitor((e,), n)

            def column(s, visit=visit, e=e):
                return model.backward_ext(params, cache, s, visit)[2][e.name]

            extras[e.name] = e.reduce(jax.vmap(column)(seeds))
        extras = {e.name: e.finalize(extras[e.name], n) for e in exts}
        if regularizer is not None:
            penalty = regularizer.value(params)
            grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
        else:
            penalty = jnp.zeros((), dtype=jnp.result_type(value))
        return Pass(value, penalty, grads, pred, new_state, extras)

    return f


def value_and_grad(
    model: Layer, loss: Loss, *, regularizer: Regularizer | None = None
) -> Callable[..., tuple[Array, PyTree]]:
    """Loss value and hand-written gradient: a reader of :func:`backprop`.

    Returns ``f(params, x, y, *, key=None, train=True, state=None) -> (value, grads)``:
    ``value = loss + penalty`` and ``grads`` its gradient (the structure of ``params``).
    The backward pass is the model's own ``backward``, seeded with
    ``loss.grad(pred, y) = ∂L/∂pred`` (mean-reduced over the batch). Works under
    ``jax.jit`` and under ``jax.vmap`` over examples (each with a batch axis of 1).
    """
    return _value_and_grad(backprop(model, loss, regularizer=regularizer))


def autodiff_value_and_grad(
    model: Layer, loss: Loss, *, regularizer: Regularizer | None = None
) -> Callable[..., tuple[Array, PyTree]]:
    """The reference: ``jax.value_and_grad`` of ``loss(model(params, x), y) + penalty``.

    Same signature as :func:`value_and_grad`; used by the gradient checks and as the
    ``grad_fn="autodiff"`` baseline of training and the benchmarks.
    """
    return _value_and_grad(backprop(model, loss, regularizer=regularizer, grad_fn="autodiff"))


def _value_and_grad(run):
    def f(params, x, y, *, key=None, train=True, state=None):
        out = run(params, x, y, key=key, train=train, state=state)
        return out.loss + out.penalty, out.grads

    return f
