"""UniBiO (bilevel optimization with a uniformly convex lower level, ICLR 2026, Algorithms 1-2).

y_0 ← Epoch-SGD(x_0, y_init)                      warm start         (lower.warm_start_with)
for t:  if t mod I = 0: y ← Epoch-SGD(x_t, y)   periodic update, shrinking ball (EpochSGD)
        ĥ_t = LLUC hypergradient at (x_t, y): Neumann series on the preconditioned Hessian
              D⁻¹∇²ᵧᵧG, D = (p−1)|y|^{p−2} (change of variable ŷ = y^{p−1})   (Neumann, lluc_p)
        m_t = βm_{t−1} + (1−β)ĥ_t;  x_{t+1} = x_t − η m_t/‖m_t‖             (NormalizedSGD)
"""

from bilevel.algorithms.base import LowerEstimateUpper


class UniBiO(LowerEstimateUpper):
    """UniBiO: periodic Epoch-SGD lower level + LLUC Neumann estimator + normalized momentum."""

    name = "unibio"
