"""Batching, shared by ``fit`` and ``evaluate``: one knob, and one scan over batches.

==================  ======================  =========================================
``batch_size``      algorithm               steps per epoch (n examples)
==================  ======================  =========================================
``None`` (or ``n``)  full-batch GD           1: the gradient averaged over all n
``1``               stochastic GD (SGD)     n: one example each, reshuffled every epoch
``k``               minibatch GD            ⌈n/k⌉: each gradient averaged over its batch
==================  ======================  =========================================

:func:`scan_batches` runs a function over the ⌊n/k⌋ full batches of the data (in a given
order, or in order) with ``lax.scan``, then once more on the ``r = n mod k`` remaining
examples at their true size — no padding, no masks — and returns the example-weighted means
of what the function reports.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    import numpy as np

    from jbp.core import Array, PyTree

__all__ = [
    "parse_batch_size",
    "batch_plan",
    "scan_batches",
    "data_sharding",
    "replicate",
    "shard_data",
    "mesh_shardings",
    "auto_mesh",
]


def parse_batch_size(text: str | int | None) -> int | None:
    """Command-line spelling of the knob: ``"gd"``/``"full"`` → ``None`` (full batch),
    ``"sgd"`` → ``1``, ``"32"`` → ``32``."""
    if text is None:
        return None
    if isinstance(text, numbers.Integral) and not isinstance(text, bool):
        return int(text)
    word = str(text).strip().lower()
    if word in ("gd", "full", "none", "batch"):
        return None
    if word == "sgd":
        return 1
    try:
        return int(word)
    except ValueError:
        raise ValueError(
            f"batch_size: expected 'gd' (full batch), 'sgd' (1) or a positive integer, got {text!r}"
        ) from None


def batch_plan(n: int, batch_size: int | None, drop_last: bool = False) -> tuple[int, int, int]:
    """``(batch_size, full_batches, remainder)`` of one epoch over ``n`` examples."""
    bs = n if batch_size is None else int(batch_size)
    full, rem = divmod(n, bs)
    return bs, full, 0 if drop_last else rem


#: Shuffled batches are gathered from the data this many bytes at a time (a chunk of
#: consecutive batches), then scanned as contiguous slices: one gather per chunk instead of
#: one per step. On CPU a gather per tiny step (Nielsen's minibatch of 10) costs about as
#: much as the step itself, mostly in thread hand-offs; per chunk it is amortised.
_CHUNK_BYTES = 1 << 21


def _chunk_batches(bs, nb, x, y):
    row = x.dtype.itemsize * math.prod(x.shape[1:]) + y.dtype.itemsize * math.prod(y.shape[1:])
    return max(1, min(nb, _CHUNK_BYTES // max(1, bs * row)))


def scan_batches(
    fn: Callable[[PyTree, Array, Array, Array | None], tuple[PyTree, dict[str, Array]]],
    carry: PyTree,
    x: Array,
    y: Array,
    keys: Array | None,
    *,
    bs: int,
    nb: int,
    rem: int,
    order: Array | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[PyTree, dict[str, Array]]:
    """Run ``fn(carry, xb, yb, k) -> (carry, metrics)`` over the batches of ``(x, y)``.

    Batch ``j`` is rows ``order[j·bs:(j+1)·bs]`` (``order=None``: consecutive rows), with
    key ``keys[j]`` (``keys=None``: ``k`` is ``None``); the remainder batch of ``rem`` rows
    comes last with ``keys[nb]``. Returns ``(carry, means)``: each metric averaged over the
    examples (batch means weighted by batch size).

    ``sharding`` (data parallelism, a ``NamedSharding(mesh, P("data"))``): every batch —
    the remainder too — is constrained (``jax.lax.with_sharding_constraint``) to be split
    by example over the mesh's ``"data"`` axis before ``fn`` sees it; ``fn``'s batch means
    then compile (GSPMD) to per-device partial sums and one all-reduce.
    """
    if sharding is not None:
        fn0 = fn

        def fn(c, xb, yb, k):
            xb, yb = jax.lax.with_sharding_constraint((xb, yb), (sharding, sharding))
            return fn0(c, xb, yb, k)

    def scan_slices(carry, xs, ys, ks):
        return jax.lax.scan(lambda c, inp: fn(c, *inp), carry, (xs, ys, ks))

    def gather(a, idx, batches):
        return jnp.take(a, idx, axis=0, mode="clip").reshape((batches, bs) + a.shape[1:])

    def keys_of(lo, hi):
        return None if keys is None else keys[lo:hi]

    if order is not None:
        chunk = _chunk_batches(bs, nb, x, y)
        q, s = divmod(nb, chunk)
        parts = []
        if q:

            def outer(c, inp):
                i, ks = inp
                return scan_slices(c, gather(x, i, chunk), gather(y, i, chunk), ks)

            ks = None if keys is None else keys[: q * chunk].reshape((q, chunk) + keys.shape[1:])
            carry, m = jax.lax.scan(
                outer, carry, (order[: q * chunk * bs].reshape(q, chunk * bs), ks)
            )
            parts.append(jax.tree.map(lambda v: v.reshape((q * chunk,) + v.shape[2:]), m))
        if s:
            i = order[q * chunk * bs : nb * bs]
            carry, m = scan_slices(carry, gather(x, i, s), gather(y, i, s), keys_of(q * chunk, nb))
            parts.append(m)
        ms = jax.tree.map(lambda *v: jnp.concatenate(v), *parts) if parts else None
        if rem:
            tail = order[nb * bs :]
            xt, yt = jnp.take(x, tail, axis=0), jnp.take(y, tail, axis=0)
    else:
        ms = None
        if nb:
            xs = x[: nb * bs].reshape((nb, bs) + x.shape[1:])
            ys = y[: nb * bs].reshape((nb, bs) + y.shape[1:])
            carry, ms = scan_slices(carry, xs, ys, keys_of(0, nb))
        if rem:
            xt, yt = x[nb * bs :], y[nb * bs :]
    sums = {k: jnp.sum(v) * bs for k, v in ms.items()} if ms is not None else None
    if rem:
        carry, mt = fn(carry, xt, yt, None if keys is None else keys[nb])
        sums = (
            {k: v * rem for k, v in mt.items()}
            if sums is None
            else {k: sums[k] + mt[k] * rem for k in sums}
        )
    assert sums is not None  # nb + rem >= 1: the data were checked to hold an example
    count = nb * bs + rem
    return carry, {k: v / count for k, v in sums.items()}


# --------------------------------------------------------------------------------------
# data parallelism over a device mesh (``fit(..., mesh=)``, ``evaluate(..., mesh=)``)
# --------------------------------------------------------------------------------------


def auto_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
    """``mesh`` with every axis of type ``Auto`` (GSPMD decides the layout of intermediate
    values; ``jax.make_mesh`` makes ``Explicit`` axes by default, where a gather from
    example-sharded data would need an explicit output sharding). Same devices, same names."""
    if mesh is None or all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return mesh
    return jax.sharding.Mesh(
        mesh.devices,
        mesh.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names),
    )


def data_sharding(mesh: jax.sharding.Mesh | None) -> jax.sharding.NamedSharding | None:
    """``NamedSharding(mesh, P("data"))`` (split by example), or ``None`` without a mesh."""
    if mesh is None:
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _replicated(mesh):
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Every leaf of ``tree`` copied whole onto each device of ``mesh`` (``P()``)."""
    return jax.device_put(tree, _replicated(mesh))


def shard_data(arrays: Sequence[Array | np.ndarray], mesh: jax.sharding.Mesh) -> tuple[Array, ...]:
    """``arrays`` (a tuple) laid out for data parallelism on ``mesh``.

    A ``jax.Array`` already spread over ``mesh``'s devices (a global array from
    :func:`jbp.distributed.process_local_shard`) is kept as it is. Others are split by
    example over the ``"data"`` axis when the example count divides evenly, else
    replicated (each batch is still split inside the compiled epoch)."""
    n_dev = int(mesh.shape["data"])
    devices = set(mesh.devices.flat)
    mesh = auto_mesh(mesh)  # type: ignore[assignment]  # a Mesh in, a Mesh out
    out = []
    for a in arrays:
        if isinstance(a, jax.Array) and set(a.sharding.device_set) == devices and len(devices) > 1:
            out.append(a)
        elif a.shape[0] % n_dev == 0:
            out.append(jax.device_put(a, data_sharding(mesh)))
        else:
            out.append(jax.device_put(a, _replicated(mesh)))
    return tuple(out)


def mesh_shardings(mesh: jax.sharding.Mesh) -> dict[str, jax.sharding.NamedSharding]:
    """``jax.jit`` keyword arguments for a data-parallel ``fn``: outputs replicated. The
    inputs keep the shardings they were placed with (:func:`replicate`,
    :func:`shard_data`); batches are constrained inside :func:`scan_batches`."""
    return {"out_shardings": _replicated(mesh)}
