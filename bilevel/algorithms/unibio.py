"""UniBiO (bilevel optimization with a uniformly convex lower level, ICLR 2026, Algorithms 1-2).

y_0 ← Epoch-SGD(x_0, y_init)                      warm start         (lower.warm_start_with)
for t:  if t mod I = 0: y ← Epoch-SGD(x_t, y)   periodic update, shrinking ball (EpochSGD)
        ĥ_t = LLUC hypergradient at (x_t, y): Neumann series on the preconditioned Hessian
              D⁻¹∇²ᵧᵧG, D = (p−1)|y|^{p−2} (change of variable ŷ = y^{p−1})   (Neumann, lluc_p)
        m_t = βm_{t−1} + (1−β)ĥ_t;  x_{t+1} = x_t − η m_t/‖m_t‖             (NormalizedSGD)

The order p of the lower level's uniform convexity belongs to the task: with ``p=None`` (the
default) :meth:`UniBiO.init` reads ``task.uniform_convexity_p`` (the synthetic problem's p, a
text task's p-norm regulariser's p, 2 for strongly convex lower levels: quadratic, l2
regularisers) and gives it to the parts: Epoch-SGD's ``p`` (its epoch lengths T1·2^{τ_p(k−1)},
τ_p = 2(p−1)/p, and radii D1/2^{(k−1)/p}, for the periodic update and its warm start) and the
Neumann estimator's ``lluc_p``. A task that states no order (``None``: ``reg.kind=l2_norm``, no
regulariser) runs with p = 2 and a one-line warning. ``p`` set: that order, whatever the task.

The change of variable (``change_of_variable``) and a network. It is exact for the synthetic
problem, a scalar y with ∇²ᵧᵧg = (p−1)y^{p−2} = D, so D⁻¹∇²ᵧᵧg = 1 however degenerate the
Hessian is. On a network (text tasks with ``reg.kind=p_norm``) D would be applied elementwise
to every lower parameter, as the released data-cleaning code does: there ∇²ᵧᵧg = ∇²CE + coef·D,
and D⁻¹∇²ᵧᵧg = D⁻¹∇²CE + coef·I is no longer the identity but a diagonal preconditioning whose
entries grow as |y_i|^{2−p} near zero weights (up to 1/``lluc_eps``): the Neumann series with
the tuned η_N no longer contracts (measured, hyper-cleaning RNN with p = 4: a hypergradient of
norm 5e3 against 1e-3 without it). Hence ``change_of_variable=None`` (the default) applies it
only to a scalar lower variable, where it is exact, and otherwise runs the plain Neumann series
(whose limit [∇²ᵧᵧg]⁻¹∇ᵧf is the same) while Epoch-SGD keeps the order p; ``True`` applies it
whatever the lower variable (the released code's form, on the correct side), ``False`` never.
``init`` logs one line saying which p is used, from where, and whether D is applied.
"""

from __future__ import annotations

import dataclasses
import logging

from bilevel import tree
from bilevel.algorithms.base import DecayClock, LowerEstimateUpper, State
from bilevel.lower import EpochSGD, LowerStrategy
from bilevel.problem import Problem
from bilevel.tree import Params

log = logging.getLogger(__name__)


def with_order(strategy: LowerStrategy | None, p: float) -> LowerStrategy | None:
    """``strategy`` with every Epoch-SGD in it (itself, its warm start) set to order p."""
    if strategy is None:
        return None
    changes: dict = {}
    if isinstance(strategy, EpochSGD):
        changes["p"] = p
    if strategy.warm_start_with is not None:
        changes["warm_start_with"] = with_order(strategy.warm_start_with, p)
    return dataclasses.replace(strategy, **changes) if changes else strategy


class UniBiO(LowerEstimateUpper):
    """UniBiO: periodic Epoch-SGD lower level + LLUC Neumann estimator + normalized momentum.

    ``p``: the order of uniform convexity (None: the task's ``uniform_convexity_p``);
    ``change_of_variable``: precondition the Neumann series with D = (p−1)|y|^{p−2} (p > 2):
    None (auto: for a scalar lower variable only), True, False."""

    name = "unibio"

    def __init__(
        self,
        lower,
        estimator,
        upper,
        p: float | None = None,
        change_of_variable: bool | None = None,
        upper_decay: float = 0.0,
        lower_decay: float = 0.0,
        decay_clock: DecayClock = "iteration",
        decay_time: float = 1.0,
    ):
        super().__init__(lower, estimator, upper, upper_decay, lower_decay, decay_clock, decay_time)
        if p is not None and p < 2:
            raise ValueError(f"UniBiO: the order of uniform convexity p must be >= 2, got {p}")
        self.p, self.change_of_variable = p, change_of_variable
        self._announced: set[tuple] = set()

    def order(self, task) -> float:
        """The p this run uses: ``self.p``, else the task's, else 2."""
        if self.p is not None:
            return float(self.p)
        p = getattr(task, "uniform_convexity_p", None)
        return 2.0 if p is None else float(p)

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        p = self.order(problem.task)
        n = tree.numel(y)
        apply = self.change_of_variable if self.change_of_variable is not None else n == 1
        lluc = p if (apply and p != 2 and hasattr(self.estimator, "lluc_p")) else None
        self.lower = with_order(self.lower, p)
        if hasattr(self.estimator, "lluc_p"):
            self.estimator = dataclasses.replace(self.estimator, lluc_p=lluc)
        self._announce(problem.task, p, lluc, n)
        return super().init(problem, x, y)

    def _announce(self, task, p: float, lluc: float | None, n: int) -> None:
        """One line per (task, p) and algorithm: where p came from and what is applied."""
        name = type(task).__name__
        key = (name, p, lluc, n)
        if key in self._announced:
            return
        self._announced.add(key)
        if self.p is None and getattr(task, "uniform_convexity_p", None) is None:
            log.warning(
                "UniBiO: task %s states no order of uniform convexity (uniform_convexity_p is "
                "None); using p = 2 (no change of variable); set algorithm.p to choose one",
                name,
            )
            return
        source = "algorithm.p" if self.p is not None else f"task {name}"
        if p == 2:
            what = "no change of variable (D = 1)"
        elif lluc is not None:
            what = (
                "change of variable D = (p-1)|y|^(p-2) on the scalar lower variable (exact)"
                if n == 1
                else f"change of variable D = (p-1)|y|^(p-2) on each of the {n} lower parameters "
                "(forced: a diagonal preconditioner, exact only when the Hessian of g is the "
                "p-norm's own)"
            )
        elif self.change_of_variable is False:
            what = "plain Neumann series (change_of_variable=false)"
        elif not hasattr(self.estimator, "lluc_p"):
            what = f"no change of variable in {type(self.estimator).__name__}"
        else:
            what = (
                f"plain Neumann series: the change of variable is exact only for a scalar lower "
                f"variable, this one has {n} parameters (algorithm.change_of_variable=true forces "
                "it)"
            )
        log.info("UniBiO: p = %g (from %s), Epoch-SGD of order p, %s", p, source, what)
