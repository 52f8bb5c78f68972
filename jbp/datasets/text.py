"""A tiny tokenizer and vocabulary: lowercase, word split, top-k words, padding, mask.

>>> vocab = Vocabulary.build(["A fine film.", "A dull film!"], max_size=10)
>>> vocab.tokens
('<pad>', '<unk>', 'a', 'film', 'dull', 'fine')
>>> ids, mask = vocab.encode(["a great film"], max_len=4)
>>> ids.tolist(), mask.tolist()
([[2, 1, 3, 0]], [[True, True, True, False]])
"""

from __future__ import annotations

import collections
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["tokenize", "Vocabulary", "PAD", "UNK", "PAD_ID", "UNK_ID"]

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# a word: letters/digits, with inner apostrophes kept ("don't", "director's")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list:
    """Split ``text`` into lowercase words: runs of letters/digits (any script), keeping
    inner apostrophes (typographic ``’`` is read as ``'``); punctuation is dropped.

    >>> tokenize("It's a MUST-see, 10/10!")
    ["it's", 'a', 'must', 'see', '10', '10']
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _check_texts(texts: Iterable[str], name: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"{name} must be a sequence of strings, got a single {type(texts).__name__}"
        )
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    return texts


def _check_positive_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class Vocabulary:
    """A fixed word list; id 0 is ``<pad>``, id 1 is ``<unk>``, words follow by frequency.

    Build with :meth:`Vocabulary.build`; ``tokens[i]`` is the word of id ``i`` and
    ``len(vocab)`` the size of an embedding table for it.
    """

    tokens: tuple
    token_to_id: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if tuple(self.tokens[:2]) != (PAD, UNK):
            raise ValueError(f"tokens must start with {PAD!r}, {UNK!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("tokens must be unique")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "token_to_id", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int | None, min_count: int = 1) -> Vocabulary:
        """Build from an iterable of strings, keeping the most frequent words.

        Args:
          texts: sequence of str (typically the *training* texts only).
          max_size: total number of ids including ``<pad>`` and ``<unk>`` (so at most
            ``max_size - 2`` words), an int >= 3; ``None`` for no limit.
          min_count: drop words seen fewer times than this (int >= 1).

        Words are ranked by count, descending, ties broken alphabetically, so the result
        is deterministic.

        Raises:
          ValueError: naming ``max_size``, ``min_count`` or ``texts``.
        """
        if max_size is not None:
            max_size = _check_positive_int("max_size", max_size, minimum=3)
        min_count = _check_positive_int("min_count", min_count)
        texts = _check_texts(texts)
        counts: collections.Counter[str] = collections.Counter()
        for t in texts:
            counts.update(tokenize(t))
        words = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            words = words[: max_size - 2]
        return cls((PAD, UNK, *words))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: object) -> bool:
        return word in self.token_to_id

    def encode(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and map ``texts`` to fixed-length id rows.

        Each text's first ``max_len`` tokens are kept (longer texts are truncated), unknown
        words become ``<unk>`` (1) and rows are padded at the end with ``<pad>`` (0).

        Returns:
          ``(ids, mask)``: int32 ``(n, max_len)`` and bool ``(n, max_len)``, mask True on
          real tokens (including ``<unk>``). A text with no words has an all-False row.

        Raises:
          ValueError: naming ``max_len`` or ``texts``.
        """
        max_len = _check_positive_int("max_len", max_len)
        texts = _check_texts(texts)
        ids = np.zeros((len(texts), max_len), dtype=np.int32)
        lookup = self.token_to_id.get
        for i, t in enumerate(texts):
            row = [lookup(w, UNK_ID) for w in tokenize(t)[:max_len]]
            ids[i, : len(row)] = row
        return ids, ids != PAD_ID

    def decode(self, ids: ArrayLike, mask: ArrayLike | None = None) -> list[str]:
        """Map id rows back to space-joined words, skipping padding (``mask`` False)."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (n, max_len), got {ids.shape}")
        if mask is None:
            mask = ids != PAD_ID
        return [
            " ".join(self.tokens[j] for j, m in zip(row, mrow) if m)
            for row, mrow in zip(ids.tolist(), np.asarray(mask).tolist())
        ]
