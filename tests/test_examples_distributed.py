"""examples/distributed.py: a mesh over 4 CPU devices (its own process) trains the same
parameters as one device (float64, summation order only)."""

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "distributed.py"


def test_distributed_example_mesh_equals_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
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
