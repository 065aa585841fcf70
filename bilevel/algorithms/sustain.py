"""SUSTAIN (Khanduri, Zeng, Hong, Wai, Wang, Yang, "A Near-Optimal Algorithm for Stochastic
Bilevel Optimization via Double-Momentum", NeurIPS 2021, Algorithm 1).

STORM recursive momentum at both levels, each correction taken on the SAME sample at the
current and the previous point (iteration t computes d_t, then steps):

    ξ̄_t ← one hypergradient sample (batches + Neumann truncation k);  ζ_t ← one lower batch
    d^x_t = h(x_t, y_t; ξ̄_t) + (1 − η_t)(d^x_{t−1} − h(x_{t−1}, y_{t−1}; ξ̄_t)),  d^x_0 = h(x_0, y_0)
    d^y_t = ∇ᵧg(x_t, y_t; ζ_t) + (1 − η_t)(d^y_{t−1} − ∇ᵧg(x_{t−1}, y_{t−1}; ζ_t))
    x_{t+1} = x_t − α_t d^x_t   (upper rule fed d^x: SGD);   y_{t+1} = y_t − β_t d^y_t

h is the estimator (default: Neumann ``randomized``, s = Qη_N (I − η_N H)^k ∇ᵧf with k ~ U{0..Q−1},
as the paper's h_f); ``draw`` then ``estimate(sample=...)`` evaluates one ξ̄ at both points.

Step sizes (``schedule``): ``constant`` (default), ``iteration`` α_t = α_0·(w/(w+t))^{1/3} with
w = ``decay_offset`` (the paper's α_t = κ/(w+t)^{1/3}; w = 1 gives α_0/(t+1)^{1/3}), or ``epoch``
α_0·(e+1)^{−1/3} in epoch e (the released code, quirk Q17). β_t follows α_t. ``eta_decay``
also decays η_t = η_0·(α_t/α_0)² (the paper's η_{t+1} = cα_t²). ``truncation_index='independent'``
draws a second k for the previous point (the released code, quirk Q18); the two-step lag of
the released DC code (Q19) is not offered.

Reported ``state.hypergrad``: value = d^x_t (the direction of the x step), grad_x_f = the same
recursion on ∇ₓf, second_order = their difference.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from bilevel import tree
from bilevel.algorithms.base import Algorithm, State, UpperFactory
from bilevel.hypergrad import Estimator, Hypergrad, Sample
from bilevel.problem import Problem
from bilevel.tree import Params
from bilevel.upper import apply, storm

Schedule = Literal["constant", "iteration", "epoch"]


class SUSTAIN(Algorithm):
    """SUSTAIN: same-sample STORM estimators of the hypergradient and of ∇ᵧg."""

    name = "sustain"

    def __init__(
        self,
        estimator: Estimator,
        upper: UpperFactory,
        y_lr: float = 5e-2,
        eta: float = 0.9,
        schedule: Schedule = "constant",
        decay_offset: float = 1.0,
        eta_decay: bool = False,
        truncation_index: Literal["shared", "independent"] = "shared",
    ):
        self.estimator, self.upper = estimator, upper
        self.y_lr, self.eta = y_lr, eta
        self.schedule, self.decay_offset, self.eta_decay = schedule, decay_offset, eta_decay
        self.truncation_index = truncation_index

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        state = self.new_state(x, y)
        for group in state.upper.param_groups:  # as torch.optim.lr_scheduler: kept in its state
            group.setdefault("initial_lr", group["lr"])
        state.extra = {"d_x": None, "d_fx": None, "d_y": None, "x_prev": None, "y_prev": None}
        return state

    def decay(self, problem: Problem, t: int) -> float:
        """α_t / α_0 (= β_t / β_0)."""
        if self.schedule == "iteration":
            w = self.decay_offset
            return (w / (w + t)) ** (1 / 3)
        if self.schedule == "epoch":
            return (t // problem.task.steps_per_epoch + 1) ** (-1 / 3)
        return 1.0

    def _previous_sample(self, problem: Problem, sample: Sample) -> Sample:
        """The sample for the previous point: the same one, or (Q18) a fresh truncation index."""
        if self.truncation_index == "shared" or sample.k is None:
            return sample
        other = self.estimator.draw(problem)
        lower = sample.lower + other.lower[len(sample.lower) :]  # enough Hessian batches for k'
        return dataclasses.replace(sample, k=other.k, lower=lower)

    def step(self, problem: Problem, state: State) -> State:
        x, y, ex = state.x, state.y, state.extra
        sample = self.estimator.draw(problem)
        batch = problem.lower_batch()
        h_prev = gy_prev = None
        if ex["x_prev"] is not None:
            # previous point first, on a scratch copy of the estimator's state (a z-SGD z is
            # then the same at both points and advanced once, by the current point)
            h_prev = self.estimator.estimate(
                problem,
                ex["x_prev"],
                ex["y_prev"],
                dict(state.estimator),
                self._previous_sample(problem, sample),
            )
            gy_prev = problem.oracles.grad_y_g(ex["x_prev"], ex["y_prev"], batch)
        h = self.estimator.estimate(problem, x, y, state.estimator, sample)
        gy = problem.oracles.grad_y_g(x, y, batch)

        s = self.decay(problem, state.t)
        keep = 1.0 - (min(1.0, self.eta * s * s) if self.eta_decay else self.eta)
        ex["d_x"] = storm(ex["d_x"], h.value, h_prev and h_prev.value, keep)
        ex["d_fx"] = storm(ex["d_fx"], h.grad_x_f, h_prev and h_prev.grad_x_f, keep)
        ex["d_y"] = storm(ex["d_y"], gy, gy_prev, keep)
        state.hypergrad = Hypergrad(ex["d_x"], ex["d_fx"], tree.sub(ex["d_fx"], ex["d_x"]))

        ex["x_prev"], ex["y_prev"] = tree.clone(x), tree.clone(y)
        for group in state.upper.param_groups:
            group["lr"] = group["initial_lr"] * s
        apply(state.upper, x, ex["d_x"])
        tree.add_(y, ex["d_y"], alpha=-self.y_lr * s)
        state.t += 1
        return state
