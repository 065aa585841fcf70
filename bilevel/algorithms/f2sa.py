"""F2SA (Kwon, Kwon, Wright, Nowak, "A Fully First-Order Method for Stochastic Bilevel
Optimization", ICML 2023, Algorithm 1 with one inner step, as the released SLIP-code baseline).

Penalty reformulation min_x L_λ(x) = min_y [f(x, y) + λg(x, y)] − λ min_z g(x, z), whose gradient
∇ₓf(x, y_λ) + λ(∇ₓg(x, y_λ) − ∇ₓg(x, z*)) is ∇Φ(x) + O(1/λ). First-order oracles only:

    z_{t+1} = z_t − ν ∇ᵧg(x_t, z_t; φ_z)                       (lower strategy on z: SGD)
    y_{t+1} = y_t − α (∇ᵧf(x_t, y_t; ζ_y) + λ_t ∇ᵧg(x_t, y_t; φ_y))
    x_{t+1} = x_t − η (∇ₓf(x_t, y_{t+1}; ζ_x)
                     + λ_t (∇ₓg(x_t, y_{t+1}; φ_xy) − ∇ₓg(x_t, z_{t+1}; φ_xz)))   (upper rule: SGD)
    λ_{t+1} = min(λ_t + δ, λ_max)        every iteration, or once per epoch (``lam_schedule``)

Every term on its own fresh batch (matching sample weights within a batch: the released cleaning
code swaps them between the y and z batches, quirk Q21; Q22/Q23 concern its meta-learning task).
With a constant y step, keep α(L_f + λ_max L_g) < 2 (``lam_max``).

Step sizes (:class:`~bilevel.algorithms.base.DecayingSteps`): constant by default, as the released
code. The paper's analysis (Kwon et al. 2023, Alg. 1 and Thm 3.1) takes decaying steps while λ
grows, x and y on one sequence α_k (x: ξα_k, y: α_k) and z on its own γ_k, so that the noise
the penalty λ multiplies dies out: ``upper_decay`` scales the x AND y steps by s(t) (same
exponent, as α_k), ``lower_decay`` the z step (γ_k), with ``decay_clock`` and ``decay_time``.

Reported ``state.hypergrad``: value = the x direction, grad_x_f = ∇ₓf, second_order =
λ(∇ₓg(x, z) − ∇ₓg(x, y)) (the first-order stand-in for ∇²ₓᵧg·[∇²ᵧᵧg]⁻¹∇ᵧf). The trainer
evaluates at y (the penalised lower iterate, as the released code); z is ``state.extra['z']``.
"""

from __future__ import annotations

from typing import Literal

from bilevel import tree
from bilevel.algorithms.base import Algorithm, DecayClock, DecayingSteps, State, UpperFactory
from bilevel.hypergrad import Hypergrad
from bilevel.lower import LowerStrategy
from bilevel.problem import Problem
from bilevel.tree import Params
from bilevel.upper import apply


class F2SA(DecayingSteps, Algorithm):
    """F2SA: first-order penalty method with two lower copies (y for f + λg, z for g) and λ ↑."""

    name = "f2sa"

    def __init__(
        self,
        lower: LowerStrategy,
        upper: UpperFactory,
        y_lr: float = 5e-2,
        lam0: float = 0.5,
        lam_step: float = 0.1,
        lam_schedule: Literal["iteration", "epoch"] = "iteration",
        lam_max: float | None = None,
        upper_decay: float = 0.0,
        lower_decay: float = 0.0,
        decay_clock: DecayClock = "iteration",
        decay_time: float = 1.0,
    ):
        self.init_decay(upper_decay, lower_decay, decay_clock, decay_time)
        self.lower, self.upper = lower, upper
        self.y_lr, self.lam0, self.lam_step = y_lr, lam0, lam_step
        self.lam_schedule, self.lam_max = lam_schedule, lam_max

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        z = tree.clone(y)
        state = State(
            x=x,
            y=y,
            upper=self.upper(list(x.values())),
            lower=self.lower.init_state(z),
            extra={"z": z, "lam": float(self.lam0)},
        )
        state.extra["upper_lr0"] = [g["lr"] for g in state.upper.param_groups]
        self.lower.warm_start(problem, x, z, state.lower)
        return state

    def step(self, problem: Problem, state: State) -> State:
        x, y, ex = state.x, state.y, state.extra
        lam, oracles = ex["lam"], problem.oracles
        self.schedule(problem, state)  # x step ξα_t (optimizer lr) and z step γ_t (lower)
        y_lr = self.y_lr * self.step_scale(self.upper_decay, state.t, problem.horizon)  # α_t
        # z: the lower-level problem alone
        self.lower.update(problem, x, ex["z"], state.lower, state.t)
        z = self.lower.point(ex["z"], state.lower)
        # y: SGD on f + λg
        fy = oracles.grad_f(x, y, problem.upper_batch(), wrt_x=False).y
        gy = oracles.grad_y_g(x, y, problem.lower_batch())
        tree.add_(y, tree.add(fy, gy, alpha=lam), alpha=-y_lr)
        # x: ∇ₓf + λ(∇ₓg(x, y) − ∇ₓg(x, z)) at the new y and z
        fx = oracles.grad_f(x, y, problem.upper_batch()).x
        gxy = oracles.grad_x_g(x, y, problem.lower_batch())
        gxz = oracles.grad_x_g(x, z, problem.lower_batch())
        penalty = tree.scale(tree.sub(gxz, gxy), lam)
        state.hypergrad = Hypergrad(tree.sub(fx, penalty), fx, penalty)
        apply(state.upper, x, state.hypergrad.value)
        state.t += 1
        if self.lam_schedule == "iteration" or state.t % problem.task.steps_per_epoch == 0:
            lam += self.lam_step
            ex["lam"] = lam if self.lam_max is None else min(lam, self.lam_max)
        return state
