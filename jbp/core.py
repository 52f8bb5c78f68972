"""The layer protocol and ``Sequential`` (the engine that runs them is :mod:`jbp.engine`).

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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jbp._validate import check_array, check_floating, check_in_shape, check_key  # noqa: F401 - layers import them from here

Array = jax.Array
PyTree = Any
#: ``visit(layer, params, cache, dy, grads) -> {extension name: result}``, handed to
#: :meth:`Layer.backward_ext` by the engine.
Visit = Callable[..., dict[str, Any]]

__all__ = [
    "Layer",
    "Sequential",
    "cast",
    "leaf_name",
    "named_leaves",
    "layer_error",
]


def unmasked(a: Any) -> Any:
    """The values of a ``jbp.layers.Masked`` array (``a.values``), or ``a`` itself: what the
    engine, the extensions and the checks read from a possibly masked delta or output."""
    return a.values if hasattr(a, "values") and hasattr(a, "mask") else a


def layer_error(layer: Layer, message: str, exc: type = ValueError) -> Exception:
    """Build an error that names the layer: ``Dense(units=10): message``."""
    return exc(f"{layer!r}: {message}")


class Layer:
    """Base class of every layer. Subclasses are ``@dataclass(frozen=True)``.

    Subclasses implement ``init``, ``forward`` and ``backward``. ``apply`` and the state
    extension (``init_state``, ``forward_with_state``, ``stateful``) have defaults.
    """

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        raise NotImplementedError

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        raise NotImplementedError

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        raise NotImplementedError

    def apply(
        self,
        params: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
        state: PyTree = None,
    ) -> Array:
        """The forward pass without the cache: ``y = layer(x)``.

        ``state``: the layer's non-trainable state (e.g. BatchNorm's running statistics
        from ``init_state`` or ``history.state``); when given, ``forward_with_state`` runs.
        """
        if state is not None:
            return self.forward_with_state(params, state, x, key=key, train=train)[0]
        return self.forward(params, x, key=key, train=train)[0]

    # --- non-trainable state (opt-in) -------------------------------------------------
    stateful = False

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        """Initial non-trainable state; ``()`` for stateless layers."""
        return ()

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        """``(y, cache, new_state)``; stateless layers pass ``state`` through."""
        y, cache = self.forward(params, x, key=key, train=train)
        return y, cache, state

    # --- the extension walk (jbp.backprop) ---------------------------------------------
    def mixes_examples(self, train: bool) -> bool:
        """Whether example ``i``'s output depends on other examples of the batch.

        ``False`` for almost every layer; ``BatchNorm`` in training mode says ``True``
        (its batch statistics couple the examples), and per-example extensions refuse it.
        """
        return False

    def cache_axes(self, cache: PyTree) -> PyTree:
        """The batch axis of every ``cache`` leaf, for per-example ``vmap``: ``0`` (the
        default: the cache keeps the layer's inputs) or ``None`` for a leaf the whole batch
        shares (a feedback matrix, fixed statistics). Same structure as ``cache``."""
        return jax.tree.map(lambda _: 0, cache)

    def backward_ext(
        self, params: PyTree, cache: PyTree, dy: Array, visit: Visit
    ) -> tuple[PyTree, Array, dict[str, Any]]:
        """``backward`` that also evaluates extensions: ``(grads, dx, results)``.

        ``visit(layer, params, cache, dy, grads) -> dict`` computes every requested
        extension for one layer from its ``(cache, dy)``. A plain layer is visited once,
        after its own ``backward``; composites (``Sequential``, ``Residual``) override this
        to hand ``visit`` on to their children, so the results mirror the structure of
        ``params``. A user's own layer needs nothing here.
        """
        grads, dx = self.backward(params, cache, dy)
        return grads, dx, visit(self, params, cache, dy, grads)


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
            raise TypeError(
                "Sequential: expected a sequence of layers, e.g. "
                "Sequential([Dense(32), ReLU()]), got a single layer"
            )
        layers = tuple(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Sequential: layers[{i}] is not a jbp Layer, got {type(layer).__name__}"
                )
        object.__setattr__(self, "layers", layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(l) for l in self.layers)
        return f"Sequential([{inner}])"

    def __len__(self) -> int:
        return len(self.layers)

    def summary(
        self,
        in_shape: Sequence[int],
        *,
        params: PyTree = None,
        dtype: Any = None,
        print_fn: Callable[[str], Any] | None = None,
    ) -> str:
        """A table of layers, output shapes, parameter counts and dtypes; see :func:`jbp.summary`."""
        from jbp.summary import summary

        kw = {} if dtype is None else {"dtype": dtype}
        return summary(self, in_shape, params=params, print_fn=print_fn, **kw)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def _context(self, i: int, layer: Layer, err: Exception) -> Exception:
        """The same error with the layer's position in front (plain ValueError/TypeError
        only: jax's own error types, e.g. a tracer conversion, are re-raised unchanged)."""
        if type(err) not in (ValueError, TypeError):
            return err
        return type(err)(f"layers[{i}] ({type(layer).__name__}): {err}")

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        key = check_key(key)
        in_shape = check_in_shape(in_shape)
        params, shape = [], in_shape
        for i, (layer, k) in enumerate(
            zip(self.layers, jax.random.split(key, max(len(self.layers), 1)))
        ):
            try:
                p, shape = layer.init(k, shape)
            except (ValueError, TypeError) as e:
                new = self._context(i, layer, e)
                if new is e:
                    raise
                raise new from e
            params.append(p)
        return tuple(params), shape

    def _check_params(self, params):
        if not isinstance(params, (tuple, list)) or len(params) != len(self.layers):
            got = (
                f"{type(params).__name__} of length {len(params)}"
                if isinstance(params, (tuple, list))
                else type(params).__name__
            )
            raise ValueError(
                f"Sequential: params must be a tuple with one entry per layer "
                f"({len(self.layers)}), got {got}; were they made by this model's init?"
            )

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        self._check_params(params)
        caches = []
        for i, (layer, p, k) in enumerate(
            zip(self.layers, params, _split_for_layers(key, len(self.layers)))
        ):
            try:
                x, c = layer.forward(p, x, key=k, train=train)
            except (ValueError, TypeError) as e:
                new = self._context(i, layer, e)
                if new is e:
                    raise
                raise new from e
            caches.append(c)
        return x, tuple(caches)

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        grads, dx, _ = self.backward_with_deltas(params, cache, dy)
        return grads, dx

    def backward_with_deltas(
        self, params: PyTree, cache: PyTree, dy: Array
    ) -> tuple[PyTree, Array, tuple[Array, ...]]:
        """``(grads, dx, deltas)`` where ``deltas[i]`` is the ``dy`` handed to layer ``i``.

        For a ``Dense`` layer that is its ``δ = ∂L/∂z``; for an activation it is
        ``∂L/∂a``. (The engine's extensions see the same deltas through ``backward_ext``.)
        """
        self._check_params(params)
        grads: list[PyTree] = [None] * len(self.layers)
        deltas: list[Any] = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            deltas[i] = dy
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)
        return tuple(grads), dy, tuple(deltas)

    def backward_ext(
        self, params: PyTree, cache: PyTree, dy: Array, visit: Visit
    ) -> tuple[PyTree, Array, dict[str, Any]]:
        """The reverse walk of :meth:`backward`, each child visited with its own delta;
        results are tuples with one entry per layer, like ``params``."""
        self._check_params(params)
        grads: list[PyTree] = [None] * len(self.layers)
        results: list[Any] = [None] * len(self.layers)

        for i in reversed(range(len(self.layers))):
            grads[i], dy, results[i] = self.layers[i].backward_ext(params[i], cache[i], dy, visit)
        names = results[0].keys() if results else ()
        return tuple(grads), dy, {k: tuple(r[k] for r in results) for k in names}

    def mixes_examples(self, train: bool) -> bool:
        return any(layer.mixes_examples(train) for layer in self.layers)

    # --- state: a tuple of the children's states -----------------------------------
    @property
    def stateful(self) -> bool:  # type: ignore[override]

        return any(layer.stateful for layer in self.layers)

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        """A tuple of the children's states, or ``()`` when no layer has state."""
        if not self.stateful:
            return ()
        in_shape = tuple(int(d) for d in in_shape)
        states, shape = [], in_shape
        for layer in self.layers:
            states.append(layer.init_state(shape))
            shape = _out_shape(layer, shape)
        return tuple(states)

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        self._check_params(params)
        if not self.stateful:
            y, caches = self.forward(params, x, key=key, train=train)
            return y, caches, state
        if not isinstance(state, tuple) or len(state) != len(self.layers):
            raise ValueError(
                f"Sequential: state must be a tuple with one entry per layer "
                f"({len(self.layers)}) from model.init_state(in_shape), got "
                f"{jax.tree.map(jnp.shape, state)}"
            )
        caches, new_state = [], []
        for i, (layer, p, s, k) in enumerate(
            zip(self.layers, params, state, _split_for_layers(key, len(self.layers)))
        ):
            try:
                x, c, s = layer.forward_with_state(p, s, x, key=k, train=train)
            except (ValueError, TypeError) as e:
                new = self._context(i, layer, e)
                if new is e:
                    raise
                raise new from e
            caches.append(c)
            new_state.append(s)
        return x, tuple(caches), tuple(new_state)


# --------------------------------------------------------------------------------------
# Pytree helpers
# --------------------------------------------------------------------------------------


def cast(tree: PyTree, dtype: Any) -> PyTree:
    """Cast every floating-point leaf of ``tree`` to ``dtype`` (others untouched)."""

    def f(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(f, tree)


def leaf_name(path: Sequence[Any]) -> str:
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


# The engine lives in jbp/engine.py; these names stay importable from here.
