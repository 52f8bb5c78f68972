"""CIFAR-10 from the canonical python-pickle tarball ``cifar-10-python.tar.gz``.

Krizhevsky, A. (2009). Learning Multiple Layers of Features from Tiny Images. Technical
report, University of Toronto. https://www.cs.toronto.edu/~kriz/cifar.html

The batches inside the tarball are Python pickles. They are read straight from the
(checksummed) tarball, never extracted, with an unpickler that only admits the handful of
numpy globals a CIFAR batch needs — a tampered file cannot run code.

Split: the official one — ``data_batch_1..5`` (50,000 train, in batch order) and
``test_batch`` (10,000 test).
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import cache
from .split import select_classes

__all__ = ["cifar10", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

TARBALL = "cifar-10-python.tar.gz"
MEMBER_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# The canonical tarball: 170,498,071 bytes, published MD5 c58f30108f718f92721af3b95e74349a.
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
MD5 = "c58f30108f718f92721af3b95e74349a"
URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]


def _latin1_encode(text, encoding="latin1"):
    """``codecs.encode`` as Python 3 pickles (protocol 2) use it for bytes; latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codecs.encode with {encoding!r} not allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch"
            ) from None


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt batch
        raise ValueError(f"{where}: not a valid CIFAR batch pickle ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, where)
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{where}: missing 'data' or 'labels' (keys: {sorted(d)})")
    x = np.asarray(d["data"])
    y = np.asarray(d["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"{where}: expected uint8 data (n, 3072), got {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"{where}: {len(x)} images but labels of shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{where}: labels outside 0..9")
    x = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return np.ascontiguousarray(x), y.astype(np.int32)


def _read_tarball(tar_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tf:
            for name in TRAIN_BATCHES + (TEST_BATCH,):
                member = f"{MEMBER_DIR}/{name}"
                try:
                    f = tf.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise ValueError(f"{tar_path}: member {member} missing from the tarball")
                batches[name] = _batch(f.read(), f"{tar_path}:{member}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{tar_path}: corrupt or truncated tarball ({e})") from None
    return batches


def _read_dir(d: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches = {}
    for name in TRAIN_BATCHES + (TEST_BATCH,):
        p = d / name
        if not p.is_file():
            raise FileNotFoundError(f"CIFAR-10 batch file {p} not found")
        batches[name] = _batch(p.read_bytes(), str(p))
    return batches


def cifar10(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[str | int] | None = None,
    verify: bool = True,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load CIFAR-10: 60,000 colour images 32×32 in 10 classes.

    Args:
      path: the tarball ``cifar-10-python.tar.gz``, a directory holding it, or an
        extracted ``cifar-10-batches-py`` directory (or its parent). Default: the cache
        directory ``<root>/cifar10``, root = ``cache_dir`` or ``$JBP_DATA_DIR`` or
        ``~/.cache/jbp``.
      download: when the tarball is missing, fetch it from www.cs.toronto.edu (163 MiB),
        check its SHA-256 and move it atomically into place.
      cache_dir: cache root; ignored when ``path`` is given.
      classes: optional sequence of class names from :data:`CIFAR10_CLASSES` (or int
        labels); keeps those classes and relabels them ``0..k-1`` in the order given, e.g.
        ``classes=("cat", "dog")`` gives cat=0, dog=1.
      verify: check the tarball's SHA-256 (an extracted directory cannot be checked).

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: uint8 NHWC images ``(n, 32, 32, 3)`` and
      int32 labels; the official split, 50,000 train / 10,000 test (10,000 / 2,000 for
      two classes).

    Raises:
      FileNotFoundError: no tarball/batches and ``download`` is False.
      ValueError: checksum mismatch, corrupt or truncated tarball or batch, an unknown
        class name (the message lists the known names), or another bad argument.
    """
    for name, v in (("download", download), ("verify", verify)):
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} must be a bool, got {v!r}")
    if classes is not None:  # validate before any I/O
        select_classes(np.zeros((0,)), np.zeros((0,), np.int32), classes, CIFAR10_CLASSES)

    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            tar_path, extracted = p, None
        else:
            tar_path = p / TARBALL
            extracted = None
            for d in (p, p / MEMBER_DIR):
                if (d / TEST_BATCH).is_file():
                    extracted = d
                    break
    else:
        tar_path, extracted = cache.dataset_dir("cifar10", cache_dir) / TARBALL, None

    if extracted is not None and not tar_path.is_file():
        batches = _read_dir(extracted)
    else:
        if not tar_path.is_file():
            if not download:
                raise FileNotFoundError(
                    f"cifar10: {tar_path} not found; pass download=True to fetch it from "
                    f"{URLS[0]}, or path= the tarball or an extracted {MEMBER_DIR} directory; "
                    f"the cache root is set by cache_dir= or ${cache.ENV_VAR}"
                )
            cache.download_file(URLS, tar_path, sha256=SHA256)
        elif verify:
            got = cache.file_digest(tar_path)
            if got != SHA256:
                raise cache.ChecksumError(
                    f"{tar_path}: checksum mismatch: expected sha256 {SHA256} (md5 {MD5}), "
                    f"got {got}; delete the file to re-download it, or pass verify=False"
                )
        batches = _read_tarball(tar_path)

    x_train = np.concatenate([batches[b][0] for b in TRAIN_BATCHES])
    y_train = np.concatenate([batches[b][1] for b in TRAIN_BATCHES])
    train, test = (x_train, y_train), batches[TEST_BATCH]
    if classes is not None:
        train = select_classes(*train, classes, CIFAR10_CLASSES)
        test = select_classes(*test, classes, CIFAR10_CLASSES)
    return train, test
