"""jbp.checkpoint: bit-exact round trips, like= validation, damaged files, rotation, SIGKILL.

The format oracle is an independent reader written here from the module docstring's
layout (struct + json + numpy), not the module's own reader.
"""

import ast
import hashlib
import json
import math
import os
import pathlib
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import checkpoint as ckpt
from jbp.checkpoint import CheckpointError

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]

# numpy names of every dtype the format claims; ml_dtypes ones come through jax.numpy
DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int4",
]
SHAPES = [(), (0,), (3,), (2, 3, 5)]


def _dtype(name):
    return np.dtype(getattr(jnp, name))


def random_bits(rng, shape, name):
    """Arrays of random *bit patterns* (NaN payloads, -0, subnormals, inf) of dtype ``name``."""
    dt = _dtype(name)
    if name == "bool":
        return rng.random(shape) < 0.5
    if name == "int4":  # stored unpacked, one value per byte: draw valid values
        return rng.integers(-8, 8, size=shape).astype(dt)
    n = int(np.prod(shape)) * dt.itemsize
    a = rng.integers(0, 256, size=n, dtype=np.uint8).view(dt).reshape(shape)
    if jnp.issubdtype(dt, jnp.floating) and a.size >= 4:  # and the special values, surely
        flat = a.reshape(-1)
        flat[:4] = np.array([np.nan, -0.0, np.inf, 0.0], np.float32).astype(dt)
        flat[3] = np.array(1, np.uint8 if dt.itemsize == 1 else f"u{dt.itemsize}").view(dt)
        if dt.itemsize > 1:  # a NaN with a non-default payload
            flat[:1].view(f"u{dt.itemsize}")[0] ^= 1
    return a


def assert_bit_equal(a, b):
    """Same tree structure (containers, NamedTuple classes, dict keys), leaf types and bytes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (name, x), (_, y) in zip(jbp.named_leaves(a), jbp.named_leaves(b)):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert isinstance(y, jax.Array) and x.dtype == y.dtype and x.shape == y.shape, name
            assert str(jax.random.key_impl(x)) == str(jax.random.key_impl(y)), name
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        elif isinstance(x, jax.Array):
            assert isinstance(y, jax.Array), (name, type(y))
        else:
            assert type(x) is type(y), (name, type(x), type(y))
        if isinstance(x, float):
            assert x.hex() == y.hex(), name
            continue
        if isinstance(x, (bool, int)):
            assert x == y, name
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), name


def roundtrip(tmp_path, tree, like=None, **kw):
    p = tmp_path / "t.jbp"
    ckpt.save(p, tree, **kw)
    return ckpt.restore(p, like)


def mlp_params(seed=0, in_dim=4):
    model = jbp.Sequential([jbp.Dense(5), jbp.Dense(3)])
    params, _ = model.init(jax.random.key(seed), (in_dim,))
    return params


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "jax"])
def test_every_dtype_and_shape_round_trips_bit_exact(tmp_path, kind):
    rng = np.random.default_rng(0)
    tree = {}
    for name in DTYPES:
        for shape in SHAPES:
            a = random_bits(rng, shape, name)
            tree[f"{name}_{'x'.join(map(str, shape)) or 'scalar'}"] = (
                jnp.asarray(a) if kind == "jax" else a
            )
        if kind == "numpy":
            tree[f"{name}_npscalar"] = random_bits(rng, (), name)[()]  # a numpy scalar
    out = roundtrip(tmp_path, tree)
    assert_bit_equal(tree, out)
    # float bit patterns really include NaNs with payloads, so bit equality was tested
    f32 = np.asarray(tree["float32_2x3x5"]).reshape(-1)
    assert np.isnan(f32[0]) and f32[:1].view(np.uint32)[0] != np.float32(np.nan).view(np.uint32)
    assert np.signbit(f32[1]) and f32[1] == 0 and np.isinf(f32[2]) and 0 < f32[3] < 1e-40


def test_containers_python_scalars_and_roots_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3))
    tree = {
        "tuple": (a, [a[0], None, ()], {}),
        "list": [np.float32(1.5), [], (None,)],
        "scalars": (7, -(2**70), True, False, 0.1, -0.0, math.inf, math.nan, 5e-324),
        "none": None,
        "empty": (),
        "nested": {"z": {"y": [(jnp.asarray(a),)]}},
    }
    assert_bit_equal(tree, roundtrip(tmp_path, tree))
    for root in [(), [], {}, None, a, jnp.asarray(3.0), 3, (a,), [a], {"only": a}]:
        out = roundtrip(tmp_path, root)
        assert_bit_equal(root, out)


def test_non_contiguous_and_big_endian_inputs_keep_their_values(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6))
    tree = {
        "f": base.T,
        "strided": base[::2, 1::3],
        "be": base.astype(">f8"),
        "be_int": np.arange(5, dtype=">i4"),
    }
    out = roundtrip(tmp_path, tree)
    for k, v in tree.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype.newbyteorder("=") and out[k].flags.c_contiguous
        assert out[k].flags.writeable  # a copy of its own, not a view of the file buffer


@pytest.mark.parametrize(
    "make",
    [
        lambda: jbp.optim.adam(1e-3),
        lambda: jbp.optim.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: jbp.optim.rmsprop(1e-2),
        lambda: jbp.optim.adagrad(0.1),
        lambda: jbp.optim.chain(jbp.optim.clip_by_global_norm(1.0), jbp.optim.adamw(1e-3)),
    ],
)
def test_optimizer_states_round_trip_and_keep_training_identically(tmp_path, make):
    opt = make()
    update = jax.jit(opt.update)  # one compile, not one per eager op
    params = mlp_params()
    state = opt.init(params)
    rng = np.random.default_rng(3)
    grads = [
        jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        for _ in range(3)
    ]
    for g in grads[:2]:  # non-trivial moments and counts
        updates, state = update(g, state, params)
        params = jbp.optim.apply_updates(params, updates)
    tree = {"params": params, "opt_state": state, "key": jax.random.key(4), "epoch": 2}
    out = roundtrip(tmp_path, tree)
    assert_bit_equal(tree, out)
    assert type(out["opt_state"]) is type(state)  # jbp's own NamedTuple classes, rebuilt
    u1, s1 = update(grads[2], state, params)
    u2, s2 = update(grads[2], out["opt_state"], out["params"])
    assert_bit_equal((u1, s1), (u2, s2))
    like_out = ckpt.restore(tmp_path / "t.jbp", like=jax.eval_shape(lambda: tree))
    assert_bit_equal(jax.tree.map(jnp.asarray, tree), like_out)


def test_typed_prng_keys_round_trip_with_their_impl(tmp_path):
    tree = {
        "k": jax.random.key(0),
        "split": jax.random.split(jax.random.key(5), (2, 3)),
        "rbg": jax.random.key(1, impl="rbg"),
    }
    out = roundtrip(tmp_path, tree)
    assert_bit_equal(tree, out)
    assert str(jax.random.key_impl(out["rbg"])) == "rbg"
    np.testing.assert_array_equal(
        jax.random.normal(out["split"][1, 2], (4,)), jax.random.normal(tree["split"][1, 2], (4,))
    )
    with_like = ckpt.restore(tmp_path / "t.jbp", like=jax.eval_shape(lambda: tree))
    assert_bit_equal(tree, with_like)


def test_metadata_round_trips_through_the_header(tmp_path):
    md = {
        "epoch": 12,
        "history": {"loss": [0.5, 0.25, math.nan], "acc": [0.1, math.inf]},
        "note": "naïve ✓",
        "big": 2**80,
        "flags": [True, None, {"x": -1.5}],
    }
    p = tmp_path / "m.jbp"
    ckpt.save(p, {"w": np.ones(3)}, metadata=md)
    got = ckpt.read_metadata(p)
    assert got.keys() == md.keys() and got["big"] == 2**80 and got["note"] == md["note"]
    assert got["history"]["loss"][:2] == [0.5, 0.25] and math.isnan(got["history"]["loss"][2])
    assert got["history"]["acc"] == [0.1, math.inf] and got["flags"] == md["flags"]
    ckpt.save(p, {"w": np.ones(3)})
    assert ckpt.read_metadata(p) == {}


def test_file_layout_matches_the_documented_format(tmp_path):
    """An independent reader, written from the module docstring, recovers every leaf."""
    rng = np.random.default_rng(6)
    tree = {
        "a": rng.standard_normal((3, 2)).astype(np.float32),
        "b": (jnp.asarray(rng.integers(0, 9, 5)), np.asarray(True)),
        "c": 4,
    }
    p = tmp_path / "f.jbp"
    ckpt.save(p, tree, metadata={"m": 1})
    blob = p.read_bytes()
    magic, version, hlen, hsha = struct.unpack_from("<8sIQ32s", blob, 0)
    assert magic == b"\x89JBP\r\n\x1a\n" and version == 1 == ckpt.FORMAT_VERSION
    hbytes = blob[52 : 52 + hlen]
    assert hashlib.sha256(hbytes).digest() == hsha
    header = json.loads(hbytes)
    start = -(-(52 + hlen) // 64) * 64
    payload = blob[start:]
    assert len(payload) == header["payload_nbytes"]
    assert hashlib.sha256(payload).hexdigest() == header["payload_sha256"]
    assert header["metadata"] == {"m": 1} and header["tree"]["keys"] == ["a", "b", "c"]
    recs = {r["path"]: r for r in header["leaves"]}
    assert list(recs) == ["a", "b.layers[0]", "b.layers[1]", "c"]
    for name, want in [
        ("a", tree["a"]),
        ("b.layers[0]", np.asarray(tree["b"][0])),
        ("b.layers[1]", tree["b"][1]),
    ]:
        r = recs[name]
        assert r["offset"] % 64 == 0
        got = np.frombuffer(
            payload,
            dtype=np.dtype(r["dtype"]).newbyteorder("<"),
            count=int(np.prod(r["shape"])),
            offset=r["offset"],
        )
        np.testing.assert_array_equal(got.reshape(r["shape"]), want)
    assert recs["c"] == {"path": "c", "kind": "int", "value": 4}


# --------------------------------------------------------------------------------------
# like=
# --------------------------------------------------------------------------------------


def test_like_mismatches_name_every_leaf_expected_vs_found(tmp_path):
    p = tmp_path / "m.jbp"
    params = mlp_params()
    ckpt.save(p, {"params": params, "step": np.int32(3), "key": jax.random.key(0)})
    like = jax.eval_shape(lambda: {"params": params, "step": np.int32(3), "key": jax.random.key(0)})
    like["params"][0]["W"] = jax.ShapeDtypeStruct((4, 6), jnp.float32)
    like["params"][1]["b"] = jax.ShapeDtypeStruct((3,), jnp.float64)
    like["key"] = jax.ShapeDtypeStruct((2,), jnp.uint32)
    del like["step"]
    like["epoch"] = jax.ShapeDtypeStruct((), jnp.int32)
    with pytest.raises(ValueError) as e:
        ckpt.restore(p, like)
    msg = str(e.value)
    assert not isinstance(e.value, CheckpointError) and str(p) in msg
    assert "(5 differences)" in msg
    for line in [
        "params.layers[0].W: expected float32[4,6], found float32[4,5]",
        "params.layers[1].b: expected float64[3], found float32[3]",
        "key: expected uint32[2], found key<fry>[]",
        "epoch: expected an array leaf, missing from the file",
        "step: not in like, but the file has an array leaf",
    ]:
        assert line in msg, (line, msg)


def test_like_container_mismatches(tmp_path):
    p = tmp_path / "m.jbp"
    params = mlp_params()
    ckpt.save(p, {"params": params})
    spec = jax.eval_shape(lambda: params)
    cases = [
        ({"params": list(spec)}, "params: expected a list of length 2, found a tuple of length 2"),
        (
            {"params": spec + (spec[0],)},
            "params.layers[2]: expected a dict with keys ['W', 'b'], missing from the file",
        ),
        ({"params": spec[:1]}, "params.layers[1]: not in like, but the file has a dict"),
        (
            {"params": (spec[0], {"W": spec[1]["W"]})},
            "params.layers[1].b: not in like, but the file has an array leaf",
        ),
        ({"params": (spec[0], None)}, "params.layers[1]: expected None, found a dict"),
        ({"params": spec[0]["W"]}, "params: expected an array leaf, found a tuple of length 2"),
    ]
    for like, line in cases:
        with pytest.raises(ValueError) as e:
            ckpt.restore(p, like)
        assert line in str(e.value), (line, str(e.value))


class UserState(NamedTuple):
    step: object
    mu: object


class OtherState(NamedTuple):
    step: object
    mu: object


def test_user_namedtuples_need_like_and_take_its_class(tmp_path):
    p = tmp_path / "u.jbp"
    tree = UserState(np.int32(4), {"w": np.arange(3.0)})
    ckpt.save(p, tree)
    with pytest.raises(ValueError, match=r"<root> is a NamedTuple .*UserState.*pass like="):
        ckpt.restore(p)
    assert_bit_equal(tree, ckpt.restore(p, like=tree))
    out = ckpt.restore(p, like=OtherState(np.int32(0), {"w": np.zeros(3)}))
    assert type(out) is OtherState and out.mu["w"].tolist() == [0.0, 1.0, 2.0]
    assert isinstance(out.mu["w"], np.ndarray)  # numpy like leaf -> numpy
    out = ckpt.restore(p, like=jax.eval_shape(lambda: tree))
    assert isinstance(out.mu["w"], jax.Array) and type(out) is UserState
    # same fields in another order would scramble the leaves: refused
    Swapped = NamedTuple("Swapped", [("mu", object), ("step", object)])
    with pytest.raises(ValueError, match=r"fields in the order \['mu', 'step'\]"):
        ckpt.restore(p, like=Swapped({"w": np.zeros(3)}, np.int32(0)))


def test_namedtuples_claiming_jbp_modules_are_checked(tmp_path):
    Fake = NamedTuple("CountState", [("count", object), ("extra", object)])
    Fake.__module__ = "jbp.optim.base"  # real class, other fields
    ckpt.save(tmp_path / "a.jbp", Fake(np.int32(1), np.int32(2)))
    with pytest.raises(ValueError, match="not a NamedTuple with those fields.*like="):
        ckpt.restore(tmp_path / "a.jbp")
    Gone = NamedTuple("Gone", [("x", object)])
    Gone.__module__ = "jbp.no_such_module"
    ckpt.save(tmp_path / "b.jbp", Gone(np.int32(1)))
    with pytest.raises(ValueError, match="does not define.*like="):
        ckpt.restore(tmp_path / "b.jbp")
    with pytest.raises(ValueError, match="expected a tuple of length 1, found a NamedTuple"):
        ckpt.restore(tmp_path / "b.jbp", like=(np.int32(0),))


@jax.tree_util.register_dataclass
@dataclass
class Box:
    x: object
    y: object


def test_custom_pytree_nodes_need_like(tmp_path):
    p = tmp_path / "c.jbp"
    tree = {"box": Box(np.arange(2.0), jnp.ones(3, jnp.int8))}
    ckpt.save(p, tree)
    with pytest.raises(ValueError, match=r"box is a .*Box \(a custom pytree node\).*like="):
        ckpt.restore(p)
    assert_bit_equal(tree, ckpt.restore(p, like=tree))


def test_python_scalars_against_array_likes(tmp_path):
    p = tmp_path / "s.jbp"
    tree = {"n": 5, "x": 0.1, "flag": True}
    ckpt.save(p, tree)
    assert_bit_equal(tree, ckpt.restore(p, like=tree))
    out = ckpt.restore(p, like=jax.eval_shape(lambda: tree))  # int64, float64, bool specs
    assert out["n"].dtype == jnp.int64 and int(out["n"]) == 5
    assert float(out["x"]).hex() == (0.1).hex() and bool(out["flag"]) is True
    small = {
        "n": jax.ShapeDtypeStruct((), jnp.int8),
        "x": jax.ShapeDtypeStruct((), jnp.float32),
        "flag": True,
    }
    ckpt.save(p, {"n": 300, "x": 0.1, "flag": True})
    with pytest.raises(ValueError) as e:
        ckpt.restore(p, like=small)
    assert "n: expected int8[], found python int" in str(e.value)
    assert "x: expected float32[], found python float" in str(e.value)


def test_float64_jax_leaves_refuse_to_load_silently_as_float32(tmp_path):
    p = tmp_path / "x.jbp"
    ckpt.save(p, {"j": jnp.arange(3.0), "n": np.arange(3.0)})
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="leaf j is a float64 jax array.*jax_enable_x64"):
            ckpt.restore(p)
        with pytest.raises(ValueError, match="jax_enable_x64"):
            ckpt.restore(p, like={"j": jax.ShapeDtypeStruct((3,), np.float64), "n": np.zeros(3)})
        out = ckpt.restore(p, like={"j": np.zeros(3), "n": np.zeros(3)})  # numpy: fine
    assert out["j"].dtype == np.float64


# --------------------------------------------------------------------------------------
# damaged, foreign and newer files
# --------------------------------------------------------------------------------------


@pytest.fixture
def good_file(tmp_path):
    p = tmp_path / "good.jbp"
    rng = np.random.default_rng(8)
    ckpt.save(p, {"w": rng.standard_normal((8, 8)), "k": jax.random.key(2)}, metadata={"epoch": 1})
    return p


def _variant(tmp_path, data, name="bad.jbp"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_payload_corruption_is_detected(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    data[-3] ^= 0x10
    p = _variant(tmp_path, bytes(data))
    with pytest.raises(CheckpointError, match="payload's SHA-256") as e:
        ckpt.restore(p)
    assert str(p) in str(e.value) and isinstance(e.value, ValueError)
    assert ckpt.read_metadata(p) == {"epoch": 1}  # header-only: the payload is not read


def test_header_corruption_is_detected(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    data[60] ^= 0x01
    p = _variant(tmp_path, bytes(data))
    for f in (ckpt.restore, ckpt.read_metadata):
        with pytest.raises(CheckpointError, match="header's SHA-256"):
            f(p)


def _resigned(blob, edit):
    """``blob`` with its header edited by ``edit(header)`` and a valid header checksum."""
    _, version, hlen, _ = struct.unpack_from("<8sIQ32s", blob, 0)
    header = json.loads(blob[52 : 52 + hlen])
    edit(header)
    h = json.dumps(header).encode()
    head = struct.pack("<8sIQ32s", ckpt.MAGIC, version, len(h), hashlib.sha256(h).digest()) + h
    head += bytes(-(-len(head) // 64) * 64 - len(head))
    return head + blob[-(-(52 + hlen) // 64) * 64 :]


def _leaf(header, path):
    (rec,) = [r for r in header["leaves"] if r["path"] == path]
    return rec


def test_inconsistent_header_with_a_valid_checksum_is_refused(good_file, tmp_path):
    blob = good_file.read_bytes()
    p = _variant(tmp_path, _resigned(blob, lambda h: _leaf(h, "w").update(shape=[9, 9])))
    with pytest.raises(CheckpointError, match=r"inconsistent checkpoint header \(leaf w: off"):
        ckpt.restore(p)
    p = _variant(tmp_path, _resigned(blob, lambda h: _leaf(h, "k").update(impl="nosuch")))
    with pytest.raises(ValueError, match=r"leaf k is a PRNG key of impl 'nosuch'"):
        ckpt.restore(p)


def test_truncated_files_are_refused(good_file, tmp_path):
    blob = good_file.read_bytes()
    hlen = struct.unpack_from("<Q", blob, 12)[0]
    for cut in [0, 5, 10, 30, 52 + hlen // 2, 52 + hlen, len(blob) - 100, len(blob) - 1]:
        p = _variant(tmp_path, blob[:cut], f"cut{cut}.jbp")
        with pytest.raises(CheckpointError, match="truncated|empty") as e:
            ckpt.restore(p)
        assert str(p) in str(e.value), cut
        if cut < 52 + hlen:
            with pytest.raises(CheckpointError):
                ckpt.read_metadata(p)
    p = _variant(tmp_path, blob + b"\0", "long.jbp")
    with pytest.raises(CheckpointError, match="1 unexpected bytes after the payload"):
        ckpt.restore(p)


def test_foreign_files_are_refused(tmp_path):
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(3))
    txt = tmp_path / "b.jbp"
    txt.write_text('{"hello": "world"}')
    for p in (npy, txt):
        for f in (ckpt.restore, ckpt.read_metadata):
            with pytest.raises(CheckpointError, match="not a jbp checkpoint.*magic") as e:
                f(p)
            assert str(p) in str(e.value)


def test_newer_and_invalid_format_versions_are_refused(good_file, tmp_path):
    blob = bytearray(good_file.read_bytes())
    blob[8:12] = struct.pack("<I", 2)
    p = _variant(tmp_path, bytes(blob))
    for f in (ckpt.restore, ckpt.read_metadata):
        with pytest.raises(CheckpointError, match="format version 2.*up to 1; upgrade jbp"):
            f(p)
    blob[8:12] = struct.pack("<I", 0)
    p = _variant(tmp_path, bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt: format version 0"):
        ckpt.restore(p)


# --------------------------------------------------------------------------------------
# what save refuses, and atomicity when it fails
# --------------------------------------------------------------------------------------


def test_save_refuses_what_it_cannot_store(tmp_path):
    p = tmp_path / "x.jbp"
    cases = [
        ({"a": {"b": np.array([1, "x"], dtype=object)}}, "leaf a.b has dtype object"),
        ({"a": np.array(["s"])}, "leaf a has dtype <U1"),
        ({"s": "text"}, "leaf s is a str"),
        ({1: np.ones(2)}, "has the key 1 of type int; checkpoints need str keys"),
        ({"c": 1j}, "leaf c is a complex"),
        ({"sds": jax.ShapeDtypeStruct((2,), jnp.float32)}, "leaf sds is a ShapeDtypeStruct"),
    ]
    for tree, msg in cases:
        with pytest.raises(TypeError) as e:
            ckpt.save(p, tree)
        assert msg in str(e.value), (msg, str(e.value))
    for md, msg in [
        ({"h": (1, 2)}, "metadata['h'] is a tuple"),
        ({"l": [np.float32(1)]}, "metadata['l'][0] is a float32"),
        ({2: 1}, "metadata has the key 2"),
        ([1], "metadata must be a dict"),
    ]:
        with pytest.raises(TypeError) as e:
            ckpt.save(p, {}, metadata=md)
        assert msg in str(e.value), (msg, str(e.value))
    with pytest.raises(TypeError, match="leaf <root> is a traced value"):
        jax.jit(lambda x: ckpt.save(p, x))(jnp.ones(2))
    assert not p.exists()
    with pytest.raises(FileNotFoundError, match="the directory .*nope does not exist"):
        ckpt.save(tmp_path / "nope" / "x.jbp", {})


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "x.jbp"
    old = {"w": np.arange(4.0)}
    ckpt.save(p, old)

    def broken_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        ckpt.save(p, {"w": np.arange(5.0)})
    monkeypatch.undo()
    assert_bit_equal(old, ckpt.restore(p))
    assert sorted(os.listdir(tmp_path)) == ["x.jbp"]


# --------------------------------------------------------------------------------------
# the directory manager
# --------------------------------------------------------------------------------------


def _tree(i):
    return {"w": np.full((3,), i, np.float32) + np.arange(3, dtype=np.float32), "i": i}


def test_save_step_rotation_keeps_the_newest(tmp_path):
    d = tmp_path / "run"
    for i in range(5):
        path = ckpt.save_step(d, i * 10, _tree(i), metadata={"i": i}, keep=2)
        assert path == ckpt.step_path(d, i * 10) == str(d / f"ckpt_{i * 10:08d}.jbp")
    assert sorted(os.listdir(d)) == ["ckpt_00000030.jbp", "ckpt_00000040.jbp"]
    assert ckpt.latest_step(d) == 40
    assert_bit_equal(_tree(4), ckpt.restore_step(d))
    assert_bit_equal(_tree(3), ckpt.restore_step(d, 30))
    assert ckpt.read_metadata(ckpt.step_path(d, 30)) == {"i": 3}
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 10 .*\[30, 40\]"):
        ckpt.restore_step(d, 10)
    ckpt.save_step(d, 50, _tree(5), keep=1)
    assert sorted(os.listdir(d)) == ["ckpt_00000050.jbp"]
    for i in range(6, 9):
        ckpt.save_step(d, i * 10, _tree(i), keep=None)
    assert len(os.listdir(d)) == 4
    ckpt.save_step(d, 123456789, _tree(9), keep=3)  # more than 8 digits still sorts by number
    assert ckpt.latest_step(d) == 123456789 and len(os.listdir(d)) == 3


def test_save_step_lower_step_warns_and_is_kept(tmp_path):
    ckpt.save_step(tmp_path, 5, _tree(5))
    with pytest.warns(RuntimeWarning, match="already holds step 5 > 2"):
        ckpt.save_step(tmp_path, 2, _tree(2), keep=1)
    assert os.path.exists(ckpt.step_path(tmp_path, 2))


def test_save_step_removes_stray_temporaries_only(tmp_path):
    stray = tmp_path / ".ckpt_00000009.jbp.123-abcd1234.tmp"
    stray.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    single_tmp = tmp_path / ".single.jbp.1-ab.tmp"
    single_tmp.write_text("not ours")
    ckpt.save_step(tmp_path, 1, _tree(1))
    assert not stray.exists() and other.exists() and single_tmp.exists()
    assert ckpt.latest_step(tmp_path) == 1


def test_corrupt_newest_falls_back_with_a_warning(tmp_path):
    for i in range(1, 4):
        ckpt.save_step(tmp_path, i, _tree(i))
    newest = pathlib.Path(ckpt.step_path(tmp_path, 3))
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="skipping step 3: .*payload's SHA-256"):
        assert ckpt.latest_step(tmp_path) == 2
    with pytest.warns(RuntimeWarning, match="skipping step 3"):
        assert_bit_equal(_tree(2), ckpt.restore_step(tmp_path))
    with pytest.raises(CheckpointError):  # an explicit step never falls back
        ckpt.restore_step(tmp_path, 3)
    # a like= mismatch is the caller's error, not a reason to fall back
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="does not match like="):
            ckpt.restore_step(tmp_path, 2, like={"w": np.zeros(4, np.float32), "i": 0})
    for i in (1, 2):
        pathlib.Path(ckpt.step_path(tmp_path, i)).write_bytes(b"\x89JBP")
    with pytest.warns(RuntimeWarning):
        assert ckpt.latest_step(tmp_path) is None
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no readable"):
        ckpt.restore_step(tmp_path)


def test_empty_missing_and_bad_arguments(tmp_path):
    assert ckpt.latest_step(tmp_path / "nope") is None
    assert ckpt.latest_step(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore_step(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        ckpt.latest_step(tmp_path / "f")
    for step in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="step must be an int >= 0"):
            ckpt.save_step(tmp_path, step, _tree(0))
    for keep in (0, -2, 1.0, True):
        with pytest.raises(ValueError, match="keep must be an int >= 1 or None"):
            ckpt.save_step(tmp_path, 1, _tree(0), keep=keep)


# --------------------------------------------------------------------------------------
# SIGKILL at random and at chosen points of the write
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fsync of directories are POSIX")
def test_sigkill_mid_write_leaves_the_latest_complete_checkpoint(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _checkpoint_writer import tree_for
    finally:
        sys.path.remove(str(ROOT / "tests"))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
        JAX_PLATFORMS="cpu",
    )
    rng = np.random.default_rng(20)
    # two kills parked at a chosen fsync (odd: temporary written, not yet renamed; even:
    # renamed, directory not yet synced), two after random delays while writing flat out
    rounds = [("block", int(rng.choice([1, 3, 5, 7]))), ("block", int(rng.choice([2, 4, 6, 8])))]
    rounds += [("delay", float(t)) for t in rng.uniform(0.0, 0.25, size=2)]
    known = None  # the highest step known to be complete
    single_known = None
    start = 0
    for mode, arg in rounds:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "_checkpoint_writer.py"),
                str(tmp_path),
                str(start),
                str(arg if mode == "block" else 0),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        watchdog = threading.Timer(60, proc.kill)  # a hung child fails the test, not CI
        watchdog.start()
        try:
            events = []
            want = "blocked" if mode == "block" else "single"
            while not events or events[-1][0] != want:
                line = proc.stdout.readline()
                assert line, f"writer died early: {proc.stderr.read()}"
                events.append((line.split()[0], int(line.split()[1])))
            if mode == "delay":
                time.sleep(arg)
            proc.send_signal(signal.SIGKILL)
            rest, err = proc.communicate(timeout=30)
        finally:
            watchdog.cancel()
        assert proc.returncode == -signal.SIGKILL, err
        events += [(ln.split()[0], int(ln.split()[1])) for ln in rest.splitlines()]
        steps = [i for kind, i in events if kind == "step"]
        singles = [i for kind, i in events if kind == "single"]
        # on disk: the last reported step, or the next one (renamed, then killed unreported)
        nxt = steps[-1] + 1 if steps else start
        allowed = {steps[-1] if steps else known, nxt}
        if mode == "block" and arg % 2 == 1:  # parked before the rename: exactly one temporary
            assert len([f for f in os.listdir(tmp_path) if f.endswith(".tmp")]) >= 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every visible ckpt_*.jbp is complete
            latest = ckpt.latest_step(tmp_path)
            assert latest in allowed, (mode, arg, latest, allowed, events)
            if latest is not None:
                assert_bit_equal(tree_for(latest), ckpt.restore_step(tmp_path))
                assert ckpt.read_metadata(ckpt.step_path(tmp_path, latest)) == {"i": latest}
                names = [f for f in os.listdir(tmp_path) if f.startswith("ckpt_")]
                assert len(names) <= 3  # keep=2, plus one if killed before the rotation
                for f in names:
                    ckpt.restore(tmp_path / f)
            # save(single.jbp, tree_for(k)) starts only after "step k" was printed
            single_allowed = {
                singles[-1] if singles else single_known,
                steps[-1] if steps else single_known,
            }
            if (tmp_path / "single.jbp").exists():
                i = ckpt.read_metadata(tmp_path / "single.jbp")["i"]
                assert i in single_allowed, (i, single_allowed)
                assert_bit_equal(tree_for(i), ckpt.restore(tmp_path / "single.jbp"))
                single_known = i
            else:
                assert single_known is None and None in single_allowed
        known = latest
        start = (latest if latest is not None else -1) + 1


# --------------------------------------------------------------------------------------
# no pickle, anywhere
# --------------------------------------------------------------------------------------


def test_the_module_never_imports_or_calls_pickle(tmp_path, monkeypatch):
    src = pathlib.Path(ckpt.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {
        "pickle",
        "_pickle",
        "cPickle",
        "dill",
        "cloudpickle",
        "marshal",
        "shelve",
        "joblib",
        "copyreg",
    }
    assert "allow_pickle" not in src and "np.load" not in src and "eval(" not in src
    # and nothing it calls pickles: every entry point of pickle raises while we round-trip
    import pickle

    def no_pickle(*a, **k):
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    tree = {
        "a": np.arange(3),
        "j": jnp.ones(2, jnp.bfloat16),
        "k": jax.random.key(0),
        "s": np.int8(3),
        "p": 1.5,
        "opt": jbp.optim.adam(1e-3).init(mlp_params()),
    }
    assert_bit_equal(tree, roundtrip(tmp_path, tree, metadata={"x": [1]}))
