"""Smoke tests: examples/vanishing_gradients.py and exploding_gradients.py run end to end."""

import importlib.util
import math
import pathlib
import struct

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _plot_args(out):
    """With matplotlib (the ``examples`` extra): save the PNG; without: ``--no-plot``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["--no-plot"]
    return ["--out", str(out)]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vanishing_gradients_example_runs(tmp_path, capsys):
    example = _load("vanishing_gradients")
    out = tmp_path / "vanishing.png"
    plot = _plot_args(out)
    res = example.main(["--epochs", "2", "--max-depth", "2", "--probe", "300"] + plot)
    text = capsys.readouterr().out
    assert "speed of learning at initialization" in text and "hidden 1 / output" in text
    assert "per-layer report at initialization" in text and "test accuracy" in text
    # Nielsen's observation at initialization: in the sigmoid nets each earlier layer
    # learns slower; ReLU + He keeps the layers within a small factor of each other
    for depth, sol in res["init"]["sigmoid"]:
        vals = list(sol.values())
        assert len(vals) == depth + 1 and vals == sorted(vals), (depth, sol)
    deep_sigmoid = list(res["init"]["sigmoid"][-1][1].values())
    deep_relu = list(res["init"]["relu_he"][-1][1].values())
    assert deep_sigmoid[0] / deep_sigmoid[-1] < 0.2 < deep_relu[0] / deep_relu[-1]
    for kind in ("sigmoid", "relu_he"):
        rec = res["train"][kind]["record"]
        assert rec["epochs"] == [0, 1, 2]
        assert 0.0 <= res["train"][kind]["test_accuracy"] <= 1.0
    assert plot == ["--no-plot"] or out.stat().st_size > 1000


def _write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_vanishing_gradients_example_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 6, 6)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    example = _load("vanishing_gradients")
    args = example.parse_args(
        ["--path", str(tmp_path), "--dataset", "fashion_mnist", "--no-verify", "--n-train", "50"]
    )
    (x, y), (xt, yt), name = example.load_data(args)
    assert x.shape == (50, 36) and xt.shape == (20, 36) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and y.dtype == np.int32 and "fashion_mnist" in name


def test_exploding_gradients_example_runs(tmp_path, capsys):
    example = _load("exploding_gradients")
    out = tmp_path / "exploding.png"
    plot = _plot_args(out)
    res = example.main(["--epochs", "1"] + plot)
    text = capsys.readouterr().out
    runs = [k for k in res if k != "plot"]
    big, clipped, glorot, he = runs
    # the too-large init: the detector fires at initialization and the loss goes non-finite
    assert res[big]["findings_at_init"] and "exploding" in res[big]["findings_at_init"][0]
    assert res[big]["first_nonfinite_epoch"] == 1 and math.isnan(res[big]["final_loss"])
    # the fixes: clipping keeps it finite; Glorot / He: quiet detector and a small loss
    assert res[clipped]["first_nonfinite_epoch"] is None and math.isfinite(
        res[clipped]["final_loss"]
    )
    for run in (glorot, he):
        assert res[run]["findings_at_init"] == [] and res[run]["findings_at_end"] == []
        assert res[run]["final_loss"] < 1.0
    assert "detector" in text and "first inf/nan epoch" in text
    assert plot == ["--no-plot"] or out.stat().st_size > 1000


def test_examples_reject_bad_arguments():
    for name in ("vanishing_gradients", "exploding_gradients"):
        with pytest.raises(SystemExit):
            _load(name).main(["--epochs", "0", "--no-plot"])
