"""Smoke tests: examples/cnn.py (digits and IDX files) and examples/sequence.py, briefly."""

import importlib.util
import pathlib
import struct

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(path, array):
    code = {1: 0x0801, 3: 0x0803}[array.ndim]
    path.write_bytes(
        struct.pack(">I", code)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def test_cnn_example_on_digits(capsys):
    out = _load("cnn").main(["--epochs", "1", "--limit", "200", "--batch-size", "50"])
    assert out["report"].ok
    assert 0.0 <= out["test"]["accuracy"] <= 1.0 and len(out["history"]["loss"]) == 1
    assert out["history"].state[4]["mean"].shape == (32,)  # BatchNorm's running statistics
    text = capsys.readouterr().out
    assert "all gradients agree" in text and "test accuracy" in text


def test_cnn_example_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    out = _load("cnn").main(
        [
            "--path",
            str(tmp_path),
            "--no-verify",
            "--epochs",
            "1",
            "--batch-size",
            "20",
            "--no-augment",
        ]
    )
    assert out["report"].ok and 0.0 <= out["test"]["accuracy"] <= 1.0


def test_sequence_example_learns_the_early_token(capsys):
    out = _load("sequence").main(["--epochs", "6", "--train", "2000"])
    assert out["report"].ok
    assert out["test"]["accuracy"] > 0.9  # chance: 0.25
    assert out["baseline"]["accuracy"] < out["test"]["accuracy"]
    assert "test accuracy" in capsys.readouterr().out
