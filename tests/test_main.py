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
    epochs = re.findall(
        r"^epoch +(\d+)/30 +loss [\d.]+ +accuracy [\d.]+ +test_accuracy [\d.]+", out, re.M
    )
    assert epochs == [str(i) for i in range(1, 31)]
    acc = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert acc >= 0.95, out


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", "gd", "--epochs", "2", "--hidden", "16", "--activation", "tanh"],
        ["--batch-size", "sgd", "--epochs", "1", "--hidden", "8", "--no-check"],
        ["--optimizer", "adam", "--clip", "1.0", "--epochs", "2", "--no-check", "--hidden"],
        [
            "--optimizer",
            "nesterov",
            "--epochs",
            "1",
            "--no-check",
            "--autodiff",
            "--init",
            "lecun_normal",
        ],
    ],
)
def test_main_job_variants(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out


def test_early_stopping_and_history(tmp_path, capsys):
    path = tmp_path / "history.json"
    assert (
        main(
            [
                "--epochs",
                "3",
                "--early-stopping",
                "2",
                "--history",
                str(path),
                "--no-check",
                "--hidden",
                "16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "val_loss" in out
    hist = json.loads(path.read_text())
    assert "val_loss" in json.dumps(hist) and "test_accuracy" in json.dumps(hist)


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--batch-size", "0"], "batch"),
        (["--lr", "-1"], "must be > 0"),
        (["--optimizer", "lbfgs"], "invalid choice"),
        (["--dataset", "mnist"], "needs --path"),
        (["--hidden", "0"], "must be > 0"),
        (["--progress-every", "-1"], "expected 0 or a positive number"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_help_and_console_entry():
    out = subprocess.run(
        [sys.executable, "-m", "jbp", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in [
        "--hidden",
        "--activation",
        "--lr",
        "--epochs",
        "--batch-size",
        "--seed",
        "--optimizer",
        "--clip",
        "--early-stopping",
        "--history",
    ]:
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


def test_divergence_exits_3_and_says_so(capsys):
    assert main(["--lr", "1e30", "--epochs", "2", "--no-check", "--hidden", "8"]) == 3
    captured = capsys.readouterr()
    assert "diverged at epoch 1: loss nan" in captured.out
    assert "training DIVERGED at epoch 1" in captured.err
    assert not re.search(r"^epoch 2/2", captured.out, re.M)  # stopped there
    with pytest.raises(SystemExit) as e:  # an infinite learning rate is refused up front
        main(["--lr", "inf", "--no-check"])
    assert e.value.code == 2
    assert "learning_rate must be a finite number" in capsys.readouterr().err


def test_checkpoint_resume_save_and_evaluate(tmp_path, capsys):
    ck, model, hist = tmp_path / "ck", tmp_path / "model.jbp", tmp_path / "h.json"
    flags = ["--no-check", "--hidden", "8", "--checkpoint-dir", str(ck)]
    assert main(["--epochs", "1"] + flags) == 0
    first = capsys.readouterr().out
    line1 = re.search(r"^epoch 1/1 +(loss .*?)  [\d.]+s", first, re.M).group(1)
    assert (
        main(["--epochs", "2", "--resume", "--save", str(model), "--history", str(hist)] + flags)
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"resumed from .*ckpt_00000001\.jbp: 1 epoch\(s\) done", out)
    assert not re.search(r"^epoch 1/", out, re.M) and re.search(r"^epoch 2/2 ", out, re.M)
    records = json.loads(hist.read_text())["history"]
    assert records["epoch"] == [1, 2]  # the first epoch's record comes from the checkpoint
    assert f"loss {records['loss'][0]:.4f}" in line1
    acc = re.search(r"test accuracy: ([\d.]+) \(test loss ([\d.]+)\)", out).groups()
    assert main(["--evaluate", str(model)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test accuracy: ([\d.]+) \(test loss ([\d.]+)\)", out).groups() == acc
    # damaged or foreign files are refused with the reason, nothing evaluated
    bad = tmp_path / "bad.jbp"
    bad.write_bytes(model.read_bytes()[:-40])
    from jbp import checkpoint

    checkpoint.save(tmp_path / "other.jbp", {"w": [1.0, 2.0]})
    for path, msg in [
        (bad, "truncated"),
        (tmp_path / "other.jbp", "not a model saved by"),
        (tmp_path / "missing.jbp", "No such file"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["--evaluate", str(path)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["--resume"])
    assert e.value.code == 2 and "--resume needs --checkpoint-dir" in capsys.readouterr().err


def test_summary_plot_and_x64(tmp_path, capsys):
    import jax

    before = bool(jax.config.jax_enable_x64)
    fig = tmp_path / "figs" / "run.png"
    assert main(["--x64", "--plot", str(fig), "--epochs", "2", "--hidden", "8"]) == 0
    out = capsys.readouterr().out
    assert "Sequential on input (None, 64) float64" in out
    assert f"Trainable params: {64 * 8 + 8 + 8 * 10 + 10:,} (float64)" in out
    assert "gradient check (float64" in out and "all gradients agree" in out
    assert fig.exists() and fig.stat().st_size > 0
    assert bool(jax.config.jax_enable_x64) == before  # restored after the run


@pytest.mark.parametrize("mode,lr", [("sgd", 0.02), ("gd", 1.0), ("32", 0.3)])
def test_learning_rate_default_fits_the_batch_mode(mode, lr):
    from jbp.__main__ import build_optimizer, build_parser

    args = build_parser().parse_args(["--batch-size", mode])
    assert build_optimizer(args)[1] == lr


def test_full_batch_default_prints_a_stride_of_epochs(capsys):
    assert main(["--batch-size", "gd", "--no-check", "--hidden", "8", "--epochs", "120"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch +(\d+)/120 ", out, re.M)
    assert epochs[0] == "1" and epochs[-1] == "120" and len(epochs) < 40


def test_rising_loss_warns(capsys):
    from jbp.__main__ import _warn_if_loss_rose
    from jbp.history import History

    assert not _warn_if_loss_rose(
        History([{"epoch": i + 1, "loss": 2.0 / (i + 1)} for i in range(8)])
    )
    assert _warn_if_loss_rose(
        History([{"epoch": i + 1, "loss": 1.0 + i % 2 * 0.5 + 0.01 * i} for i in range(8)])
    )
    assert "training loss rose" in capsys.readouterr().err


def test_progress_lines_inside_an_epoch(capsys):
    """--batch-size sgd on the digits: a line every 200 steps inside the epoch."""
    assert main(["--batch-size", "sgd", "--epochs", "1", "--no-check", "--progress-every", "200",
                 "--hidden", "8"]) == 0  # fmt: skip
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("  epoch 1/1  step")]
    assert lines and lines[0].split()[3].startswith("200/")


def test_progress_default_is_five_lines_for_long_epochs():
    from jbp.__main__ import _progress_every  # noqa: PLC0415

    assert _progress_every(None, 60_000, 1) == 12_000  # sgd on Fashion-MNIST
    assert _progress_every(None, 60_000, 32) is None  # 1,875 steps: the epoch line suffices
    assert _progress_every(None, 60_000, None) is None  # gd: one step
    assert _progress_every(0, 60_000, 1) is None and _progress_every(7, 10, 1) == 7
