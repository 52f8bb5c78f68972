"""Smoke test: examples/learning_rules.py runs end to end, very briefly (embedded digits)."""

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.slow  # a long integration test: `pytest -m "not slow"` skips it

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "example_learning_rules", ROOT / "examples" / "learning_rules.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rules_example_runs(tmp_path, capsys):
    example = _load()
    results = example.main(
        [
            "--dataset",
            "digits",
            "--n-train",
            "256",
            "--n-test",
            "120",
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--probe",
            "60",
            "--lr",
            "1e-2",
            "--rules",
            "bp",
            "fa",
            "sign",
            "kp",
            "--out",
            str(tmp_path),
        ]
    )
    assert [r["rule"] for r in results] == ["bp", "fa", "sign", "kp"]
    for r in results:
        assert 0.0 <= r["test_error"] <= 100.0 and r["train_loss"] > 0
        if r["rule"] != "bp":
            assert 0.0 < r["angles"]["layers[0]"] < 180.0
            assert len(r["record"].epochs) == 3  # epoch 0 and the two trained ones
    text = capsys.readouterr().out
    assert "test error %" in text and "published (MNIST LeNet" in text and "0.91%" in text
    png = tmp_path / "alignment.png"
    assert png.exists() and png.stat().st_size > 1000


def test_learning_rules_example_records_inside_the_epoch(tmp_path, capsys):
    example = _load()
    args = ["--dataset", "digits", "--n-train", "200", "--n-test", "40", "--hidden", "16"]
    args += ["--epochs", "2", "--rules", "fa", "--record-every", "3", "--out", str(tmp_path)]
    (r,) = example.main(args)
    assert r["record"].epochs == [1, 2]  # epoch means: no epoch 0
    assert 0.0 < r["angles"]["layers[0]"] < 180.0 and r["angles"]["layers[2]"] == 0.0
    assert "recorded training steps (one in 3)" in capsys.readouterr().out
    assert (tmp_path / "alignment.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        example.main(["--record-every", "-1"])


def test_learning_rules_example_cnn_and_bad_arguments(capsys):
    example = _load()
    results = example.main(
        [
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--rules",
            "dfa",
            "--n-train",
            "64",
            "--n-test",
            "32",
            "--epochs",
            "1",
            "--probe",
            "16",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
        ]
    )
    assert results[0]["rule"] == "dfa"
    assert set(results[0]["angles"]) == {"layers[0]", "layers[3]", "layers[7]", "layers[9]"}
    with pytest.raises(SystemExit):
        example.main(["--epochs", "0"])
    with pytest.raises(SystemExit):
        example.main(["--rules", "backprop"])


def test_learning_rules_recipes():
    example = _load()
    p = example.argparse.Namespace(
        optimizer="auto", lr=None, weight_decay=None, momentum=None, clip=None
    )
    for rule in ("bp", "sign", "fa", "dfa", "kp"):
        assert example.recipe(rule, "mlp", p)["optimizer"] == "adamw"
    assert example.recipe("sign", "cnn", p)["optimizer"] == "adamw"
    fa = example.recipe("fa", "cnn", p)
    assert (fa["optimizer"], fa["lr"], fa["momentum"], fa["clip"]) == ("sgd", 1e-2, 0.9, 1.0)
    assert example.recipe("kp", "cnn", p)["clip"] is None
    p.lr, p.optimizer = 3e-3, "sgd"
    r = example.recipe("bp", "mlp", p)
    assert (r["optimizer"], r["lr"]) == ("sgd", 3e-3)
    assert "clip 1" in example.describe(fa) and "momentum 0.9" in example.describe(fa)
    example.make_optimizer(fa).init({"W": example.jnp.zeros(2)})
