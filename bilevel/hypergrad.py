"""Hypergradient estimators: oracle calls -> an estimate of ∇Φ(x) = ∇ₓf − ∇²ₓᵧg · [∇²ᵧᵧg]⁻¹ ∇ᵧf.

Each estimator first approximates s ≈ [∇²ᵧᵧg]⁻¹∇ᵧf, then returns h = ∇ₓf − ∇²ₓᵧg·s
(:class:`Hypergrad` keeps ∇ₓf and the second-order term apart for diagnostics).

Estimators are stateless configured objects; whatever they carry between iterations (z for the
SOBA family) lives in a dict the algorithm owns (``init_state`` / the ``state`` argument), so that
algorithms evaluating one sample at two points (STORM) and checkpoints stay simple.
``draw(problem)`` takes every random thing an estimate needs (batches, truncation index) so that
``estimate(..., sample=s)`` can be repeated at another point on the same sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from bilevel import tree
from bilevel.oracles import Batch, FGrad, LowerGraph
from bilevel.problem import Problem
from bilevel.tree import Params


@dataclass
class Hypergrad:
    """An estimate of ∇Φ with its parts: value = grad_x_f − second_order."""

    value: Params
    grad_x_f: Params
    second_order: Params  # ∇²ₓᵧg · s


@dataclass
class Sample:
    """The randomness of one estimate: upper batch, lower batches, truncation index."""

    upper: Batch
    lower: list[Batch] = field(default_factory=list)
    cross: Batch | None = None
    k: int | None = None


def _combine(fg: FGrad, cross: Params) -> Hypergrad:
    return Hypergrad(tree.sub(fg.x, cross), fg.x, cross)


class Estimator:
    """Base class: subclasses implement ``draw`` and ``estimate``."""

    def init_state(self, x: Params, y: Params) -> dict[str, Any]:
        return {}

    def draw(self, problem: Problem) -> Sample:
        raise NotImplementedError

    def estimate(
        self,
        problem: Problem,
        x: Params,
        y: Params,
        state: dict[str, Any],
        sample: Sample | None = None,
        graph: LowerGraph | None = None,
    ) -> Hypergrad:
        raise NotImplementedError

    def __call__(self, problem: Problem, x: Params, y: Params, state: dict[str, Any]) -> Hypergrad:
        return self.estimate(problem, x, y, state, self.draw(problem))


class OneLowerBatch(Estimator):
    """Estimators that work on one upper and one lower batch (CG, z-SGD, exact solve)."""

    def draw(self, problem: Problem) -> Sample:
        return Sample(problem.upper_batch(), [problem.lower_batch()])

    def _start(self, problem, x, y, sample, graph) -> tuple[FGrad, LowerGraph, Sample]:
        """∇f on the upper batch and ∇ᵧg's graph on the lower batch (reused if given)."""
        sample = sample if sample is not None else self.draw(problem)
        fg = problem.oracles.grad_f(x, y, sample.upper)
        graph = graph or problem.oracles.lower_graph(x, y, sample.lower[0])
        return fg, graph, sample


NeumannVariant = Literal[
    "textbook", "randomized", "reference_sum", "reference_rand", "ns_a", "ns_b", "ns_c"
]


@dataclass
class Neumann(Estimator):
    """Neumann-series estimator s = η Σ_q (I − ηH)^q ∇ᵧf and its published variants.

    variant (v_0 = ∇ᵧf, v_q = (I − ηH_q) v_{q−1}):
      * ``textbook``     s = η Σ_{q=0}^{Q−1} v_q           (Ghadimi–Wang 2018; StocBiO Eq. 4
                         with ``hessian_batches='independent'``)
      * ``randomized``   s = Qη v_k, k ~ U{0..Q−1}                    (GW18 / TTSA / AccBO paper)
      * ``reference_sum``  s = η Σ_{q=1}^{Q} v_q   (AccBO/UniBiO code NEUMANN_SUM; quirk Q15)
      * ``reference_rand`` s = η v_k, k ~ U{1..Q}   (AccBO/UniBiO code NEUMANN_RAND; quirk Q15)
      * ``ns_a``  s = η v_Q + Σ_{q=1}^{Q} v_q      (SLIP code StocBiO/TTSA; quirk Q2)
      * ``ns_b``  s = η (v_Q + Σ_{q=1}^{Q} v_q)    (AdamBO code; quirk Q2)
      * ``ns_c``  ns_b with Q' ~ U{1..Q−1}          (AdamBO code TTSA; quirk Q2)

    ``hessian_batches``: ``shared`` (one lower batch for every factor, one forward pass) or
    ``independent`` (a fresh batch per factor, as StocBiO's analysis assumes).
    ``cross_batch``: ``same`` (the cross term on the first Hessian batch, reusing its graph) or
    ``fresh`` (an independent batch).
    ``lluc_p``: UniBiO's change of variable for a lower level that is uniformly convex of order
    p > 2 (UniBiO Lemma B.5; spec ACCBO-UNIBIO §3.2). With D = (p−1)|y|^{p−2} the recursion is
    preconditioned on the correct side, v_0 = D⁻¹∇ᵧf, v_q = v_{q−1} − η D⁻¹ H v_{q−1}, whose
    limit is H⁻¹∇ᵧf; ``lluc_side='reference'`` applies D⁻¹ inside the product instead
    (v − ηH(D⁻¹v), the released code, which converges to D H⁻¹ D⁻¹ ∇ᵧf: quirk Q13).
    """

    q: int = 3
    lr: float = 0.01
    variant: NeumannVariant = "textbook"
    hessian_batches: Literal["shared", "independent"] = "shared"
    cross_batch: Literal["same", "fresh"] = "same"
    lluc_p: float | None = None
    lluc_side: Literal["correct", "reference"] = "correct"
    lluc_eps: float = 1e-12

    def n_products(self, k: int | None) -> int:
        """How many HVPs the variant takes (k: the drawn truncation index, if any)."""
        if self.variant == "textbook":
            return self.q - 1
        if self.variant in ("randomized", "reference_rand", "ns_c"):
            assert k is not None
            return k
        return self.q

    def draw(self, problem: Problem) -> Sample:
        k = None
        if self.variant == "randomized":
            k = problem.randint(0, self.q - 1)
        elif self.variant == "reference_rand":
            k = problem.randint(1, self.q)
        elif self.variant == "ns_c":
            k = problem.randint(1, max(self.q - 1, 1))
        n_batches = 1 if self.hessian_batches == "shared" else max(self.n_products(k), 1)
        lower = [problem.lower_batch() for _ in range(n_batches)]
        cross = problem.lower_batch() if self.cross_batch == "fresh" else None
        return Sample(problem.upper_batch(), lower, cross, k)

    def _precond(self, y: Params) -> Params | None:
        if self.lluc_p is None or self.lluc_p == 2:
            return None
        p = self.lluc_p
        return {k: (p - 1) * v.detach().abs().pow(p - 2) + self.lluc_eps for k, v in y.items()}

    def estimate(self, problem, x, y, state, sample=None, graph=None) -> Hypergrad:
        sample = sample if sample is not None else self.draw(problem)
        oracles = problem.oracles
        fg = oracles.grad_f(x, y, sample.upper)
        d = self._precond(y)
        div = (lambda u: {k: u[k] / d[k] for k in u}) if d is not None else (lambda u: u)
        graphs: dict[int, LowerGraph] = {}
        if graph is not None:
            graphs[0] = graph

        def graph_for(i: int) -> LowerGraph:
            j = 0 if self.hessian_batches == "shared" else i
            if j not in graphs:
                graphs[j] = oracles.lower_graph(x, y, sample.lower[j], with_x=j == 0)
            return graphs[j]

        v = div(fg.y)
        terms = [v]
        for i in range(self.n_products(sample.k)):
            g = graph_for(i)
            if d is not None and self.lluc_side == "reference":
                hv = g.hvp(div(v))
            else:
                hv = div(g.hvp(v))
            v = tree.add(v, hv, alpha=-self.lr)
            terms.append(v)
        s = self._combine_terms(terms, sample.k)
        if self.cross_batch == "same":
            cross = graph_for(0).cross(s)
        else:
            cross = oracles.cross(x, y, s, sample.cross)
        return _combine(fg, cross)

    def _combine_terms(self, terms: list[Params], k: int | None) -> Params:
        eta, v = self.lr, terms
        total = lambda ts: _sum(ts)  # noqa: E731
        if self.variant == "textbook":
            return tree.scale(total(v), eta)
        if self.variant == "randomized":
            return tree.scale(v[-1], self.q * eta)
        if self.variant == "reference_sum":
            return tree.scale(total(v[1:]), eta)
        if self.variant == "reference_rand":
            return tree.scale(v[-1], eta)
        if self.variant == "ns_a":
            return tree.add(total(v[1:]), v[-1], alpha=eta)
        if self.variant in ("ns_b", "ns_c"):
            return tree.scale(tree.add(total(v[1:]), v[-1]), eta)
        raise ValueError(f"unknown Neumann variant {self.variant!r}")


def _sum(terms: list[Params]) -> Params:
    out = dict(terms[0])
    for t in terms[1:]:
        out = tree.add(out, t)
    return out


@dataclass
class CGResult:
    """What :func:`conjugate_gradient` returns: s ≈ H⁻¹b, the relative residual ‖b − Hs‖/‖b‖
    (a tensor) and the number of products taken."""

    solution: Params
    rel_residual: Tensor
    iters: int


def conjugate_gradient(
    matvec: Callable[[Params], Params], b: Params, iters: int, tol: float
) -> CGResult:
    """Conjugate gradients for H s = b from s = 0, H symmetric positive definite given by
    ``matvec``; stops after ``iters`` products or when ‖b − Hs‖ ≤ tol·‖b‖ (checked every
    iteration: a host sync each, accepted for this offline/small-problem tool)."""
    s = tree.zeros_like(b)
    r = dict(b)
    p = dict(b)
    rr = tree.sq_norm(r)
    rr0 = rr
    stop = (tol**2) * rr
    done = 0
    for _ in range(iters):
        if bool(rr <= stop):
            break
        hp = matvec(p)
        done += 1
        alpha = rr / tree.dot(p, hp)
        s = tree.add(s, tree.scale(p, alpha))
        r = tree.add(r, tree.scale(hp, -alpha))
        rr_new = tree.sq_norm(r)
        p = tree.add(r, tree.scale(p, rr_new / rr))
        rr = rr_new
    return CGResult(s, (rr / rr0.clamp_min(torch.finfo(rr0.dtype).tiny)).sqrt(), done)


@dataclass
class ConjugateGradient(OneLowerBatch):
    """s solves ∇²ᵧᵧg(B) s = ∇ᵧf by conjugate gradients on one lower batch (Pedregosa 2016, HOAG).

    Stops after ``iters`` iterations or when ‖residual‖ ≤ tol·‖∇ᵧf‖ (checked every iteration:
    CG is an offline/small-problem tool, so the host sync is accepted here).
    """

    iters: int = 20
    tol: float = 1e-10
    cross_batch: Literal["same", "fresh"] = "same"

    def draw(self, problem: Problem) -> Sample:
        cross = problem.lower_batch() if self.cross_batch == "fresh" else None
        return Sample(problem.upper_batch(), [problem.lower_batch()], cross)

    def estimate(self, problem, x, y, state, sample=None, graph=None) -> Hypergrad:
        fg, graph, sample = self._start(problem, x, y, sample, graph)
        s = conjugate_gradient(graph.hvp, fg.y, self.iters, self.tol).solution
        if self.cross_batch == "same":
            cross = graph.cross(s)
        else:
            cross = problem.oracles.cross(x, y, s, sample.cross)
        return _combine(fg, cross)


@dataclass
class ZSGD(OneLowerBatch):
    """Warm-started SGD on the linear system (SOBA, Dagréou et al. 2022, Eq. 7; MA-SOBA; BO-REP).

    z ← Proj_{‖z‖≤R}(z − ν(∇²ᵧᵧg·z − ∇ᵧf)),   h = ∇ₓf − ∇²ₓᵧg·z.

    ``z_for_cross='old'`` (the papers: every direction at (x_t, y_t, z_t)) takes ∇²ᵧᵧg·z and
    ∇²ₓᵧg·z from one reverse pass on the same batch; ``'new'`` evaluates the cross term at the
    updated z (the released BO-REP/SLIP/SOBA code) with one more product on the same batch.
    ``radius``: BO-REP's projection radius R (None: no projection, as in the released code, Q3).
    """

    lr: float = 0.01
    radius: float | None = None
    z_for_cross: Literal["old", "new"] = "old"
    init: Literal["zeros", "xavier"] = "zeros"

    def init_state(self, x: Params, y: Params) -> dict[str, Any]:
        if self.init == "zeros":
            return {"z": tree.zeros_like(tree.detach(y))}
        n = tree.numel(y)
        bound = (6.0 / (n + 1)) ** 0.5
        return {"z": {k: torch.empty_like(v).uniform_(-bound, bound) for k, v in y.items()}}

    def estimate(self, problem, x, y, state, sample=None, graph=None) -> Hypergrad:
        fg, graph, _ = self._start(problem, x, y, sample, graph)
        z = state["z"]
        if self.z_for_cross == "old":
            hz, cross = graph.hvp_cross(z)
        else:
            hz = graph.hvp(z)
        z_new = tree.add(z, tree.sub(hz, fg.y), alpha=-self.lr)
        if self.radius is not None:
            z_new = tree.project_ball(z_new, None, self.radius)
        if self.z_for_cross == "new":
            cross = graph.cross(z_new)
        state["z"] = z_new
        return _combine(fg, cross)


@dataclass
class Exact(OneLowerBatch):
    """Dense solve s = H⁻¹∇ᵧf with H = ∇²ᵧᵧg(B) built column by column (small problems, tests)."""

    def estimate(self, problem, x, y, state, sample=None, graph=None) -> Hypergrad:
        fg, graph, _ = self._start(problem, x, y, sample, graph)
        n = tree.numel(y)
        eye = torch.eye(n, dtype=next(iter(y.values())).dtype, device=next(iter(y.values())).device)
        cols = [tree.flatten(graph.hvp(tree.unflatten(eye[i], y))) for i in range(n)]
        hess = torch.stack(cols, dim=1)
        s = tree.unflatten(torch.linalg.solve(hess, tree.flatten(fg.y)), y)
        return _combine(fg, graph.cross(s))
