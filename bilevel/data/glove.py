"""GloVe text vectors → an embedding matrix for a :class:`~bilevel.data.text.Vocab`.

File format (any dimension; ``*.gz`` or plain): one ``word v1 … vD`` per line, space-separated,
no header. D is read from the first line unless given. Words that themselves contain spaces
(a few in glove.840B) are handled by taking the LAST D fields as the vector. The first
occurrence of a word wins (files are in frequency order).

OOV rule (``glove_embeddings``):
  * ``<pad>`` (id 0) gets zeros;
  * every vocab token found in the file gets its vector (``lowercase=True`` looks the file's
    words up lower-cased, for cased files such as 840B with a lower-cased vocab);
  * every other row (``<unk>``, other specials, words not in the file) gets an independent
    N(0, σ²) draw, σ = the standard deviation of all entries of the found vectors, from a
    ``torch.Generator`` seeded with ``seed`` (the same seed gives the same matrix).
Coverage = the fraction of the vocab's non-special tokens found in the file. The reference code
instead DROPPED words without a vector (``encode(..., drop_unk=True)`` with a vocab restricted
to covered words reproduces that).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bilevel.data.paths import DataError, read_lines
from bilevel.data.text import Vocab


class GloveEmbedding(NamedTuple):
    weight: Tensor  # [len(vocab), D] float32
    coverage: float  # fraction of non-special vocab tokens found in the file


def read_glove(
    path: str | Path,
    words: set[str] | None = None,
    dim: int | None = None,
    lowercase: bool = False,
) -> dict[str, np.ndarray]:
    """``{word: float32 vector}`` for the file's words in ``words`` (all words when None).
    A malformed line that is read (too few values, a non-number, a dimension different from
    the first line's) is a DataError naming the file and line; the lines of unwanted words are
    skipped without being parsed (fast on the 2.2M-line 840B file)."""
    path = Path(path)
    vectors: dict[str, np.ndarray] = {}
    for line, text in read_lines(path):
        if not text.strip():
            continue
        if dim is None:
            dim = len(text.rstrip().split(" ")) - 1
            if dim < 1:
                raise DataError("expected 'word v1 … vD'", path, line)
        head = text.split(" ", 1)[0]
        key = head.lower() if lowercase else head
        if words is not None and key not in words:
            continue  # not wanted (a wanted token has no space, so its line starts with it)
        parts = text.rstrip().rsplit(" ", dim)
        if len(parts) != dim + 1:
            raise DataError(f"expected a word and {dim} values, found {len(parts) - 1}", path, line)
        word = parts[0].lower() if lowercase else parts[0]
        if (words is not None and word not in words) or word in vectors:
            continue
        try:
            vectors[word] = np.array(parts[1:], dtype=np.float32)
        except ValueError as e:
            raise DataError(f"non-numeric vector value ({e})", path, line) from e
    if dim is None:
        raise DataError("empty GloVe file", path)
    return vectors


def glove_embeddings(
    vocab: Vocab,
    path: str | Path,
    dim: int | None = None,
    seed: int = 0,
    lowercase: bool = False,
) -> GloveEmbedding:
    """The [len(vocab), D] embedding matrix of ``vocab`` and its coverage (OOV rule above)."""
    wanted = set(vocab.itos[vocab.n_specials :])
    vectors = read_glove(path, wanted, dim, lowercase)
    if not vectors:
        raise DataError("no vocabulary token has a vector in this GloVe file", path)
    found_ids = [vocab.stoi[w] for w in vectors]
    found = torch.from_numpy(np.stack(list(vectors.values())))
    sigma = found.std(unbiased=False).item()
    generator = torch.Generator().manual_seed(seed)
    weight = sigma * torch.randn(len(vocab), found.shape[1], generator=generator)
    weight[torch.tensor(found_ids)] = found
    weight[vocab.pad_id] = 0.0
    coverage = len(vectors) / max(len(vocab) - vocab.n_specials, 1)
    return GloveEmbedding(weight, coverage)
