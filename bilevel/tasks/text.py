"""Shared preparation of the text tasks: a dataset's splits loaded, tokenized once with a
vocabulary built on the training split, padded once into tensors, and a model built on it.

Datasets are described by the ``dataset`` config group (name, hub id, fields, classes); models
by the ``model`` group (``bilevel.models.build_model`` keys). Tasks call :func:`prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.data import (
    PaddedSplit,
    Vocab,
    build_vocab,
    encode,
    glove_embeddings,
    load_amazon,
    load_sentiment140,
    load_snli,
    load_trec,
    resolve_data_dir,
)
from bilevel.models import build_model, functional

# BO-REP's hyperparameter-optimization test domains (spec BOREP-SLIP-ADAMBO §4.3); the Amazon
# file has no split field, so "train" is every other domain and "test" these eight.
AMAZON_TEST_DOMAINS = (
    *("office_products", "automotive", "computer_&_video_games", "outdoor_living"),
    *("software", "sports_&_outdoors", "toys_&_games", "video"),
)


def _load_amazon_split(split: str, data_dir=None, hub_id=None):
    """Amazon ``split`` in {train, test}, split by domain (AMAZON_TEST_DOMAINS)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown Amazon split {split!r} (expected train or test)")
    ds = load_amazon(data_dir=data_dir, hub_id=hub_id)
    test = set(AMAZON_TEST_DOMAINS)
    keep = [(d in test) == (split == "test") for d in ds["domain"]]
    return ds.select([i for i, k in enumerate(keep) if k])


LOADERS = {
    "snli": load_snli,
    "sentiment140": load_sentiment140,
    "trec": load_trec,
    "amazon": _load_amazon_split,
}


@dataclass
class TextData:
    """Padded splits of one dataset and its vocabulary; ``fields`` are the model's inputs."""

    splits: dict[str, PaddedSplit]
    vocab: Vocab
    fields: tuple[str, ...]
    n_classes: int
    embeddings: Tensor | None
    glove_coverage: float | None


def prepare(
    dataset: dict[str, Any],
    data_dir: str | None,
    max_len: int,
    splits: dict[str, str],
    limit: dict[str, int | None],
    seed: int,
    cache_dir: str | None = None,
) -> TextData:
    """Load ``splits`` (role -> split name) of ``dataset``, keep at most ``limit[role]`` rows
    (a seeded random subset), build the vocabulary on the ``train`` role, encode and pad."""
    name = dataset["name"]
    if name not in LOADERS:
        raise ValueError(
            f"dataset.name={name!r} is not a text dataset; choose from {', '.join(LOADERS)}"
        )
    root = resolve_data_dir(data_dir)
    fields = tuple(dataset["fields"])
    gen = torch.Generator().manual_seed(seed)
    raw = {}
    for role, split in splits.items():
        ds = LOADERS[name](split, data_dir=root, hub_id=dataset.get("hub_id"))
        n = limit.get(role)
        if n is not None and n < len(ds):
            ds = ds.select(torch.randperm(len(ds), generator=gen)[:n].sort().values.tolist())
        raw[role] = ds
    vocab = build_vocab(
        raw["train"],
        fields=fields,
        min_freq=dataset.get("min_freq", 1),
        max_size=dataset.get("vocab_size"),
    )
    padded = {}
    for role, ds in raw.items():
        enc = encode(ds, vocab, fields, max_len=max_len, cache_dir=cache_dir)
        padded[role] = PaddedSplit.from_dataset(enc, fields, max_len=max_len)
    embeddings, coverage = None, None
    if dataset.get("glove"):
        glove = glove_embeddings(vocab, Path(root) / dataset["glove"], seed=seed)
        embeddings, coverage = glove.weight, glove.coverage
    return TextData(padded, vocab, fields, int(dataset["n_classes"]), embeddings, coverage)


def make_model(model: dict[str, Any], data: TextData, generator: torch.Generator) -> nn.Module:
    """The ``model`` config built for ``data`` (vocabulary size, GloVe embeddings, classes)."""
    cfg = dict(model)
    kind = cfg.pop("kind")
    if data.embeddings is not None and cfg.pop("glove", True):
        cfg["embeddings"] = data.embeddings
        cfg["embed_dim"] = data.embeddings.shape[1]
    else:
        cfg.pop("glove", None)
    return build_model(
        kind, n_classes=data.n_classes, vocab_size=len(data.vocab), generator=generator, **cfg
    )


def model_inputs(fields: tuple[str, ...], batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """The positional inputs of a model for ``batch``: (ids, lengths) per field, in order."""
    out: list[Tensor] = []
    for f in fields:
        out += [batch[f"{f}_ids"], batch[f"{f}_len"]]
    return tuple(out)


def forward(model: nn.Module):
    """``(params, fields, batch) -> logits`` through ``torch.func.functional_call``."""
    call = functional(model)

    def run(params: dict[str, Tensor], fields: tuple[str, ...], batch: dict[str, Tensor]):
        return call(params, *model_inputs(fields, batch))

    return run
