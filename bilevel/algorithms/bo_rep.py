"""BO-REP (Hao, Gong, Liu, "Bilevel Optimization under Unbounded Smoothness: A New Algorithm
and Convergence Analysis", ICLR 2024, Algorithms 1-3).

    y_0 ← Epoch-SGD on g(x_0, ·)            initialization refinement (lower.warm_start_with)
    for t:  if t mod I = 0: y ← N SGD steps on g(x_t, ·)   periodic updates (SGD, interval I)
            z_{t+1} = Proj_{‖z‖≤R}(z_t − ν(∇²ᵧᵧG·z_t − ∇ᵧF))                  (estimator: ZSGD)
            h_t = ∇ₓF − ∇²ₓᵧG·z_t
            m_t = βm_{t−1} + (1−β)h_t;  x_{t+1} = x_t − η m_t/‖m_t‖          (NormalizedSGD)
"""

from bilevel.algorithms.base import LowerEstimateUpper


class BOREP(LowerEstimateUpper):
    """BO-REP: periodic lower updates with refinement + z-SGD estimator + normalized momentum."""

    name = "bo_rep"
