"""The same network, with the same parameter values, in the peer libraries (for bench/peers.py).

A jbp ``Sequential`` of ``Dense``, ``Conv2D`` (3x3-style, stride 1, "SAME"), ``MaxPool2D``
(2x2, stride 2), ``ReLU``, ``Sigmoid`` and ``Flatten`` is described once
(:func:`describe`: a list of plain dicts holding numpy copies of the parameters) and
rebuilt from that description in PyTorch, Equinox or Flax NNX, so every contender starts
from the very same numbers. The layouts differ and are converted here, in one place:

============  ===========================  ===============================  ================
library       dense weight                 conv kernel                      images
============  ===========================  ===============================  ================
jbp           ``W (in, out)``              ``HWIO``                         NHWC
Flax NNX      ``kernel (in, out)``         ``HWIO``                         NHWC
PyTorch       ``weight (out, in)``         ``OIHW``                         NCHW
Equinox       ``weight (out, in)``         ``OIHW`` (bias ``(O, 1, 1)``)    CHW per example
============  ===========================  ===============================  ================

A channels-first library flattens ``(C, H, W)`` where jbp flattens ``(H, W, C)``; the dense
layer right after a ``Flatten`` gets its input rows permuted accordingly
(:func:`rows_hwc_to_chw`), so the networks compute the same function, not merely the same
shapes. :func:`oi_to_jbp` maps a channels-first library's per-layer ``(weight, bias)``
arrays (gradients, per-example gradients, curvature diagonals, with any number of leading
axes) back to jbp's parameter tree, for comparing numbers.
"""

from __future__ import annotations

import numpy as np


def describe(model, params, in_shape):
    """The layers of a jbp ``Sequential`` as plain dicts, with numpy copies of the parameters.

    Args:
      model: a ``jbp.Sequential`` of the layer types named in the module docstring.
      params: its parameters (one entry per layer).
      in_shape: one example's shape (no batch axis), e.g. ``(784,)`` or ``(28, 28, 1)``.

    Returns:
      A list with one dict per layer: ``kind`` (``"dense"``, ``"conv"``, ``"maxpool"``,
      ``"relu"``, ``"sigmoid"``, ``"flatten"``); ``W`` and ``b`` (jbp layout, float32) for
      ``dense``/``conv``; ``hwc`` (the ``(H, W, C)`` flattened just before) for a
      ``flatten`` and for the ``dense`` after it, else ``None``.
    """
    shape, out = tuple(in_shape), []
    for i, (layer, p) in enumerate(zip(model.layers, params)):
        kind = type(layer).__name__
        where = f"peer_models.describe: layer {i} ({kind})"
        if kind == "Dense":
            if not layer.use_bias:
                raise ValueError(f"{where}: expected use_bias=True")
            hwc = out[-1]["hwc"] if out and out[-1]["kind"] == "flatten" else None
            d = {"kind": "dense", "W": _f32(p["W"]), "b": _f32(p["b"]), "hwc": hwc}
            shape = (d["W"].shape[1],)
        elif kind == "Conv2D":
            k = tuple(layer.kernel_size)
            if (
                layer.strides != (1, 1)
                or layer.dilation != (1, 1)
                or layer.padding != "SAME"
                or k[0] != k[1]
                or k[0] % 2 != 1
                or not layer.use_bias
            ):
                raise ValueError(
                    f"{where}: expected stride 1, no dilation, 'SAME' padding, an "
                    f"odd square kernel and a bias, got {layer!r}"
                )
            d = {"kind": "conv", "W": _f32(p["W"]), "b": _f32(p["b"]), "hwc": None}
            shape = shape[:2] + (d["W"].shape[3],)
        elif kind == "MaxPool2D":
            if layer.window != (2, 2) or layer.strides != (2, 2) or layer.padding != "VALID":
                raise ValueError(
                    f"{where}: expected a 2x2 window, stride 2, 'VALID', got {layer!r}"
                )
            d = {"kind": "maxpool", "hwc": None}
            shape = (shape[0] // 2, shape[1] // 2, shape[2])
        elif kind in ("ReLU", "Sigmoid"):
            d = {"kind": kind.lower(), "hwc": None}
        elif kind == "Flatten":
            d = {"kind": "flatten", "hwc": shape if len(shape) == 3 else None}
            shape = (int(np.prod(shape)),)
        else:
            raise ValueError(f"{where}: no translation to the peer libraries")
        out.append(d)
    return out


def _f32(a):
    return np.array(a, dtype=np.float32)


def rows_hwc_to_chw(W, hwc):
    """Reorder a dense weight's input rows from jbp's ``(H, W, C)`` flattening to ``(C, H, W)``.

    Args:
      W: ``(..., H*W*C, out)``.
      hwc: the ``(H, W, C)`` shape that was flattened.
    """
    h, w, c = hwc
    lead = W.shape[:-2]
    W = W.reshape(lead + (h, w, c, W.shape[-1]))
    n = len(lead)
    W = W.transpose(tuple(range(n)) + (n + 2, n, n + 1, n + 3))
    return W.reshape(lead + (h * w * c, -1))


def rows_chw_to_hwc(W, hwc):
    """The inverse of :func:`rows_hwc_to_chw`."""
    h, w, c = hwc
    lead = W.shape[:-2]
    W = W.reshape(lead + (c, h, w, W.shape[-1]))
    n = len(lead)
    W = W.transpose(tuple(range(n)) + (n + 1, n + 2, n, n + 3))
    return W.reshape(lead + (h * w * c, -1))


def dense_to_oi(d):
    """A ``dense`` entry's weight as ``(out, in)`` for a channels-first library."""
    W = d["W"] if d["hwc"] is None else rows_hwc_to_chw(d["W"], d["hwc"])
    return np.ascontiguousarray(W.T)


def conv_to_oihw(d):
    """A ``conv`` entry's HWIO kernel as OIHW."""
    return np.ascontiguousarray(d["W"].transpose(3, 2, 0, 1))


def oi_to_jbp(desc, arrays, lead=0):
    """Per-layer ``(weight, bias)`` arrays of a channels-first library, in jbp's parameter tree.

    Args:
      desc: :func:`describe`'s list.
      arrays: one ``(weight, bias)`` pair per ``dense``/``conv`` entry, in order, laid out as
        PyTorch/Equinox lay out the parameters (``(out, in)``, ``OIHW``; an Equinox conv bias
        ``(O, 1, 1)`` is accepted), each with ``lead`` extra leading axes (e.g. the batch axis
        of per-example gradients).
      lead: the number of leading axes.

    Returns:
      A tuple with one entry per layer, ``{"W", "b"}`` in jbp's layout or ``()``.
    """
    arrays = list(arrays)
    out = []
    for d in desc:
        if d["kind"] not in ("dense", "conv"):
            out.append(())
            continue
        if not arrays:
            raise ValueError(
                "peer_models.oi_to_jbp: fewer (weight, bias) pairs than layers with parameters"
            )
        w, b = (np.asarray(a) for a in arrays.pop(0))
        ax = tuple(range(lead))
        if d["kind"] == "dense":
            W = w.transpose(ax + (lead + 1, lead))
            if d["hwc"] is not None:
                W = rows_chw_to_hwc(W, d["hwc"])
        else:
            W = w.transpose(ax + (lead + 2, lead + 3, lead + 1, lead))
        out.append({"W": W, "b": b.reshape(b.shape[:lead] + (-1,))})
    if arrays:
        raise ValueError(
            "peer_models.oi_to_jbp: more (weight, bias) pairs than layers with parameters"
        )
    return tuple(out)


def channels_first(x):
    """NHWC -> NCHW (a flat ``(batch, features)`` input is returned as is)."""
    x = np.asarray(x)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


# --- PyTorch ---------------------------------------------------------------------------


def torch_input(x):
    """A float32 torch tensor in NCHW with standard (contiguous) strides.

    ``channels_first`` of a one-channel image is a numpy *view* (numpy's relaxed strides
    call it contiguous); torch would see channels-last strides on it, run the first
    convolution channels-last and hand channels-last activations to the next layer —
    with which Opacus 1.6's Conv2d per-sample gradients silently come out zero (found by
    bench/peers.py's check). A DataLoader yields contiguous batches; so do we.
    """
    import torch

    t = torch.from_numpy(channels_first(x))
    return t.clone(memory_format=torch.contiguous_format) if t.ndim == 4 else t


def torch_model(desc):
    """An ``nn.Sequential`` computing the same function (NCHW input), float32."""
    import torch
    from torch import nn

    mods = []
    for d in desc:
        k = d["kind"]
        if k == "dense":
            w = dense_to_oi(d)
            m = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(d["b"]))
        elif k == "conv":
            w = conv_to_oihw(d)
            m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(d["b"]))
        elif k == "maxpool":
            m = nn.MaxPool2d(2)
        elif k == "relu":
            m = nn.ReLU()
        elif k == "sigmoid":
            m = nn.Sigmoid()
        else:
            m = nn.Flatten()
        mods.append(m)
    return nn.Sequential(*mods)


def torch_params_to_jbp(desc, net, field="grad", lead=0):
    """``getattr(p, field)`` of every parameter of :func:`torch_model`'s net, in jbp's tree."""
    ps = [getattr(p, field).detach().cpu().numpy() for p in net.parameters()]
    return oi_to_jbp(desc, zip(ps[0::2], ps[1::2]), lead)


# --- Equinox ---------------------------------------------------------------------------


def equinox_model(desc):
    """An ``eqx.nn.Sequential`` for ONE example (CHW or flat); ``jax.vmap`` it over a batch."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    layers = []
    for d in desc:
        k = d["kind"]
        if k == "dense":
            w = dense_to_oi(d)
            m = eqx.nn.Linear(w.shape[1], w.shape[0], key=key)
            m = eqx.tree_at(lambda l: (l.weight, l.bias), m, (jnp.asarray(w), jnp.asarray(d["b"])))
        elif k == "conv":
            w = conv_to_oihw(d)
            m = eqx.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, key=key)
            m = eqx.tree_at(
                lambda l: (l.weight, l.bias),
                m,
                (jnp.asarray(w), jnp.asarray(d["b"]).reshape(-1, 1, 1)),
            )
        elif k == "maxpool":
            m = eqx.nn.MaxPool2d(2, 2)
        elif k == "relu":
            m = eqx.nn.Lambda(jax.nn.relu)
        elif k == "sigmoid":
            m = eqx.nn.Lambda(jax.nn.sigmoid)
        else:
            m = eqx.nn.Lambda(jnp.ravel)
        layers.append(m)
    return eqx.nn.Sequential(layers)


def equinox_to_jbp(desc, tree, lead=0):
    """The ``weight``/``bias`` leaves of an :func:`equinox_model`-shaped tree (e.g. its
    gradient), in jbp's parameter tree."""
    pairs = [(l.weight, l.bias) for l in tree.layers if hasattr(l, "weight")]
    return oi_to_jbp(desc, pairs, lead)


# --- Flax NNX --------------------------------------------------------------------------


def flax_model(desc):
    """An ``nnx.Sequential`` computing the same function (NHWC input, jbp's layouts)."""
    import functools

    import jax.numpy as jnp
    from flax import nnx

    rngs = nnx.Rngs(0)
    layers = []
    for d in desc:
        k = d["kind"]
        if k == "dense":
            m = nnx.Linear(*d["W"].shape, rngs=rngs)
            m.kernel[...] = jnp.asarray(d["W"])
            m.bias[...] = jnp.asarray(d["b"])
        elif k == "conv":
            kh, kw, cin, cout = d["W"].shape
            m = nnx.Conv(cin, cout, (kh, kw), padding="SAME", rngs=rngs)
            m.kernel[...] = jnp.asarray(d["W"])
            m.bias[...] = jnp.asarray(d["b"])
        elif k == "maxpool":
            m = functools.partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2))
        elif k == "relu":
            m = nnx.relu
        elif k == "sigmoid":
            m = nnx.sigmoid
        else:
            m = _flatten_batch
        layers.append(m)
    return nnx.Sequential(*layers)


def _flatten_batch(x):
    return x.reshape(x.shape[0], -1)


def flax_to_jbp(desc, model):
    """The ``kernel``/``bias`` values of :func:`flax_model`'s model (or of its gradient
    state), in jbp's parameter tree (same layouts: a plain copy)."""
    from flax import nnx

    mods = [m for m in model.layers if isinstance(m, (nnx.Linear, nnx.Conv))]
    out = []
    for d in desc:
        if d["kind"] in ("dense", "conv"):
            m = mods.pop(0)
            out.append({"W": np.asarray(m.kernel[...]), "b": np.asarray(m.bias[...])})
        else:
            out.append(())
    return tuple(out)
