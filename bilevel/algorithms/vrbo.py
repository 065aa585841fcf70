"""VRBO (Yang, Ji, Liang, "Provably Faster Algorithms for Bilevel Optimization", NeurIPS 2021,
Algorithm 1): SPIDER estimators of the hypergradient and of ∇ᵧg, refreshed by a large batch
every q iterations.

    for t:  if t mod q = 0:  S_1 ← ``checkpoint_batches`` fresh samples (one large batch)
                             v = ∇̂Φ(x_t, y_t; S_1),  u = ∇ᵧg(x_t, y_t; S_1)        (averages)
            x_{t+1} = x_t − α v                                   (upper rule fed v: SGD)
            (x̃, ỹ) ← (x_t, y_t);  y_{t,0} = y_t
            for j = 0..m−1:   y_{t,j+1} = y_{t,j} − β u;   S_2 ← one fresh sample
                v += ∇̂Φ(x_{t+1}, y_{t,j+1}; S_2) − ∇̂Φ(x̃, ỹ; S_2)
                u += ∇ᵧg(x_{t+1}, y_{t,j+1}; S_2) − ∇ᵧg(x̃, ỹ; S_2)
                (x̃, ỹ) ← (x_{t+1}, y_{t,j+1})
            y_{t+1} = y_{t,m}

So v and u always track the estimator at the current point; the first difference spans the x
step too (the released code drops it, quirk Q20), and every recursion is one-step and vectorised
(the code's two-step lag and per-element loop, Q21, are not reproduced). ∇̂Φ is the estimator
(default: Neumann ``textbook``, StocBiO's); ∇ᵧg of a sample is read from the graph the estimator
builds on its first lower batch, so u costs no extra forward pass.

Reported ``state.hypergrad``: value = v (the direction of this iteration's x step), grad_x_f = the
same SPIDER recursion on ∇ₓf, second_order = their difference.
"""

from __future__ import annotations

from typing import Any

from bilevel import tree
from bilevel.algorithms.base import Algorithm, State, UpperFactory
from bilevel.hypergrad import Estimator, Hypergrad, Sample
from bilevel.problem import Problem
from bilevel.tree import Params
from bilevel.upper import apply


class VRBO(Algorithm):
    """VRBO: a large-batch checkpoint every ``period`` iterations; ``inner_steps`` SPIDER steps."""

    name = "vrbo"

    def __init__(
        self,
        estimator: Estimator,
        upper: UpperFactory,
        y_lr: float = 5e-2,
        period: int = 2,
        inner_steps: int = 2,
        checkpoint_batches: int = 2,
    ):
        if period < 1 or checkpoint_batches < 1 or inner_steps < 0:
            raise ValueError("vrbo: period and checkpoint_batches must be ≥ 1, inner_steps ≥ 0")
        self.estimator, self.upper = estimator, upper
        self.y_lr, self.period = y_lr, period
        self.inner_steps, self.checkpoint_batches = inner_steps, checkpoint_batches

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        return self.new_state(x, y, v=None, fx=None, u=None)

    def _estimate(
        self, problem: Problem, x: Params, y: Params, est_state: dict[str, Any], sample: Sample
    ) -> tuple[Params, Params, Params]:
        """(∇̂Φ, its ∇ₓf part, ∇ᵧg) at (x, y) on one sample: one graph of g on its first batch."""
        graph = problem.oracles.lower_graph(x, y, sample.lower[0])
        h = self.estimator.estimate(problem, x, y, est_state, sample, graph)
        return h.value, h.grad_x_f, graph.grad

    def checkpoint(self, problem: Problem, state: State) -> None:
        """v, ∇ₓf part and u on a large batch: the average over fresh samples."""
        n = self.checkpoint_batches
        total = None
        for _ in range(n):
            sample = self.estimator.draw(problem)
            parts = self._estimate(problem, state.x, state.y, state.estimator, sample)
            total = parts if total is None else tuple(map(tree.add, total, parts))
        if n > 1:
            total = tuple(tree.scale(p, 1.0 / n) for p in total)
        state.extra["v"], state.extra["fx"], state.extra["u"] = total

    def step(self, problem: Problem, state: State) -> State:
        x, y, ex = state.x, state.y, state.extra
        if state.t % self.period == 0:
            self.checkpoint(problem, state)
        state.hypergrad = Hypergrad(ex["v"], ex["fx"], tree.sub(ex["fx"], ex["v"]))

        x_prev, y_prev = tree.clone(x), tree.clone(y)
        apply(state.upper, x, ex["v"])
        for j in range(self.inner_steps):
            tree.add_(y, ex["u"], alpha=-self.y_lr)
            sample = self.estimator.draw(problem)
            # the previous point first, on a scratch copy of the estimator's state (see SUSTAIN)
            old = self._estimate(problem, x_prev, y_prev, dict(state.estimator), sample)
            new = self._estimate(problem, x, y, state.estimator, sample)
            tracked = (ex["v"], ex["fx"], ex["u"])
            ex["v"], ex["fx"], ex["u"] = (
                tree.add(acc, tree.sub(a, b)) for acc, a, b in zip(tracked, new, old)
            )
            if j + 1 < self.inner_steps:
                x_prev, y_prev = x, tree.clone(y)  # x stays put for the rest of the loop
        state.t += 1
        return state
