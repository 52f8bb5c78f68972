"""Data parallelism: ``fit``/``evaluate`` over a device mesh equal one device; two processes
on localhost equal one process.

The multi-device cases run in subprocesses (tests/_distributed_worker.py) that set
``XLA_FLAGS=--xla_force_host_platform_device_count=...`` before importing jax, so this
process keeps its one CPU device. One worker runs every one-process mesh case and prints
JSON; two more form a two-process job (``jax.distributed.initialize`` on 127.0.0.1, 2 CPU
devices each, gloo collectives). All three start together, once per module.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jbp
from jbp._validate import check_mesh, check_mesh_batches

pytestmark = pytest.mark.slow  # a long integration test: `pytest -m "not slow"` skips it

WORKER = Path(__file__).with_name("_distributed_worker.py")
F64_ATOL = 1e-12  # float64: GSPMD only changes the summation order of the batch means
F32_ATOL = 1e-5  # float32, one epoch, parameters of magnitude <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_json(proc, what):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)  # the worker sets its own device count; keep the suite's XLA flags
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    )
    env["JAX_PLATFORMS"] = "cpu"
    run = lambda *a: subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, a)],  # noqa: E731
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    port = _free_port()
    procs = {"mesh": run("mesh"), "mp0": run("mp", 0, 2, port, 2), "mp1": run("mp", 1, 2, port, 2)}
    try:
        return {k: _last_json(p, f"worker {k}") for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def test_worker_has_eight_devices_and_this_process_one(results):
    assert results["mesh"]["device_count"] == 8
    assert jax.device_count() == 1


@pytest.mark.parametrize("model", ["mlp", "cnn_bn", "lstm"])
def test_mesh_epoch_equals_one_device_float64(results, model):
    params = results["mesh"]["params"][model]
    assert params, model
    for d, diff in params.items():
        assert diff <= F64_ATOL, (model, d, diff)
        assert results["mesh"]["state"][model][d] <= F64_ATOL, (model, d)  # BatchNorm stats
        assert results["mesh"]["loss"][model][d] <= F64_ATOL, (model, d)


def test_mesh_sizes_covered(results):
    assert set(results["mesh"]["params"]["mlp"]) == {"1", "2", "4", "8"}


def test_mesh_epoch_equals_one_device_float32(results):
    for model, diff in results["mesh"]["float32"].items():
        assert diff <= F32_ATOL, (model, diff)


def test_parameters_come_back_replicated(results):
    assert results["mesh"]["param_sharding"] == "P()"


def test_drop_last_remainder_that_does_not_split(results):
    assert results["mesh"]["drop_last"] <= F64_ATOL


@pytest.mark.parametrize("model", ["mlp", "cnn_bn"])
def test_evaluate_with_mesh_equals_without(results, model):
    for k, diff in results["mesh"]["evaluate"][model].items():
        assert diff <= F64_ATOL, (model, k, diff)


@pytest.mark.parametrize(
    "case, kind, words",
    [
        ("batch_size", "ValueError", ["batch_size", "12", "8 devices", "multiple of 8"]),
        (
            "remainder",
            "ValueError",
            ["batch_size", "last batch", "4 examples", "8 devices", "drop_last=True"],
        ),
        ("full_batch", "ValueError", ["batch_size", "52", "8 devices"]),
        ("not_a_mesh", "TypeError", ["mesh", "jax.sharding.Mesh", "list"]),
        ("no_data_axis", "ValueError", ["mesh", "'data' axis", "('batch',)"]),
        ("evaluate_chunk", "ValueError", ["batch_size", "12", "8 devices"]),
        ("evaluate_not_a_mesh", "TypeError", ["mesh", "str"]),
    ],
)
def test_clear_errors(results, case, kind, words):
    err = results["mesh"]["errors"][case]
    assert err is not None, case
    assert err[0] == kind, err
    for w in words:
        assert w in err[1], (w, err[1])


def test_two_processes_equal_one_process(results):
    ref = results["mesh"]["mp_reference"]
    for k in ("mp0", "mp1"):
        r = results[k]
        assert r["process_count"] == 2 and r["global_devices"] == 4 and r["local_devices"] == 2
        assert r["local_rows"] == 28  # each process held only its half of the 56 examples
        assert len(r["params"]) == len(ref)
        for a, b in zip(r["params"], ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=F64_ATOL)
    assert results["mp0"]["process_index"] == 0 and results["mp1"]["process_index"] == 1


# ---- in this process (one device): checks that need no mesh of several devices ----


def test_check_mesh_on_one_device():
    assert check_mesh(None) is None
    assert check_mesh(jbp.distributed.data_mesh()) == 1
    with pytest.raises(TypeError, match="mesh: expected a jax.sharding.Mesh"):
        check_mesh(("data",))
    check_mesh_batches(4, 8, 4)
    with pytest.raises(ValueError, match="eval_batch_size: 6 examples per batch"):
        check_mesh_batches(4, 6, 0, name="eval_batch_size")


def test_process_local_shard_rule():
    x = np.arange(12)
    assert jbp.distributed.process_local_shard(x, 1, 3).tolist() == [4, 5, 6, 7]
    assert jbp.distributed.process_local_shard(x).tolist() == x.tolist()  # one process
    with pytest.raises(ValueError, match="12 examples do not split evenly over 5 processes"):
        jbp.distributed.process_local_shard(x, 0, 5)


def test_initialize_checks_arguments_before_jax():
    with pytest.raises(ValueError, match="process_id"):
        jbp.distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)
    with pytest.raises(TypeError, match="num_processes"):
        jbp.distributed.initialize("127.0.0.1:1", num_processes="2", process_id=0)


def test_shard_batch_one_process():
    mesh = jbp.distributed.data_mesh()
    xg, yg = jbp.distributed.shard_batch((np.ones((4, 2)), np.arange(4)), mesh)
    assert xg.shape == (4, 2) and yg.tolist() == [0, 1, 2, 3]


def test_backprop_extensions_on_a_sharded_batch_equal_one_device_and_stay_sharded(results):
    diffs = results["mesh"]["extensions"]
    assert set(diffs) == {"batch_grad", "batch_l2", "grads"}
    for k, diff in diffs.items():
        assert diff <= F64_ATOL, (k, diff)
    # every per-example leaf is split over "data" along its example axis
    specs = results["mesh"]["extension_specs"]
    assert specs == ["data"], specs
