"""TTSA (Hong, Wai, Wang, Yang, "A Two-Timescale Stochastic Algorithm Framework for Bilevel
Optimization", SIAM J. Optim. 2023, Algorithm 1).

    for t:  y_{t+1} = y_t − β_t ∇ᵧG(x_t, y_t)                    (lower: SGD, one step)
            h_t = ∇ₓF − ∇²ₓᵧG · Qη Π_{j=1}^{k}(I − η∇²ᵧᵧG_j) ∇ᵧF,  k ~ U{0..Q−1}
                                            at (x_t, y_{t+1})   (Neumann, randomized; GW18)
            x_{t+1} = x_t − α_t h_t                                (torch.optim.SGD)
    two time scales: α_t = α₀(t+1)^{−3/5}, β_t = β₀(t+1)^{−2/5} (upper_decay, lower_decay)
The released AccBO/UniBiO code keeps both step sizes constant (quirk Q17): set both decays to 0.
"""

from bilevel.algorithms.base import LowerEstimateUpper


class TTSA(LowerEstimateUpper):
    """TTSA: one SGD step on y, randomized-truncation Neumann, SGD on x, two time scales."""

    name = "ttsa"
