"""AdamBO (Gong, Hao, Liu, "Adam-type Algorithms for Bilevel Optimization under Unbounded
Smoothness", TMLR 2026 / arXiv 2503.03908, Algorithm 1).

    y_0 ← T0 SGD steps on g(x_0, ·)                       initialization refinement (warm start)
    for t:  y_{t+1} = y_t − γ∇ᵧG(x_t, y_t)                            (lower: SGD, one step)
            h_t = ∇ₓF − ∇²ₓᵧG · η_N Σ_{q<Q} Π_j(I − η_N∇²ᵧᵧG_{q,j}) ∇ᵧF  (Neumann, per-term
                                                                      samples ζ^{(q,j)})
            x_{t+1} = Adam(h_t): m ← β₁m + (1−β₁)h, v ← β₂v + (1−β₂)h², x ← x − η m̂/(√v̂ + λ)
Adam is torch.optim.Adam fed the hypergradient (upper: adam; paper β = 1 − β₁ = 0.1, λ = 1e-8,
no weight decay; the released code uses a coupled weight decay 0.01, quirk Q4).
"""

from bilevel.algorithms.base import LowerEstimateUpper


class AdamBO(LowerEstimateUpper):
    """AdamBO: warm-started one-step SGD lower level + Neumann hypergradient + Adam on x."""

    name = "adambo"
