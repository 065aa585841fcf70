"""Arithmetic on parameter dicts (``Params``: name -> tensor), the pytrees x, y and z live in.

Every helper works on whole dicts with ``torch._foreach_*`` kernels where that helps, so that an
update of a model with many tensors is a handful of kernel launches, not one per tensor op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]


def zeros_like(p: Mapping[str, Tensor]) -> Params:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def clone(p: Mapping[str, Tensor]) -> Params:
    """Detached copies (a snapshot that later in-place updates do not change)."""
    return {k: v.detach().clone() for k, v in p.items()}


def detach(p: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in p.items()}


def leaves(p: Mapping[str, Tensor], requires_grad: bool = True) -> Params:
    """Fresh autograd leaves sharing storage with ``p`` (no copy)."""
    return {k: v.detach().requires_grad_(requires_grad) for k, v in p.items()}


def map_(fn: Callable[[Tensor], Tensor], p: Mapping[str, Tensor]) -> Params:
    return {k: fn(v) for k, v in p.items()}


def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float = 1.0) -> Params:
    """a + alpha * b."""
    out = torch._foreach_add(list(a.values()), list(b.values()), alpha=alpha)
    return dict(zip(a.keys(), out, strict=True))


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    return add(a, b, alpha=-1.0)


def scale(a: Mapping[str, Tensor], c: float | Tensor) -> Params:
    out = torch._foreach_mul(list(a.values()), c)
    return dict(zip(a.keys(), out, strict=True))


def lerp(a: Mapping[str, Tensor], b: Mapping[str, Tensor], weight: float) -> Params:
    """(1 - weight) * a + weight * b."""
    out = torch._foreach_lerp(list(a.values()), list(b.values()), weight)
    return dict(zip(a.keys(), out, strict=True))


def add_(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float | Tensor = 1.0) -> None:
    """In place: a += alpha * b (alpha may be a 0-d tensor, e.g. a normalised step size)."""
    with torch.no_grad():
        if isinstance(alpha, Tensor):
            torch._foreach_add_(list(a.values()), torch._foreach_mul(list(b.values()), alpha))
        else:
            torch._foreach_add_(list(a.values()), list(b.values()), alpha=alpha)


def copy_(dst: Mapping[str, Tensor], src: Mapping[str, Tensor]) -> None:
    """In place: dst <- src."""
    with torch.no_grad():
        for k, v in dst.items():
            v.copy_(src[k])


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """<a, b> summed over every tensor, as a 0-d tensor (no host sync)."""
    terms = [torch.sum(a[k] * b[k]) for k in a]
    return torch.stack(terms).sum()


def sq_norm(a: Mapping[str, Tensor]) -> Tensor:
    """Σ‖a_k‖², twice differentiable everywhere (a regulariser may use it: ``_foreach_norm``
    has no second derivative at a zero tensor)."""
    return torch.stack([v.square().sum() for v in a.values()]).sum()


def norm(a: Mapping[str, Tensor]) -> Tensor:
    """Global Euclidean norm over all tensors, as a 0-d tensor."""
    return sq_norm(a).sqrt()


def tensor_norms(a: Mapping[str, Tensor]) -> Params:
    """One norm per tensor (for per-tensor normalisation)."""
    return dict(zip(a.keys(), torch._foreach_norm(list(a.values())), strict=True))


def flatten(a: Mapping[str, Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1) for v in a.values()])


def unflatten(vec: Tensor, like: Mapping[str, Tensor]) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i : i + n].view_as(v)
        i += n
    return out


def numel(a: Mapping[str, Tensor]) -> int:
    return sum(v.numel() for v in a.values())


def project_ball(
    a: Mapping[str, Tensor], center: Mapping[str, Tensor] | None, radius: float
) -> Params:
    """Euclidean projection of ``a`` onto the ball of ``radius`` around ``center`` (0 if None)."""
    diff = dict(a) if center is None else sub(a, center)
    factor = torch.clamp(radius / (norm(diff) + 1e-12), max=1.0)
    diff = scale(diff, factor)
    return diff if center is None else add(center, diff)
