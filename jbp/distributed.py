"""Data parallelism over many devices and many processes (hosts).

One device → many devices → many hosts, with the same ``fit``:

* **Many devices, one process** (a multi-GPU host, a TPU VM, or CPU with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=8``)::

      mesh = jbp.distributed.data_mesh()          # 1-D mesh, axis "data", every device
      params, hist = jbp.fit(model, params, loss, opt, (x, y), batch_size=256, mesh=mesh)

* **Many processes** (hosts): each process calls :func:`initialize` first, loads only its
  own part of the data (:func:`process_local_shard` says which rows), turns it into a global
  array (:func:`shard_batch`), and calls ``fit`` with the global mesh. Every process runs
  the same program; the results (replicated parameters) are identical on all of them.

The rule for the batch: each batch is split by example over the ``"data"`` axis, so its size
(and the remainder batch's) must be a multiple of the number of devices on that axis
(``fit`` raises ``ValueError`` otherwise; nothing is padded). BatchNorm normalizes with the
statistics of the whole global batch (what the batch mean compiles to under GSPMD), so
results equal one-device training up to summation order.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jbp._validate import check_mesh

if TYPE_CHECKING:
    from jbp.core import PyTree


__all__ = ["initialize", "data_mesh", "process_local_shard", "shard_batch"]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> None:
    """Join a multi-process JAX job (thin wrapper of ``jax.distributed.initialize``).

    Call it once per process, before anything else touches JAX devices. On a TPU slice,
    under Slurm (``srun``) or Open MPI, every argument can be left out: JAX reads them from
    the environment. Elsewhere pass all three.

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable from every process
        (e.g. ``"127.0.0.1:12345"`` for processes on one machine).
      num_processes: how many processes take part.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: the local devices this process uses (default: all).
      **kwargs: passed on to ``jax.distributed.initialize`` (e.g. ``initialization_timeout``).

    Raises:
      TypeError: ``num_processes`` or ``process_id`` is not an integer.
      ValueError: ``process_id`` is out of range.
    """
    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise TypeError(f"{name}: expected an integer or None, got {v!r}")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes: expected >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id: expected 0 <= process_id < num_processes = "
            f"{num_processes}, got {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        **kwargs,
    )


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ``jax.sharding.Mesh`` with the single axis ``"data"``.

    Args:
      devices: the devices (default: ``jax.devices()``, every device of every process).

    Returns:
      The mesh, for ``fit(..., mesh=)`` and ``evaluate(..., mesh=)``.
    """
    if devices is None:
        return jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
    devices = list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def process_local_shard(
    x: np.ndarray | jax.Array, process_index: int | None = None, process_count: int | None = None
) -> np.ndarray | jax.Array:
    """This process's rows of ``x`` under the multi-process data rule.

    Rows are split into ``process_count`` equal, consecutive blocks; process ``i`` keeps
    block ``i``. In practice each process loads only its block from storage; this helper
    slices an in-memory copy, and says which block is whose.

    Args:
      x: an array whose leading axis (examples) divides evenly by ``process_count``.
      process_index: this process's block (default ``jax.process_index()``).
      process_count: the number of blocks (default ``jax.process_count()``).

    Returns:
      Rows ``[i·k, (i+1)·k)`` of ``x``, ``k = len(x) // process_count``, as a slice of ``x``.

    Raises:
      ValueError: the example count is not a multiple of ``process_count``.
    """
    i = jax.process_index() if process_index is None else int(process_index)
    p = jax.process_count() if process_count is None else int(process_count)
    n = np.shape(x)[0]
    if n % p:
        raise ValueError(
            f"x: {n} examples do not split evenly over {p} processes; use a "
            f"multiple of {p} examples"
        )
    k = n // p
    return x[i * k : (i + 1) * k]


def shard_batch(local: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """One global array, split by example over ``mesh``'s ``"data"`` axis, from the rows
    each process holds (``jax.make_array_from_process_local_data``).

    Args:
      local: this process's rows (a pytree of arrays; leading axis = examples), the
        processes' blocks stacked in process order forming the global data.
      mesh: a mesh with a ``"data"`` axis (e.g. :func:`data_mesh`).

    Returns:
      The same pytree of global ``jax.Array`` s, for ``fit`` and ``evaluate``.
    """
    check_mesh(mesh)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local
    )
