"""CIFAR-10 loader on a tiny tarball built here; offline downloads; safe unpickling."""

import collections
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

import jbp.datasets as jd
from jbp.datasets import cache, cifar

N = 4  # images per batch


def batch_dict(seed, n=N):
    rng = np.random.default_rng(seed)
    # NCHW planes with distinct constant offsets so the NHWC transpose is checkable
    planes = rng.integers(0, 80, (n, 3, 32, 32)).astype(np.uint8)
    planes[:, 1] += 80
    planes[:, 2] += 160
    return {
        "batch_label": f"batch {seed}",
        "labels": [int(v) for v in (np.arange(n) + seed) % 10],
        "data": planes.reshape(n, 3072),
        "filenames": [f"img{i}.png" for i in range(n)],
    }


def build_tarball(path, batches=None, drop=None):
    batches = batches or {
        **{f"data_batch_{i}": batch_dict(i) for i in range(1, 6)},
        "test_batch": batch_dict(7),
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, d in batches.items():
            if name == drop:
                continue
            data = d if isinstance(d, bytes) else pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return batches


@pytest.fixture
def tarball(tmp_path, monkeypatch):
    p = tmp_path / "cifar-10-python.tar.gz"
    batches = build_tarball(p)
    monkeypatch.setattr(cifar, "SHA256", hashlib.sha256(p.read_bytes()).hexdigest())
    return p, batches


def test_load_tarball_nhwc(tarball):
    p, batches = tarball
    (xtr, ytr), (xte, yte) = jd.cifar10(p)
    assert xtr.shape == (5 * N, 32, 32, 3) and xte.shape == (N, 32, 32, 3)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int32
    exp = batches["test_batch"]["data"].reshape(N, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(xte, exp)
    assert xte[..., 0].max() < 80 and xte[..., 1].min() >= 80 and xte[..., 2].min() >= 160
    np.testing.assert_array_equal(ytr[:N], batches["data_batch_1"]["labels"])
    np.testing.assert_array_equal(ytr[-N:], batches["data_batch_5"]["labels"])


def test_path_as_directory_and_extracted(tarball, tmp_path):
    p, _ = tarball
    (a, _), _ = jd.cifar10(p.parent)
    ext = tmp_path / "ext"
    with tarfile.open(p) as tf:
        tf.extractall(ext, filter="data")
    (b, yb), (c, _) = jd.cifar10(ext)
    (b2, _), _ = jd.cifar10(ext / "cifar-10-batches-py")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, b2)


def test_classes_cats_vs_dogs(tarball):
    p, _ = tarball
    (xall, yall), _ = jd.cifar10(p)
    (x, y), (xt, yt) = jd.cifar10(p, classes=("dog", "cat"))
    keep = (yall == 5) | (yall == 3)
    np.testing.assert_array_equal(x, xall[keep])
    np.testing.assert_array_equal(y, np.where(yall[keep] == 5, 0, 1))
    assert set(np.unique(y)) <= {0, 1}


def test_unknown_class_lists_names(tarball):
    p, _ = tarball
    with pytest.raises(ValueError, match="unknown class name 'cow'.*airplane.*truck"):
        jd.cifar10(p, classes=("cat", "cow"))
    with pytest.raises(ValueError, match="sequence"):
        jd.cifar10(p, classes="cat")


def test_unknown_class_checked_before_io(tmp_path):
    with pytest.raises(ValueError, match="known names"):
        jd.cifar10(tmp_path / "nothing", classes=("zebra",))


def test_checksum_mismatch(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    build_tarball(p)
    with pytest.raises(cache.ChecksumError, match="checksum mismatch") as e:
        jd.cifar10(p)  # real canonical SHA-256 vs our tiny tarball
    assert str(p) in str(e.value)
    (x, _), _ = jd.cifar10(p, verify=False)
    assert x.shape == (5 * N, 32, 32, 3)


def test_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*download=True"):
        jd.cifar10()


def test_truncated_tarball(tmp_path):
    p = tmp_path / "cifar-10-python.tar.gz"
    build_tarball(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        jd.cifar10(p, verify=False)
    assert str(p) in str(e.value)


def test_missing_member(tmp_path):
    p = tmp_path / "c.tar.gz"
    build_tarball(p, drop="data_batch_3")
    with pytest.raises(ValueError, match="data_batch_3 missing"):
        jd.cifar10(p, verify=False)


def test_bad_batch_shape(tmp_path):
    p = tmp_path / "c.tar.gz"
    batches = {f"data_batch_{i}": batch_dict(i) for i in range(1, 6)}
    bad = batch_dict(7)
    bad["data"] = bad["data"][:, :100]
    batches["test_batch"] = bad
    build_tarball(p, batches)
    with pytest.raises(ValueError, match="test_batch.*3072"):
        jd.cifar10(p, verify=False)


def test_unsafe_pickle_rejected(tmp_path):
    p = tmp_path / "c.tar.gz"
    batches = {f"data_batch_{i}": batch_dict(i) for i in range(1, 6)}
    evil = batch_dict(7)
    evil["extra"] = collections.OrderedDict(a=1)  # any non-numpy global is refused
    batches["test_batch"] = evil
    build_tarball(p, batches)
    with pytest.raises(ValueError, match="not allowed"):
        jd.cifar10(p, verify=False)


def test_download_file_url(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    src.parent.mkdir()
    build_tarball(src)
    monkeypatch.setattr(cifar, "URLS", (src.as_uri(),))
    monkeypatch.setattr(cifar, "SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    (x, _), _ = jd.cifar10(download=True, cache_dir=tmp_path / "root")
    assert x.shape == (5 * N, 32, 32, 3)
    assert os.listdir(tmp_path / "root" / "cifar10") == ["cifar-10-python.tar.gz"]


def test_download_bad_checksum(tmp_path, monkeypatch):
    src = tmp_path / "cifar-10-python.tar.gz"
    build_tarball(src)
    monkeypatch.setattr(cifar, "URLS", (src.as_uri(),))
    with pytest.raises(cache.ChecksumError, match="discarded"):
        jd.cifar10(download=True, cache_dir=tmp_path / "root")
    assert os.listdir(tmp_path / "root" / "cifar10") == []


def test_bad_flag():
    with pytest.raises(ValueError, match="download"):
        jd.cifar10(download=1)


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, the way the real CIFAR batches were made."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(d):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(
        {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
    )
    return buf.getvalue()


def test_python2_style_pickles(tmp_path):
    p = tmp_path / "c.tar.gz"
    dicts = {f"data_batch_{i}": batch_dict(i) for i in range(1, 6)}
    dicts["test_batch"] = batch_dict(7)
    build_tarball(p, {k: py2_pickle(v) for k, v in dicts.items()})
    (x, y), (xt, yt) = jd.cifar10(p, verify=False)
    exp = dicts["test_batch"]["data"].reshape(N, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(xt, exp)
    np.testing.assert_array_equal(yt, dicts["test_batch"]["labels"])
