"""Smoke tests: the data-set examples (house prices, sentiment, cats vs dogs, MNIST MLP).

Each runs one short epoch on a small subset, offline. The PNG path is exercised once, when
matplotlib (the ``examples`` extra) is installed; CI without it runs ``--no-plot``.
"""

import importlib.util
import io
import math
import pathlib
import pickle
import struct
import tarfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plot_args(out):
    """With matplotlib: save the PNG; without: ``--no-plot``."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["--no-plot"]
    return ["--out", str(out)]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty data cache, so nothing cached on this machine changes which data runs."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("JBP_DATA_DIR", str(d))
    return d


def _write_idx(path, array):
    code = {1: 0x0801, 3: 0x0803}[array.ndim]
    path.write_bytes(
        struct.pack(">I", code)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


# ---------------------------------------------------------------- house prices


def test_house_prices_example(tmp_path, capsys):
    out_png = tmp_path / "house.png"
    plot = _plot_args(out_png)
    out = _load("house_prices").main(["--epochs", "3", "--limit", "400", "--patience", "5"] + plot)
    assert out["report"].ok
    assert len(out["history"]) == 3 and 1 <= out["best_epoch"] <= 3
    assert math.isfinite(out["test"]["rmse"]) and out["test"]["rmse"] > 0
    assert out["test"]["mae"] <= out["test"]["rmse"]
    base = out["baselines"]
    assert set(base) == {"mean price", "linear (dollars)", "linear (log price)"}
    # closed-form least squares beats predicting the mean, by a wide margin
    assert base["linear (dollars)"]["rmse"] < 0.6 * base["mean price"]["rmse"]
    assert out["verdict"] in ("beats", "matches", "does NOT beat")
    text = capsys.readouterr().out
    assert "all gradients agree" in text and "test RMSE $" in text and "linear baseline" in text
    assert plot == ["--no-plot"] or (out["plot"] and out_png.stat().st_size > 1000)


def test_house_prices_bad_arguments():
    ex = _load("house_prices")
    for bad in (["--epochs", "0"], ["--val-fraction", "0.7"], ["--target", "euros"]):
        with pytest.raises(SystemExit):
            ex.main(bad + ["--no-plot"])


# ---------------------------------------------------------------- sentiment


def test_sentiment_bag_example(capsys):
    out = _load("sentiment").main(
        ["--epochs", "1", "--limit", "600", "--vocab", "500", "--max-len", "20", "--no-plot"]
    )
    assert out["report"].ok and out["model"] == "bag" and out["vocab_size"] == 500
    assert 0.0 <= out["test"]["accuracy"] <= 1.0 and math.isfinite(out["test"]["loss"])
    assert 0.5 <= out["baseline_accuracy"] <= 0.7  # majority class "fresh", ~0.58
    assert len(out["history"]) == 1
    text = capsys.readouterr().out
    assert "majority class (always fresh)" in text and "test accuracy" in text


def test_sentiment_rnn_example(capsys):
    out = _load("sentiment").main(
        [
            "--model",
            "rnn",
            "--epochs",
            "1",
            "--limit",
            "200",
            "--vocab",
            "300",
            "--max-len",
            "12",
            "--dim",
            "8",
            "--hidden",
            "8",
            "--no-plot",
        ]
    )
    assert out["report"].ok and out["model"] == "rnn"
    assert 0.0 <= out["test"]["accuracy"] <= 1.0
    assert "SimpleRNN" in capsys.readouterr().out


def test_sentiment_bad_vocabulary_size():
    with pytest.raises(SystemExit) as e:
        _load("sentiment").main(["--vocab", "0", "--no-plot"])
    assert e.value.code == 2


# ---------------------------------------------------------------- cats vs dogs


def test_cats_vs_dogs_forced_digits(capsys):
    out = _load("cats_vs_dogs").main(["--source", "digits", "--epochs", "1", "--no-plot"])
    assert out["source"] == "digits" and out["classes"] == ("3", "8")
    assert out["report"].ok
    assert 0.0 <= out["test"]["accuracy"] <= 1.0 and math.isfinite(out["test"]["loss"])
    assert "data: digits" in capsys.readouterr().out


def test_cats_vs_dogs_source_selection(empty_cache, tmp_path):
    ex = _load("cats_vs_dogs")
    nowhere = tmp_path / "nowhere"
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        (fashion / stem).touch()
    # nothing available: the embedded digits, and the reason says why
    source, reason = ex.choose_source("auto", None, False, nowhere)
    assert source == "digits" and "no CIFAR-10" in reason and "no Fashion-MNIST" in reason
    # Fashion-MNIST files present: that pair
    assert ex.choose_source("auto", None, False, fashion)[0] == "fashion_mnist"
    # an explicit --path or --download means CIFAR-10, whatever else is there
    assert ex.choose_source("auto", str(nowhere), False, fashion)[0] == "cifar10"
    assert ex.choose_source("auto", None, True, fashion)[0] == "cifar10"
    # a tarball in the cache wins over Fashion-MNIST
    (empty_cache / "cifar10").mkdir()
    (empty_cache / "cifar10" / "cifar-10-python.tar.gz").touch()
    source, reason = ex.choose_source("auto", None, False, fashion)
    assert source == "cifar10" and "cifar-10-python.tar.gz" in reason
    # forcing: digits always works; Fashion-MNIST without its files is an error
    assert ex.choose_source("digits", None, False, nowhere)[0] == "digits"
    with pytest.raises(ex.DataUnavailable, match="dataset-fashion-mnist"):
        ex.choose_source("fashion_mnist", None, False, nowhere)


def test_cats_vs_dogs_missing_path_is_an_error(empty_cache, tmp_path, capsys):
    ex = _load("cats_vs_dogs")
    missing = tmp_path / "no-such-cifar.tar.gz"
    with pytest.raises(SystemExit) as e:  # an explicit --path never falls back silently
        ex.main(["--path", str(missing), "--no-plot"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-cifar" in err and "download" in err
    with pytest.raises(SystemExit) as e:
        ex.main(["--source", "fashion_mnist", "--fashion-path", str(tmp_path), "--no-plot"])
    assert e.value.code == 2 and "dataset-fashion-mnist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --path is for CIFAR-10 only
        ex.main(["--source", "digits", "--path", str(missing), "--no-plot"])
    assert e.value.code == 2


def _cifar_batch(labels, rng):
    return {
        "labels": list(labels),
        "data": rng.integers(0, 256, (len(labels), 3072)).astype(np.uint8),
    }


def test_cats_vs_dogs_on_a_tiny_cifar_tarball(empty_cache, tmp_path):
    rng = np.random.default_rng(0)
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for name, labels in [
            *((f"data_batch_{i}", [3, 5, 1, 3, 5, 0]) for i in range(1, 6)),
            ("test_batch", [5, 3, 3, 9, 5]),
        ]:
            data = pickle.dumps(_cifar_batch(labels, rng), protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = _load("cats_vs_dogs").main(
        [
            "--path",
            str(tar),
            "--no-verify",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-plot",
        ]
    )
    assert out["source"] == "cifar10" and out["classes"] == ("cat", "dog")
    assert out["report"].ok and 0.0 <= out["test"]["accuracy"] <= 1.0


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_cats_vs_dogs_on_debian_fashion_mnist(empty_cache, capsys):
    out = _load("cats_vs_dogs").main(
        ["--model", "mlp", "--epochs", "1", "--limit", "300", "--no-plot"]
    )
    assert out["source"] == "fashion_mnist" and out["classes"] == ("T-shirt/top", "Shirt")
    assert len(out["history"]) == 1 and 0.0 <= out["test"]["accuracy"] <= 1.0
    assert out["baseline_accuracy"] == 0.5  # 1,000 test images of each
    assert "data: fashion_mnist" in capsys.readouterr().out


# ---------------------------------------------------------------- MNIST MLP


def test_mnist_mlp_on_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 40)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    out = _load("mnist_mlp").main(
        [
            "--dataset",
            "mnist",
            "--path",
            str(tmp_path),
            "--no-verify",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--no-plot",
        ]
    )
    assert out["report"].ok and out["dataset"] == "mnist"
    assert 0.0 <= out["test"]["accuracy"] <= 1.0 and len(out["per_class"]) == 10
    assert out["history"]["test_accuracy"][-1] == pytest.approx(out["test"]["accuracy"])
    text = capsys.readouterr().out
    assert "all gradients agree" in text and "epoch 1/1" in text and "final test accuracy" in text


def test_mnist_mlp_without_data_exits_2(empty_cache, capsys):
    with pytest.raises(SystemExit) as e:
        _load("mnist_mlp").main(["--dataset", "mnist", "--no-plot"])
    assert e.value.code == 2
    assert "--path" in capsys.readouterr().err


def test_mnist_mlp_bad_files_exit_2(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(SystemExit) as e:
        _load("mnist_mlp").main(["--path", str(tmp_path), "--no-plot"])
    assert e.value.code == 2 and "train-images-idx3-ubyte" in capsys.readouterr().err


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_mnist_mlp_defaults_to_debian_fashion_mnist(empty_cache, tmp_path):
    ex = _load("mnist_mlp")
    directory, why = ex.find_data("fashion_mnist", None, False)
    assert directory == FASHION_DIR and "Debian" in why
    assert ex.find_data("mnist", None, False)[0] is None  # MNIST has no such package
    assert ex.find_data("mnist", str(tmp_path), False)[0] == tmp_path
