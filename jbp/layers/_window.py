"""Window geometry shared by the 2-D layers (Conv2D, MaxPool2D, AvgPool2D).

Hyperparameters are normalised once, at construction, to hashable tuples:

- a size (``kernel_size``, ``window``, ``strides``, ``dilation``): an ``int`` or a pair
  ``(h, w)`` of positive ints  ->  ``(h, w)``;
- ``padding``: ``"SAME"``, ``"VALID"`` (any case), an ``int`` ``p`` (``p`` on every side),
  a pair ``(ph, pw)`` (symmetric per axis) or ``((top, bottom), (left, right))``
  ->  ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.

``explicit_pads`` turns that into numbers for a concrete input size. ``SAME`` follows
XLA/TensorFlow: ``out = ceil(n / s)``, total padding ``max((out−1)·s + k_eff − n, 0)``,
the odd pixel at the end (bottom/right).
"""

from __future__ import annotations

import numbers

from jax import lax


def _positive_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0


def _nonneg_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0


def pair(value, name: str, who: str) -> tuple[int, int]:
    """``int`` or ``(h, w)`` of positive ints -> ``(h, w)``."""
    if _positive_int(value):
        return (int(value), int(value))
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_positive_int(v) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(
        f"{who}: {name} must be a positive int or a pair of positive ints, got {value!r}"
    )


def padding_spec(padding, who: str):
    """Normalise ``padding`` (see the module docstring)."""
    if isinstance(padding, str):
        p = padding.upper()
        if p in ("SAME", "VALID"):
            return p
    elif _nonneg_int(padding):
        n = int(padding)
        return ((n, n), (n, n))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(_nonneg_int(v) for v in padding):
            return ((int(padding[0]),) * 2, (int(padding[1]),) * 2)
        if all(
            isinstance(v, (tuple, list)) and len(v) == 2 and all(_nonneg_int(u) for u in v)
            for v in padding
        ):
            return tuple((int(v[0]), int(v[1])) for v in padding)
    raise ValueError(
        f"{who}: padding must be 'SAME', 'VALID', an int ≥ 0, a pair (ph, pw) "
        f"or ((top, bottom), (left, right)), got {padding!r}"
    )


def effective(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Extent of a dilated window: ``k_eff = (k − 1)·d + 1``."""
    (kh, kw), (dh, dw) = kernel, dilation
    return ((kh - 1) * dh + 1, (kw - 1) * dw + 1)


def explicit_pads(
    padding, size: tuple[int, int], k_eff: tuple[int, int], strides: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` for an input of spatial ``size``."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s in zip(size, k_eff, strides):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return (pads[0], pads[1])
    return padding


def out_size(size, pads, k_eff, strides) -> tuple[int, int]:
    """``floor((n + lo + hi − k_eff) / s) + 1`` per axis (assumes the window fits)."""
    return tuple(
        (n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(size, pads, k_eff, strides)
    )


def check_fits(layer, what: str, size, pads, k_eff) -> None:
    """Raise ``ValueError`` naming the layer when the window exceeds the padded input."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(size, pads))
    if any(k > p for k, p in zip(k_eff, padded)):
        raise ValueError(
            f"{layer!r}: the {what} ({k_eff[0]}×{k_eff[1]}, after dilation) is larger "
            f"than the padded input ({padded[0]}×{padded[1]}, from an input of "
            f"height×width {size[0]}×{size[1]}); use a smaller {what}, "
            f"padding='SAME', or a larger input"
        )


def strided_window(xp, offset: tuple[int, int], strides: tuple[int, int], out: tuple[int, int]):
    """``xp[:, i + p·sh, j + q·sw, :]`` for every output ``(p, q)``: the input pixel that
    window offset ``(i, j)`` sees at every output position, ``(n, Ho, Wo, C)``."""
    (i, j), (sh, sw), (ho, wo) = offset, strides, out
    return lax.slice(
        xp,
        (0, i, j, 0),
        (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, xp.shape[3]),
        (1, sh, sw, 1),
    )
