"""BERT-style transformer encoder, randomly initialised: AdamBO's TREC model (spec B §4.5).

Reference: ``transformers.BertModel`` with a fresh config (hidden 768, 8 layers, 8 heads,
FFN 2048, vocab 30522, 512 positions, dropout 0.1, GELU), not pretrained; the pooled output
(tanh dense on [CLS]) -> dropout -> head. Here the same architecture from ``torch.nn``:

* token + learned position (+ optional token-type) embeddings -> LayerNorm -> dropout;
* ``nn.TransformerEncoder`` of post-LN layers (``norm_first=False``, as BERT: residual, then
  LayerNorm; eps 1e-12), exact (erf) GELU; ``norm_first=True`` gives pre-LN layers plus a
  final LayerNorm instead;
* a key-padding mask built from ``lengths`` (padding is never attended to);
* pooling: ``'cls'`` = position 0 (the tokenizer's [CLS]; or ``cls_id`` is prepended here) or a
  masked ``'mean'`` over real tokens; then BERT's pooler (dense + tanh, ``pooler=True``);
* BERT's initialisation: every linear and embedding weight N(0, 0.02²), biases 0, the padding
  row 0, LayerNorm (1, 0). Each layer is re-initialised independently
  (``nn.TransformerEncoder`` deep-copies one layer, so its layers would start identical).

Differences from the reference, by default: dropout 0 (reference 0.1), ``max_len`` 128 position
embeddings (reference 512, of which the 128-token inputs use the first 128) and no token-type
embedding (reference 2 types, always type 0: one learned vector added to every position).
``max_len=512, type_vocab_size=2`` gives the reference's parameter count exactly.

Second order: the fused SDPA kernels have no double backward; a second-order call must run under
``sdpa_kernel(SDPBackend.MATH)``, which :func:`bilevel.oracles.second_order` sets. Nested-tensor
fast paths are off (``enable_nested_tensor=False``); the layers' inference fast path is only
taken without autograd (evaluation), where it is exact up to rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bilevel.models.pooling import encode_in_buckets, pool_time, valid_mask


class TransformerEncoder(nn.Module):
    """ids [B, T] (+ lengths [B]) -> pooled sentence vectors [B, hidden].

    Args:
        vocab_size: token table size (30522 for ``bert-base-uncased``).
        hidden, layers, heads, ffn: model width, depth, attention heads, feed-forward width.
        max_len: number of learned positions (T, plus one with ``cls_id``, must not exceed it).
        dropout: embedding, attention, feed-forward and pooled-output dropout (default 0).
        pool: ``'cls'`` (position 0) or ``'mean'`` (masked mean over real tokens).
        embeddings: an initial token table [vocab_size, hidden] (trainable); BERT init if None.
        padding_idx: the token table's padding row (``[PAD]`` = 0 in BERT's vocabulary).
        cls_id: if given, this token is prepended to every sequence (lengths + 1); if None the
            ids already start with [CLS] (the ``bert-base-uncased`` tokenizer puts 101 there).
        pooler: BERT's pooler, tanh(W·pooled + b), on the pooled vector.
        type_vocab_size: token-type embeddings (0 = none; BERT 2, every token of type 0).
        norm_first: pre-LN layers (+ final LayerNorm) instead of BERT's post-LN.
        activation, layer_norm_eps, init_std: BERT's ``gelu``, 1e-12, 0.02.
        length_buckets: on CPU, run a batch as this many chunks of similar lengths, each cut to
            its longest sentence (:func:`bilevel.models.pooling.encode_in_buckets`: the same
            vectors, less work on padding); 1: one padded batch.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int = 768,
        layers: int = 8,
        heads: int = 8,
        ffn: int = 2048,
        max_len: int = 128,
        dropout: float = 0.0,
        pool: Literal["cls", "mean"] = "cls",
        embeddings: Tensor | None = None,
        padding_idx: int | None = 0,
        cls_id: int | None = None,
        pooler: bool = True,
        type_vocab_size: int = 0,
        norm_first: bool = False,
        activation: Literal["gelu", "relu"] = "gelu",
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        length_buckets: int = 1,
    ):
        super().__init__()
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        self.length_buckets = length_buckets
        if pool not in ("cls", "mean"):
            raise ValueError(f"unknown pool {pool!r}: expected 'cls' or 'mean'")
        if embeddings is not None and tuple(embeddings.shape) != (vocab_size, hidden):
            shape = tuple(embeddings.shape)
            raise ValueError(f"embeddings have shape {shape}, expected ({vocab_size}, {hidden})")
        self.pool, self.max_len, self.cls_id, self.padding_idx = pool, max_len, cls_id, padding_idx
        self.out_dim, self.init_std = hidden, init_std
        self.token_embedding = nn.Embedding(vocab_size, hidden, padding_idx=padding_idx)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.type_embedding = nn.Embedding(type_vocab_size, hidden) if type_vocab_size else None
        self.embedding_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            ffn,
            dropout,
            activation,
            layer_norm_eps=layer_norm_eps,
            batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            layers,
            norm=nn.LayerNorm(hidden, eps=layer_norm_eps) if norm_first else None,
            enable_nested_tensor=False,
        )
        self.pooler = nn.Linear(hidden, hidden) if pooler else None
        self.reset_parameters()
        if embeddings is not None:
            with torch.no_grad():
                self.token_embedding.weight.copy_(embeddings)

    def reset_parameters(self) -> None:
        """BERT's initialisation (``BertPreTrainedModel._init_weights``)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, self.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, self.init_std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):  # the packed q, k, v projection
                nn.init.normal_(module.in_proj_weight, 0.0, self.init_std)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        return encode_in_buckets(self._encode, ids, lengths, self.length_buckets)

    def _encode(self, ids: Tensor, lengths: Tensor | None) -> Tensor:
        """The pooled vectors of one padded batch."""
        batch = ids.shape[0]
        if self.cls_id is not None:
            cls = torch.full((batch, 1), self.cls_id, dtype=ids.dtype, device=ids.device)
            ids = torch.cat([cls, ids], dim=1)
            lengths = None if lengths is None else lengths + 1
        steps = ids.shape[1]
        if steps > self.max_len:
            raise ValueError(f"sequence length {steps} exceeds max_len {self.max_len}")
        mask = valid_mask(lengths, batch, steps, ids.device)
        h = self.token_embedding(ids) + self.position_embedding.weight[:steps]
        if self.type_embedding is not None:
            h = h + self.type_embedding.weight[0]
        h = self.dropout(self.embedding_norm(h))
        h = self.encoder(h, src_key_padding_mask=None if lengths is None else ~mask)
        pooled = h[:, 0] if self.pool == "cls" else pool_time(h, mask, "mean")
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        return self.dropout(pooled)
