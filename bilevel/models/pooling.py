"""Sequence masks and pooling over time that ignore padding (quirk B-Q26 / A-Q26 as an option).

Padding is defined by ``lengths`` alone: position t of sequence b is padding iff
t >= lengths[b]. The token ids found at padding positions never matter.
"""

from __future__ import annotations

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
        filled = out.masked_fill(~m, 0.0 if pool_includes_padding else float("-inf"))
        return filled.max(dim=1).values
    if pool == "mean":
        total = out.masked_fill(~m, 0.0).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).to(out.dtype)
    if pool == "last":
        last = mask.sum(dim=1) - 1  # [B]
        index = last[:, None, None].expand(-1, 1, out.shape[-1])
        return out.gather(1, index).squeeze(1)
    raise ValueError(f"unknown pool {pool!r}: expected 'max', 'mean' or 'last'")
