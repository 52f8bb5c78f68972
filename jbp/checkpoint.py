"""Atomic, self-describing checkpoints of pytrees of arrays — no pickle anywhere.

``save(path, tree, metadata=...)`` writes any pytree of arrays (nested tuples, lists, dicts
with ``str`` keys, ``None``, NamedTuples such as jbp's optimizer states; numpy and jax arrays
of any numeric dtype including ``bfloat16``, ``bool`` and 0-d scalars; Python ``int``,
``float`` and ``bool`` leaves; typed PRNG keys from ``jax.random.key``) together with a
JSON-serialisable ``metadata`` dict. ``restore(path, like=None)`` reads it back bit for bit;
``read_metadata(path)`` reads the header only. ``save_step``/``latest_step``/``restore_step``
keep a directory of numbered checkpoints (``ckpt_00000042.jbp``) for a training loop.

Atomicity
---------
The bytes go to a temporary file in the destination's directory, which is flushed and
``os.fsync``-ed before ``os.replace`` renames it over the destination; the directory is then
fsync-ed so that the rename itself is durable. A process killed at any point leaves either
the previous file or the new one — never a mixture — plus, at worst, a stray temporary
``.<name>.<pid>-<hex>.tmp`` (``save_step`` removes those it finds in its directory).

File format (version 1)
-----------------------
All integers are little-endian. Offsets are in bytes from the start of the file::

    0    8 bytes   magic  b"\\x89JBP\\r\\n\\x1a\\n"   (PNG-style: catches text-mode mangling)
    8    uint32    format version (1)
    12   uint64    H, the length of the header
    20   32 bytes  SHA-256 of the header bytes
    52   H bytes   header, UTF-8 JSON (below)
    P    payload   P = 52 + H rounded up to a multiple of 64; the leaves' raw bytes

The magic and the version will stay at these offsets in every future version, so a reader
can always tell a foreign file from a newer one. The header is a JSON object::

    {"format": "jbp-checkpoint", "version": 1,
     "writer": {"jbp": "0.1.0", "jax": "..."},
     "tree": <node>,                   # the container structure, below
     "leaves": [<leaf>, ...],          # in jax.tree.leaves order
     "payload_nbytes": N, "payload_sha256": "<hex of SHA-256 of the N payload bytes>",
     "metadata": {...}}

``<node>`` is ``{"type": "leaf", "index": i}``, ``{"type": "none"}``,
``{"type": "tuple" | "list", "children": [...]}``,
``{"type": "dict", "keys": [...], "children": [...]}`` (keys in jax's sorted order),
``{"type": "namedtuple", "module": ..., "name": ..., "fields": [...], "children": [...]}`` or,
for any other registered pytree node, ``{"type": "custom", "module": ..., "name": ...,
"keys": [...], "children": [...]}`` (readable only with ``like=``).

``<leaf>`` always has ``path`` (the :func:`jbp.core.leaf_name` of the leaf, e.g.
``layers[0].W``) and ``kind``:

- ``"jax"``, ``"numpy"``, ``"numpy_scalar"``: an array restored as a ``jax.Array``, a
  ``numpy.ndarray`` or a numpy scalar; ``dtype`` (numpy name: ``float32``, ``bfloat16``,
  ``bool``, ...), ``shape``, ``offset`` (from the payload start, a multiple of 64) and
  ``nbytes``. The bytes are the C-order little-endian element bytes.
- ``"key"``: a typed PRNG key array; ``dtype`` (``key<fry>``), ``shape`` (the key array's),
  ``impl`` (``threefry2x32``, ``rbg``, ...), ``data_dtype``/``data_shape`` of
  ``jax.random.key_data`` whose bytes are stored; restored with ``jax.random.wrap_key_data``.
- ``"int"``, ``"bool"``, ``"float"``: a Python scalar held in the header as ``value``
  (floats as ``float.hex`` strings, so they are exact; no payload bytes).

Every gap between leaves is zero bytes and is covered by the checksum. Metadata is JSON as
Python's ``json`` module writes it (``NaN``/``Infinity`` allowed, e.g. in a loss history).

Errors
------
A truncated, corrupt (either checksum), foreign (bad magic) or newer-format file raises
:class:`CheckpointError` (a ``ValueError``) naming the path and what is wrong; nothing is
built before the whole file has been verified. A structure that does not match ``like=``
raises ``ValueError`` listing every mismatching leaf path, expected vs found.

Resuming a run::

    step = checkpoint.latest_step(ckpt_dir)          # newest complete file, or None
    if step is not None:
        state = checkpoint.restore_step(ckpt_dir, step, like=jax.eval_shape(make_state))
        meta = checkpoint.read_metadata(checkpoint.step_path(ckpt_dir, step))
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import math
import os
import re
import secrets
import struct
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.core import leaf_name

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "save",
    "restore",
    "read_metadata",
    "save_step",
    "latest_step",
    "restore_step",
    "step_path",
]

PyTree = Any

MAGIC = b"\x89JBP\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ32s")  # magic, version, header length, header SHA-256
_ALIGN = 64
_CHUNK = 1 << 22

_STEP_RE = re.compile(r"^ckpt_(\d{8,})\.jbp$")
_STEP_TMP_RE = re.compile(r"^\.ckpt_\d{8,}\.jbp\.\d+-[0-9a-f]+\.tmp$")

_ARRAY_KINDS = ("jax", "numpy", "numpy_scalar")
_SCALAR_KINDS = {"bool": bool, "int": int, "float": float}


class CheckpointError(ValueError):
    """The file is not a complete, intact jbp checkpoint this version can read."""


# --------------------------------------------------------------------------------------
# dtypes and names
# --------------------------------------------------------------------------------------


def _dtype_from_name(name: Any) -> np.dtype | None:
    """The numpy dtype called ``name`` (``float32``, ``bool``, ``bfloat16``, ...), or None."""
    if not isinstance(name, str):
        return None
    try:
        dt = np.dtype(name)
    except TypeError:
        ext = getattr(jnp, name, None)  # ml_dtypes' bfloat16, float8_*, int4, ... via jax
        if not isinstance(ext, type):
            return None
        try:
            dt = np.dtype(ext)
        except TypeError:
            return None
    if dt.name != name or dt.fields is not None or dt.subdtype is not None:
        return None
    if dt.kind not in "biufc" and dt.kind != "V":
        return None
    return dt


def _dtype_name(dt: np.dtype) -> str | None:
    """The name under which ``dt`` is stored, or None if it cannot be stored."""
    name = dt.name
    return name if _dtype_from_name(name) == dt.newbyteorder("=") else None


def _key_name(k) -> str:
    return leaf_name((k,))


def _join(parts) -> str:
    return ".".join(parts) if parts else "<root>"


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _fmt_spec(shape, dtype: str) -> str:
    if dtype in _SCALAR_KINDS:
        return f"python {dtype}"
    return f"{dtype}[{','.join(str(int(d)) for d in shape)}]"


# --------------------------------------------------------------------------------------
# walking a pytree into a JSON skeleton
# --------------------------------------------------------------------------------------


def _children(node):
    """One level of ``node`` in jax's flattening order: ``[(key, child)]``, or None for a leaf.

    Only this level is flattened (every child is treated as a leaf), so walking a tree
    costs one pass over it.
    """
    pairs, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda c: c is not node)
    if len(pairs) == 1 and pairs[0][0] == () and pairs[0][1] is node:
        return None
    return [(p[0], c) for p, c in pairs]


def _walk(tree, on_leaf, where: str):
    """The JSON skeleton of ``tree``; ``on_leaf(leaf, name)`` returns each leaf's index."""

    def visit(node, parts):
        if node is None:
            return {"type": "none"}
        kids = _children(node)
        if kids is None:
            return {"type": "leaf", "index": on_leaf(node, _join(parts))}
        t = type(node)
        children = [visit(c, parts + [_key_name(k)]) for k, c in kids]
        if t is tuple:
            return {"type": "tuple", "children": children}
        if t is list:
            return {"type": "list", "children": children}
        if t is dict:
            keys = [k.key for k, _ in kids]
            for k in keys:
                if not isinstance(k, str):
                    raise TypeError(
                        f"{where}: the dict at {_join(parts)} has the key {k!r} of "
                        f"type {type(k).__name__}; checkpoints need str keys"
                    )
            return {"type": "dict", "keys": keys, "children": children}
        if isinstance(node, tuple) and hasattr(t, "_fields"):
            return {
                "type": "namedtuple",
                "module": t.__module__,
                "name": t.__qualname__,
                "fields": list(t._fields),
                "children": children,
            }
        return {
            "type": "custom",
            "module": t.__module__,
            "name": t.__qualname__,
            "keys": [_key_name(k) for k, _ in kids],
            "children": children,
        }

    return visit(tree, [])


# --------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------


def _le_bytes(arr: np.ndarray) -> np.ndarray:
    """The C-order little-endian bytes of ``arr`` as a flat uint8 array."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder not in "=|":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if sys.byteorder == "big" and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.reshape(-1).view(np.uint8)


def _encode_leaf(x, name: str):
    """``(record, bytes or None)`` for one leaf; ``TypeError`` naming it if unsupported."""
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            f"save: leaf {name} is a traced value; save concrete arrays, outside jax.jit / lax.scan"
        )
    if isinstance(x, jax.ShapeDtypeStruct):
        raise TypeError(
            f"save: leaf {name} is a ShapeDtypeStruct (a shape without data); save concrete arrays"
        )
    if isinstance(x, (np.ndarray, np.generic)) or isinstance(x, jax.Array):
        if isinstance(x, jax.Array) and _is_key_dtype(x.dtype):
            data = np.asarray(jax.random.key_data(x))
            rec = {
                "path": name,
                "kind": "key",
                "dtype": str(x.dtype),
                "shape": list(x.shape),
                "impl": str(jax.random.key_impl(x)),
                "data_dtype": data.dtype.name,
                "data_shape": list(data.shape),
            }
            return rec, _le_bytes(data)
        kind = (
            "jax"
            if isinstance(x, jax.Array)
            else "numpy_scalar"
            if isinstance(x, np.generic)
            else "numpy"
        )
        arr = np.asarray(x)
        dname = _dtype_name(arr.dtype)
        if dname is None:
            raise TypeError(
                f"save: leaf {name} has dtype {arr.dtype}, which a checkpoint "
                f"cannot hold (numeric, bool and ml_dtypes such as bfloat16 only)"
            )
        rec = {"path": name, "kind": kind, "dtype": dname, "shape": list(arr.shape)}
        return rec, _le_bytes(arr)
    if isinstance(x, bool):
        return {"path": name, "kind": "bool", "value": x}, None
    if isinstance(x, int):
        return {"path": name, "kind": "int", "value": int(x)}, None
    if isinstance(x, float):
        return {"path": name, "kind": "float", "value": float(x).hex()}, None
    raise TypeError(
        f"save: leaf {name} is a {type(x).__name__}; expected a numpy or jax "
        f"array, a typed PRNG key, or a Python int/float/bool"
    )


def _check_metadata(md, where: str = "metadata") -> None:
    """Raise ``TypeError`` unless ``md`` comes back from JSON unchanged (names the entry)."""
    if md is None or isinstance(md, (str, bool, int, float)):
        if isinstance(md, int) and not isinstance(md, bool) and type(md) is not int:
            raise TypeError(f"{where} is a {type(md).__name__}; pass int(...)")
        return
    if isinstance(md, dict):
        for k, v in md.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"{where} has the key {k!r} ({type(k).__name__}); JSON keys are str"
                )
            _check_metadata(v, f"{where}[{k!r}]")
        return
    if isinstance(md, list):
        for i, v in enumerate(md):
            _check_metadata(v, f"{where}[{i}]")
        return
    hint = " (it would come back as a list; pass a list)" if isinstance(md, tuple) else ""
    raise TypeError(
        f"{where} is a {type(md).__name__}, which is not JSON{hint}; metadata "
        f"holds dicts with str keys, lists, str, int, float, bool and None"
    )


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _encode(tree, metadata) -> tuple[bytes, list]:
    """``(prefix + header + padding, [(offset, uint8 bytes), ...])`` for ``tree``."""
    records, blobs = [], []

    def on_leaf(x, name):
        rec, raw = _encode_leaf(x, name)
        records.append(rec)
        blobs.append(raw)
        return len(records) - 1

    skeleton = _walk(tree, on_leaf, "save")
    digest = hashlib.sha256()
    pieces, offset = [], 0
    for rec, raw in zip(records, blobs):
        if raw is None:
            continue
        pad = _align(offset) - offset
        if pad:
            digest.update(bytes(pad))
            offset += pad
        rec["offset"], rec["nbytes"] = offset, int(raw.size)
        digest.update(raw)
        pieces.append((offset, raw))
        offset += raw.size
    jbp_mod = sys.modules.get("jbp")
    header = {
        "format": "jbp-checkpoint",
        "version": FORMAT_VERSION,
        "writer": {"jbp": getattr(jbp_mod, "__version__", None), "jax": jax.__version__},
        "tree": skeleton,
        "leaves": records,
        "payload_nbytes": offset,
        "payload_sha256": digest.hexdigest(),
        "metadata": metadata,
    }
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes), hashlib.sha256(hbytes).digest())
    head += hbytes
    head += bytes(_align(len(head)) - len(head))
    return head, pieces


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some network/FUSE file systems cannot sync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def save(path: str | os.PathLike, tree: PyTree, *, metadata: dict | None = None) -> None:
    """Write ``tree`` (and ``metadata``) to ``path`` atomically; see the module docstring.

    The file is written to a temporary in the same directory, flushed, fsync-ed and renamed
    over ``path`` with ``os.replace``; the directory is fsync-ed last. If the process dies
    at any point, ``path`` still holds its previous contents (or does not exist).

    Args:
        path: the destination file; its directory must exist. An existing file is replaced.
        tree: a pytree of tuples, lists, dicts with ``str`` keys, ``None`` and NamedTuples,
            whose leaves are numpy or jax arrays (any numeric dtype, ``bool``, ``bfloat16``
            and the other ml_dtypes; any shape including 0-d), numpy scalars, typed PRNG key
            arrays (``jax.random.key``), or Python ``int``/``float``/``bool``. Arrays are
            copied to the host; jax arrays must be fully addressable.
        metadata: a dict that survives a JSON round trip unchanged (str keys; lists, str,
            int, float, bool, None values), e.g. the history and epoch counter. Stored in
            the header and returned by :func:`read_metadata`.

    Raises:
        TypeError: a leaf or a metadata entry that cannot be stored (named by its path).
    """
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"save: metadata must be a dict, got {type(metadata).__name__}")
    _check_metadata(metadata)
    head, pieces = _encode(tree, metadata)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: {path}: the directory {directory} does not exist")
    tmp = os.path.join(directory, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            written = 0
            for offset, raw in pieces:
                if offset > written:
                    f.write(bytes(offset - written))
                f.write(raw)
                written = offset + raw.size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


# --------------------------------------------------------------------------------------
# reading and verifying
# --------------------------------------------------------------------------------------


def _fail(path, message: str) -> CheckpointError:
    return CheckpointError(f"{os.fspath(path)}: {message}")


def _check_header(path, header) -> None:
    """Raise ``CheckpointError`` unless the (checksum-verified) header is self-consistent."""

    def bad(why):
        return _fail(path, f"inconsistent checkpoint header ({why})")

    if not isinstance(header, dict):
        raise bad("not a JSON object")
    for key in ("tree", "leaves", "payload_nbytes", "payload_sha256", "metadata"):
        if key not in header:
            raise bad(f"no {key!r}")
    if header.get("format") != "jbp-checkpoint" or header.get("version") != FORMAT_VERSION:
        raise bad("format/version fields")
    leaves, n = header["leaves"], header["payload_nbytes"]
    if not isinstance(leaves, list) or not isinstance(n, int) or n < 0:
        raise bad("leaves / payload_nbytes")
    if not isinstance(header["metadata"], dict):
        raise bad("metadata is not an object")
    for i, rec in enumerate(leaves):
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            raise bad(f"leaf {i}")
        kind = rec.get("kind")
        if kind in _SCALAR_KINDS:
            v = rec.get("value")
            ok = (
                isinstance(v, bool)
                if kind == "bool"
                else isinstance(v, int) and not isinstance(v, bool)
                if kind == "int"
                else isinstance(v, str)
            )
            if kind == "float" and ok and isinstance(v, str):  # (ok implies str here)
                try:
                    float.fromhex(v)
                except ValueError:
                    ok = False
            if not ok:
                raise bad(f"leaf {rec['path']}: value")
            continue
        if kind not in _ARRAY_KINDS and kind != "key":
            raise bad(f"leaf {rec['path']}: kind {kind!r}")
        shape_key, dtype_key = ("data_shape", "data_dtype") if kind == "key" else ("shape", "dtype")
        shape, dt = rec.get(shape_key), _dtype_from_name(rec.get(dtype_key))
        if (
            dt is None
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise bad(f"leaf {rec['path']}: dtype/shape")
        if kind == "key" and (
            not isinstance(rec.get("impl"), str)
            or not isinstance(rec.get("shape"), list)
            or rec["shape"] != shape[: len(rec["shape"])]
        ):
            raise bad(f"leaf {rec['path']}: key impl/shape")
        off, nb = rec.get("offset"), rec.get("nbytes")
        if (
            not isinstance(off, int)
            or not isinstance(nb, int)
            or off < 0
            or nb != math.prod(shape) * dt.itemsize
            or off + nb > n
        ):
            raise bad(f"leaf {rec['path']}: offset/nbytes")
    seen = []

    def visit(node):
        if not isinstance(node, dict):
            raise bad("tree node")
        t = node.get("type")
        if t == "leaf":
            seen.append(node.get("index"))
        elif t == "none":
            pass
        elif t in ("tuple", "list", "dict", "namedtuple", "custom"):
            kids = node.get("children")
            if not isinstance(kids, list):
                raise bad("tree node children")
            names = {"dict": "keys", "namedtuple": "fields", "custom": "keys"}.get(t)
            if names and (not isinstance(node.get(names), list) or len(node[names]) != len(kids)):
                raise bad(f"tree node {names}")
            for c in kids:
                visit(c)
        else:
            raise bad(f"tree node type {t!r}")

    visit(header["tree"])
    if seen != list(range(len(leaves))):
        raise bad("the tree does not reference every leaf once, in order")


def _read(path, *, payload: bool):
    """``(header, payload bytes or None)`` after checking everything that was read."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        if prefix[: len(MAGIC)] != MAGIC[: len(prefix)] or not prefix:
            what = "is empty" if not prefix else "does not start with the jbp checkpoint magic"
            raise _fail(path, f"not a jbp checkpoint: the file {what}")
        if len(prefix) < 12:
            raise _fail(path, f"truncated: {size} bytes, not even the format version")
        version = struct.unpack_from("<I", prefix, 8)[0]
        if version > FORMAT_VERSION:
            raise _fail(
                path,
                f"written in checkpoint format version {version}, but this jbp "
                f"reads versions up to {FORMAT_VERSION}; upgrade jbp",
            )
        if version < 1:
            raise _fail(path, f"corrupt: format version {version}")
        if len(prefix) < _PREFIX.size:
            raise _fail(path, f"truncated: {size} bytes, the fixed prefix needs {_PREFIX.size}")
        _, _, hlen, hsha = _PREFIX.unpack(prefix)
        if _PREFIX.size + hlen > size:
            raise _fail(
                path, f"truncated: {size} bytes, but the header alone needs {_PREFIX.size + hlen}"
            )
        hbytes = f.read(hlen)
        if hashlib.sha256(hbytes).digest() != hsha:
            raise _fail(path, "corrupt: the header's SHA-256 does not match")
        try:
            header = json.loads(hbytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise _fail(path, f"corrupt: the header is not JSON ({e})") from None
        _check_header(path, header)
        start = _align(_PREFIX.size + hlen)
        end = start + header["payload_nbytes"]
        if size < end:
            raise _fail(path, f"truncated: {size} bytes, the header describes {end}")
        if size > end:
            raise _fail(path, f"corrupt: {size - end} unexpected bytes after the payload")
        if not payload:
            return header, None
        f.seek(start)
        buf = bytearray(header["payload_nbytes"])
        view, digest, pos = memoryview(buf), hashlib.sha256(), 0
        while pos < len(buf):
            got = f.readinto(view[pos : pos + _CHUNK])
            if not got:
                raise _fail(path, f"truncated while reading (at payload byte {pos})")
            digest.update(view[pos : pos + got])
            pos += got
        if digest.hexdigest() != header["payload_sha256"]:
            raise _fail(path, "corrupt: the payload's SHA-256 does not match the header")
        return header, buf


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict stored by :func:`save`, reading the header only.

    The fixed prefix, the header checksum and the file length are checked; the payload
    is neither read nor hashed (:func:`restore` does that).

    Args:
        path: a file written by :func:`save`.

    Raises:
        CheckpointError: the file is foreign, truncated, corrupt or of a newer format.
    """
    header, _ = _read(path, payload=False)
    return header["metadata"]


# --------------------------------------------------------------------------------------
# restore
# --------------------------------------------------------------------------------------


def _host_array(rec, buf) -> np.ndarray:
    """The stored array of an array or key record: a numpy view of ``buf``, no copy."""
    key = rec["kind"] == "key"
    dt = _dtype_from_name(rec["data_dtype"] if key else rec["dtype"])
    assert dt is not None  # _check_header rejected records of unknown dtype
    shape = rec["data_shape"] if key else rec["shape"]
    raw = np.frombuffer(memoryview(buf)[rec["offset"] : rec["offset"] + rec["nbytes"]], np.uint8)
    arr = raw.view(dt).reshape(shape)
    if sys.byteorder == "big" and dt.itemsize > 1:  # the file is little-endian (_le_bytes)
        arr = arr.byteswap()
    return arr


def _spec_of_record(rec) -> tuple[tuple, str]:
    if rec["kind"] in _SCALAR_KINDS:
        return (), rec["kind"]
    return tuple(rec["shape"]), rec["dtype"]


def _spec_of_like(x, name: str):
    if isinstance(x, (jax.ShapeDtypeStruct, jax.Array)):
        if isinstance(x, jax.core.Tracer):
            raise TypeError(
                f"restore: like leaf {name} is a traced value; pass arrays or "
                f"jax.ShapeDtypeStruct (e.g. from jax.eval_shape)"
            )
        dt = x.dtype
        return tuple(x.shape), (str(dt) if _is_key_dtype(dt) else np.dtype(dt).name)
    if isinstance(x, (np.ndarray, np.generic)):
        return tuple(x.shape), x.dtype.name
    if isinstance(x, bool):
        return (), "bool"
    if isinstance(x, int):
        return (), "int"
    if isinstance(x, float):
        return (), "float"
    raise TypeError(
        f"restore: like leaf {name} is a {type(x).__name__}; expected an array, "
        f"a jax.ShapeDtypeStruct or a Python int/float/bool"
    )


def _scalar_fits(rec, dtype: str) -> bool:
    """Whether the Python scalar ``rec`` converts exactly to a 0-d array of ``dtype``."""
    dt = _dtype_from_name(dtype)
    if dt is None:
        return False
    kind = rec["kind"]
    if kind == "bool":
        return dt == np.bool_
    if kind == "int":
        return dt.kind in "iu" and np.iinfo(dt).min <= rec["value"] <= np.iinfo(dt).max
    return dt == np.float64


def _describe(node) -> str:
    t = node["type"]
    if t == "leaf":
        return "an array leaf"
    if t == "none":
        return "None"
    if t == "dict":
        return f"a dict with keys {node['keys']}"
    if t == "namedtuple":
        return f"a NamedTuple with fields {tuple(node['fields'])}"
    if t == "custom":
        return f"a {node['module']}.{node['name']} with keys {node['keys']}"
    return f"a {t} of length {len(node['children'])}"


def _diff(found, expected, parts, found_specs, expected_specs, out) -> None:
    """Append ``"path: expected ..., found ..."`` for every difference under this node."""
    name = _join(parts)
    ft, et = found["type"], expected["type"]
    if ft == "leaf" and et == "leaf":
        (fs, fd), rec = found_specs[found["index"]]
        es, ed = expected_specs[expected["index"]]
        ok = (fs, fd) == (es, ed) or (
            fd in _SCALAR_KINDS and ed not in _SCALAR_KINDS and es == () and _scalar_fits(rec, ed)
        )
        if not ok:
            out.append(f"{name}: expected {_fmt_spec(es, ed)}, found {_fmt_spec(fs, fd)}")
        return
    if ft == et == "none":
        return
    labels = {"tuple": None, "list": None, "dict": "keys", "namedtuple": "fields", "custom": "keys"}
    same_kind = ft == et and (
        ft != "custom" or (found["module"], found["name"]) == (expected["module"], expected["name"])
    )
    if not same_kind or ft not in labels:
        out.append(f"{name}: expected {_describe(expected)}, found {_describe(found)}")
        return
    fk, ek = found["children"], expected["children"]
    if labels[ft] is None:  # tuple / list: by position
        for i in range(max(len(fk), len(ek))):
            sub = parts + [_key_name(jax.tree_util.SequenceKey(i))]
            if i >= len(fk):
                out.append(f"{_join(sub)}: expected {_describe(ek[i])}, missing from the file")
            elif i >= len(ek):
                out.append(f"{_join(sub)}: not in like, but the file has {_describe(fk[i])}")
            else:
                _diff(fk[i], ek[i], sub, found_specs, expected_specs, out)
        return
    fnames, enames = found[labels[ft]], expected[labels[ft]]
    fmap, emap = dict(zip(fnames, fk)), dict(zip(enames, ek))
    before = len(out)
    if ft == "namedtuple":
        sub_of = lambda k: parts + [_key_name(jax.tree_util.GetAttrKey(k))]  # noqa: E731
    elif ft == "dict":
        sub_of = lambda k: parts + [_key_name(jax.tree_util.DictKey(k))]  # noqa: E731
    else:
        sub_of = lambda k: parts + [k]  # noqa: E731
    for k in enames:
        if k not in fmap:
            out.append(f"{_join(sub_of(k))}: expected {_describe(emap[k])}, missing from the file")
        else:
            _diff(fmap[k], emap[k], sub_of(k), found_specs, expected_specs, out)
    for k in fnames:
        if k not in emap:
            out.append(f"{_join(sub_of(k))}: not in like, but the file has {_describe(fmap[k])}")
    if len(out) == before and list(fnames) != list(enames):
        out.append(f"{name}: expected {labels[ft]} in the order {enames}, found {fnames}")


def _to_jax(arr: np.ndarray, name: str, path, sharding=None):
    dt = arr.dtype
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise ValueError(
            f"{os.fspath(path)}: leaf {name} is a {dt.name} jax array, but jax_enable_x64 is "
            f"off, so jax would turn it into {jax.dtypes.canonicalize_dtype(dt).name}; "
            f"enable it first: jax.config.update('jax_enable_x64', True)"
        )
    return jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)


def _resolve_namedtuple(node, name: str, path):
    """The jbp NamedTuple class a node names, or ``ValueError`` asking for ``like=``."""
    module, qual, fields = node["module"], node["name"], tuple(node["fields"])
    what = f"{module}.{qual}{fields}"
    ask = (
        "pass like= (a tree of arrays or jax.ShapeDtypeStruct with this structure, e.g. "
        "jax.eval_shape of the function that built it) to restore it"
    )
    if not (module == "jbp" or module.startswith("jbp.")) or "<" in qual:
        raise ValueError(
            f"{os.fspath(path)}: {name} is a NamedTuple {what}; without like= "
            f"restore rebuilds only jbp's own NamedTuples; {ask}"
        )
    try:
        cls = importlib.import_module(module)
        for part in qual.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise ValueError(
            f"{os.fspath(path)}: {name} is a NamedTuple {what}, which this jbp "
            f"does not define; {ask}"
        ) from None
    if not (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and tuple(getattr(cls, "_fields", ())) == fields
    ):
        raise ValueError(
            f"{os.fspath(path)}: {name} is a NamedTuple {what}, but this jbp's "
            f"{module}.{qual} is not a NamedTuple with those fields; {ask}"
        )
    return cls


def restore(path: str | os.PathLike, like: PyTree = None) -> PyTree:
    """Read back the tree written by :func:`save`.

    The whole file is verified (magic, version, both checksums, length) before anything is
    built. Without ``like`` the containers are rebuilt from the header: tuples, lists,
    dicts, ``None`` and jbp's own NamedTuples (other NamedTuples and custom pytree nodes need
    ``like``). Leaves come back as they went in: jax arrays as jax arrays, numpy arrays and
    scalars as numpy, typed keys as typed keys, Python scalars as Python scalars.

    With ``like``, the file must have ``like``'s structure, leaf shapes and dtypes; the
    result takes ``like``'s tree structure (so any NamedTuple or registered node works) and
    each leaf's type: a ``numpy`` leaf gives numpy, a ``jax.Array`` or
    ``jax.ShapeDtypeStruct`` gives a jax array (placed with its ``sharding`` when it has
    one). A Python scalar in the file also matches a 0-d ``like`` leaf that holds it
    exactly (bool → bool, int → an integer dtype whose range contains it, float →
    float64).

    Args:
        path: a file written by :func:`save`.
        like: ``None``, or a pytree of arrays / ``jax.ShapeDtypeStruct`` (e.g. the output of
            ``jax.eval_shape``) describing what the file must hold.

    Returns:
        The restored pytree.

    Raises:
        CheckpointError: the file is foreign, truncated, corrupt or of a newer format.
        ValueError: the file does not match ``like`` (every mismatching leaf is listed,
            expected vs found); or, without ``like``, it holds a container restore cannot
            rebuild, or float64/int64 jax arrays while ``jax_enable_x64`` is off.
    """
    header, buf = _read(path, payload=True)
    records = header["leaves"]
    if like is None:
        return _rebuild(header["tree"], records, buf, path)

    specs = []

    def on_leaf(x, name):
        specs.append((_spec_of_like(x, name), x))
        return len(specs) - 1

    like_skeleton = _walk(like, on_leaf, "restore: like")
    mismatches: list[str] = []
    _diff(
        header["tree"],
        like_skeleton,
        [],
        [(_spec_of_record(r), r) for r in records],
        [s for s, _ in specs],
        mismatches,
    )
    if mismatches:
        raise ValueError(
            f"{os.fspath(path)}: the checkpoint does not match like= "
            f"({len(mismatches)} difference{'s' * (len(mismatches) > 1)}):\n  "
            + "\n  ".join(mismatches)
        )
    for rec, (_, x) in zip(records, specs):
        if rec["kind"] in _ARRAY_KINDS and not isinstance(x, (np.ndarray, np.generic)):
            dt = _dtype_from_name(rec["dtype"])
            if jax.dtypes.canonicalize_dtype(dt) != dt:
                _to_jax(np.zeros((), dt), rec["path"], path)  # raises the x64 error
    out = [_leaf_like(rec, x, buf, path) for rec, (_, x) in zip(records, specs)]
    return jax.tree.unflatten(jax.tree.structure(like), out)


def _leaf_like(rec, x, buf, path):
    """The leaf of ``rec`` in the type ``like``'s leaf ``x`` asks for."""
    kind = rec["kind"]
    if kind in _SCALAR_KINDS:
        value = _scalar_value(rec)
        if isinstance(x, (bool, int, float)):
            return value
        if isinstance(x, (np.ndarray, np.generic)):
            arr = np.asarray(value, dtype=x.dtype)
            return arr[()] if isinstance(x, np.generic) else arr
        return _to_jax(
            np.asarray(value, dtype=np.dtype(x.dtype)),
            rec["path"],
            path,
            getattr(x, "sharding", None),
        )
    arr = _host_array(rec, buf)
    if kind == "key":
        key = _wrap_key(rec, arr, path)
        sharding = getattr(x, "sharding", None)
        return jax.device_put(key, sharding) if sharding is not None else key
    if isinstance(x, np.generic):
        return arr.copy()[()]
    if isinstance(x, np.ndarray):
        return arr.copy()
    return _to_jax(arr, rec["path"], path, getattr(x, "sharding", None))


def _wrap_key(rec, data: np.ndarray, path):
    try:
        return jax.random.wrap_key_data(jnp.asarray(data), impl=rec["impl"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"{os.fspath(path)}: leaf {rec['path']} is a PRNG key of impl "
            f"{rec['impl']!r} with data {rec['data_dtype']}{rec['data_shape']}, "
            f"which this jax cannot rebuild ({e})"
        ) from None


def _scalar_value(rec):
    kind, v = rec["kind"], rec["value"]
    return float.fromhex(v) if kind == "float" else _SCALAR_KINDS[kind](v)


def _rebuild(skeleton, records, buf, path):
    """The tree described by ``skeleton``, every check done before any leaf is built."""
    for rec in records:  # checks first: nothing is built from a file that cannot load
        if rec["kind"] == "jax":
            dt = _dtype_from_name(rec["dtype"])
            if jax.dtypes.canonicalize_dtype(dt) != dt:
                _to_jax(np.zeros((), dt), rec["path"], path)

    def classes(node, parts):
        t = node["type"]
        if t == "custom":
            raise ValueError(
                f"{os.fspath(path)}: {_join(parts)} is a {node['module']}.{node['name']} "
                f"(a custom pytree node), which restore cannot rebuild from the file alone; "
                f"pass like= (a tree of arrays or jax.ShapeDtypeStruct with this structure, "
                f"e.g. jax.eval_shape of the function that built it)"
            )
        if t == "namedtuple":
            node["_cls"] = _resolve_namedtuple(node, _join(parts), path)
            names = [_key_name(jax.tree_util.GetAttrKey(f)) for f in node["fields"]]
        elif t == "dict":
            names = [_key_name(jax.tree_util.DictKey(k)) for k in node["keys"]]
        else:
            names = [
                _key_name(jax.tree_util.SequenceKey(i))
                for i in range(len(node.get("children", ())))
            ]
        for c, n in zip(node.get("children", ()), names):
            classes(c, parts + [n])

    classes(skeleton, [])

    def leaf(rec):
        kind = rec["kind"]
        if kind in _SCALAR_KINDS:
            return _scalar_value(rec)
        arr = _host_array(rec, buf)
        if kind == "key":
            return _wrap_key(rec, arr, path)
        if kind == "numpy":
            return arr.copy()
        if kind == "numpy_scalar":
            return arr.copy()[()]
        return _to_jax(arr, rec["path"], path)

    def build(node):
        t = node["type"]
        if t == "leaf":
            return leaf(records[node["index"]])
        if t == "none":
            return None
        kids = [build(c) for c in node["children"]]
        if t == "tuple":
            return tuple(kids)
        if t == "list":
            return kids
        if t == "dict":
            return dict(zip(node["keys"], kids))
        return node["_cls"](*kids)

    return build(skeleton)


# --------------------------------------------------------------------------------------
# a directory of numbered checkpoints
# --------------------------------------------------------------------------------------


def _check_step(step, where: str) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{where}: step must be an int >= 0, got {step!r}")
    return int(step)


def step_path(directory: str | os.PathLike, step: int) -> str:
    """The file that holds ``step`` in ``directory``: ``directory/ckpt_{step:08d}.jbp``.

    Args:
        directory: the checkpoint directory.
        step: an int >= 0.
    """
    return os.path.join(os.fspath(directory), f"ckpt_{_check_step(step, 'step_path'):08d}.jbp")


def _steps(directory) -> list[tuple[int, str]]:
    """``[(step, path)]`` of the checkpoint files in ``directory``, oldest step first."""
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        return []
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory}: expected a checkpoint directory, found a file")
    found = []
    for entry in os.listdir(directory):
        m = _STEP_RE.match(entry)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, entry)))
    return sorted(found)


def save_step(
    directory: str | os.PathLike,
    step: int,
    tree: PyTree,
    *,
    metadata: dict | None = None,
    keep: int | None = 3,
) -> str:
    """Save ``tree`` as ``directory/ckpt_{step:08d}.jbp`` and drop the oldest beyond ``keep``.

    The new file is written atomically (:func:`save`); only once it is complete are older
    checkpoints deleted, keeping the ``keep`` highest steps (the file just written is never
    deleted). Stray temporaries left in the directory by a writer that was killed are
    removed too: one process writes to a checkpoint directory at a time.

    Args:
        directory: the checkpoint directory; created if missing.
        step: the step (or epoch) number, an int >= 0.
        tree: the pytree to save (see :func:`save`).
        metadata: JSON-serialisable dict stored in the header (see :func:`save`).
        keep: how many checkpoints to keep (an int >= 1), or None to keep all.

    Returns:
        The path of the file written.
    """
    step = _check_step(step, "save_step")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"save_step: keep must be an int >= 1 or None, got {keep!r}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    newer = [s for s, _ in _steps(directory) if s > step]
    if newer:
        warnings.warn(
            f"save_step: {directory} already holds step {max(newer)} > {step}; "
            f"latest_step will keep returning {max(newer)}",
            RuntimeWarning,
            stacklevel=2,
        )
    target = step_path(directory, step)
    save(target, tree, metadata=metadata)
    for entry in os.listdir(directory):
        if _STEP_TMP_RE.match(entry):
            _unlink(os.path.join(directory, entry))
    if keep is not None:
        others = [(s, p) for s, p in _steps(directory) if s != step]
        for _, p in others[: max(0, len(others) - (keep - 1))]:
            _unlink(p)
    return target


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def latest_step(directory: str | os.PathLike) -> int | None:
    """The highest step in ``directory`` whose checkpoint file is complete and intact.

    Each candidate is fully verified (both checksums, length), newest first; a file that
    fails is skipped with a ``RuntimeWarning`` saying why, and the previous one is tried.
    Temporaries of interrupted writes are never considered.

    Args:
        directory: the checkpoint directory (a missing directory holds no checkpoint).

    Returns:
        The step, or None when there is no complete checkpoint.
    """
    for step, p in reversed(_steps(directory)):
        try:
            _read(p, payload=True)
        except CheckpointError as e:
            warnings.warn(f"latest_step: skipping step {step}: {e}", RuntimeWarning, stacklevel=2)
            continue
        return step
    return None


def restore_step(
    directory: str | os.PathLike, step: int | None = None, like: PyTree = None
) -> PyTree:
    """Restore the checkpoint of ``step`` (default: the newest complete one) in ``directory``.

    With ``step=None`` the newest file is tried first; one that is truncated or corrupt
    (:class:`CheckpointError`) is skipped with a ``RuntimeWarning`` and the previous step is
    tried. A mismatch with ``like`` is an error, never a reason to fall back. Use
    :func:`latest_step` first when you also need to know the step (and
    ``read_metadata(step_path(directory, step))`` for its metadata).

    Args:
        directory: the checkpoint directory.
        step: the step to restore, or None for the newest complete one.
        like: as in :func:`restore`.

    Returns:
        The restored pytree.

    Raises:
        FileNotFoundError: no checkpoint file (or not that step) in ``directory``.
        CheckpointError: the requested step's file, or every file, is unreadable.
    """
    if step is not None:
        p = step_path(directory, step)
        if not os.path.exists(p):
            have = [s for s, _ in _steps(directory)]
            raise FileNotFoundError(
                f"restore_step: no checkpoint for step {step} in "
                f"{os.fspath(directory)} (steps there: {have})"
            )
        return restore(p, like)
    candidates = list(reversed(_steps(directory)))
    if not candidates:
        raise FileNotFoundError(
            f"restore_step: no checkpoint (ckpt_*.jbp) in {os.fspath(directory)}"
        )
    errors = []
    for s, p in candidates:
        try:
            return restore(p, like)
        except CheckpointError as e:
            warnings.warn(f"restore_step: skipping step {s}: {e}", RuntimeWarning, stacklevel=2)
            errors.append(str(e))
    raise CheckpointError(
        f"restore_step: no readable checkpoint in {os.fspath(directory)}:\n  " + "\n  ".join(errors)
    )
