"""Smoke test: examples/regularization.py runs end to end, very briefly."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "example_regularization", ROOT / "examples" / "regularization.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regularization_example_runs(tmp_path, capsys):
    example = _load()
    out = tmp_path / "curves.png"
    results = example.main(
        ["--epochs", "3", "--n-train", "32", "--n-val", "40", "--patience", "1", "--out", str(out)]
    )
    assert [r["name"] for r in results] == ["none", "l2", "dropout", "augment", "early stop"]
    for r in results:
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert abs(r["gap"] - (r["train_acc"] - r["test_acc"])) < 1e-12
        assert 1 <= r["epochs_run"] <= 3
    l2 = results[1]["history"]
    assert "penalty" in l2 and all(p > 0 for p in l2["penalty"])  # data loss and penalty apart
    text = capsys.readouterr().out
    assert "train acc" in text and "test acc" in text and "gap" in text
    assert out.exists() and out.stat().st_size > 1000


def test_regularization_example_bad_arguments():
    example = _load()
    with pytest.raises(SystemExit):
        example.main(["--epochs", "0", "--out", ""])
    with pytest.raises(SystemExit):
        example.main(["--only", "nonsense", "--out", ""])
