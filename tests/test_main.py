"""The main job, `python -m jbp`: runs, reports, and trains to a useful accuracy."""
import json
import re
import subprocess
import sys

import pytest

from jbp.__main__ import main


def test_default_main_job_checks_gradients_and_reaches_95_percent(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "gradient check (float32" in out and "all gradients agree" in out
    assert re.search(r"layers\[0\]\.W\s+\(64, 64\)", out)
    epochs = re.findall(r"^epoch +(\d+)/30 +loss [\d.]+ +accuracy [\d.]+ +test_accuracy [\d.]+", out, re.M)
    assert epochs == [str(i) for i in range(1, 31)]
    acc = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert acc >= 0.95, out


@pytest.mark.parametrize("argv", [
    ["--batch-size", "gd", "--epochs", "2", "--hidden", "16", "--activation", "tanh"],
    ["--batch-size", "sgd", "--epochs", "1", "--hidden", "8", "--no-check"],
    ["--optimizer", "adam", "--clip", "1.0", "--epochs", "2", "--no-check", "--hidden"],
    ["--optimizer", "nesterov", "--epochs", "1", "--no-check", "--autodiff", "--init", "lecun_normal"],
])
def test_main_job_variants(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out


def test_early_stopping_and_history(tmp_path, capsys):
    path = tmp_path / "history.json"
    assert main(["--epochs", "3", "--early-stopping", "2", "--history", str(path), "--no-check",
                 "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert "val_loss" in out
    hist = json.loads(path.read_text())
    assert "val_loss" in json.dumps(hist) and "test_accuracy" in json.dumps(hist)


@pytest.mark.parametrize("argv,msg", [
    (["--batch-size", "0"], "batch"),
    (["--lr", "-1"], "must be > 0"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--dataset", "mnist"], "needs --path"),
    (["--hidden", "0"], "must be > 0"),
])
def test_bad_flags_exit_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_help_and_console_entry():
    out = subprocess.run([sys.executable, "-m", "jbp", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ["--hidden", "--activation", "--lr", "--epochs", "--batch-size", "--seed",
                 "--optimizer", "--clip", "--early-stopping", "--history"]:
        assert flag in out


def test_data_errors_exit_2_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "mnist", "--path", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: mnist: file train-images-idx3-ubyte" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["--batch-size", "5000", "--no-check"])
    assert e.value.code == 2
    assert "batch_size: 5000 is larger than the data (1437 examples)" in capsys.readouterr().err
