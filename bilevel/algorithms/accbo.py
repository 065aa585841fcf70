"""AccBO (Gong, Hao, Liu, "An Accelerated Algorithm for Stochastic Bilevel Optimization under
Unbounded Smoothness", NeurIPS 2024, Algorithm 1) and VR-AdamBO (its Adam-upper variant).

    y_0 ← warm start on g(x_0, ·); ŷ_0 = y_0; d_{−1} = 0            (lower: SNAG, warm start)
    for t:  w_t = y_t + θ(y_t − y_{t−1});  y_{t+1} = w_t − γ∇ᵧG(x_t, w_t; π_t)
            ŷ_{t+1} = (1−τ)ŷ_t + τ y_{t+1}                               (SNAG with averaging)
            h_t  = HG(x_t, ŷ_{t+1}; ξ̄_t),  h'_t = HG(x_{t−1}, ŷ_t; ξ̄_t)   SAME sample ξ̄_t
            d_t = h_t + β(d_{t−1} − h'_t)        (= βd + (1−β)h + β(h − h'); STORM)
            x_{t+1} = x_t − η d_t/‖d_t‖                    (NormalizedSGD with momentum 0)
HG is the randomized-truncation Neumann estimator. The released code corrects with the previous
iteration's estimate (another sample and point), which is not STORM (quirk Q10).
"""

from __future__ import annotations

import copy

from bilevel import tree
from bilevel.algorithms.base import DecayClock, LowerEstimateUpper, State
from bilevel.problem import Problem
from bilevel.upper import apply, storm


class AccBO(LowerEstimateUpper):
    """AccBO: SNAG lower level + randomized Neumann + STORM recursive momentum + normalized step.

    ``beta``: the STORM weight β."""

    name = "accbo"

    def __init__(
        self,
        lower,
        estimator,
        upper,
        beta: float = 0.9,
        upper_decay: float = 0.0,
        lower_decay: float = 0.0,
        decay_clock: DecayClock = "iteration",
        decay_time: float = 1.0,
    ):
        super().__init__(lower, estimator, upper, upper_decay, lower_decay, decay_clock, decay_time)
        self.beta = beta

    def step(self, problem: Problem, state: State) -> State:
        self.schedule(problem, state)
        ex = state.extra
        y_hat_prev = tree.clone(self.lower.point(state.y, state.lower))
        self.lower.update(problem, state.x, state.y, state.lower, state.t)
        y_hat = self.lower.point(state.y, state.lower)
        sample = self.estimator.draw(problem)
        previous = copy.deepcopy(state.estimator) if "x_prev" in ex else None
        state.hypergrad = self.estimator.estimate(problem, state.x, y_hat, state.estimator, sample)
        h_prev = None
        if previous is not None:  # the same sample at the previous point (x_{t−1}, ŷ_t)
            h_prev = self.estimator.estimate(
                problem, ex["x_prev"], y_hat_prev, previous, sample
            ).value
        ex["d"] = storm(ex.get("d"), state.hypergrad.value, h_prev, self.beta)
        ex["x_prev"] = tree.clone(state.x)
        apply(state.upper, state.x, ex["d"])
        state.t += 1
        return state


class VRAdamBO(AccBO):
    """VR-AdamBO — an EXTENSION, not a published algorithm box: the ICLR 2025 submission of
    AdamBO described VR-AdamBO as "a generalization of AccBO" with an Adam upper step; no code or
    final paper version exists (spec BOREP-SLIP-ADAMBO §2.3). Here: AccBO's recipe (SNAG lower
    level, randomized Neumann, STORM momentum d_t) with x updated by torch.optim.Adam fed d_t."""

    name = "vr_adambo"
