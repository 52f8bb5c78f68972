"""Smoke test: examples/kfac.py (K-FAC vs Adam vs SGD) with tiny settings, offline: the
Fashion-MNIST directory is missing, so it falls back to the embedded digits and says so."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("example_kfac", ROOT / "examples" / "kfac.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kfac_example_falls_back_to_digits_and_compares_three_optimizers(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401

        plot = ["--out", str(tmp_path)]
    except ImportError:
        plot = ["--no-plot"]
    out = _load().main(
        [
            "--path",
            str(tmp_path / "missing"),
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--batch-size",
            "128",
            "--limit",
            "512",
            "--target",
            "0.5",
        ]
        + plot
    )
    text = capsys.readouterr().out
    assert out["dataset"] == "digits" and "no Fashion-MNIST IDX files" in out["note"]
    assert set(out["summary"]) == {"K-FAC", "Adam", "SGD+momentum"}
    for name, s in out["summary"].items():
        h = out["histories"][name]
        assert len(h["test_accuracy"]) == 2 and 0.0 <= s["final_accuracy"] <= 1.0
        assert (s["epochs"] is None) == (max(h["test_accuracy"]) < 0.5)
    assert out["summary"]["K-FAC"]["epochs"] is not None  # K-FAC reaches 0.5 on digits
    assert "epochs to 0.500" in text and "K-FAC" in text
    if plot[0] == "--out":
        assert pathlib.Path(out["plot"]).is_file()


def test_kfac_example_rejects_bad_arguments():
    with pytest.raises(SystemExit) as e:
        _load().main(["--epochs", "0", "--no-plot"])
    assert e.value.code == 2
