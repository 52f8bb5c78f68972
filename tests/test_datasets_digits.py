"""Tests for the embedded UCI digits, the split rule and one_hot."""

import numpy as np
import pytest

import jbp.datasets as jd
from jbp.datasets.split import split_indices


def test_default_shapes_dtypes_range():
    (xtr, ytr), (xte, yte) = jd.digits()
    assert xtr.shape == (1437, 64) and xte.shape == (360, 64)
    assert ytr.shape == (1437,) and yte.shape == (360,)
    assert xtr.dtype == np.float32 and xte.dtype == np.float32
    assert ytr.dtype == np.int32 and yte.dtype == np.int32
    for x in (xtr, xte):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(ytr)) == set(range(10)) == set(np.unique(yte))


def test_unscaled_unflattened():
    (xtr, ytr), (xte, yte) = jd.digits(flatten=False, scale=False)
    assert xtr.shape == (1437, 8, 8, 1) and xte.shape == (360, 8, 8, 1)
    assert xtr.dtype == np.uint8 and xtr.max() == 16
    (ftr, _), _ = jd.digits(flatten=True, scale=True)
    np.testing.assert_array_equal(ftr, xtr.reshape(1437, 64).astype(np.float32) / 16)


def test_matches_raw_and_partition():
    x, y = jd.load_digits_raw()
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(
        np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    )
    tr, te = split_indices(1797, 0.2, 0, labels=y)
    assert len(np.intersect1d(tr, te)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(1797))
    (xtr, ytr), (xte, yte) = jd.digits(scale=False, flatten=False)
    np.testing.assert_array_equal(xtr[..., 0], x[tr])
    np.testing.assert_array_equal(yte, y[te])


def test_deterministic_and_seed_changes_split():
    a = jd.digits(seed=3)
    b = jd.digits(seed=3)
    c = jd.digits(seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u[0], v[0])
        np.testing.assert_array_equal(u[1], v[1])
    assert not np.array_equal(a[1][0], c[1][0])


def test_stratified_class_counts():
    (_, ytr), (_, yte) = jd.digits()
    counts = np.bincount(yte, minlength=10)
    assert counts.sum() == 360
    assert counts.min() >= 34 and counts.max() <= 37
    assert np.bincount(ytr, minlength=10).min() > 0


@pytest.mark.parametrize(
    "f, n_test", [(0.1, 180), (0.25, 450), (0.5, 899), (0.9, 1618), (0.01, 18)]
)
def test_split_sizes(f, n_test):
    (xtr, ytr), (xte, yte) = jd.digits(test_fraction=f)
    assert len(yte) == n_test and len(ytr) == 1797 - n_test
    assert len(np.unique(yte)) == 10 and len(np.unique(ytr)) == 10


def test_no_duplicate_examples_across_split():
    # the raw data holds a few identical images, so disjointness is checked on indices
    _, y = jd.load_digits_raw()
    tr, te = split_indices(1797, 0.2, 0, labels=y)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert len(tr) == len(set(tr.tolist()))


def test_returned_arrays_are_writable_copies():
    (xtr, _), _ = jd.digits(scale=False)
    xtr[0, 0] = 99
    (xtr2, _), _ = jd.digits(scale=False)
    assert xtr2[0, 0] != 99


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"test_fraction": "0.2"}, "test_fraction"),
        ({"test_fraction": 1 - 1e-6}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"flatten": "yes"}, "flatten"),
        ({"scale": 1}, "scale"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        jd.digits(**kwargs)


def test_positional_arguments_rejected():
    with pytest.raises(TypeError):
        jd.digits(True)


def test_one_hot():
    oh = jd.one_hot(np.array([0, 2, 1]), 3)
    np.testing.assert_array_equal(oh, np.eye(3, dtype=np.float32)[[0, 2, 1]])
    assert oh.dtype == np.float32
    assert jd.one_hot(np.array([[1, 0]]), 2).shape == (1, 2, 2)
    assert jd.one_hot(np.array([1]), 4, dtype=np.int32).dtype == np.int32
    with pytest.raises(ValueError, match="num_classes"):
        jd.one_hot(np.array([0]), 0)
    with pytest.raises(ValueError, match="labels"):
        jd.one_hot(np.array([3]), 3)
    with pytest.raises(ValueError, match="labels"):
        jd.one_hot(np.array([-1]), 3)
    with pytest.raises(ValueError, match="labels"):
        jd.one_hot(np.array([0.5]), 3)


def test_one_hot_accepts_jax_array():
    import jax.numpy as jnp

    oh = jd.one_hot(jnp.array([1, 0]), 2)
    np.testing.assert_array_equal(oh, [[0, 1], [1, 0]])
