"""Sequence masks and pooling over time that ignore padding (quirk B-Q26 / A-Q26 as an option).

Padding is defined by ``lengths`` alone: position t of sequence b is padding iff
t >= lengths[b]. The token ids found at padding positions never matter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Pool = Literal["max", "mean", "last"]


def valid_mask(lengths: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor:
    """[B, T] bool, True at real tokens. ``lengths=None`` means every position is real.

    Lengths are clamped to at least 1: an empty sentence is one padding token (the reference
    gives it length 1 and a zero vector), so every pool has something to pool."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    lengths = lengths.to(device).clamp(min=1)
    return torch.arange(steps, device=device)[None, :] < lengths[:, None]


def pool_time(out: Tensor, mask: Tensor, pool: Pool, pool_includes_padding: bool = False) -> Tensor:
    """Pool ``out`` [B, T, D] over time with the real-token ``mask`` [B, T] -> [B, D].

    * ``max``: max over real tokens (padding filled with -inf before the max);
    * ``mean``: sum over real tokens / number of real tokens;
    * ``last``: the output at the last real token.

    ``pool_includes_padding=True`` is the reference encoder (quirk Q26): the padded output is
    zero at padding positions (``pad_packed_sequence``) and the pool runs over all T positions,
    so a max-pool sees those zeros (a feature negative at every real token pools to 0, and the
    result depends on how much the batch was padded). The reference mean-pool divides the padded
    sum by the true lengths, which is exact: both modes give the same mean.
    """
    m = mask[..., None]
    if pool == "max":
        if pool_includes_padding:
            return out.masked_fill(~m, 0.0).max(dim=1).values
        # -inf added at padding rather than filled in: the same values and argmax, and a
        # backward that passes the gradient through instead of masking a [B, T, D] copy of it
        # (a masked_fill costs a clone and a fill each way: 2.5x the pool's time with an HVP)
        # (out of place: a mask batched by torch.func.vmap cannot fill an unbatched buffer)
        padding = torch.zeros((), dtype=out.dtype, device=out.device).masked_fill(~m, -torch.inf)
        return (out + padding).max(dim=1).values
    if pool == "mean":
        total = out.masked_fill(~m, 0.0).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).to(out.dtype)
    if pool == "last":
        last = mask.sum(dim=1) - 1  # [B]
        index = last[:, None, None].expand(-1, 1, out.shape[-1])
        return out.gather(1, index).squeeze(1)
    raise ValueError(f"unknown pool {pool!r}: expected 'max', 'mean' or 'last'")


MIN_BUCKET = 64  # sentences per length bucket at least: smaller chunks cost more than they save


def length_buckets(
    ids: Tensor, lengths: Tensor | None, buckets: int
) -> tuple[Tensor, list[int], list[int]] | None:
    """How to run a CPU batch as ``buckets`` chunks of similar lengths: (the batch order sorted
    by length, the chunk sizes, each chunk's longest length), or None when it runs as one batch
    (one bucket, no lengths, an accelerator, fewer than 2 × :data:`MIN_BUCKET` sentences).

    An encoder's cost on a CPU is batch × padded length; a chunk padded only to its own longest
    sentence skips most of the padding (SNLI-like batches: mean ≈ 15 tokens, longest ≈ 45)."""
    n = min(buckets, ids.shape[0] // MIN_BUCKET)
    if n < 2 or lengths is None or ids.device.type != "cpu":
        return None
    lengths = lengths.clamp(min=1)
    order = torch.argsort(lengths)
    sizes = [len(c) for c in order.tensor_split(n)]
    ends = torch.tensor(sizes).cumsum(0) - 1
    return order, sizes, lengths[order[ends]].tolist()  # host tensors (CPU only): no sync


def encode_in_buckets(
    encode: Callable[[Tensor, Tensor | None], Tensor],
    ids: Tensor,
    lengths: Tensor | None,
    buckets: int,
) -> Tensor:
    """``encode(ids, lengths)`` -> [B, D] run on the length buckets of :func:`length_buckets`
    (each chunk cut to its longest sentence), the vectors put back in batch order. Exact for an
    encoder whose vector of a sentence depends only on its own real tokens (padding masked)."""
    plan = length_buckets(ids, lengths, buckets)
    if plan is None:
        return encode(ids, lengths)
    order, sizes, longest = plan
    parts = [
        encode(ids[idx, :steps], lengths[idx])
        for idx, steps in zip(order.split(sizes), longest, strict=True)
    ]
    return torch.cat(parts).index_select(0, torch.argsort(order))
