"""MNIST and Fashion-MNIST from the standard IDX files (gzipped or not).

The four canonical files of each set are ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
either raw or with a ``.gz`` suffix. They are read from ``path=`` (a directory) or from
the cache (``<root>/mnist``, ``<root>/fashion_mnist``, see :mod:`jbp.datasets.cache`);
with ``download=True`` the missing ones are fetched from the canonical mirrors, checked
against the published SHA-256 of the ``.gz`` file and written atomically.

Whatever their origin, the files are checked when read: IDX magic number, dimensions,
exact length, image/label counts, and (``verify=True``, the default) the SHA-256 of the
*decompressed* content, which does not depend on how the file was gzipped (the Debian
package ``dataset-fashion-mnist`` re-compresses the files; their content is identical).

Split: the official one — 60,000 train and 10,000 test images, in file order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import cache
from .split import select_classes

__all__ = [
    "read_idx",
    "mnist",
    "fashion_mnist",
    "prepare_images",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
]

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# name -> {file: (sha256 of the canonical .gz, sha256 of the decompressed file, size)}
# MNIST: the files served by the CVDF and PyTorch (ossci) mirrors of LeCun et al.'s set.
# Fashion-MNIST: the files of github.com/zalandoresearch/fashion-mnist (published MD5s
# 8d4fb7e6…, 25c81989…, bef4ecab…, bb300cfd…); decompressed hashes checked here against
# the Debian package's files.
KNOWN = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            47040016,
        ),
        "train-labels-idx1-ubyte": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            60008,
        ),
        "t10k-images-idx3-ubyte": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            7840016,
        ),
        "t10k-labels-idx1-ubyte": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            10008,
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            47040016,
        ),
        "train-labels-idx1-ubyte": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60008,
        ),
        "t10k-images-idx3-ubyte": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            7840016,
        ),
        "t10k-labels-idx1-ubyte": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10008,
        ),
    },
}

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

_SYSTEM_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}

# IDX type byte -> numpy big-endian dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Raw bytes of ``path``, gunzipped when it is gzip (by magic, not by name)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return data


def _parse_idx(data: bytes, name) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX file ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTDD with a "
            "known type TT, e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise ValueError(
            f"{name}: {what}: header says shape {shape} of {dtype} = {expected} bytes, "
            f"file holds {len(data)} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a numpy array (native byte order, a copy).

    Supports every IDX element type (ubyte, byte, short, int, float, double).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: corrupt gzip, bad magic number, or a length that disagrees with the
        header (truncated file) — the message names the file.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _find(directory: Path, stem: str):
    for cand in (directory / stem, directory / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _load_set(name, path, download, cache_dir, verify):
    if path is not None:
        directory = Path(path).expanduser()
        if directory.is_file():
            raise ValueError(
                f"path must be a directory holding the four IDX files {FILES}, got the file "
                f"{directory}"
            )
    else:
        directory = cache.dataset_dir(name, cache_dir)
    found = {}
    for stem in FILES:
        p = _find(directory, stem)
        if p is None and download:
            gz_sha, _, _ = KNOWN[name][stem]
            p = cache.download_file(
                [m + stem + ".gz" for m in MIRRORS[name]], directory / (stem + ".gz"), sha256=gz_sha
            )
        if p is None:
            hint = (
                f"pass download=True to fetch it from {MIRRORS[name][0]}, "
                f"or pass path= a directory holding {stem} or {stem}.gz"
            )
            sysdir = _SYSTEM_DIRS.get(name)
            if sysdir is not None:
                hint += (
                    f" (on Debian/Ubuntu: apt-get install dataset-fashion-mnist, then "
                    f"path='{sysdir}')"
                )
            raise FileNotFoundError(
                f"{name}: file {stem}[.gz] not found in {directory}; {hint}; the cache root "
                f"is set by cache_dir= or ${cache.ENV_VAR}"
            )
        found[stem] = p

    arrays = {}
    for stem, p in found.items():
        data = _read_bytes(p)
        if verify:
            _, raw_sha, size = KNOWN[name][stem]
            if len(data) != size:
                raise ValueError(
                    f"{p}: expected {size} bytes of {name} {stem} once decompressed, got "
                    f"{len(data)} (truncated or a different file; verify=False skips this check)"
                )
            got = cache.bytes_digest(data)
            if got != raw_sha:
                raise cache.ChecksumError(
                    f"{p}: checksum mismatch for {name} {stem}: expected sha256 {raw_sha} of "
                    f"the decompressed content, got {got} (corrupt or a different file; "
                    "delete it to re-download, or pass verify=False for your own IDX files)"
                )
        arrays[stem] = _parse_idx(data, p)

    out = []
    for split in ("train", "t10k"):
        x = arrays[f"{split}-images-idx3-ubyte"]
        y = arrays[f"{split}-labels-idx1-ubyte"]
        xp, yp = found[f"{split}-images-idx3-ubyte"], found[f"{split}-labels-idx1-ubyte"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(
                f"{xp}: expected uint8 images (n, rows, cols), got {x.dtype} {x.shape}"
            )
        if y.ndim != 1 or y.dtype != np.uint8:
            raise ValueError(f"{yp}: expected uint8 labels (n,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{xp} holds {len(x)} images but {yp} holds {len(y)} labels")
        out.append((x, y.astype(np.int32)))
    return tuple(out)


def _check_bool(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {v!r}")


def mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
    classes: Sequence[str | int] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST (LeCun, Cortes & Burges): 70,000 handwritten digits, 28×28 grey.

    Args:
      path: directory holding the four IDX files (raw or ``.gz``). Default: the cache
        directory ``<root>/mnist`` with root = ``cache_dir`` or ``$JBP_DATA_DIR`` or
        ``~/.cache/jbp``.
      download: fetch missing files (from the PyTorch/ossci and CVDF mirrors), check their
        published SHA-256 and write them atomically into that directory.
      cache_dir: cache root (see above); ignored when ``path`` is given.
      verify: check the SHA-256 of each file's decompressed content against the canonical
        one. Pass False to read other IDX files of the same layout.
      classes: optional sequence of labels (ints 0..9 or names "0".."9") to keep; the kept
        examples are relabelled ``0..k-1`` in the order given.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: uint8 images ``(n, 28, 28)`` in 0..255
      and int32 labels; the official split, 60,000 train / 10,000 test, in file order.
      Use :func:`prepare_images` to scale and flatten.

    Raises:
      FileNotFoundError: a file is missing and ``download`` is False (names the file).
      ValueError: corrupt gzip, bad magic number, wrong length, checksum mismatch (names
        the file), or a bad argument.
      OSError: ``download=True`` but no mirror could be reached.
    """
    return _public("mnist", path, download, cache_dir, verify, classes, MNIST_CLASSES)


def fashion_mnist(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
    classes: Sequence[str | int] | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 Zalando article images.

    Same layout and arguments as :func:`mnist`; cache directory ``<root>/fashion_mnist``;
    mirrors: github.com/zalandoresearch/fashion-mnist and the Zalando S3 bucket.
    ``classes`` takes ints 0..9 or the names in :data:`FASHION_MNIST_CLASSES`
    (``"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot"``).

    Offline on Debian/Ubuntu: ``apt-get install dataset-fashion-mnist`` and
    ``fashion_mnist(path="/usr/share/datasets/fashion-mnist")``.

    Returns:
      ``((x_train, y_train), (x_test, y_test))``: uint8 ``(n, 28, 28)``, int32 labels;
      the official split, 60,000 train / 10,000 test.
    """
    return _public(
        "fashion_mnist", path, download, cache_dir, verify, classes, FASHION_MNIST_CLASSES
    )


def _public(name, path, download, cache_dir, verify, classes, names):
    _check_bool("download", download)
    _check_bool("verify", verify)
    train, test = _load_set(name, path, download, cache_dir, verify)
    if classes is not None:
        train = select_classes(*train, classes, names)
        test = select_classes(*test, classes, names)
    return train, test


def prepare_images(
    x: np.ndarray, *, flatten: bool = True, scale: bool = True, channels_last: bool = False
) -> np.ndarray:
    """Turn uint8 images into network inputs.

    Args:
      x: uint8 images ``(n, H, W)`` or ``(n, H, W, C)``.
      flatten: reshape to ``(n, H*W*C)``.
      scale: convert to float32 ``x / 255`` in [0, 1]; else keep the dtype.
      channels_last: give ``(n, H, W)`` input a channel axis, ``(n, H, W, 1)`` (NHWC);
        cannot be combined with ``flatten=True``.

    Returns:
      A new numpy array.
    """
    _check_bool("flatten", flatten)
    _check_bool("scale", scale)
    _check_bool("channels_last", channels_last)
    if flatten and channels_last:
        raise ValueError(
            "flatten=True and channels_last=True conflict: pass flatten=False for NHWC images"
        )
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have shape (n, H, W) or (n, H, W, C), got {x.shape}")
    if scale:
        if x.dtype != np.uint8:
            raise ValueError(f"scale=True expects uint8 images in 0..255, got dtype {x.dtype}")
        x = x.astype(np.float32) / np.float32(255.0)
    else:
        x = x.copy()
    if flatten:
        return x.reshape(len(x), -1)
    if channels_last and x.ndim == 3:
        return x[..., None]
    return x
