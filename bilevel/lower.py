"""Lower-level update strategies: how y tracks y*(x).

A strategy is a configured object with its state in a dict owned by the algorithm:

* ``init_state(y)``: that dict (empty for plain SGD);
* ``warm_start(problem, x, y, state)``: the "initialization refinement" before the first
  iteration (BO-REP Alg. 1 line 2, UniBiO Alg. 2, AccBO's warm start); runs ``warm_start``,
  another strategy, once;
* ``update(problem, x, y, state, t)``: the update of iteration t, in place on y; a strategy with
  ``interval`` I > 1 updates only when t mod I = 0 (BO-REP's periodic updates) and returns whether
  it did.

``point(y, state)`` is the lower point the hypergradient uses: y itself, or AccBO's average ŷ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bilevel import tree
from bilevel.problem import Problem
from bilevel.tree import Params


@dataclass
class LowerStrategy:
    interval: int = 1
    warm_start_with: LowerStrategy | None = None

    def __post_init__(self) -> None:
        ws = self.warm_start_with
        if ws is not None and not isinstance(ws, LowerStrategy):  # e.g. a dict without _target_
            keys = ", ".join(map(str, dict(ws))) if hasattr(ws, "keys") else repr(ws)
            raise TypeError(
                f"lower.warm_start_with must be a lower strategy (a config with _target_, e.g. "
                f"bilevel.lower.SGD); got {{{keys}}}"
            )

    def init_state(self, y: Params) -> dict[str, Any]:
        return {}

    def point(self, y: Params, state: dict[str, Any]) -> Params:
        return y

    def warm_start(self, problem: Problem, x: Params, y: Params, state: dict[str, Any]) -> None:
        if self.warm_start_with is not None:
            ws = self.warm_start_with
            ws.run(problem, x, y, ws.init_state(y))
            state.update(self._after_warm_start(y))

    def _after_warm_start(self, y: Params) -> dict[str, Any]:
        return {}

    def update(
        self,
        problem: Problem,
        x: Params,
        y: Params,
        state: dict[str, Any],
        t: int,
        grad: Params | None = None,
    ) -> bool:
        """One iteration's update; ``grad``: ∇ᵧg at the current y, if the caller has it."""
        if t % self.interval != 0:
            return False
        self.run(problem, x, y, state, grad)
        return True

    def run(
        self,
        problem: Problem,
        x: Params,
        y: Params,
        state: dict[str, Any],
        grad: Params | None = None,
    ) -> None:
        raise NotImplementedError


@dataclass
class SGD(LowerStrategy):
    """``steps`` SGD steps y ← y − lr·∇ᵧg(x, y; B), a fresh batch B each (warm-started from y).

    The first step uses ``grad`` when the caller already computed it on its own batch
    (SOBA's single-batch iteration). Gradients never accumulate across steps (quirks Q9/Q12).
    ``state["lr_scale"]``, when the algorithm sets it, scales the step (decaying schedules).
    """

    lr: float = 0.01
    steps: int = 1

    def run(self, problem, x, y, state, grad=None) -> None:
        lr = self.lr * state.get("lr_scale", 1.0)
        for i in range(self.steps):
            g = (
                grad
                if (i == 0 and grad is not None)
                else problem.oracles.grad_y_g(x, y, problem.lower_batch())
            )
            tree.add_(y, g, alpha=-lr)


@dataclass
class EpochSGD(LowerStrategy):
    """Epoch-SGD with a shrinking ball (UniBiO Algorithm 1; BO-REP Algorithm 3).

    Epoch k runs T_k = ⌊T1·2^{τ_p(k−1)}⌋ projected SGD steps with step γ_k = γ1/2^{k−1} inside
    the ball of radius D_k = D1/2^{(k−1)/p} around the epoch's start, then restarts from the
    average of its iterates; τ_p = 2(p−1)/p. Epochs continue while the total count stays within
    ``budget`` K (and k < ``max_epochs``). It starts from the current y (the paper), not from a
    fresh random draw (the released script, quirk Q11). ``p``: the lower level's order of
    uniform convexity (UniBiO gives it the task's at init).
    """

    gamma1: float = 1.0
    T1: int = 5
    D1: float = 1.0
    budget: int = 100
    p: float | None = 2.0  # None: set by the algorithm (UniBiO: the task's order)
    max_epochs: int = 50

    def epoch_lengths(self) -> list[int]:
        if self.p is None:
            raise ValueError(
                "EpochSGD.p is None: UniBiO sets it from the task at init; "
                "elsewhere set the lower level's p"
            )
        tau = 2 * (self.p - 1) / self.p
        lengths: list[int] = []
        while len(lengths) < self.max_epochs - 1:
            k = len(lengths) + 1
            if sum(self.T1 * 2 ** (tau * i) for i in range(k)) > self.budget:
                break
            lengths.append(math.floor(self.T1 * 2 ** (tau * (k - 1))))
        return lengths

    def run(self, problem, x, y, state, grad=None) -> None:
        start = tree.clone(y)
        for k, t_k in enumerate(self.epoch_lengths(), start=1):
            gamma = self.gamma1 / 2 ** (k - 1)
            radius = self.D1 / 2 ** ((k - 1) / self.p)
            w = dict(start)
            avg = tree.zeros_like(w)
            for _ in range(t_k):
                g = problem.oracles.grad_y_g(x, w, problem.lower_batch())
                w = tree.project_ball(tree.add(w, g, alpha=-gamma), start, radius)
                avg = tree.add(avg, w, alpha=1.0 / t_k)
            start = avg
        tree.copy_(y, start)


@dataclass
class SNAG(LowerStrategy):
    """Stochastic Nesterov accelerated gradient with averaging (AccBO, Gong–Hao–Liu 2024, Alg. 1).

    w = y_t + θ(y_t − y_{t−1});  y_{t+1} = w − lr·∇ᵧg(x, w; B);  ŷ_{t+1} = (1−τ)ŷ_t + τ y_{t+1}.
    The hypergradient is taken at ŷ (``point``). As a warm start (AccBO's T0 SNAG steps,
    ``warm_start_with``) it runs ``steps`` steps from y_{−1} = y and leaves y at its last
    iterate y_0; the strategy it warm-starts then restarts from y_{−1} = ŷ_0 = y_0.
    """

    lr: float = 0.01
    momentum: float = 0.5
    averaging: float = 0.5
    steps: int = 1

    def init_state(self, y: Params) -> dict[str, Any]:
        return {"y_prev": tree.clone(y), "y_avg": tree.clone(y)}

    def _after_warm_start(self, y: Params) -> dict[str, Any]:
        return self.init_state(y)

    def point(self, y, state) -> Params:
        return state["y_avg"]

    def run(self, problem, x, y, state, grad=None) -> None:
        lr = self.lr * state.get("lr_scale", 1.0)  # a decaying schedule (lower_decay), as SGD
        for _ in range(self.steps):
            w = tree.add(y, tree.sub(y, state["y_prev"]), alpha=self.momentum)
            state["y_prev"] = tree.clone(y)
            g = problem.oracles.grad_y_g(x, w, problem.lower_batch())
            tree.copy_(y, tree.add(w, g, alpha=-lr))
            state["y_avg"] = tree.lerp(state["y_avg"], y, self.averaging)


@dataclass
class Adam(LowerStrategy):
    """``steps`` Adam steps on y (AdamBO App. G lower-level ablation); moments persist across
    iterations. Implemented with ``torch.optim.Adam`` over the y tensors."""

    lr: float = 1e-3
    steps: int = 1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init_state(self, y: Params) -> dict[str, Any]:
        return {
            "optimizer": torch.optim.Adam(
                list(y.values()), lr=self.lr, betas=tuple(self.betas), eps=self.eps
            )
        }

    def run(self, problem, x, y, state, grad=None) -> None:
        opt: torch.optim.Optimizer = state["optimizer"]
        for i in range(self.steps):
            g = (
                grad
                if (i == 0 and grad is not None)
                else problem.oracles.grad_y_g(x, y, problem.lower_batch())
            )
            for k, v in y.items():
                v.grad = g[k]
            opt.step()
            opt.zero_grad(set_to_none=True)
