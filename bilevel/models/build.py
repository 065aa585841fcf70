"""``build_model(kind, **cfg)``: the models by config name.

Keys of ``cfg``: ``n_classes``, ``fc`` (hidden sizes of the head; empty = a linear head),
``activation`` (of the head) and, for ``nli_rnn``, ``projection``; every other key goes to the
encoder (:class:`RNNEncoder` for ``rnn``/``nli_rnn``, :class:`TransformerEncoder` for
``transformer``). ``generator`` seeds the initialisation (:func:`seeded_init`).

The papers' configurations:

* ``rnn`` (BO-REP/SLIP cleaning and hyper-representation, AccBO AUC): ``cell=rnn, embed_dim=300,
  hidden=4096, layers=2, pool=max, fc=[1024, 1024], activation=tanh``, GloVe ``embeddings``;
* ``nli_rnn``: SLIP SNLI ``projection=4096, fc=[1024, 1024], n_classes=3``; UniBiO/AccBO SNLI
  cleaning (Q7 corrected) ``fc=[], n_classes=3``;
* ``transformer`` (AdamBO TREC): ``vocab_size=30522, hidden=768, layers=8, heads=8, ffn=2048,
  max_len=128, fc=[], n_classes=6``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bilevel.models.functional import seeded_init
from bilevel.models.heads import Activation, NLIModel, SentenceClassifier, make_head
from bilevel.models.rnn import RNNEncoder
from bilevel.models.transformer import TransformerEncoder

MODEL_KINDS = ("rnn", "nli_rnn", "transformer")


def build_model(
    kind: str,
    *,
    n_classes: int,
    fc: Sequence[int] | int = (),
    activation: Activation = "tanh",
    generator: torch.Generator | None = None,
    pairs: bool = False,
    **cfg: Any,
) -> nn.Module:
    """The model ``kind`` (one of :data:`MODEL_KINDS`) built from ``cfg``. ``pairs``: the inputs
    are sentence pairs (SNLI): any encoder then goes into the siamese :class:`NLIModel` (one
    shared encoder, features [u, v, |u−v|, u⊙v]), as ``nli_rnn`` always does."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}: expected one of {list(MODEL_KINDS)}")
    with seeded_init(generator):
        projection = cfg.pop("projection", None) if kind == "nli_rnn" or pairs else None
        encoder = TransformerEncoder(**cfg) if kind == "transformer" else RNNEncoder(**cfg)
        if kind == "nli_rnn" or pairs:
            return NLIModel(encoder, fc, n_classes, activation, projection)
        return SentenceClassifier(encoder, make_head(encoder.out_dim, fc, n_classes, activation))
