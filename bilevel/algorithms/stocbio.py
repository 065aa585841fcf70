"""StocBiO (Ji, Yang, Liang, "Bilevel Optimization: Convergence Analysis and Enhanced Design",
ICML 2021, Algorithm 2).

    for t:  y ← D SGD steps on g(x_t, ·), warm-started from the previous y   (lower: SGD, steps=D)
            h_t = ∇ₓF − ∇²ₓᵧG · η Σ_{q=0}^{Q−1} Π_{j}(I − η∇²ᵧᵧG_j) ∇ᵧF       (Neumann, textbook,
                                                     independent Hessian and Jacobian batches)
            x_{t+1} = x_t − α h_t                                                (torch.optim.SGD)
"""

from bilevel.algorithms.base import LowerEstimateUpper


class StocBiO(LowerEstimateUpper):
    """StocBiO: multi-step SGD lower level + Neumann hypergradient + SGD upper step."""

    name = "stocbio"
