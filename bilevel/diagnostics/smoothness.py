"""Local smoothness of Φ along a run's iterates (figure ``diagnostics/smoothness``, issue #12).

BO-REP, SLIP, AccBO and AdamBO assume an upper objective with unbounded smoothness,
(L0, L1)-smoothness: near x, ‖∇Φ(x') − ∇Φ(x)‖ ≤ (L0 + L1‖∇Φ(x)‖)‖x' − x‖. This module measures
the left-hand ratio along a real run. :class:`SmoothnessProbe` is a trainer probe
(:class:`bilevel.trainer.Probe`): at step 0 and every ``every`` steps it computes, outside the
run's clock and oracle counts,

    ∇Φ_B(x_t) of Φ_B(x) = f(x, y*_B(x); B_f),   y*_B(x) = argmin_y g(x, y; B_g),

the hypergradient of the bilevel problem on ONE FIXED evaluation batch B = (B_f, B_g) (an upper
and a lower batch of the task, drawn once from ``batch_seed``), to high accuracy
(:func:`accurate_hypergrad`): Newton-CG on g(x_t, ·; B_g) warm-started from the run's y, then
the implicit-function formula ∇Φ_B = ∇ₓf − ∇²ₓᵧg·s with ∇²ᵧᵧg·s = ∇ᵧf solved by CG at ŷ.
On a fixed batch Φ_B is a deterministic function, so the ratio measures its smoothness, not the
sampling noise of the run's estimates.

Each measurement is one row of ``smoothness.csv``: ``grad_norm`` = ‖∇Φ_B(x_t)‖, and for the
segment from the previous measurement (x_{t−k}, x_t], ``smoothness`` =
‖∇Φ_B(x_t) − ∇Φ_B(x_{t−k})‖ / ‖x_t − x_{t−k}‖ with ``grad_norm_start`` = ‖∇Φ_B(x_{t−k})‖.
The ratio is the SECANT over k steps: the mean of ∇²Φ_B along the segment applied to its
direction, a lower bound of the largest local smoothness on it (k = 1 is the one-step ratio of
Zhang et al. 2020's clipping paper); ``displacement`` = ‖x_t − x_{t−k}‖ and ``x_norm`` = ‖x_t‖
say how local it is. Accuracy columns: ``lower_residual`` = ‖∇ᵧg(x_t, ŷ; B_g)‖, ``lower_gap`` =
‖[∇²ᵧᵧg]⁻¹∇ᵧg‖ at ŷ (Newton's estimate of ‖ŷ − y*_B(x_t)‖), ``cg_residual`` =
‖∇²ᵧᵧg·s − ∇ᵧf‖/‖∇ᵧf‖, ``newton_steps``, ``cg_iters``; ``y_distance`` = ‖ŷ − y_t‖ is how far
the run's own lower iterate is from the solution. ``probe_s``: the measurement's seconds.

The lower level must be strongly convex in y on B_g (∇Φ_B is then defined and Newton's steps
converge): for hyper-representation, a linear head with an L2 penalty.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel import tree
from bilevel.hypergrad import conjugate_gradient
from bilevel.oracles import Batch, LowerGraph, Oracles
from bilevel.tree import Params


@dataclass
class NewtonResult:
    """:func:`newton_lower`'s point ŷ with its lower graph, steps taken, ‖∇ᵧg‖ at y₀ and at ŷ, and
    ``gap`` = ‖[∇²ᵧᵧg]⁻¹∇ᵧg‖ at ŷ, Newton's estimate of ‖ŷ − y*‖."""

    graph: LowerGraph
    y: Params
    steps: int
    start_residual: float
    residual: float
    gap: float


@dataclass
class Accurate:
    """∇Φ_B(x) with the lower solution ŷ and what says how accurate they are."""

    hypergrad: Params
    grad_x_f: Params
    y: Params
    phi: float  # f(x, ŷ; B_f)
    lower_residual: float  # ‖∇ᵧg(x, ŷ; B_g)‖
    lower_start_residual: float  # ‖∇ᵧg(x, y₀; B_g)‖ at the warm start
    lower_gap: float  # ‖[∇²ᵧᵧg]⁻¹∇ᵧg‖ at ŷ: Newton's estimate of ‖ŷ − y*_B(x)‖
    newton_steps: int
    cg_residual: float  # relative residual of the final linear solve
    cg_iters: int


def newton_lower(
    oracles: Oracles,
    x: Params,
    y0: Params,
    batch: Batch,
    steps: int,
    tol: float,
    cg_iters: int,
    cg_tol: float,
    armijo: float = 1e-4,
    max_halvings: int = 30,
) -> NewtonResult:
    """Damped Newton-CG on g(x, ·; ``batch``) from y₀ (Nocedal & Wright §7.1, Boyd & Vandenberghe
    §9.5): d = [∇²ᵧᵧg]⁻¹∇ᵧg by CG, then

    * far from the solution, y ← y − τd with τ halved until g decreases by ``armijo``·τ·λ²
      (λ² = ⟨∇ᵧg, d⟩, the squared Newton decrement);
    * once λ²/2, the decrease Newton predicts, is within 10 rounding units of g (the loss can no
      longer tell a better point from a worse one), full steps y ← y − d, kept while each at
      least halves ‖∇ᵧg‖ (quadratic convergence; otherwise the rounding floor is reached).

    Stops at ‖∇ᵧg‖ ≤ ``tol``, after ``steps`` Newton steps, or as above. The last d, computed at
    the returned point, is Newton's estimate of ŷ − y*: ``gap`` = ‖d‖. Each trial point costs one
    forward pass (its graph, built with x, so the caller's cross product reuses the last one).
    """
    y = tree.detach(y0)
    graph = oracles.lower_graph(x, y, batch)
    start = float(tree.norm(graph.grad))
    taken = 0
    while True:
        grad = graph.grad
        residual = float(tree.norm(grad))
        direction = conjugate_gradient(graph.hvp, grad, cg_iters, cg_tol).solution
        decrease = float(tree.dot(grad, direction))  # λ²
        if taken >= steps or residual <= tol or not decrease > 0:  # (H not PD: give up)
            break
        loss = float(graph.loss)
        accepted = None
        if decrease / 2 <= 10 * torch.finfo(graph.loss.dtype).eps * max(1.0, abs(loss)):
            trial = tree.sub(y, direction)
            trial_graph = oracles.lower_graph(x, trial, batch)
            if float(tree.norm(trial_graph.grad)) <= 0.5 * residual:
                accepted = trial, trial_graph
        else:
            tau = 1.0
            for _ in range(max_halvings):
                trial = tree.add(y, direction, alpha=-tau)
                trial_graph = oracles.lower_graph(x, trial, batch)
                if float(trial_graph.loss) <= loss - armijo * tau * decrease:
                    accepted = trial, trial_graph
                    break
                tau *= 0.5
        if accepted is None:
            break
        y, graph = accepted
        taken += 1
    return NewtonResult(graph, y, taken, start, residual, float(tree.norm(direction)))


def accurate_hypergrad(
    task: Any,
    x: Params,
    y0: Params,
    upper: Batch,
    lower: Batch,
    newton_steps: int = 50,
    lower_tol: float = 1e-6,
    cg_iters: int = 1000,
    cg_tol: float = 1e-6,
) -> Accurate:
    """∇Φ_B(x) = ∇ₓf(x, ŷ; B_f) − ∇²ₓᵧg(x, ŷ; B_g)·s, ∇²ᵧᵧg(x, ŷ; B_g)·s = ∇ᵧf(x, ŷ; B_f), with
    ŷ ≈ y*_B(x) by :func:`newton_lower` from y₀ (the implicit function theorem on the fixed
    batches; module docstring). Its own uncounted oracle layer: no call reaches a run's counts.
    """
    oracles = Oracles(task)
    newton = newton_lower(oracles, x, y0, lower, newton_steps, lower_tol, cg_iters, cg_tol)
    fg = oracles.grad_f(x, newton.y, upper)
    solve = conjugate_gradient(newton.graph.hvp, fg.y, cg_iters, cg_tol)
    cross = newton.graph.cross(solve.solution)
    return Accurate(
        hypergrad=tree.sub(fg.x, cross),
        grad_x_f=fg.x,
        y=newton.y,
        phi=float(fg.loss),
        lower_residual=newton.residual,
        lower_start_residual=newton.start_residual,
        lower_gap=newton.gap,
        newton_steps=newton.steps,
        cg_residual=float(solve.rel_residual),
        cg_iters=solve.iters,
    )


@dataclass
class SmoothnessProbe:
    """Every ``every`` steps (and at step 0): ‖∇Φ_B(x_t)‖ on the fixed batch and the secant
    smoothness of Φ_B over the k = ``every`` steps since the last measurement (module
    docstring); one row of ``smoothness.csv`` each. Newton-CG: at most ``newton_steps`` steps,
    to ‖∇ᵧg‖ ≤ ``lower_tol``; CG: ``cg_iters`` products, relative tolerance ``cg_tol``.
    The batch B is drawn from the task's samplers with its own generator (``batch_seed``)."""

    every: int = 2
    newton_steps: int = 50
    lower_tol: float = 1e-6
    cg_iters: int = 1000
    cg_tol: float = 1e-6
    batch_seed: int = 0
    name: str = field(default="smoothness", init=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"probe.every must be >= 1, got {self.every}")
        self._batches: tuple[Batch, Batch] | None = None
        self._last: dict[str, Any] | None = None  # x, ∇Φ_B and ‖∇Φ_B‖ of the last measurement

    def batches(self, task: Any) -> tuple[Batch, Batch]:
        """(B_f, B_g), drawn once from ``batch_seed``: the same at every measurement."""
        if self._batches is None:
            generator = torch.Generator().manual_seed(self.batch_seed)
            self._batches = task.sample_upper(generator), task.sample_lower(generator)
        return self._batches

    def measure(self, task: Any, x: Params, y: Params, step: int) -> dict[str, float]:
        """One row for the iterate x_t = ``x`` with the run's lower point ``y`` (warm start)."""
        start = time.perf_counter()
        upper, lower = self.batches(task)
        acc = accurate_hypergrad(
            task, x, y, upper, lower, self.newton_steps, self.lower_tol, self.cg_iters,
            self.cg_tol,
        )  # fmt: skip
        x_now, grad = tree.clone(tree.detach(x)), acc.hypergrad
        norm = float(tree.norm(grad))
        row = {
            "grad_norm": norm,
            "grad_norm_start": math.nan,
            "displacement": math.nan,
            "grad_change": math.nan,
            "smoothness": math.nan,
        }
        if self._last is not None:
            moved = float(tree.norm(tree.sub(x_now, self._last["x"])))
            change = float(tree.norm(tree.sub(grad, self._last["grad"])))
            row.update(
                grad_norm_start=self._last["grad_norm"],
                displacement=moved,
                grad_change=change,
                smoothness=change / moved if moved > 0 else math.nan,
            )
        row.update(
            phi=acc.phi,
            grad_x_f_norm=float(tree.norm(acc.grad_x_f)),
            x_norm=float(tree.norm(x_now)),
            y_distance=float(tree.norm(tree.sub(acc.y, tree.detach(y)))),
            lower_start_residual=acc.lower_start_residual,
            lower_residual=acc.lower_residual,
            lower_gap=acc.lower_gap,
            newton_steps=acc.newton_steps,
            cg_residual=acc.cg_residual,
            cg_iters=acc.cg_iters,
            probe_s=time.perf_counter() - start,
        )
        self._last = {"x": x_now, "grad": tree.detach(grad), "grad_norm": norm}
        return row

    def state_dict(self) -> dict[str, Any] | None:
        """The last measurement (a resumed run's next secant starts from it)."""
        return self._last

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._last = state
