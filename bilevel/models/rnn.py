"""Recurrent sentence encoder: the RNN text model of BO-REP / SLIP / AccBO / UniBiO.

Reference model (spec B §4.0, A §2.1): frozen GloVe 840B-300d word vectors, ``nn.RNN`` (Elman,
tanh), 2 layers, hidden 4096, unidirectional, dropout 0, sequences packed by length, then
max-pool over time of the padded output. Here:

* words are ids into an embedding table (``embeddings``: e.g. the GloVe matrix of the task's
  vocabulary; frozen by default when given, as in the reference, and then a buffer, not a
  parameter, so it is in neither x nor y);
* no ``pack_padded_sequence``: the sequences run padded (batch first) and padding is removed by
  masks built from ``lengths``. A unidirectional RNN is causal, so its outputs at real tokens do
  not depend on the padding after them; the bidirectional encoder runs its backward direction on
  each sequence reversed *within its length* (padding stays at the end), which is what packing
  does. Pooling then ignores padding (``pool_includes_padding`` restores quirk Q26);
* ``nn.LSTM`` / ``nn.RNN`` with their fused kernels: a second-order call must run inside
  :func:`bilevel.oracles.second_order`, which turns cuDNN (CUDA) / mkldnn (CPU) off for that call
  only (DESIGN §5); inside it a one-layer unidirectional encoder runs cell by cell
  (:mod:`bilevel.models.recurrence`: a double backward linear in T, same values);
* length buckets (CPU): a CPU recurrence costs batch × longest length, padding included, one
  time step after the other. With ``length_buckets`` = k > 1 the batch is sorted by length and
  run as k chunks, each padded only to its own longest sentence, and the sentence vectors are
  put back in batch order. The result is the same (every sentence sees only its own tokens; the
  pool ignores padding), at roughly the cost of the mean length instead of the longest (SNLI
  pairs: mean ≈ 14 tokens, longest of a 400-pair batch ≈ 40). Packing
  (``pack_padded_sequence``) was measured slower on CPU, 3× slower with a double backward
  (/tmp/lstm_bench.py in issue #13's note). Off on accelerators (one padded launch is faster
  there and sorting needs the lengths on the host) and with ``pool_includes_padding`` (the
  quirk's result depends on the padded length).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bilevel.models.pooling import Pool, encode_in_buckets, pool_time, valid_mask
from bilevel.models.recurrence import in_double_backward, recurrence, supports

Cell = Literal["lstm", "rnn"]
_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "rnn": nn.RNN}


class FrozenEmbedding(nn.Module):
    """A fixed embedding table held as a buffer: not a parameter, so never in x or y."""

    def __init__(self, weight: Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.padding_idx = padding_idx

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, self.padding_idx)


def make_embedding(
    vocab_size: int,
    embed_dim: int,
    padding_idx: int | None,
    embeddings: Tensor | None,
    freeze: bool,
) -> nn.Module:
    """An ``nn.Embedding`` (trainable) or a :class:`FrozenEmbedding`, from ``embeddings`` when
    given (its shape must be [vocab_size, embed_dim]) else randomly initialised (N(0, 1), the
    padding row zero)."""
    if embeddings is not None and tuple(embeddings.shape) != (vocab_size, embed_dim):
        raise ValueError(
            f"embeddings have shape {tuple(embeddings.shape)}, expected ({vocab_size}, {embed_dim})"
        )
    if embeddings is None:
        table = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        return FrozenEmbedding(table.weight, padding_idx) if freeze else table
    if freeze:
        return FrozenEmbedding(embeddings, padding_idx)
    return nn.Embedding.from_pretrained(
        embeddings.detach().clone(), freeze=False, padding_idx=padding_idx
    )


def reverse_within_lengths(h: Tensor, mask: Tensor) -> Tensor:
    """Reverse each sequence of ``h`` [B, T, D] over its real tokens; padding stays in place.

    The permutation is an involution: applying it twice gives ``h`` back."""
    steps = h.shape[1]
    t = torch.arange(steps, device=h.device)[None, :]
    lengths = mask.sum(dim=1, keepdim=True)
    index = torch.where(mask, lengths - 1 - t, t)
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))


class RNNEncoder(nn.Module):
    """ids [B, T] (+ lengths [B]) -> sentence vectors [B, D], D = hidden (x2 if bidirectional).

    Args:
        vocab_size, embed_dim: the embedding table's shape.
        hidden: hidden size per direction; layers: stacked layers.
        cell: ``'lstm'`` or ``'rnn'`` (Elman, tanh: the reference).
        bidirectional: a stacked bidirectional encoder (layer l+1 reads both directions of l),
            as ``nn.LSTM(bidirectional=True)`` run on packed sequences, with one unidirectional
            module per layer and direction (parameters ``rnn.<l>.fwd.*``, ``rnn.<l>.bwd.*``).
        pool: ``'max'`` (reference), ``'mean'`` or ``'last'`` (the output at the last real token;
            bidirectional: forward direction there, backward direction at position 0).
        padding_idx: the embedding row that gets no gradient (and is zero when random).
        embeddings: an initial table [vocab_size, embed_dim] (e.g. GloVe); random if None.
        freeze_embeddings: keep the table fixed (a buffer); default: frozen iff ``embeddings`` is
            given (the reference freezes GloVe), trainable when randomly initialised.
        pool_includes_padding: quirk Q26, the reference pools over the padded output (zeros at
            padding); see :func:`bilevel.models.pooling.pool_time`. Default False (masked).
        dropout: between stacked layers (reference 0).
        length_buckets: on CPU, run the batch as this many chunks of similar lengths (module
            doc, :func:`bilevel.models.pooling.encode_in_buckets`); 1: one padded batch.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        layers: int = 1,
        cell: Cell = "lstm",
        bidirectional: bool = False,
        pool: Pool = "max",
        padding_idx: int | None = 0,
        embeddings: Tensor | None = None,
        freeze_embeddings: bool | None = None,
        pool_includes_padding: bool = False,
        dropout: float = 0.0,
        length_buckets: int = 1,
    ):
        super().__init__()
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        self.length_buckets = length_buckets
        if cell not in _CELLS:
            raise ValueError(f"unknown cell {cell!r}: expected one of {sorted(_CELLS)}")
        if pool not in ("max", "mean", "last"):
            raise ValueError(f"unknown pool {pool!r}: expected 'max', 'mean' or 'last'")
        if freeze_embeddings is None:
            freeze_embeddings = embeddings is not None
        self.pool, self.pool_includes_padding = pool, pool_includes_padding
        self.padding_idx, self.bidirectional, self.dropout = padding_idx, bidirectional, dropout
        self.out_dim = hidden * (2 if bidirectional else 1)
        self.embedding = make_embedding(
            vocab_size, embed_dim, padding_idx, embeddings, freeze_embeddings
        )
        rnn_cls = _CELLS[cell]
        if not bidirectional:
            self.rnn = rnn_cls(
                embed_dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
            )
        else:  # one (forward, backward) pair per layer, so padding can be kept at the end
            self.rnn = nn.ModuleList(
                nn.ModuleDict(
                    {
                        d: rnn_cls(embed_dim if i == 0 else 2 * hidden, hidden, batch_first=True)
                        for d in ("fwd", "bwd")
                    }
                )
                for i in range(layers)
            )

    def forward(self, ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        # the quirk's pool depends on the padded length: one batch
        buckets = 1 if self.pool_includes_padding else self.length_buckets
        return encode_in_buckets(self._encode, ids, lengths, buckets)

    def _encode(self, ids: Tensor, lengths: Tensor | None) -> Tensor:
        """The sentence vectors of one padded batch."""
        mask = valid_mask(lengths, ids.shape[0], ids.shape[1], ids.device)
        h = self.embedding(ids)
        if not self.bidirectional and in_double_backward() and supports(self.rnn):
            out = recurrence(self.rnn, h)  # a double backward linear in T (models.recurrence)
        elif not self.bidirectional:
            out = self.rnn(h)[0]
        else:
            out = self._bidirectional(h, mask)
        if self.pool == "last" and self.bidirectional:
            half = out.shape[-1] // 2
            fwd = pool_time(out[..., :half], mask, "last")
            return torch.cat([fwd, out[:, 0, half:]], dim=-1)
        return pool_time(out, mask, self.pool, self.pool_includes_padding)

    def _bidirectional(self, h: Tensor, mask: Tensor) -> Tensor:
        for i, pair in enumerate(self.rnn):
            if i > 0 and self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
            fwd = pair["fwd"](h)[0]
            bwd = reverse_within_lengths(pair["bwd"](reverse_within_lengths(h, mask))[0], mask)
            h = torch.cat([fwd, bwd], dim=-1)
        return h
