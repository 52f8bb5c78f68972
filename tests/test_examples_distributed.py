"""examples/distributed.py: a mesh over 4 CPU devices (its own process) trains the same
parameters as one device (float64, summation order only)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a long integration test: `pytest -m "not slow"` skips it

EXAMPLE = Path(__file__).parent.parent / "examples" / "distributed.py"


def test_distributed_example_mesh_equals_one_device():
    env = dict(os.environ)  # the worker sets its own device count; keep the suite's XLA flags
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    )
    env["JAX_PLATFORMS"] = "cpu"
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "--cpu-devices", "4", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    assert "4 devices in the mesh" in line, line
    diff = float(re.search(r"max_param_diff_vs_one_device (\S+),", line).group(1))
    assert diff < 1e-12, line
    acc = float(re.search(r"test_accuracy (\S+)", line).group(1))
    assert acc > 0.5, line  # one epoch of SGD on the digits: far above chance (0.1)
