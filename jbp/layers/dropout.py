"""Dropout: inverted dropout with an explicit key and a cached mask."""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from jbp.core import Array, Layer, PyTree, check_array, check_floating, layer_error


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout. **``rate`` is the probability of DROPPING a unit**, not of keeping it.

    ``Dropout(0.1)`` zeroes about 10% of the activations. (Careful when porting code:
    ``jax.example_libraries.stax.Dropout(rate)`` takes the probability of *keeping* a
    unit — the opposite. Keras, PyTorch, Flax and Haiku all use the drop probability, as
    jbp does.)

    Forward with ``train=True`` (``p = rate``; a fresh ``key`` is required)::

        m ~ Bernoulli(1 − p)           elementwise, same shape as x (batch axis included)
        y = x ⊙ m / (1 − p)            dropped units are 0, kept ones scaled by 1/(1 − p)

    so ``E[y] = x``: the expected activation is unchanged, and evaluation
    (``train=False``) is simply the identity ``y = x`` — no rescaling at test time.

    Backward reuses the forward mask from the cache (the same units are dropped)::

        ∂L/∂x = ∂L/∂y ⊙ m / (1 − p)

    No parameters (``params = ()``). ``cache = {"x": x, "mask": m}`` (``m`` boolean;
    ``{"x": x}`` when not training). ``rate = 0`` is the identity in both modes.
    ``train`` is normally a static Python bool; if it is traced (a keyword argument of a
    jitted function), both paths are compiled and a key is required.

    Keys: inside ``Sequential`` the model's key is folded with the layer's index, and
    ``fit`` draws a new key every step, so each step and each Dropout layer gets its own
    mask. Calling ``forward`` yourself, pass a new key per call — reusing a key reuses the
    mask. Under ``vmap`` over examples, pass one key per example (batched keys), otherwise
    every example gets the same mask.
    """

    rate: float

    def __post_init__(self):
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, numbers.Real):
            raise TypeError(
                f"Dropout: rate must be a number in [0, 1) (the probability of "
                f"dropping a unit), got {r!r} of type {type(r).__name__}"
            )
        r = float(r)
        if not (math.isfinite(r) and 0.0 <= r < 1.0):
            raise ValueError(
                f"Dropout: rate must lie in [0, 1) (the probability of dropping a "
                f"unit; rate=1 would drop everything), got {r!r}"
            )
        object.__setattr__(self, "rate", r)

    @property
    def keep_prob(self) -> float:
        """``1 − rate``: the probability that a unit is kept."""
        return 1.0 - self.rate

    def init(self, key: Array, in_shape: tuple[int, ...]) -> tuple[PyTree, tuple[int, ...]]:
        return (), tuple(in_shape)

    def forward(
        self, params: PyTree, x: Array, *, key: Array | None = None, train: bool = False
    ) -> tuple[Array, PyTree]:
        x = check_array("x", x)
        check_floating("x", x)
        if key is None and (isinstance(train, jax.core.Tracer) or bool(train)):
            raise layer_error(
                self,
                "train=True needs a PRNG key to draw the dropout mask: call "
                "forward(params, x, key=jax.random.key(seed), train=True) with a fresh key "
                "per step (jbp.fit does this for you), or pass train=False to evaluate"
                + (
                    " (train is a traced value here, e.g. a keyword argument of a jitted "
                    "function: mark it static with static_argnames='train', or pass a key)"
                    if isinstance(train, jax.core.Tracer)
                    else ""
                ),
            )
        if isinstance(train, jax.core.Tracer):
            # train only known at run time (a jitted function's argument): both paths in one
            # graph; when train is False the mask is all ones and the scale is 1.
            train = jnp.asarray(train, bool)
            keep = jax.random.bernoulli(key, self.keep_prob, x.shape) | ~train
            scale = jnp.where(train, 1.0 / self.keep_prob, 1.0).astype(x.dtype)
            y = jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
            return y, {"x": x, "mask": keep, "scale": scale}
        if not bool(train) or self.rate == 0.0:
            return x, {"x": x}
        keep = jax.random.bernoulli(key, self.keep_prob, x.shape)  # type: ignore[arg-type]
        scale = 1.0 / self.keep_prob
        y = jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
        return y, {"x": x, "mask": keep}

    def backward(self, params: PyTree, cache: PyTree, dy: Array) -> tuple[PyTree, Array]:
        if "mask" not in cache:  # evaluation mode, or rate = 0: the identity
            return (), dy
        scale = cache.get("scale", 1.0 / self.keep_prob)
        return (), jnp.where(cache["mask"], dy * scale, jnp.zeros((), dy.dtype))
