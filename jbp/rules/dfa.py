"""Direct feedback alignment (Nøkland 2016): the output error sent to every hidden layer
through its own fixed random matrix."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jbp import initializers
from jbp.core import Array, Layer, PyTree, Sequential, Visit, _out_shape
from jbp.layers import Conv2D, Dense
from jbp.layers._feedback import feedback_key

__all__ = ["DFA", "dfa"]

#: the hidden layers that receive a direct feedback signal
TARGETS = (Dense, Conv2D)


@dataclasses.dataclass(frozen=True)
class DFA(Layer):
    """A ``Sequential`` trained by direct feedback alignment; itself a layer.

    The forward pass is the wrapped model's. Write ``e = ∂L/∂ŷ`` for the output delta (the
    ``dy`` handed to ``backward``: the gradient of the loss w.r.t. the network's output) and
    ``l₁ < l₂ < … < l_K`` for the indices of the *hidden* weight layers (``Dense`` and
    ``Conv2D``, all but the last layer, which must be a ``Dense``: the output layer). Layer
    ``l_k``'s *injection point* is the input of the next weight layer ``l_{k+1}`` (the output
    layer for ``l_K``). Backprop would deliver ``∂L/∂(that input)`` there; DFA delivers
    instead::

        B_k e          (B_k: a fixed random matrix, shape out_shape + injection_shape;
                        the product contracts all of e's non-batch axes)

    and from there the layers between ``l_k`` and ``l_{k+1}`` — its activation, and any
    dropout, batch norm, pooling or flatten — run their own ``backward``, so that layer
    ``l_k`` gets, for an MLP ``z_l = a_{l−1} W_l + b_l``, ``a_l = f(z_l)``::

        δ_L = e                              (the output layer, as in backprop)
        δ_l = (e B_l) ⊙ f'(z_l)              (every hidden layer, l < L)
        ∂L/∂W_l = a_{l−1}ᵀ δ_l    ∂L/∂b_l = Σ_batch δ_l     (the gradients keep their form)

    instead of backprop's ``δ_l = (δ_{l+1} W_{l+1}ᵀ) ⊙ f'(z_l)``. Layers before ``l₁`` (and
    ``l₁``'s own ``∂L/∂x``, returned as this layer's ``dx``) are reached by ordinary
    backward calls from ``l₁``'s delta. Other layers with parameters between two weight
    layers (``BatchNorm``, ``LayerNorm``, recurrent layers) are trained by the delta that
    arrives there; a nested ``Sequential`` counts as one such layer.

    **State.** ``params`` are exactly the wrapped model's (``init`` is its ``init``).
    ``B = (B_1, …, B_K)`` is non-trainable state: ``init_state(in_shape)`` returns
    ``{"model": model.init_state(in_shape), "B": B}`` with ``B_k`` drawn in float32 from
    ``feedback_init`` (default Glorot-uniform) as a ``(prod(out_shape),
    prod(injection_shape))`` matrix — the weight of a dense map from the error to the
    injection point — reshaped, with the key ``feedback_key(feedback_seed, k)`` (k from 0; see
    :func:`jbp.layers._feedback.feedback_key`).
    ``forward_with_state`` puts ``B`` into the cache. The stateless ``forward`` (used by
    ``value_and_grad`` and the per-example functions) has no state: ``backward`` then draws
    the same ``B_k`` from ``feedback_seed``.

    Args:
      model: a ``Sequential`` whose last layer is a ``Dense`` and which has at least one
        hidden ``Dense``/``Conv2D`` layer before it.
      feedback_seed: seed of the feedback matrices (an int in ``[0, 2**32)``).
      feedback_init: initializer (or name) of the feedback matrices.

    ``cache = {"layers": the model's caches, "B": B}`` (no ``"B"`` from ``forward``).
    """

    model: Sequential
    feedback_seed: int = 0
    feedback_init: Any = "glorot_uniform"

    def __post_init__(self):
        if not isinstance(self.model, Sequential):
            raise TypeError(
                f"dfa: expected a jbp.Sequential model, got {type(self.model).__name__}"
            )
        layers = self.model.layers
        if not layers or not isinstance(layers[-1], Dense):
            last = type(layers[-1]).__name__ if layers else "no layers"
            raise ValueError(
                f"dfa: the model's last layer must be a Dense layer (the output "
                f"layer, which receives the output error e itself), got {last} in "
                f"{self.model!r}"
            )
        if not self.targets:
            kinds = ", ".join(type(l).__name__ for l in layers)
            raise ValueError(
                f"dfa: nothing to train by direct feedback — the model ({kinds}) has "
                f"no hidden Dense or Conv2D layer before its output layer, so DFA "
                f"would be backpropagation"
            )
        seed = self.feedback_seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"dfa: feedback_seed must be an integer in [0, 2**32), got {seed!r}")
        initializers.get(self.feedback_init)

    # --- structure ----------------------------------------------------------------------
    @property
    def targets(self) -> tuple[int, ...]:
        """Indices of the hidden weight layers ``l_1 < … < l_K``."""
        layers = self.model.layers
        return tuple(i for i, l in enumerate(layers[:-1]) if isinstance(l, TARGETS))

    def _injections(self) -> dict[int, int]:
        """``{j: k}``: the input of layer ``j`` receives ``B_k e``."""
        t = self.targets
        nxt = t[1:] + (len(self.model.layers) - 1,)
        return {j: k for k, j in enumerate(nxt)}

    def _draw(self, k: int, out_shape, inj_shape) -> jax.Array:
        m, d = math.prod(out_shape), math.prod(inj_shape)
        B = initializers.get(self.feedback_init)(
            feedback_key(self.feedback_seed, k), (m, d), jnp.float32
        )
        return B.reshape(tuple(out_shape) + tuple(inj_shape))

    # --- the layer protocol -------------------------------------------------------------
    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return self.model.init(key, in_shape)

    stateful = True

    def init_state(self, in_shape: tuple[int, ...]) -> PyTree:
        in_shape = tuple(int(d) for d in in_shape)
        shapes = [in_shape]
        for layer in self.model.layers:
            shapes.append(_out_shape(layer, shapes[-1]))
        B = tuple(
            self._draw(k, shapes[-1], shapes[j])
            for j, k in sorted(self._injections().items(), key=lambda jk: jk[1])
        )
        return {"model": self.model.init_state(in_shape), "B": B}

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        y, caches = self.model.forward(params, x, key=key, train=train)
        return y, {"layers": caches}

    def forward_with_state(
        self,
        params: PyTree,
        state: PyTree,
        x: Array,
        *,
        key: Array | None = None,
        train: bool = False,
    ) -> tuple[Array, PyTree, PyTree]:
        if not (
            isinstance(state, dict)
            and set(state) == {"model", "B"}
            and isinstance(state["B"], tuple)
            and len(state["B"]) == len(self.targets)
        ):
            raise ValueError(
                f"dfa: expected the state {{'model', 'B'}} made by init_state, with "
                f"{len(self.targets)} feedback matrices, got "
                f"{sorted(state) if isinstance(state, dict) else type(state).__name__}"
            )
        y, caches, inner = self.model.forward_with_state(
            params, state["model"], x, key=key, train=train
        )
        return y, {"layers": caches, "B": state["B"]}, {"model": inner, "B": state["B"]}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        grads, dx, _ = self.backward_with_deltas(params, cache, dy)
        return grads, dx

    def backward_with_deltas(
        self, params: PyTree, cache: PyTree, dy: Array
    ) -> tuple[PyTree, Array, tuple[Array, ...]]:
        """``(grads, dx, deltas)``; ``deltas[i]`` is the ``dy`` handed to layer ``i`` (for a
        hidden weight layer: ``B_k e`` after the layers between it and its injection point).
        """
        grads, dx, deltas, _ = self._walk(params, cache, dy, None)
        return grads, dx, deltas

    def backward_ext(
        self, params: PyTree, cache: PyTree, dy: Array, visit: Visit
    ) -> tuple[PyTree, Array, dict[str, Any]]:
        """The DFA walk, each layer visited with the delta it receives (linear in ``e``, so
        row ``i`` of every delta is example ``i``'s own: per-example extensions hold)."""
        grads, dx, _, results = self._walk(params, cache, dy, visit)
        names = results[0].keys() if results else ()
        return grads, dx, {k: tuple(r[k] for r in results) for k in names}

    def mixes_examples(self, train: bool) -> bool:
        return self.model.mixes_examples(train)

    def _walk(self, params, cache, dy, visit):
        self.model._check_params(params)
        layers, caches, Bs = self.model.layers, cache["layers"], cache.get("B")
        e = dy
        inject = self._injections()
        grads, deltas = [None] * len(layers), [None] * len(layers)
        results = [None] * len(layers)
        d = e
        for i in reversed(range(len(layers))):
            if i + 1 in inject:
                k = inject[i + 1]
                inj_shape = d.shape[1:]  # d = ∂/∂(input of layer i+1): the injection shape
                B = self._draw(k, e.shape[1:], inj_shape) if Bs is None else Bs[k]
                if B.shape != e.shape[1:] + inj_shape:
                    raise ValueError(
                        f"dfa: feedback matrix B[{k}] has shape {B.shape}, expected "
                        f"{e.shape[1:] + inj_shape} (output {e.shape[1:]}, input of "
                        f"layers[{i + 1}] {inj_shape}); was the state made by "
                        f"init_state for this input shape?"
                    )
                d = jnp.tensordot(e, B.astype(e.dtype), axes=e.ndim - 1)
            deltas[i] = d
            if visit is None:
                grads[i], d = layers[i].backward(params[i], caches[i], d)
            else:
                grads[i], d, results[i] = layers[i].backward_ext(params[i], caches[i], d, visit)
        return tuple(grads), d, tuple(deltas), results


def dfa(model: Sequential, *, seed: int = 0, feedback_init: Any = "glorot_uniform") -> DFA:
    """``DFA(model, feedback_seed=seed, feedback_init=feedback_init)``: train ``model`` by
    direct feedback alignment (see :class:`DFA`).

    Args:
      model: a ``Sequential`` ending in a ``Dense`` output layer, with at least one hidden
        ``Dense``/``Conv2D`` layer.
      seed: seed of the fixed feedback matrices.
      feedback_init: their initializer (default Glorot-uniform).

    Raises:
      TypeError: ``model`` is not a ``Sequential``.
      ValueError: no final ``Dense`` layer, or no hidden weight layer (nothing to train).
    """
    return DFA(model, feedback_seed=seed, feedback_init=feedback_init)
