"""Data-parallel training on JAX's own runtime: one device → many devices → many processes.

    # many devices in one process (CPU stand-ins here; on a multi-GPU host drop --cpu-devices)
    python examples/distributed.py --cpu-devices 8

    # two processes on this machine (127.0.0.1), 2 CPU devices each = a 4-device global mesh
    python examples/distributed.py --launch 2 --cpu-devices 2

    # one process of a multi-host job, started by you on every host (or by srun/mpirun)
    python examples/distributed.py --coordinator HOST0:12345 --num-processes 4 --process-id I

Every run trains the same 64-64-10 MLP on the embedded digits for a few epochs, first on a
mesh over every device (``jbp.fit(..., mesh=jbp.distributed.data_mesh())``) and then, in
process 0 of a one-process run, on a single device, and prints the largest parameter
difference (float64: summation order only, ~1e-15). In a multi-process run each process
loads only its block of the rows (``jbp.distributed.process_local_shard``) and builds global
arrays (``jbp.distributed.shard_batch``); the replicated parameters agree on every process.
See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="simulate N CPU devices per process (XLA_FLAGS); 0 = the real devices",
    )
    p.add_argument(
        "--launch",
        type=int,
        default=0,
        metavar="P",
        help="start P processes on 127.0.0.1 and wait for them",
    )
    p.add_argument("--coordinator", default=None, help="host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args(argv)


def launch(args) -> int:
    """Start ``args.launch`` copies of this script on localhost; return the worst exit code."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(args.launch),
                "--process-id",
                str(i),
                "--cpu-devices",
                str(args.cpu_devices),
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
            ]
        )
        for i in range(args.launch)
    ]
    return max(p.wait() for p in procs)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.launch:
        raise SystemExit(launch(args))
    if args.cpu_devices:  # must happen before jax is imported
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform"
            f"_device_count={args.cpu_devices}"
        ).strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import jbp
    from jbp.layers import Dense, ReLU

    multi = args.coordinator is not None
    if multi:
        jbp.distributed.initialize(
            args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    mesh = jbp.distributed.data_mesh()
    n_dev, n_proc, me = jax.device_count(), jax.process_count(), jax.process_index()

    (x, y), (x_test, y_test) = jbp.datasets.digits()
    x, y = np.asarray(x, np.float64), np.asarray(y, np.int32)
    bs = args.batch_size
    if bs % n_dev:
        raise SystemExit(f"--batch-size {bs} must be a multiple of the {n_dev} devices")
    n = (len(x) // bs) * bs  # whole batches only: every batch splits over the devices
    x, y = x[:n], y[:n]
    if multi:  # each process holds only its block of rows, then one global array
        x, y = jbp.distributed.shard_batch(
            (jbp.distributed.process_local_shard(x), jbp.distributed.process_local_shard(y)), mesh
        )

    model = jbp.Sequential([Dense(64), ReLU(), Dense(64), ReLU(), Dense(10)])
    params, _ = model.init(jax.random.key(0), (x.shape[1],))
    params = jbp.cast(params, np.float64)
    loss = jbp.losses.softmax_cross_entropy

    def train(m):
        return jbp.fit(
            model,
            params,
            loss,
            jbp.optim.momentum(0.1),
            (x, y),
            batch_size=bs,
            epochs=args.epochs,
            key=jax.random.key(1),
            verbose=0,
            mesh=m,
        )

    p_mesh, hist = train(mesh)
    out = {"process": me, "processes": n_proc, "devices": n_dev, "loss": hist["loss"][-1]}
    if not multi:
        p_one, _ = train(None)
        out["max_param_diff_vs_one_device"] = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(p_mesh), jax.tree.leaves(p_one))
        )
        acc = jbp.evaluate(
            model, p_mesh, loss, (np.asarray(x_test, np.float64), np.asarray(y_test, np.int32))
        )["accuracy"]
        out["test_accuracy"] = float(acc)
    print(
        f"process {me}/{n_proc}, {n_dev} devices in the mesh: "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in out.items()
            if k not in ("process", "processes", "devices")
        ),
        flush=True,
    )
    return out


if __name__ == "__main__":
    main()
