"""MNIST / Fashion-MNIST IDX loaders: tiny IDX files written here, offline downloads."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import jbp.datasets as jd
from jbp.datasets import cache, idx

FILES = idx.FILES
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr):
    arr = np.asarray(arr)
    code = {
        np.uint8: 0x08,
        np.int8: 0x09,
        np.int16: 0x0B,
        np.int32: 0x0C,
        np.float32: 0x0D,
        np.float64: 0x0E,
    }[arr.dtype.type]
    head = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def tiny_arrays(seed=0, n_train=20, n_test=10, side=28):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }


def write_set(directory, arrays, gz=True):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / stem).write_bytes(data)
    return directory


@pytest.fixture
def tiny(tmp_path):
    arrays = tiny_arrays()
    return write_set(tmp_path / "set", arrays), arrays


@pytest.fixture
def no_network(monkeypatch):
    def refuse(url, dest, **kw):
        raise AssertionError(f"network used: {url}")

    monkeypatch.setattr(cache, "_fetch", refuse)


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    p = tmp_path / "a.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    out = idx.read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable copy


def test_read_idx_bad_magic(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic") as e:
        idx.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_truncated_and_too_long(tmp_path):
    data = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    p = tmp_path / "t"
    p.write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated") as e:
        idx.read_idx(p)
    assert str(p) in str(e.value)
    p.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="too long"):
        idx.read_idx(p)
    p.write_bytes(data[:6])
    with pytest.raises(ValueError, match="truncated IDX header"):
        idx.read_idx(p)


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100)))
    p = tmp_path / "t.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip") as e:
        idx.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        idx.read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- loading from a path


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_path(tmp_path, gz, no_network):
    arrays = tiny_arrays()
    d = write_set(tmp_path, arrays, gz=gz)
    (xtr, ytr), (xte, yte) = jd.mnist(d, verify=False)
    assert xtr.shape == (20, 28, 28) and xtr.dtype == np.uint8
    assert ytr.dtype == np.int32 and yte.shape == (10,)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])


def test_missing_file_names_it_and_says_how(tmp_path, no_network):
    arrays = tiny_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    d = write_set(tmp_path, arrays)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        jd.mnist(d, verify=False)
    assert "download=True" in str(e.value)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        jd.fashion_mnist(d, verify=False)


def test_missing_cache_without_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path / "root"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "root" / "mnist")):
        jd.mnist()


def test_path_must_be_directory(tiny):
    d, _ = tiny
    with pytest.raises(ValueError, match="directory"):
        jd.mnist(d / "train-images-idx3-ubyte.gz", verify=False)


def test_bad_magic_in_set_names_file(tmp_path):
    arrays = tiny_arrays()
    d = write_set(tmp_path, arrays, gz=False)
    p = d / "train-labels-idx1-ubyte"
    data = bytearray(p.read_bytes())
    data[2] = 0x77
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="magic") as e:
        jd.mnist(d, verify=False)
    assert "train-labels-idx1-ubyte" in str(e.value)


def test_truncated_in_set_never_partial(tmp_path):
    arrays = tiny_arrays()
    d = write_set(tmp_path, arrays, gz=True)
    p = d / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match="truncated") as e:
        jd.fashion_mnist(d, verify=False)
    assert "t10k-images-idx3-ubyte" in str(e.value)


def test_count_mismatch(tmp_path):
    arrays = tiny_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    d = write_set(tmp_path, arrays)
    with pytest.raises(ValueError, match="19 labels"):
        jd.mnist(d, verify=False)


def test_verify_rejects_non_canonical(tiny):
    d, _ = tiny
    with pytest.raises(ValueError, match="verify=False") as e:
        jd.mnist(d)
    assert "train-images-idx3-ubyte" in str(e.value)


def patch_known(monkeypatch, name, arrays, mirror_dirs):
    known = {}
    for stem, arr in arrays.items():
        raw = idx_bytes(arr)
        gz = gzip.compress(raw, mtime=0)
        known[stem] = (hashlib.sha256(gz).hexdigest(), hashlib.sha256(raw).hexdigest(), len(raw))
    monkeypatch.setitem(idx.KNOWN, name, known)
    monkeypatch.setitem(idx.MIRRORS, name, tuple(Path(m).as_uri() + "/" for m in mirror_dirs))
    return known


def test_verify_checksum_mismatch_same_size(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    d = write_set(tmp_path / "d", arrays)
    patch_known(monkeypatch, "mnist", arrays, [tmp_path])
    jd.mnist(d)  # verifies fine
    altered = dict(arrays)
    img = arrays["t10k-images-idx3-ubyte"].copy()
    img[0, 0, 0] ^= 1
    altered["t10k-images-idx3-ubyte"] = img
    write_set(d, altered)
    with pytest.raises(cache.ChecksumError, match="checksum mismatch") as e:
        jd.mnist(d)
    assert "t10k-images-idx3-ubyte" in str(e.value)
    assert isinstance(e.value, ValueError)


# ---------------------------------------------------------------- downloads (offline)


def test_download_into_cache_file_urls(tmp_path, monkeypatch):
    arrays = tiny_arrays(seed=5)
    mirror = write_set(tmp_path / "mirror", arrays)
    patch_known(monkeypatch, "fashion_mnist", arrays, [tmp_path / "missing-mirror", mirror])
    root = tmp_path / "cache"
    (xtr, ytr), (xte, yte) = jd.fashion_mnist(download=True, cache_dir=root)
    np.testing.assert_array_equal(xte, arrays["t10k-images-idx3-ubyte"])
    files = sorted(os.listdir(root / "fashion_mnist"))
    assert files == sorted(s + ".gz" for s in FILES)  # no .part leftovers

    # second call: served from the cache, no network
    def refuse(url, dest, **kw):
        raise AssertionError("network used")

    monkeypatch.setattr(cache, "_fetch", refuse)
    (xtr2, _), _ = jd.fashion_mnist(download=True, cache_dir=root)
    np.testing.assert_array_equal(xtr2, xtr)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    arrays = tiny_arrays(seed=1)
    mirror = write_set(tmp_path / "mirror", arrays)
    known = patch_known(monkeypatch, "mnist", arrays, [mirror])
    stem = "train-labels-idx1-ubyte"
    bad = dict(known)
    bad[stem] = ("0" * 64,) + known[stem][1:]
    monkeypatch.setitem(idx.KNOWN, "mnist", bad)
    root = tmp_path / "cache"
    with pytest.raises(cache.ChecksumError, match=stem) as e:
        jd.mnist(download=True, cache_dir=root)
    assert "0" * 64 in str(e.value)
    assert not (root / "mnist" / (stem + ".gz")).exists()
    assert not [f for f in os.listdir(root / "mnist") if f.endswith(".part")]


def test_download_unreachable(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    patch_known(monkeypatch, "mnist", arrays, [tmp_path / "nowhere"])
    with pytest.raises(OSError, match="could not download"):
        jd.mnist(download=True, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c" / "mnist").iterdir())


def test_download_monkeypatched_fetch_atomic(tmp_path, monkeypatch):
    """A fetch that dies half-way leaves no file under the final name."""

    def dying(url, dest, **kw):
        dest.write(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(cache, "_fetch", dying)
    dest = tmp_path / "x" / "f.gz"
    with pytest.raises(OSError, match="connection reset"):
        cache.download_file(["http://example.invalid/f.gz"], dest, sha256="0" * 64, quiet=True)
    assert list(dest.parent.iterdir()) == []


def test_download_md5_only(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "out" / "f.bin"
    cache.download_file([src.as_uri()], dest, md5=hashlib.md5(b"hello").hexdigest(), quiet=True)
    assert dest.read_bytes() == b"hello"


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("JBP_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.data_home() == tmp_path / "home" / ".cache" / "jbp"
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path / "env"))
    assert cache.data_home() == tmp_path / "env"
    assert cache.data_home(tmp_path / "arg") == tmp_path / "arg"
    assert cache.dataset_dir("mnist") == tmp_path / "env" / "mnist"


def test_env_var_used_for_loading(tmp_path, monkeypatch, no_network):
    arrays = tiny_arrays()
    write_set(tmp_path / "env" / "mnist", arrays)
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path / "env"))
    (xtr, _), _ = jd.mnist(verify=False)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])


# ---------------------------------------------------------------- classes, prepare_images


def test_classes_selection(tiny):
    d, arrays = tiny
    (xtr, ytr), (xte, yte) = jd.fashion_mnist(d, verify=False, classes=("Bag", "Trouser"))
    orig = arrays["train-labels-idx1-ubyte"]
    keep = (orig == 8) | (orig == 1)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"][keep])
    np.testing.assert_array_equal(ytr, np.where(orig[keep] == 8, 0, 1))
    (_, y2), _ = jd.mnist(d, verify=False, classes=[3, 7])
    assert set(y2.tolist()) == {0, 1}


@pytest.mark.parametrize(
    "classes, match",
    [
        (("Bag", "Purse"), "Purse.*Ankle boot"),
        ("Bag", "sequence"),
        ((), "at least one"),
        (("Bag", 8), "duplicate"),
        ((11,), "outside"),
    ],
)
def test_classes_errors(tiny, classes, match):
    d, _ = tiny
    with pytest.raises(ValueError, match=match):
        jd.fashion_mnist(d, verify=False, classes=classes)


def test_bad_flags(tiny):
    d, _ = tiny
    with pytest.raises(ValueError, match="download"):
        jd.mnist(d, download="yes")
    with pytest.raises(ValueError, match="verify"):
        jd.mnist(d, verify=None)


def test_prepare_images():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    f = jd.prepare_images(x)
    assert f.shape == (2, 12) and f.dtype == np.float32
    np.testing.assert_allclose(f.max(), 23 / 255)
    n = jd.prepare_images(x, flatten=False, channels_last=True)
    assert n.shape == (2, 3, 4, 1)
    u = jd.prepare_images(x, flatten=False, scale=False)
    assert u.dtype == np.uint8 and u.shape == (2, 3, 4)
    u[0, 0, 0] = 99
    assert x[0, 0, 0] == 0
    assert jd.prepare_images(np.zeros((2, 3, 3, 3), np.uint8)).shape == (2, 27)
    with pytest.raises(ValueError, match="channels_last"):
        jd.prepare_images(x, channels_last=True)
    with pytest.raises(ValueError, match="shape"):
        jd.prepare_images(x[0])
    with pytest.raises(ValueError, match="uint8"):
        jd.prepare_images(x.astype(np.float32))
    with pytest.raises(ValueError, match="flatten"):
        jd.prepare_images(x, flatten=1)


# ---------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_debian_files():
    (xtr, ytr), (xte, yte) = jd.fashion_mnist(FASHION_DIR)  # verify=True: canonical content
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ytr), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte), [1000] * 10)
    assert abs(xtr.mean() / 255 - 0.2860) < 1e-3  # the published mean
    x = jd.prepare_images(xte[:5])
    assert x.shape == (5, 784) and 0 <= x.min() and x.max() <= 1
