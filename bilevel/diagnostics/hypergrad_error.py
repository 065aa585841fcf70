"""Hypergradient-estimator error at a fixed point (figure ``diagnostics/hypergrad-error``, #12).

At one point x (the task's initialization drawn from ``point_seed``, the same for every seed)
and y = y*(x), a configured estimator is run for its budget and compared with the closed form:

    rel_error = ‖ĥ − ∇Φ(x)‖ / ‖∇Φ(x)‖,

with the oracle calls it made, read from its :class:`~bilevel.problem.Problem`'s counter (not a
formula: CG stops early at its tolerance, a variant may skip a product). The budget is the
estimator's own setting (Neumann Q, CG iterations) or ``steps``, the number of successive
estimates at the point (z-SGD's z carries over, warm-started from zero); the last estimate is
the one compared. The batch size and noise are the task's.

``rho`` is the contraction per unit of budget that theory predicts from the spectrum
λ₁ ≤ … ≤ λ_n of H = ∇²ᵧᵧg(x, y*) on the noise-free batch:

* Neumann with step η (and z-SGD with step ν, the same Richardson recursion):
  max_i |1 − ηλ_i|; the error of the truncated series is (I − ηH)^Q H⁻¹∇ᵧf;
* CG: (√κ − 1)/(√κ + 1), κ = λ_n/λ₁, the factor of its Chebyshev bound (it also terminates
  in at most n iterations in exact arithmetic);
* the dense solve: 0.

:func:`evaluate` is a study function for ``bilevel-figure`` (``study:`` in a registry entry,
:mod:`bilevel.app.study`): it gets the task and the algorithm built from a run's config, and
uses the algorithm's estimator only.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from bilevel import tree
from bilevel.hypergrad import ZSGD, ConjugateGradient, Estimator, Exact, Neumann
from bilevel.oracles import Oracles
from bilevel.problem import Problem
from bilevel.tree import Params


def lower_hessian_eigenvalues(task: Any, x: Params, y: Params) -> Tensor:
    """Eigenvalues (ascending) of ∇²ᵧᵧg(x, y) on the task's noise-free batch, built from one
    Hessian-vector product per unit vector through an uncounted oracle layer."""
    graph = Oracles(task).lower_graph(x, y, task.exact_batch("lower"), with_x=False)
    eye = torch.eye(tree.numel(y), dtype=next(iter(y.values())).dtype)
    hess = torch.stack([tree.flatten(graph.hvp(tree.unflatten(e, y))) for e in eye])
    return torch.linalg.eigvalsh(0.5 * (hess + hess.T))


def contraction(estimator: Estimator, eigenvalues: Tensor) -> float:
    """The predicted error factor per unit of budget (module docstring); NaN if none is known."""
    if isinstance(estimator, Neumann | ZSGD):
        return float((1.0 - estimator.lr * eigenvalues).abs().max())
    if isinstance(estimator, ConjugateGradient):
        root = math.sqrt(float(eigenvalues[-1] / eigenvalues[0]))
        return (root - 1.0) / (root + 1.0)
    if isinstance(estimator, Exact):
        return 0.0
    return math.nan


def evaluate(
    task: Any, algorithm: Any, *, seed: int, steps: int, point_seed: int = 0
) -> dict[str, Any]:
    """One row: ``algorithm.estimator`` at (x, y*(x)) after ``steps`` estimates on batches drawn
    from ``seed``; relative error, norms, oracle calls by kind, batch size, ``rho``, seconds."""
    missing = [m for m in ("y_star", "hypergrad_true", "exact_batch") if not hasattr(task, m)]
    if missing:
        raise TypeError(
            f"{type(task).__name__} has no {', '.join(missing)}: the hypergradient-error study "
            "needs a task with closed forms (task=quadratic)"
        )
    estimator: Estimator = algorithm.estimator
    x, _ = task.init_params(torch.Generator().manual_seed(point_seed))
    y = task.y_star(x)
    problem = Problem(task, torch.Generator().manual_seed(seed))
    state = estimator.init_state(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        estimate = estimator(problem, x, y, state)
    wall_s = time.perf_counter() - start
    true = task.hypergrad_true(x)
    rel_error = float(tree.norm(tree.sub(estimate.value, true)) / tree.norm(true))
    return {
        "rel_error": rel_error,
        "hypergrad_norm": float(tree.norm(estimate.value)),
        "true_hypergrad_norm": float(tree.norm(true)),
        **problem.oracles.counter.columns(),
        "batch_size": task.batch_size,
        "rho": contraction(estimator, lower_hessian_eigenvalues(task, x, y)),
        "wall_s": wall_s,
        "status": "completed" if math.isfinite(rel_error) else "diverged",
    }
