"""SOBA (Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization that enables
stochastic and global variance reduction algorithms", NeurIPS 2022, Algorithm 1 / Eq. 7).

All three directions at (x_t, y_t, z_t), on one lower batch B and one upper batch B':
    D_y = ∇ᵧG(B),  D_z = ∇²ᵧᵧG(B)·z − ∇ᵧF(B'),  D_x = ∇ₓF(B') − ∇²ₓᵧG(B)·z
    y ← y − ρ D_y;  z ← z − ν D_z;  x ← x − γ D_x
One forward pass of g gives D_y, and one reverse pass through it gives both products.
"""

from __future__ import annotations

from bilevel.algorithms.base import LowerEstimateUpper, State
from bilevel.problem import Problem
from bilevel.upper import apply


class SOBA(LowerEstimateUpper):
    """SOBA: simultaneous single-batch updates of y (SGD), z (ZSGD) and x (upper rule)."""

    name = "soba"

    def step(self, problem: Problem, state: State) -> State:
        self.schedule(problem, state)
        sample = self.estimator.draw(problem)
        graph = problem.oracles.lower_graph(state.x, state.y, sample.lower[0])
        state.hypergrad = self.estimator.estimate(
            problem, state.x, state.y, state.estimator, sample, graph
        )
        self.lower.update(problem, state.x, state.y, state.lower, state.t, grad=graph.grad)
        apply(state.upper, state.x, state.hypergrad.value)
        state.t += 1
        return state
