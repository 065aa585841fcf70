"""Upper-level update rules that torch.optim lacks. The others are stock ``torch.optim``:
SGD (``torch.optim.SGD``), moving-average momentum u ← βu + (1−β)h (``SGD(momentum=β,
dampening=β)``, MA-SOBA), and Adam (``torch.optim.Adam``, AdamBO). Every rule is fed the
hypergradient through ``.grad`` (:func:`apply`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from bilevel import tree
from bilevel.tree import Params


class NormalizedSGD(torch.optim.Optimizer):
    """Normalized SGD with momentum (BO-REP Alg. 1, SLIP, AccBO, UniBiO Alg. 2).

    m ← βm + (1−β)g;  x ← x − lr·m/(‖m‖ + eps). ``per_tensor=False`` normalises by the global
    norm over all parameters (the papers); ``True`` divides each tensor's step by its own norm
    (the released AUC code). ``momentum=0`` gives normalized SGD (AccBO applies it to a STORM
    estimate). No host sync: the norm stays a tensor.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.9,
        per_tensor: bool = False,
        eps: float = 1e-10,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, per_tensor=per_tensor, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(st["momentum_buffer"])
            beta = group["momentum"]
            torch._foreach_lerp_(bufs, [p.grad for p in params], 1 - beta)
            norms = torch._foreach_norm(bufs)
            if group["per_tensor"]:
                for p, b, n in zip(params, bufs, norms, strict=True):
                    p.sub_(b * (group["lr"] / (n + group["eps"])))
            else:
                total = torch.stack(norms).square().sum().sqrt()
                step = torch._foreach_mul(bufs, -group["lr"] / (total + group["eps"]))
                torch._foreach_add_(params, step)


def apply(optimizer: torch.optim.Optimizer, x: Params, direction: Params) -> None:
    """One step of ``optimizer`` on the tensors of x with ``direction`` as their gradient."""
    for k, v in x.items():
        v.grad = direction[k]
    optimizer.step()
    for v in x.values():
        v.grad = None


def storm(d_prev: Params | None, h: Params, h_prev_point: Params | None, beta: float) -> Params:
    """Recursive momentum (STORM, Cutkosky–Orabona 2019; SUSTAIN; AccBO Eq. m_t):

    d_t = h_t + β(d_{t−1} − h'_t), where h'_t is the estimator at the previous point on the SAME
    sample as h_t. Equivalent to βd_{t−1} + (1−β)h_t + β(h_t − h'_t). First call: d_0 = h_0.
    """
    if d_prev is None or h_prev_point is None:
        return dict(h)
    return tree.add(h, tree.sub(d_prev, h_prev_point), alpha=beta)
