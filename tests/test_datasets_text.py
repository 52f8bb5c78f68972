"""The embedded Rotten Tomatoes corpus, the tokenizer and the vocabulary."""

import numpy as np
import pytest

import jbp.datasets as jd
from jbp.datasets.text import PAD_ID, UNK_ID, Vocabulary, tokenize

# ---------------------------------------------------------------- corpus


def test_rotten_tomatoes_split():
    (ttr, ytr), (tte, yte) = jd.rotten_tomatoes()
    assert len(ttr) == len(ytr) == 10201 and len(tte) == len(yte) == 2551
    assert all(isinstance(t, str) and t and "\t" not in t and "\n" not in t for t in ttr[:500])
    assert ytr.dtype == np.int32 and set(np.unique(ytr)) == {0, 1} == set(np.unique(yte))
    assert abs(ytr.mean() - yte.mean()) < 1e-3  # stratified
    assert 0.57 < yte.mean() < 0.59
    assert not set(ttr) & set(tte)  # no sentence in both (duplicates were removed)


def test_rotten_tomatoes_raw_and_determinism():
    texts, y = jd.load_rotten_tomatoes_raw()
    assert len(texts) == 12752 and len(set(texts)) == 12752
    np.testing.assert_array_equal(np.bincount(y), [5384, 7368])
    a = jd.rotten_tomatoes(seed=7, test_fraction=0.1)
    b = jd.rotten_tomatoes(seed=7, test_fraction=0.1)
    c = jd.rotten_tomatoes(seed=8, test_fraction=0.1)
    assert a[1][0] == b[1][0] and a[0][0] == b[0][0]
    np.testing.assert_array_equal(a[1][1], b[1][1])
    assert a[1][0] != c[1][0]
    assert len(a[1][0]) == 1276
    assert sorted(a[0][0] + a[1][0]) == sorted(texts)


def test_rotten_tomatoes_labels_match_text():
    texts, y = jd.load_rotten_tomatoes_raw()
    label = dict(zip(texts, y.tolist()))
    (ttr, ytr), _ = jd.rotten_tomatoes()
    assert all(label[t] == v for t, v in zip(ttr[:1000], ytr[:1000].tolist()))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1}, "test_fraction"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_rotten_tomatoes_bad_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        jd.rotten_tomatoes(**kwargs)


# ---------------------------------------------------------------- tokenizer


def test_tokenize():
    assert tokenize("It's a MUST-see, 10/10!") == ["it's", "a", "must", "see", "10", "10"]
    assert tokenize("Gaghan’s résumé") == ["gaghan's", "résumé"]
    assert tokenize("  ...  ") == []
    assert tokenize("under_score") == ["under", "score"]
    with pytest.raises(ValueError, match="text"):
        tokenize(3)


# ---------------------------------------------------------------- vocabulary


def test_build_order_and_reserved():
    v = Vocabulary.build(["b a b", "c b a", "d"], max_size=10)
    assert v.tokens == ("<pad>", "<unk>", "b", "a", "c", "d")
    assert v.token_to_id["<pad>"] == PAD_ID == 0 and v.token_to_id["<unk>"] == UNK_ID == 1
    assert len(v) == 6 and "b" in v and "z" not in v


def test_build_max_size_and_min_count():
    texts = ["x x x y y z", "y w"]
    v = Vocabulary.build(texts, max_size=4)
    assert v.tokens == ("<pad>", "<unk>", "x", "y")
    v2 = Vocabulary.build(texts, max_size=None, min_count=2)
    assert v2.tokens == ("<pad>", "<unk>", "x", "y")
    v3 = Vocabulary.build(texts, max_size=None)
    assert v3.tokens[2:] == ("x", "y", "w", "z")  # ties alphabetical


def test_encode_pad_truncate_unk_mask():
    v = Vocabulary.build(["good film", "bad film"], max_size=10)
    ids, mask = v.encode(["Good FILM, great film!", "", "bad"], max_len=3)
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == (3, 3)
    f, g, b = v.token_to_id["film"], v.token_to_id["good"], v.token_to_id["bad"]
    np.testing.assert_array_equal(ids, [[g, f, UNK_ID], [0, 0, 0], [b, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 0], [1, 0, 0]])
    assert v.decode(ids, mask) == ["good film <unk>", "", "bad"]
    assert v.decode(ids) == ["good film <unk>", "", "bad"]


def test_vocab_bad_arguments():
    for bad in (0, -5, 2, 1.5, True):
        with pytest.raises(ValueError, match="max_size"):
            Vocabulary.build(["a"], max_size=bad)
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(["a"], max_size=5, min_count=0)
    with pytest.raises(ValueError, match="texts"):
        Vocabulary.build("a single string", max_size=5)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        Vocabulary.build(["a", 3], max_size=5)
    v = Vocabulary.build(["a"], max_size=5)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="max_len"):
            v.encode(["a"], max_len=bad)
    with pytest.raises(ValueError, match="texts"):
        v.encode("a", max_len=3)
    with pytest.raises(ValueError, match="<pad>"):
        Vocabulary(("a", "b"))


def test_vocab_on_corpus():
    (ttr, ytr), (tte, _) = jd.rotten_tomatoes()
    v = Vocabulary.build(ttr, max_size=5000)
    assert len(v) == 5000 and v.tokens[2] == "the"
    ids, mask = v.encode(tte, max_len=48)
    assert ids.shape == (2551, 48) and ids.max() < 5000
    lengths = mask.sum(1)
    assert lengths.min() >= 1 and 15 < lengths.mean() < 25
    assert (ids[~mask] == 0).all() and (ids[mask] != 0).all()
    assert 0.0 < (ids[mask] == UNK_ID).mean() < 0.2  # share of unknown words among tokens
