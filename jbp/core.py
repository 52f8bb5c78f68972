"""The layer protocol, ``Sequential``, and the two gradient engines.

A layer is three pure functions over a pytree of parameters::

    init(key, in_shape)                -> (params, out_shape)   # shapes without the batch axis
    forward(params, x, *, key, train)  -> (y, cache)            # x, y carry a leading batch axis
    backward(params, cache, dy)        -> (grads, dx)           # grads has params' structure

Layer objects are frozen dataclasses of hyperparameters only (hashable, so they can be
closed over by ``jax.jit``); parameters never live on the object.

Non-trainable state (for example BatchNorm's running statistics) is an opt-in extension:
a layer that has state overrides ``init_state`` and ``forward_with_state``. Every other
layer inherits defaults that carry an empty state ``()`` through unchanged, so stateless
layers stay three functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

__all__ = [
    "Layer",
    "Sequential",
    "value_and_grad",
    "autodiff_value_and_grad",
    "cast",
    "leaf_name",
    "named_leaves",
    "layer_error",
]


def layer_error(layer: "Layer", message: str, exc: type = ValueError) -> Exception:
    """Build an error that names the layer: ``Dense(units=10): message``."""
    return exc(f"{layer!r}: {message}")


def check_array(name: str, value: Any) -> Array:
    """Return ``value`` as an array, or raise ``TypeError`` naming the argument."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return value
    raise TypeError(
        f"{name}: expected an array (jax.Array or numpy.ndarray), got {type(value).__name__}"
    )


def check_floating(name: str, x: Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")


class Layer:
    """Base class of every layer. Subclasses are ``@dataclass(frozen=True)``.

    Subclasses implement ``init``, ``forward`` and ``backward``. ``apply`` and the state
    extension (``init_state``, ``forward_with_state``, ``stateful``) have defaults.
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        raise NotImplementedError

    def forward(self, params: PyTree, x: Array, *, key: Array | None = None,
                train: bool = False) -> tuple[Array, PyTree]:
        raise NotImplementedError

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        raise NotImplementedError

    def apply(self, params: PyTree, x: Array, *, key: Array | None = None,
              train: bool = False) -> Array:
        """The forward pass without the cache: ``y = layer(x)``."""
        return self.forward(params, x, key=key, train=train)[0]

    # --- non-trainable state (opt-in) -------------------------------------------------
    stateful = False

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        """Initial non-trainable state; ``()`` for stateless layers."""
        return ()

    def forward_with_state(self, params: PyTree, state: PyTree, x: Array, *,
                           key: Array | None = None, train: bool = False):
        """``(y, cache, new_state)``; stateless layers pass ``state`` through."""
        y, cache = self.forward(params, x, key=key, train=train)
        return y, cache, state

    # --- per-example gradient norms (jbp.per_example) ----------------------------------
    def per_example_sq_norms(self, params: PyTree, cache: PyTree, dy: Array) -> Array:
        """Squared L2 norms, one per example, of this layer's per-example parameter gradients.

        ``dy`` is the cotangent of the layer's output with one row per example, already
        scaled so that row ``i`` is the gradient of example ``i``'s own loss (see
        :func:`jbp.per_example_grad_norms`). Returns ``(batch,)``: ``Σ_leaves ‖∂ℓᵢ/∂θ‖²``.

        The default is general but not fast: ``vmap`` of this layer's own ``backward``
        over per-example slices ``(cacheᵢ, dyᵢ)``, each given a batch axis of 1. It
        assumes that **every leaf of** ``cache`` **carries the batch axis first** (true
        when the cache keeps the layer's inputs/pre-activations, as the protocol asks).
        Parameterless layers return zeros without running anything. Layers override it
        with a closed form from their ``(input, delta)`` pair (``Dense``:
        ``‖∇Wᵢ‖² = ‖aᵢ‖²‖δᵢ‖²``), which never materialises per-example gradients.
        """
        n = dy.shape[0]
        if not jax.tree.leaves(params):
            return jnp.zeros((n,), dtype=dy.dtype)

        def one(c, d):
            c1 = jax.tree.map(lambda a: a[None], c)
            g, _ = self.backward(params, c1, d[None])
            return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g))

        return jax.vmap(one)(cache, dy)


def _out_shape(layer: Layer, in_shape: tuple) -> tuple:
    """``layer.init``'s output shape without creating parameters.

    The shape is static Python ints, so it is captured from inside ``jax.eval_shape``
    rather than returned through it (its outputs would become ``ShapeDtypeStruct``s).
    """
    box = []

    def f(k):
        box.append(layer.init(k, in_shape)[1])

    jax.eval_shape(f, jax.random.key(0))
    return tuple(int(d) for d in box[0])


def _split_for_layers(key: Array | None, n: int):
    if key is None:
        return [None] * n
    return [jax.random.fold_in(key, i) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Sequential(Layer):
    """Layers applied in order; itself a layer.

    Parameters, caches and grads are tuples with one entry per layer. ``backward``
    walks the layers in reverse, handing each layer's ``dx`` to the layer before it as
    its ``dy``: the delta recursion ``δˡ = (δˡ⁺¹ Wˡ⁺¹ᵀ) ⊙ f'(zˡ)`` falls out of composing
    a ``Dense`` backward with an activation backward.

    ``init`` returns ``(params, out_shape)`` like every other layer.
    """

    layers: tuple

    def __init__(self, layers: Sequence[Layer]):
        if isinstance(layers, Layer):
            raise TypeError("Sequential: expected a sequence of layers, e.g. "
                            "Sequential([Dense(32), ReLU()]), got a single layer")
        layers = tuple(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layers[{i}] is not a jbp Layer, "
                                f"got {type(layer).__name__}")
        object.__setattr__(self, "layers", layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(l) for l in self.layers)
        return f"Sequential([{inner}])"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def _context(self, i: int, layer: Layer, err: Exception) -> Exception:
        return type(err)(f"layers[{i}] ({type(layer).__name__}): {err}")

    def init(self, key, in_shape):
        in_shape = tuple(int(d) for d in in_shape)
        params, shape = [], in_shape
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, max(len(self.layers), 1)))):
            try:
                p, shape = layer.init(k, shape)
            except (ValueError, TypeError) as e:
                raise self._context(i, layer, e) from e
            params.append(p)
        return tuple(params), shape

    def _check_params(self, params):
        if not isinstance(params, (tuple, list)) or len(params) != len(self.layers):
            got = (f"{type(params).__name__} of length {len(params)}"
                   if isinstance(params, (tuple, list)) else type(params).__name__)
            raise ValueError(f"Sequential: params must be a tuple with one entry per layer "
                             f"({len(self.layers)}), got {got}; were they made by this model's init?")

    def forward(self, params, x, *, key=None, train=False):
        self._check_params(params)
        caches = []
        for i, (layer, p, k) in enumerate(zip(self.layers, params,
                                              _split_for_layers(key, len(self.layers)))):
            try:
                x, c = layer.forward(p, x, key=k, train=train)
            except (ValueError, TypeError) as e:
                raise self._context(i, layer, e) from e
            caches.append(c)
        return x, tuple(caches)

    def backward(self, params, cache, dy):
        grads, dx, _ = self.backward_with_deltas(params, cache, dy)
        return grads, dx

    def backward_with_deltas(self, params, cache, dy):
        """``(grads, dx, deltas)`` where ``deltas[i]`` is the ``dy`` handed to layer ``i``.

        For a ``Dense`` layer that is its ``δ = ∂L/∂z``; for an activation it is
        ``∂L/∂a``. Diagnostics and per-example gradient norms read these.
        """
        self._check_params(params)
        grads = [None] * len(self.layers)
        deltas = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            deltas[i] = dy
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)
        return tuple(grads), dy, tuple(deltas)

    def per_example_sq_norms(self, params, cache, dy):
        """Sum over layers of each layer's ``per_example_sq_norms(params[i], cache[i], δ[i])``.

        The deltas come from one batched :meth:`backward_with_deltas`; no per-example
        gradient is materialised unless a layer's own method does so.
        """
        _, _, deltas = self.backward_with_deltas(params, cache, dy)
        total = jnp.zeros((dy.shape[0],), dtype=dy.dtype)
        for layer, p, c, d in zip(self.layers, params, cache, deltas):
            total = total + layer.per_example_sq_norms(p, c, d)
        return total

    # --- state: a tuple of the children's states -----------------------------------
    @property
    def stateful(self):  # type: ignore[override]
        return any(layer.stateful for layer in self.layers)

    def init_state(self, in_shape):
        in_shape = tuple(int(d) for d in in_shape)
        states, shape = [], in_shape
        for layer in self.layers:
            states.append(layer.init_state(shape))
            shape = _out_shape(layer, shape)
        return tuple(states)

    def forward_with_state(self, params, state, x, *, key=None, train=False):
        self._check_params(params)
        caches, new_state = [], []
        for i, (layer, p, s, k) in enumerate(zip(self.layers, params, state,
                                                 _split_for_layers(key, len(self.layers)))):
            try:
                x, c, s = layer.forward_with_state(p, s, x, key=k, train=train)
            except (ValueError, TypeError) as e:
                raise self._context(i, layer, e) from e
            caches.append(c)
            new_state.append(s)
        return x, tuple(caches), tuple(new_state)


# --------------------------------------------------------------------------------------
# Gradient engines
# --------------------------------------------------------------------------------------

def _check_batch(x, y):
    x = check_array("x", x)
    y = check_array("y", y)
    if x.ndim == 0:
        raise ValueError("x: expected a leading batch axis, got a scalar")
    if y.ndim == 0:
        raise ValueError("y: expected a leading batch axis, got a scalar")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y: expected the same number of examples, got x with "
                         f"{x.shape[0]} (shape {x.shape}) and y with {y.shape[0]} (shape {y.shape})")
    if x.shape[0] == 0:
        raise ValueError("x: got an empty batch (0 examples)")
    return x, y


def value_and_grad(model: Layer, loss, *, regularizer=None) -> Callable:
    """Loss value and hand-written gradient: forward, loss, backward.

    Returns ``f(params, x, y, *, key=None, train=True) -> (loss_value, grads)`` with
    ``grads`` shaped like ``params``. The backward pass is the model's own ``backward``,
    seeded with ``loss.grad(pred, y) = ∂L/∂pred`` (mean-reduced over the batch). Works
    under ``jax.jit`` and under ``jax.vmap`` over examples (each with a batch axis of 1).

    With a ``regularizer`` (an object with ``value(params)`` and ``grad(params)``, see
    ``jbp.regularizers``) the value is ``loss + penalty`` and its hand-written gradient
    is added leaf by leaf.
    """
    _check_model_and_loss(model, loss, regularizer)

    def f(params, x, y, *, key=None, train=True):
        x, y = _check_batch(x, y)
        pred, cache = model.forward(params, x, key=key, train=train)
        value, dpred = loss_value_and_grad(loss, pred, y)
        grads, _ = model.backward(params, cache, dpred)
        if regularizer is not None:
            value = value + regularizer.value(params)
            grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
        return value, grads

    return f


def autodiff_value_and_grad(model: Layer, loss, *, regularizer=None) -> Callable:
    """The reference: ``jax.value_and_grad`` of ``loss(model.apply(params, x), y)``.

    Same signature as :func:`value_and_grad` (the regularizer's ``value`` is
    differentiated by autodiff too); used by the gradient checks and as the
    ``grad_fn="autodiff"`` baseline of training and the benchmarks.
    """
    _check_model_and_loss(model, loss, regularizer)

    def f(params, x, y, *, key=None, train=True):
        x, y = _check_batch(x, y)

        def objective(p):
            value = loss.value(model.apply(p, x, key=key, train=train), y)
            if regularizer is not None:
                value = value + regularizer.value(p)
            return value

        return jax.value_and_grad(objective)(params)

    return f


def loss_value_and_grad(loss, pred, y):
    """``(loss.value, loss.grad)``, in one pass when the loss offers ``value_and_grad``."""
    if hasattr(loss, "value_and_grad"):
        return loss.value_and_grad(pred, y)
    return loss.value(pred, y), loss.grad(pred, y)


def _check_model_and_loss(model, loss, regularizer=None):
    if not isinstance(model, Layer):
        raise TypeError(f"model: expected a jbp Layer (e.g. jbp.Sequential), got {type(model).__name__}")
    if not (hasattr(loss, "value") and hasattr(loss, "grad")):
        raise TypeError(f"loss: expected a jbp loss with .value and .grad "
                        f"(e.g. jbp.losses.mse), got {type(loss).__name__}")
    if regularizer is not None and not (hasattr(regularizer, "value") and hasattr(regularizer, "grad")):
        raise TypeError(f"regularizer: expected an object with .value(params) and .grad(params) "
                        f"(e.g. jbp.regularizers.l2(1e-4)), got {type(regularizer).__name__}")


# --------------------------------------------------------------------------------------
# Pytree helpers
# --------------------------------------------------------------------------------------

def cast(tree: PyTree, dtype) -> PyTree:
    """Cast every floating-point leaf of ``tree`` to ``dtype`` (others untouched)."""
    def f(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree.map(f, tree)


def leaf_name(path) -> str:
    """A readable name for a pytree path: ``layers[2].W`` for a Sequential's params."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.SequenceKey):
            parts.append(f"layers[{k.idx}]")
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:  # FlattenedIndexKey and friends
            parts.append(str(k).strip(".[]"))
    return ".".join(parts) if parts else "<root>"


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """``[(name, leaf), ...]`` in flattening order, names from :func:`leaf_name`."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(leaf_name(p), v) for p, v in leaves]
