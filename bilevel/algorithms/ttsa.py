"""TTSA (Hong, Wai, Wang, Yang, "A Two-Timescale Stochastic Algorithm Framework for Bilevel
Optimization", SIAM J. Optim. 2023, Algorithm 1).

    for t:  y_{t+1} = y_t − β ∇ᵧG(x_t, y_t)                      (lower: SGD, one step)
            h_t = ∇ₓF − ∇²ₓᵧG · Qη Π_{j=1}^{k}(I − η∇²ᵧᵧG_j) ∇ᵧF,  k ~ U{0..Q−1}
                                            at (x_t, y_{t+1})   (Neumann, randomized; GW18)
            x_{t+1} = x_t − α h_t                                  (torch.optim.SGD)

Two time scales for a run of known length T (the paper's result for a smooth, possibly
non-convex upper level, which is the case of every network task here: constant steps chosen
from the total iteration number, α ∝ T^{−3/5}, β ∝ T^{−2/5}, giving E‖∇Φ‖² = O(T^{−2/5})):

    α = α₀·max(1, T/T₀)^{−3/5},   β = β₀·max(1, T/T₀)^{−2/5}       constant over the run

(``decay_clock='horizon'``, ``upper_decay=0.6``, ``lower_decay=0.4``, T₀ = ``decay_time``; T
is the trainer's ``max_steps``, given to the algorithm as ``problem.horizon``). α₀, β₀ are the
tuned constant rates of the released code; the paper fixes the exponents, not the constants,
so T₀ says for which run length α₀, β₀ are the steps: shorter runs keep them (the cap plays
the part of the theorem's upper bounds on the steps), longer runs shrink them, α faster than β.
``decay_clock='iteration'`` decays per iteration instead, α_t = α₀(1 + t/T₀)^{−3/5},
β_t = β₀(1 + t/T₀)^{−2/5}, with time constant T₀; with T₀ = 1 (this suite's former default)
the upper step falls to α₀·10⁻³ after 10⁵ iterations, which stalls a paper-length run. The
released AccBO/UniBiO code keeps both steps constant (quirk Q17): ``upper_decay=0
lower_decay=0``.
"""

from bilevel.algorithms.base import LowerEstimateUpper


class TTSA(LowerEstimateUpper):
    """TTSA: one SGD step on y, randomized-truncation Neumann, SGD on x, two time scales
    (horizon-dependent constant steps by default; see the module docstring)."""

    name = "ttsa"
