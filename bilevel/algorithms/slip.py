"""SLIP (Gong, Hao, Liu, "A Nearly Optimal Single Loop Algorithm for Stochastic Bilevel
Optimization under Unbounded Smoothness", ICML 2024, Algorithm 1).

    y_0 ← T0 SGD steps on g(x_0, ·)                       warm start (lower.warm_start_with)
    for t, simultaneously at (x_t, y_t, z_t):
        y_{t+1} = y_t − γ∇ᵧG(B)                                      (lower: SGD, one step)
        z_{t+1} = z_t − ν(∇²ᵧᵧG(B)·z_t − ∇ᵧF(B'))                    (estimator: ZSGD)
        h_t = ∇ₓF(B') − ∇²ₓᵧG(B)·z_t
        m_t = βm_{t−1} + (1−β)h_t;  x_{t+1} = x_t − η m_t/‖m_t‖      (NormalizedSGD)
Single loop, no periodic inner loop: its running-time advantage over BO-REP. The released code
warm-starts on every iteration of epoch 0 (quirk Q15); here it is done once, as in the paper.
"""

from bilevel.algorithms.soba import SOBA


class SLIP(SOBA):
    """SLIP: SOBA's single-batch simultaneous updates with a warm start and normalized momentum."""

    name = "slip"
