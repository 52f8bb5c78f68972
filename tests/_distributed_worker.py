"""Worker for tests/test_distributed.py: runs with several CPU devices in its own process.

    python tests/_distributed_worker.py mesh                       # all one-process mesh cases
    python tests/_distributed_worker.py mp PID NPROC PORT DEVICES  # one process of a multi-process run

Prints one JSON line (the last line of stdout) with the results. ``XLA_FLAGS`` is set here
before jax is imported, so the rest of the test suite keeps its single device.
"""

from __future__ import annotations

import json
import os
import sys

MODE = sys.argv[1] if len(sys.argv) > 1 else "mesh"
N_LOCAL = 8 if MODE == "mesh" else int(sys.argv[5])
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_LOCAL}"
).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import jbp  # noqa: E402
from jbp.layers import LSTM, Dense, Flatten, ReLU  # noqa: E402,F401
from jbp.layers.conv import Conv2D  # noqa: E402
from jbp.layers.normalization import BatchNorm  # noqa: E402
from jbp.layers.pooling import GlobalAvgPool2D  # noqa: E402

#: mesh sizes per model (compiles dominate the time: every size for the MLP, fewer for the rest)
SIZES = {"mlp": (1, 2, 4, 8), "cnn_bn": (2, 4, 8), "lstm": (2, 8)}
N, BS = 56, 16  # 3 full batches + a remainder of 8: every batch splits over 1, 2, 4, 8 devices
LOSS = jbp.losses.softmax_cross_entropy


def models():
    """name -> (model, example shape): an MLP, a CNN with BatchNorm, an LSTM (tiny)."""
    return {
        "mlp": (jbp.Sequential([Dense(8), ReLU(), Dense(3)]), (5,)),
        "cnn_bn": (
            jbp.Sequential(
                [Conv2D(4, 3, use_bias=False), BatchNorm(), ReLU(), GlobalAvgPool2D(), Dense(3)]
            ),
            (6, 6, 2),
        ),
        "lstm": (jbp.Sequential([LSTM(6), Dense(3)]), (4, 3)),
    }


def data(shape, dtype, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n,) + shape) * rng.uniform(0.5, 2.0, shape)).astype(dtype)
    return x, rng.integers(0, 3, n)


def init(model, shape, dtype):
    params, _ = model.init(jax.random.key(0), shape)
    return jbp.cast(params, dtype)


def train(model, shape, dtype, mesh=None, n=N, batch_size=BS, drop_last=False, xy=None):
    """One epoch of ``fit``; ``xy`` (default: :func:`data`) may be global sharded arrays."""
    params = init(model, shape, dtype)
    x, y = data(shape, dtype, n) if xy is None else xy
    p, hist = jbp.fit(
        model,
        params,
        LOSS,
        jbp.optim.momentum(0.1),
        (x, y),
        batch_size=batch_size,
        epochs=1,
        key=jax.random.key(1),
        verbose=0,
        mesh=mesh,
        drop_last=drop_last,
    )
    return p, hist


def max_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return (
        max(
            float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
            for u, v in zip(la, lb)
        )
        if la
        else 0.0
    )


def error_of(fn):
    try:
        fn()
    except (TypeError, ValueError) as e:
        return [type(e).__name__, str(e)]
    return None


def mesh_cases() -> dict:
    out = {
        "device_count": jax.device_count(),
        "params": {},
        "state": {},
        "float32": {},
        "errors": {},
        "evaluate": {},
    }
    meshes = {d: jbp.distributed.data_mesh(jax.devices()[:d]) for d in (1, 2, 4)}
    meshes[8] = jax.make_mesh((8,), ("data",))  # jax's default (Explicit) axis type: also fine
    for name, (model, shape) in models().items():
        ref, ref_h = train(model, shape, np.float64)
        out["params"][name] = {}
        out["state"][name] = {}
        for d in SIZES[name]:
            p, h = train(model, shape, np.float64, meshes[d])
            if d == 4:
                out["param_sharding"] = str(jax.tree.leaves(p)[0].sharding.spec)
            out["params"][name][d] = max_diff(ref, p)
            out["state"][name][d] = max_diff(ref_h.state, h.state)
            out.setdefault("loss", {}).setdefault(name, {})[d] = abs(
                h["loss"][-1] - ref_h["loss"][-1]
            )
        if name == "mlp":
            ref32, _ = train(model, shape, np.float32)
            p32, _ = train(model, shape, np.float32, meshes[8])
            out["float32"][name] = max_diff(ref32, p32)
        if name == "cnn_bn":  # the reference for the multi-process run (one process, no mesh)
            out["mp_reference"] = [np.asarray(a).tolist() for a in jax.tree.leaves(ref)]
        if name != "lstm":
            # evaluate: mesh vs none (chunks of 16, a last chunk of 8), BatchNorm state used
            x, y = data(shape, np.float64, seed=2)
            kw = {"batch_size": BS, "state": ref_h.state}
            a = jbp.evaluate(model, ref, LOSS, (x, y), **kw)
            b = jbp.evaluate(model, ref, LOSS, (x, y), mesh=meshes[8], **kw)
            out["evaluate"][name] = {k: abs(a[k] - b[k]) for k in a}
    model, shape = models()["mlp"]
    # jbp.backprop's per-example extensions on a batch sharded over 8 devices: equal to one
    # device, and they stay sharded by example (the batch axis keeps the "data" sharding)
    x, y = data(shape, np.float64, n=BS)
    params = init(model, shape, np.float64)
    exts = [jbp.extensions.BatchGrad(), jbp.extensions.BatchL2()]
    f = jax.jit(jbp.backprop(model, LOSS, extensions=exts))
    one = f(params, x, y)
    # a mesh with Auto axes (data_mesh): GSPMD picks the gradient's reduction by itself
    auto8 = jbp.distributed.data_mesh()
    shard = jax.sharding.NamedSharding(auto8, jax.sharding.PartitionSpec("data"))
    many = f(params, jax.device_put(x, shard), jax.device_put(y, shard))
    out["extensions"] = {
        k: max_diff(one.extras[k], many.extras[k]) for k in ("batch_grad", "batch_l2")
    }
    out["extensions"]["grads"] = max_diff(one.grads, many.grads)
    out["extension_specs"] = sorted(
        {
            str(a.sharding.spec[0])
            for k in ("batch_grad", "batch_l2")
            for a in jax.tree.leaves(many.extras[k])
        }
    )
    # drop_last with a remainder that does not split: trains on the full batches only
    ref, _ = train(model, shape, np.float64, n=52, drop_last=True)
    p, _ = train(model, shape, np.float64, meshes[8], n=52, drop_last=True)
    out["drop_last"] = max_diff(ref, p)
    # errors at the boundary
    out["errors"]["batch_size"] = error_of(
        lambda: train(model, shape, np.float64, meshes[8], batch_size=12)
    )
    out["errors"]["remainder"] = error_of(lambda: train(model, shape, np.float64, meshes[8], n=52))
    out["errors"]["full_batch"] = error_of(
        lambda: train(model, shape, np.float64, meshes[8], n=52, batch_size=None)
    )
    out["errors"]["not_a_mesh"] = error_of(lambda: train(model, shape, np.float64, jax.devices()))
    other = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    out["errors"]["no_data_axis"] = error_of(lambda: train(model, shape, np.float64, other))
    x, y = data(shape, np.float64)
    params, _ = model.init(jax.random.key(0), shape)
    out["errors"]["evaluate_chunk"] = error_of(
        lambda: jbp.evaluate(model, params, LOSS, (x, y), batch_size=12, mesh=meshes[8])
    )
    out["errors"]["evaluate_not_a_mesh"] = error_of(
        lambda: jbp.evaluate(model, params, LOSS, (x, y), mesh="data")
    )
    return out


def mp_case(pid: int, nproc: int, port: int) -> dict:
    """One of ``nproc`` processes: each loads its own block of the data, builds global
    arrays, trains the CNN with BatchNorm over the global mesh."""
    jbp.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    mesh = jbp.distributed.data_mesh()
    model, shape = models()["cnn_bn"]
    x, y = data(shape, np.float64)  # stands for "load my block": only the block is used
    xl, yl = (jbp.distributed.process_local_shard(a) for a in (x, y))
    xg, yg = jbp.distributed.shard_batch((xl, yl), mesh)
    p, hist = train(model, shape, np.float64, mesh, xy=(xg, yg))
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "local_rows": int(xl.shape[0]),
        "loss": hist["loss"][-1],
        "params": [np.asarray(a.addressable_data(0)).tolist() for a in jax.tree.leaves(p)],
    }


if __name__ == "__main__":
    if MODE == "mesh":
        result = mesh_cases()
    else:
        result = mp_case(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    print(json.dumps(result), flush=True)
