"""The embedded Ames house-price regression set."""

import numpy as np
import pytest

import jbp.datasets as jd


def test_shapes_dtypes_split():
    data = jd.ames()
    (xtr, ytr), (xte, yte) = data
    assert xtr.shape == (2344, 12) and xte.shape == (586, 12)
    assert ytr.shape == (2344,) and yte.shape == (586,)
    for a in (xtr, ytr, xte, yte):
        assert a.dtype == np.float32 and np.isfinite(a).all()
    assert data.feature_names == jd.AMES_FEATURES and len(data.feature_names) == 12
    assert len(data) == 2 and data[0] is data.train


def test_standardized_with_train_statistics_only():
    data = jd.ames()
    (xtr, _), (xte, _) = data
    np.testing.assert_allclose(xtr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xtr.std(0), 1, atol=1e-5)
    assert np.abs(xte.mean(0)).max() > 1e-3  # test stats are not used
    (rtr, _), (rte, _) = jd.ames(standardize=False)
    np.testing.assert_allclose(data.x_mean, rtr.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.inverse_features(xte), rte, rtol=1e-5, atol=1e-3)
    assert rtr[:, data.feature_names.index("Year_Built")].min() >= 1872


def test_target_dollars_and_modes():
    d = jd.ames()
    (_, ytr), (_, yte) = d
    assert 10_000 < ytr.min() and ytr.max() < 1_000_000
    assert 150_000 < ytr.mean() < 210_000
    dl = jd.ames(target="log")
    np.testing.assert_allclose(dl.train[1], np.log(ytr), rtol=1e-6)
    np.testing.assert_allclose(dl.price_dollars(dl.test[1]), yte, rtol=1e-5)
    ds = jd.ames(target="standardized")
    np.testing.assert_allclose(ds.train[1].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.price_dollars(ds.test[1]), yte, rtol=1e-5)
    np.testing.assert_allclose(d.price_dollars(yte), yte)


def test_deterministic_disjoint_and_complete():
    a = jd.ames(seed=1, standardize=False)
    b = jd.ames(seed=1, standardize=False)
    c = jd.ames(seed=2, standardize=False)
    np.testing.assert_array_equal(a.test[0], b.test[0])
    assert not np.array_equal(a.test[1], c.test[1])
    # the two splits together are the whole data set: compare multisets of rows
    rows = np.concatenate([np.c_[a.train[0], a.train[1]], np.c_[a.test[0], a.test[1]]])
    rows2 = np.concatenate([np.c_[c.train[0], c.train[1]], np.c_[c.test[0], c.test[1]]])
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(rows2, axis=0))
    assert len(rows) == 2930


def test_linear_baseline_is_sensible():
    (xtr, ytr), (xte, yte) = jd.ames()
    a = np.c_[xtr, np.ones(len(xtr))].astype(np.float64)
    w = np.linalg.lstsq(a, ytr.astype(np.float64), rcond=None)[0]
    pred = np.c_[xte, np.ones(len(xte))] @ w
    rmse = np.sqrt(np.mean((pred - yte) ** 2))
    assert rmse < 0.6 * yte.std()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"test_fraction": 0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"seed": -3}, "seed"),
        ({"standardize": "no"}, "standardize"),
        ({"target": "euros"}, "target"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        jd.ames(**kwargs)
