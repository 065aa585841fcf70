"""Lower-level regularisers of the real tasks (one place for the papers' and the codes' forms).

* ``l2``      (coef/2)·Σ‖P‖²          the papers' L2 penalty (strongly convex; the default)
* ``l2_norm`` coef·sqrt(Σ‖P‖²)         the RNN reference code's un-squared norm (quirks B-Q1,
                                        A-Q25): not smooth at 0, Hessian ∝ 1/‖P‖ near it
* ``p_norm``  coef·Σ_i |P_i|^p / p     UniBiO's uniformly convex penalty of order p (A-Q25, UNI)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from bilevel import tree
from bilevel.tree import Params

RegType = Literal["l2", "l2_norm", "p_norm"]


def regularizer(params: Params, coef: float, kind: RegType = "l2", p: float = 2.0) -> Tensor:
    """The penalty of ``kind`` on ``params`` (twice differentiable except ``l2_norm`` at 0)."""
    if coef == 0:
        first = next(iter(params.values()))
        return torch.zeros((), dtype=first.dtype, device=first.device)
    if kind == "l2":
        return 0.5 * coef * tree.sq_norm(params)
    if kind == "l2_norm":
        return coef * tree.sq_norm(params).sqrt()
    if kind == "p_norm":
        return coef * torch.stack([v.abs().pow(p).sum() for v in params.values()]).sum() / p
    raise ValueError(f"unknown regularizer {kind!r}; choose from l2, l2_norm, p_norm")


def uniform_convexity_order(kind: RegType, coef: float, p: float = 2.0) -> float | None:
    """The order of uniform convexity the penalty gives the lower level (``Task.
    uniform_convexity_p``): 2 for ``l2``, p for ``p_norm`` with p ≥ 2; None for ``l2_norm`` (not
    uniformly convex, not smooth at 0), for ``p_norm`` with p < 2, and without a penalty."""
    if kind not in ("l2", "l2_norm", "p_norm"):
        raise ValueError(f"unknown regularizer {kind!r}; choose from l2, l2_norm, p_norm")
    if coef <= 0 or kind == "l2_norm":
        return None
    if kind == "l2":
        return 2.0
    return float(p) if p >= 2 else None
