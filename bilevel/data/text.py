"""Tokenization, vocabulary, encoding (``Dataset.map``, cached) and padded tensor splits.

Tokenizer (``Tokenizer()``; deterministic, no external model):
  * ``mode="basic"`` (default): lower-case (``lower=True``), then split into words of letters
    (any script), numbers (``3.5``, ``1,000``, ``10:30`` stay one token), the clitics
    ``n't 's 're 'll 'm 've 'd`` (``don't`` → ``do n't``, ``john's`` → ``john 's``, as the Penn
    Treebank and GloVe 6B have them), and every other non-space character alone (``airplane.`` →
    ``airplane .``). PTB-tokenised text (SNLI dev/test, ARSC) comes out as its own tokens, so the
    raw SNLI train subset and the tokenised dev/test files are tokenised alike.
  * ``mode="whitespace"``: split on whitespace only (the reference code's rule).

Vocab: ``<pad>`` = 0, ``<unk>`` = 1, then any extra specials (e.g. ``<s>``, ``</s>``), then the
training tokens with count ≥ ``min_freq`` by decreasing count, ties by the token string.
``max_size`` caps the TOTAL size, specials included. Build it from the training split only.

Encoding: ``encode(ds, vocab, fields, max_len=...)`` adds ``<field>_ids`` (token ids, truncated
to ``max_len``, unpadded) and ``<field>_len`` columns with one batched ``Dataset.map``. With a
``cache_dir`` (a run's ``cache/`` folder, or a shared one) the result is written there as an
Arrow file whose name hashes the dataset's fingerprint, the vocabulary, the tokenizer and the
options, and a second call loads it instead of recomputing; without one it stays in memory.

Batching: ``PaddedSplit.from_dataset(encoded, fields)`` pads a whole split ONCE into tensors
(``<field>_ids`` [N, T] with ``<pad>`` = 0, ``<field>_len`` [N], ``label`` [N], ``index`` [N]);
``split.gather(idx)`` is then a few tensor index operations whose cost depends on the batch, not
on N. An empty text gets length 1 (one ``<pad>`` token, a zero vector under frozen GloVe), as
in the reference code, so packed RNNs accept it; ``lengths_to_mask`` gives the padding mask.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

if TYPE_CHECKING:  # imported where used (0.8 s): a run whose prepared data is cached skips it
    import datasets

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

_BASIC = re.compile(
    r"""
      [^\W\d_]+(?=n't\b)            # "do" of "don't" (the clitic follows)
    | n't\b                         # the negation clitic
    | '(?:s|re|ll|m|ve|d)\b         # other clitics
    | [^\W\d_]+                     # words: runs of letters
    | \d+(?:[.,:/-]\d+)*            # numbers
    | \S                            # any other non-space character, alone
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Tokenizer:
    """``Tokenizer()(text) -> list[str]``; see the module docstring for the rules."""

    mode: Literal["basic", "whitespace"] = "basic"
    lower: bool = True

    def __post_init__(self):
        if self.mode not in ("basic", "whitespace"):
            raise ValueError(f"unknown tokenizer mode {self.mode!r} (basic, whitespace)")

    def __call__(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        if self.mode == "whitespace":
            return text.split()
        return _BASIC.findall(text)


class Vocab:
    """Token ↔ id map; ``itos[0] = <pad>``, ``itos[1] = <unk>``; unknown tokens map to 1."""

    pad_id = 0
    unk_id = 1

    def __init__(self, itos: Sequence[str], n_specials: int = 2):
        itos = list(itos)
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"a Vocab starts with {PAD!r}, {UNK!r}; got {itos[:2]}")
        if len(set(itos)) != len(itos):
            raise ValueError("a Vocab has no duplicate tokens")
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}
        self.n_specials = n_specials

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = (),
    ) -> Vocab:
        """From tokenised training texts: tokens with count ≥ ``min_freq``, most frequent first
        (ties by string); ``max_size`` caps the total size including the specials."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        head = [PAD, UNK, *(s for s in specials if s not in (PAD, UNK))]
        words = sorted(
            (t for t, c in counts.items() if c >= min_freq and t not in head),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            if max_size < len(head):
                raise ValueError(f"max_size={max_size} is smaller than the {len(head)} specials")
            words = words[: max_size - len(head)]
        return cls(head + words, n_specials=len(head))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        return self.stoi.get(token, self.unk_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    def fingerprint(self) -> str:
        return hashlib.sha1("\n".join(self.itos).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        payload = {"itos": self.itos, "n_specials": self.n_specials}
        Path(path).write_text(json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        payload = json.loads(Path(path).read_text())
        return cls(payload["itos"], payload["n_specials"])


def build_vocab(
    data: datasets.Dataset | Iterable[str],
    fields: Sequence[str] = ("text",),
    tokenizer: Tokenizer | None = None,
    min_freq: int = 1,
    max_size: int | None = None,
    specials: Sequence[str] = (),
) -> Vocab:
    """A Vocab of the texts of ``fields`` of a (training) Dataset, or of an iterable of texts."""
    import datasets

    tok = tokenizer or Tokenizer()
    if isinstance(data, datasets.Dataset):
        # whole columns through Arrow: iterating ``data[f]`` formats row by row (10x slower)
        arrow = data.with_format("arrow")
        texts: Iterable[str] = (t for f in fields for t in arrow[f].to_pylist())
    else:
        texts = data
    return Vocab.build((tok(t) for t in texts), min_freq, max_size, specials)


def encode(
    ds: datasets.Dataset,
    vocab: Vocab,
    fields: Sequence[str] = ("text",),
    tokenizer: Tokenizer | None = None,
    max_len: int | None = None,
    add_bos_eos: bool = False,
    drop_unk: bool = False,
    cache_dir: str | Path | None = None,
    batch_size: int = 1000,
) -> datasets.Dataset:
    """``ds`` plus ``<field>_ids`` (list of ids, at most ``max_len``) and ``<field>_len``.

    ``add_bos_eos`` wraps every text in ``<s> … </s>`` (they must be in the vocab; truncation
    keeps both). ``drop_unk`` removes unknown tokens instead of mapping them to ``<unk>`` (the
    reference dropped words without a GloVe vector). Cached under ``cache_dir`` when given.
    """
    tok = tokenizer or Tokenizer()
    if max_len is not None and max_len < (3 if add_bos_eos else 1):
        raise ValueError(f"max_len={max_len} leaves no room for a token")
    if add_bos_eos and not (BOS in vocab and EOS in vocab):
        raise ValueError(f"add_bos_eos needs {BOS!r} and {EOS!r} in the vocab (specials=...)")
    bos, eos, unk = vocab[BOS], vocab[EOS], vocab.unk_id
    body = None if max_len is None else max_len - (2 if add_bos_eos else 0)

    def encode_batch(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        for f in fields:
            all_ids, lens = [], []
            for text in batch[f]:
                ids = vocab.encode(tok(text))
                if drop_unk:
                    ids = [i for i in ids if i != unk]
                if body is not None:
                    ids = ids[:body]
                if add_bos_eos:
                    ids = [bos, *ids, eos]
                all_ids.append(ids)
                lens.append(len(ids))
            out[f"{f}_ids"] = all_ids
            out[f"{f}_len"] = lens
        return out

    options = {
        "fields": list(fields),
        "tokenizer": [type(tok).__qualname__, tok.mode, tok.lower],
        "max_len": max_len,
        "bos_eos": add_bos_eos,
        "drop_unk": drop_unk,
        "vocab": vocab.fingerprint(),
        "version": 1,
    }
    key = hashlib.sha1(
        (ds._fingerprint + json.dumps(options, sort_keys=True)).encode()
    ).hexdigest()[:16]
    import datasets

    features = ds.features.copy()
    for f in fields:
        features[f"{f}_ids"] = datasets.Sequence(datasets.Value("int32"))
        features[f"{f}_len"] = datasets.Value("int32")
    kwargs: dict = {}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs = {"cache_file_name": str(Path(cache_dir) / f"encoded-{key}.arrow")}
    return ds.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        features=features,
        new_fingerprint=key,
        load_from_cache_file=cache_dir is not None,
        desc=None,
        **kwargs,
    )


def pad_ids(ids: pa.Array | pa.ChunkedArray, max_len: int | None = None, dtype=torch.int64):
    """A list<int> Arrow column → (padded [N, T] tensor with 0, lengths [N]), vectorised.

    T = ``max_len`` if given (longer rows are truncated), else the longest row; rows of length 0
    get length 1 (a single ``<pad>``)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], ids.type)
    offsets = ids.offsets.to_numpy().astype(np.int64)
    values = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
    start, lengths = offsets[:-1], np.diff(offsets)
    n = len(lengths)
    width = int(lengths.max(initial=0)) if max_len is None else max_len
    width = max(width, 1)
    kept = np.minimum(lengths, width)
    rows = np.repeat(np.arange(n), kept)
    cols = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    out = np.zeros((n, width), dtype=np.int64)
    out[rows, cols] = values[np.repeat(start, kept) + cols]
    return torch.from_numpy(out).to(dtype), torch.from_numpy(np.maximum(kept, 1))


@dataclass
class PaddedSplit:
    """A whole encoded split as padded tensors, indexed per batch with :meth:`gather`.

    ``tensors``: ``<field>_ids`` [N, T] (0 = ``<pad>``), ``<field>_len`` [N] (int64),
    ``label`` [N] (int64), ``index`` [N] (the example's position in the split: it addresses
    per-example variables such as hyper-cleaning weights), plus any extra columns."""

    tensors: dict[str, Tensor]
    fields: tuple[str, ...] = field(default=("text",))
    # per field, the lengths on the host (derived from ``tensors`` whenever a split is made): a
    # batch's longest sentence is known without a device sync
    host_lengths: dict[str, Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.host_lengths = {f: self.tensors[f"{f}_len"].cpu() for f in self.fields}

    @classmethod
    def from_dataset(
        cls,
        ds: datasets.Dataset,
        fields: Sequence[str] = ("text",),
        max_len: int | None = None,
        label_column: str | None = "label",
        extra_columns: Sequence[str] = (),
        ids_dtype: torch.dtype = torch.int64,
    ) -> PaddedSplit:
        """Pad the ``encode``-d ``ds`` once; T = ``max_len`` or each field's longest text."""
        arrow = ds.with_format("arrow")
        tensors: dict[str, Tensor] = {}
        for f in fields:
            column = f"{f}_ids"
            if column not in ds.column_names:
                raise ValueError(f"{column!r} missing: run encode(ds, vocab, fields=...) first")
            ids, lengths = pad_ids(arrow[column], max_len, ids_dtype)
            tensors[column], tensors[f"{f}_len"] = ids, lengths
        for c in ([label_column] if label_column else []) + list(extra_columns):
            tensors[c if c != label_column else "label"] = column_tensor(ds, c)
        tensors["index"] = torch.arange(len(ds))
        return cls(tensors, tuple(fields))

    def __len__(self) -> int:
        return len(self.tensors["index"])

    @property
    def labels(self) -> Tensor:
        return self.tensors["label"]

    def gather(self, idx: Tensor, trim: bool = True) -> dict[str, Tensor]:
        """The examples ``idx`` (a 1-d index tensor): every tensor indexed, no Python loop over
        examples, no host sync. Length-aware (issue #13): with ``trim`` and ``idx`` on the host
        (as the tasks draw it), each ``<field>_ids`` is cut to the batch's longest sentence
        instead of the split's (most of a padded batch is padding). Exact: the models mask
        padding, so the outputs at real tokens are the same; with ``trim=False`` (or ``idx`` on a
        device) the split's width is kept."""
        device = self.tensors["index"].device
        steps = None
        if trim and idx.device.type == "cpu" and len(idx):
            steps = {f: int(self.host_lengths[f][idx].max()) for f in self.fields}  # host op
        idx = idx.to(device)
        out = {k: v[idx] for k, v in self.tensors.items()}
        for f, width in (steps or {}).items():
            out[f"{f}_ids"] = out[f"{f}_ids"][:, : max(width, 1)]
        return out

    def to(self, device: torch.device | str) -> PaddedSplit:
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})

    def with_labels(self, labels: Tensor) -> PaddedSplit:
        """The same split with ``label`` replaced (e.g. the fixed noisy labels)."""
        labels = torch.as_tensor(labels)
        if labels.shape != self.labels.shape:
            raise ValueError(f"labels of shape {tuple(labels.shape)}, expected {len(self)}")
        return replace(self, tensors={**self.tensors, "label": labels.to(self.labels)})

    def subset(self, idx: Tensor) -> PaddedSplit:
        """A new split of the examples ``idx``; ``index`` keeps their original positions."""
        return replace(self, tensors=self.gather(idx, trim=False))


def column_tensor(ds: datasets.Dataset, column: str = "label") -> Tensor:
    """A numeric column as a tensor, through Arrow (``torch.tensor(ds[column])`` goes element by
    element: 0.8 s for 20k labels here)."""
    values = ds.with_format("arrow")[column].to_numpy()
    return torch.from_numpy(np.array(values))  # a writable copy


def zero_beyond_premise(
    batch: dict[str, Tensor], premise: str = "premise", hypothesis: str = "hypothesis"
) -> dict[str, Tensor]:
    """Reference quirk Q34 (SNLI hyper-representation tasks): the hypothesis is filled only up
    to the PREMISE's length, later positions are ``<pad>`` (zero vectors under frozen GloVe);
    its length is unchanged. Returns a new batch dict; use only when a task asks for it."""
    ids = batch[f"{hypothesis}_ids"]
    keep = lengths_to_mask(batch[f"{premise}_len"], ids.shape[1])
    return {**batch, f"{hypothesis}_ids": ids.masked_fill(~keep, 0)}


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean [B, max_len], True on real tokens (positions < length)."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)
