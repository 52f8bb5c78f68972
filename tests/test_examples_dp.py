"""Smoke test: examples/dp_sgd.py on a small digits subset, one epoch, one target ε."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("example_dp_sgd", ROOT / "examples" / "dp_sgd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dp_sgd_example_runs(tmp_path):
    try:
        import matplotlib  # noqa: F401

        plot = []
    except ImportError:
        plot = ["--no-plot"]
    rows = _load().main(
        [
            "--dataset",
            "digits",
            "--train-size",
            "400",
            "--epochs",
            "1",
            "--epsilons",
            "3",
            "--hidden",
            "16",
            "--batch",
            "50",
            "--lr",
            "0.5",
            "--verbose",
            "0",
            "--out",
            str(tmp_path),
        ]
        + plot
    )
    assert [r["setting"] for r in rows] == ["non-private", "ε ≤ 3"]
    private = rows[1]
    assert 0 < private["epsilon"] <= 3.0 and private["sigma"] > 0
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    saved = json.loads((tmp_path / "dp_sgd.json").read_text())
    assert saved["rows"][1]["epsilon"] == private["epsilon"]
    if not plot:
        assert (tmp_path / "dp_sgd.png").stat().st_size > 0
