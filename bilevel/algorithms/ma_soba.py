"""MA-SOBA (Chen, Xu, Zhang, "Optimal Algorithms for Stochastic Bilevel Optimization under
Relaxed Smoothness Conditions", 2023, Algorithm 1): SOBA with a moving-average upper direction.

    all at (x_t, y_t, z_t), one lower batch B and one upper batch B':
    y_{t+1} = y_t − γ∇ᵧG(B);  z_{t+1} = Proj(z_t − ν(∇²ᵧᵧG(B)z_t − ∇ᵧF(B')))
    h_t = ∇ₓF(B') − ∇²ₓᵧG(B) z_t;  u_{t+1} = (1−θ)u_t + θh_t;  x_{t+1} = x_t − α u_{t+1}
The moving average is torch.optim.SGD with dampening = momentum = 1−θ (upper: moving_average).
"""

from bilevel.algorithms.soba import SOBA


class MASOBA(SOBA):
    """MA-SOBA: SOBA's simultaneous updates with a moving average of the hypergradient."""

    name = "ma_soba"
