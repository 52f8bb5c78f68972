"""Where downloaded data lives, and how it gets there: checksummed, atomic downloads.

Cache root, first match wins:

1. the ``cache_dir=`` argument of a loader,
2. the environment variable ``JBP_DATA_DIR``,
3. ``~/.cache/jbp``.

Each data set lives in its own sub-directory of the root (``<root>/mnist``,
``<root>/fashion_mnist``, ``<root>/cifar10``). A download goes to a temporary file in the
same directory, is checked against its published SHA-256 (or MD5) before anything else
sees it, and only then is moved into place with ``os.replace`` — so a crash or a bad
mirror never leaves a partial file under the final name.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

__all__ = ["data_home", "dataset_dir", "file_digest", "download_file", "ChecksumError"]

ENV_VAR = "JBP_DATA_DIR"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's SHA-256/MD5 does not match the published value."""


def data_home(cache_dir=None) -> Path:
    """Return the cache root: ``cache_dir``, else ``$JBP_DATA_DIR``, else ``~/.cache/jbp``.

    The directory is not created.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "jbp"


def dataset_dir(name: str, cache_dir=None) -> Path:
    """Return ``data_home(cache_dir) / name`` (not created)."""
    return data_home(cache_dir) / name


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_digest(data: bytes, algorithm: str = "sha256") -> str:
    """Hex digest of in-memory bytes."""
    return hashlib.new(algorithm, data).hexdigest()


def _fetch(url: str, dest, *, timeout: float = 60.0) -> None:
    """Copy the resource at ``url`` into the open binary file ``dest`` (urllib).

    Tests replace this function (or use ``file://`` URLs) to stay offline.
    """
    req = urllib.request.Request(url, headers={"User-Agent": "jbp-datasets"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for chunk in iter(lambda: r.read(_CHUNK), b""):
            dest.write(chunk)


def download_file(urls, dest, *, sha256=None, md5=None, quiet=False) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves the right bytes.

    Each candidate is written to a temporary file next to ``dest``; its SHA-256 (or, when
    only a published MD5 exists, its MD5) is compared with the expected value, and only a
    match is moved to ``dest`` with ``os.replace``. Mirrors are tried in order.

    Raises:
      ChecksumError (a ``ValueError``): a mirror served bytes with the wrong checksum
        (and no later mirror served the right ones); the message names the file, URL,
        expected and actual digests.
      OSError: every mirror failed to answer.
    """
    if isinstance(urls, str):
        urls = [urls]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    mismatch = None
    for url in urls:
        if not quiet:
            print(f"jbp.datasets: downloading {url} -> {dest}", file=sys.stderr)
        tmp: str | None
        fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f)
            if sha256 is not None:
                algo, want = "sha256", sha256
            elif md5 is not None:
                algo, want = "md5", md5
            else:
                algo, want = None, None
            if algo is not None:
                got = file_digest(tmp, algo)
                if got != want.lower():
                    mismatch = ChecksumError(
                        f"checksum mismatch for {dest.name} downloaded from {url}: "
                        f"expected {algo} {want}, got {got}; the file was discarded"
                    )
                    errors.append(f"{url}: {algo} mismatch")
                    continue
            os.replace(tmp, dest)
            tmp = None
            return dest
        except (OSError, ValueError) as e:  # URLError is an OSError
            errors.append(f"{url}: {e}")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    if mismatch is not None:
        raise mismatch
    raise OSError(f"could not download {dest.name}; tried: " + "; ".join(errors))
