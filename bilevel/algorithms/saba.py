"""SABA (Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization that enables
stochastic and global variance reduction algorithms", NeurIPS 2022, Algorithm 2).

SOBA's three simultaneous directions, each oracle replaced by its SAGA estimate. The objectives
are finite sums over fixed minibatches: lower batches j ∈ [n] (g), upper batches j' ∈ [m] (f).
Five memory tables, one row per fixed batch, with their running means m̄:
    lower (row j):  ∇ᵧg_j,  ∇²ᵧᵧg_j·z,  ∇²ₓᵧg_j·z;      upper (row j'):  ∇ᵧf_j',  ∇ₓf_j'.

    SAGA(new_j, m) = new_j − m[j] + m̄;   then m̄ ← m̄ + (new_j − m[j])/n,  m[j] ← new_j   (O(1))

    for t = 0, 1, ...:
        draw one lower batch j ~ U[n] and one upper batch j' ~ U[m]
        at (x_t, y_t, z_t):
            D_y = SAGA(∇ᵧg_j)
            D_z = SAGA(∇²ᵧᵧg_j·z) − SAGA(∇ᵧf_j')
            D_x = SAGA(∇ₓf_j') − SAGA(∇²ₓᵧg_j·z)
        y ← y − ρ D_y;   z ← z − ν D_z;   x ← x − γ D_x      (x: the configured upper rule)

As in SOBA, one forward pass of g on batch j gives ∇ᵧg_j and one reverse pass through it both
products, so an iteration costs one ``grad_f``, one ``grad_g``, one ``hvp`` and one ``cross``.

Sign convention: ours (the suite's ZSGD), z ≈ [∇²ᵧᵧg]⁻¹∇ᵧf and h = ∇ₓf − ∇²ₓᵧg·z. The paper
writes v ≈ −[∇²ᵧᵧg]⁻¹∇ᵧf with D_v = ∇²ᵧᵧg·v + ∇ᵧf and D_x = ∇ₓf + ∇²ₓᵧg·v; the two are the
same algorithm under z = −v.

Parts (as SOBA): ``lower`` is the y step fed D_y (``lower.SGD``, or ``lower.Adam``, with one
step every iteration; its ``lr`` is ρ; a ``warm_start_with`` runs before the memory is filled);
``estimator`` must be ``hypergrad.ZSGD``: its ``lr`` is ν, its ``init`` initialises z and its
``radius`` (if set) projects z; ``z_for_cross='old'`` only (every direction at z_t).
``upper`` is the x rule fed D_x (default ``torch.optim.SGD``, lr γ).

Options:
  * ``memory='saga'`` (default, the paper): the per-batch tables above. Needs a finite-sum task:
    fixed batches with ``Batch.index`` and ``task.n_batches`` (the quadratic with
    ``task.n_samples`` set); otherwise ``init`` raises a ValueError. Memory: n·(2|y| + |x|) +
    m·(|y| + |x|) numbers.
  * ``memory='history'``: the "history SAGA" of the released AccBO/UniBiO code
    (``methods/saba.py``; spec ACCBO-UNIBIO §3.5, BOREP-SLIP-ADAMBO §2.6; quirk B-Q19 in
    ``docs/reference-quirks.md``): no
    per-sample table; each oracle keeps its last ``history`` raw estimates (appended until full,
    then a uniformly random slot overwritten) and returns mean(hist) + (g − last), where hist
    already contains g and last is the previous iteration's raw estimate (at another point, on
    another batch); the first call returns mean(hist) + g. It does not need fixed batches.
    Here it is applied to all five oracles at (x_t, y_t, z_t), so only the estimator differs
    from ``saga``; the released code also orders the updates differently (∇ᵧf at the new y) and
    skips some oracles (the cross term in AUC; ∇ₓf = 0 in DC). Its DC hypergradient sign bug
    (A-Q6, "Q15" in the spec's §3.5: +SAGA(J) with z ≈ +H⁻¹∇f, i.e. ascent) is NOT reproduced.
    It is not variance-reduced: on the noisy finite-sum quadratic (tests/test_saba.py) it does
    not reach the exact solution, and with ρ = ν = 0.1, γ = 0.05 it diverges where ``saga``
    converges linearly.
  * ``init_memory='zeros'`` (default; the paper, benchopt's default) or ``'full'``: one pass over
    every lower and every upper batch at (x_0, y_0, z_0) fills the tables (n grad_g + n hvp +
    n cross + m grad_f oracle calls, counted), so m̄ starts at the full-batch values. ``saga``
    only. The pass uses ``task.fixed_batch(level, index)`` when the task has it, otherwise it
    draws batches from the run's generator until each index has been seen once (oracles are
    computed on first sight only).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from bilevel import lower as lower_parts
from bilevel import tree
from bilevel.algorithms.base import LowerEstimateUpper, State, UpperFactory
from bilevel.hypergrad import ZSGD, Estimator, Hypergrad
from bilevel.lower import LowerStrategy
from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tree import Params
from bilevel.upper import apply

# oracle -> level of the batch it is computed on
ORACLES = {
    "grad_y_g": "lower",
    "hvp": "lower",
    "cross": "lower",
    "grad_y_f": "upper",
    "grad_x_f": "upper",
}


def n_batches(task: Any, level: str) -> int | None:
    """Number of fixed minibatches of ``level`` (``n_lower_batches`` / ``n_upper_batches`` if
    the task distinguishes them, else ``n_batches``); None if the task is not a finite sum."""
    n = getattr(task, f"n_{level}_batches", None)
    return n if n is not None else getattr(task, "n_batches", None)


# -- SAGA memory (per fixed batch) -----------------------------------------------------------
def saga_init(like: Params, n: int) -> dict[str, Params]:
    """Zero table (one row per batch) and zero mean for an oracle shaped like ``like``."""
    return {
        "table": {
            k: torch.zeros((n, *v.shape), dtype=v.dtype, device=v.device) for k, v in like.items()
        },
        "mean": tree.zeros_like(tree.detach(like)),
    }


@torch.no_grad()
def saga(memory: dict[str, Params], j: int, new: Params) -> Params:
    """D = new − m[j] + m̄ (m̄ before the update); then m̄ += (new − m[j])/n and m[j] ← new."""
    table, mean = memory["table"], memory["mean"]
    keys = list(new)
    n = next(iter(table.values())).shape[0]
    rows = [table[k][j] for k in keys]  # views into the table
    diff = torch._foreach_sub([new[k] for k in keys], rows)
    direction = torch._foreach_add(diff, [mean[k] for k in keys])
    torch._foreach_add_([mean[k] for k in keys], diff, alpha=1.0 / n)
    for row, k in zip(rows, keys, strict=True):
        row.copy_(new[k])
    return dict(zip(keys, direction, strict=True))


# -- history SAGA (released AccBO/UniBiO code) -------------------------------------------------
def history_init(like: Params, length: int) -> dict[str, Any]:
    return {
        "buffer": {
            k: torch.zeros((length, *v.shape), dtype=v.dtype, device=v.device)
            for k, v in like.items()
        },
        "sum": tree.zeros_like(tree.detach(like)),
        "last": tree.zeros_like(tree.detach(like)),  # zeros: the first call returns mean + g
        "count": 0,
    }


@torch.no_grad()
def history_saga(memory: dict[str, Any], new: Params, problem: Problem) -> Params:
    """Store ``new`` (append; once full, overwrite a random slot drawn from the run's
    generator) and return mean(hist) + new − last."""
    buffer, total = memory["buffer"], memory["sum"]
    keys = list(new)
    length = next(iter(buffer.values())).shape[0]
    count = memory["count"]
    slot = count if count < length else problem.randint(0, length - 1)
    rows = [buffer[k][slot] for k in keys]  # zero while unfilled, so the sum update holds
    torch._foreach_add_([total[k] for k in keys], torch._foreach_sub([new[k] for k in keys], rows))
    for row, k in zip(rows, keys, strict=True):
        row.copy_(new[k])
    memory["count"] = min(count + 1, length)
    mean = torch._foreach_div([total[k] for k in keys], float(memory["count"]))
    direction = torch._foreach_add(
        mean, torch._foreach_sub([new[k] for k in keys], [memory["last"][k] for k in keys])
    )
    memory["last"] = tree.clone(new)
    return dict(zip(keys, direction, strict=True))


class SABA(LowerEstimateUpper):
    """SABA: SOBA's simultaneous y, z, x steps on SAGA estimates of all five oracles."""

    name = "saba"

    def __init__(
        self,
        lower: LowerStrategy,
        estimator: Estimator,
        upper: UpperFactory,
        memory: Literal["saga", "history"] = "saga",
        init_memory: Literal["zeros", "full"] = "zeros",
        history: int = 10,
    ):
        super().__init__(lower, estimator, upper)
        self.memory, self.init_memory, self.history = memory, init_memory, history

    # -- checks (at init: a swapped part still instantiates, DESIGN's config tests) ----------
    def _check(self, problem: Problem) -> None:
        lw, est = self.lower, self.estimator
        if not (isinstance(lw, (lower_parts.SGD, lower_parts.Adam)) and lw.steps == 1):
            raise ValueError(
                "SABA feeds its variance-reduced D_y to the lower strategy as one step per "
                f"iteration: algorithm.lower must be sgd or adam with steps=1 (got {lw!r})"
            )
        if lw.interval != 1:
            raise ValueError(
                f"SABA updates y every iteration: algorithm.lower.interval={lw.interval} must be 1"
            )
        if not isinstance(est, ZSGD):
            raise ValueError(
                "SABA's z is SGD on the linear system with SAGA directions: algorithm.estimator "
                f"must be zsgd (its lr is ν), got {type(est).__name__}"
            )
        if est.z_for_cross != "old":
            raise ValueError(
                "SABA takes every direction at z_t: algorithm.estimator.z_for_cross must be 'old'"
            )
        if self.memory not in ("saga", "history"):
            raise ValueError(f"algorithm.memory={self.memory!r}: not one of saga, history")
        if self.init_memory not in ("zeros", "full"):
            raise ValueError(f"algorithm.init_memory={self.init_memory!r}: not one of zeros, full")
        if self.memory == "history":
            if self.history < 1:
                raise ValueError(f"algorithm.history={self.history} must be >= 1")
            if self.init_memory != "zeros":
                raise ValueError("algorithm.init_memory=full needs algorithm.memory=saga")
            return
        for level in ("lower", "upper"):
            if n_batches(problem.task, level) is None:
                raise ValueError(
                    "SABA (memory=saga) keeps one memory row per fixed minibatch and needs a "
                    "finite-sum task with fixed batches: set task.n_samples "
                    f"({type(problem.task).__name__} has no n_batches), "
                    "or use algorithm.memory=history"
                )

    # -- the algorithm -----------------------------------------------------------------------
    def init(self, problem: Problem, x: Params, y: Params) -> State:
        self._check(problem)
        state = super().init(problem, x, y)  # upper rule, z, lower state, warm start
        z = state.estimator["z"]
        like = {"grad_y_g": y, "hvp": y, "cross": x, "grad_y_f": y, "grad_x_f": x}
        if self.memory == "history":
            state.extra["memory"] = {k: history_init(like[k], self.history) for k in ORACLES}
            return state
        sizes = {level: n_batches(problem.task, level) for level in ("lower", "upper")}
        state.extra["memory"] = {k: saga_init(like[k], sizes[ORACLES[k]]) for k in ORACLES}
        if self.init_memory == "full":
            for batch in _every_batch(problem, "lower", sizes["lower"]):
                raw = self._lower_oracles(problem, state.x, state.y, z, batch)
                self._remember(state, "lower", batch, raw)
            for batch in _every_batch(problem, "upper", sizes["upper"]):
                raw = self._upper_oracles(problem, state.x, state.y, batch)
                self._remember(state, "upper", batch, raw)
        return state

    def step(self, problem: Problem, state: State) -> State:
        sample = self.estimator.draw(problem)  # (upper batch, [lower batch]), as SOBA
        z = state.estimator["z"]
        raw = {
            **self._lower_oracles(problem, state.x, state.y, z, sample.lower[0]),
            **self._upper_oracles(problem, state.x, state.y, sample.upper),
        }
        if self.memory == "saga":
            d = {
                **self._remember(state, "lower", sample.lower[0], raw),
                **self._remember(state, "upper", sample.upper, raw),
            }
        else:
            d = {k: history_saga(state.extra["memory"][k], raw[k], problem) for k in ORACLES}
        d_x = tree.sub(d["grad_x_f"], d["cross"])
        d_z = tree.sub(d["hvp"], d["grad_y_f"])
        state.hypergrad = Hypergrad(d_x, d["grad_x_f"], d["cross"])
        # all three directions were taken at (x_t, y_t, z_t); now the simultaneous updates
        self.lower.update(problem, state.x, state.y, state.lower, state.t, grad=d["grad_y_g"])
        z_new = tree.add(z, d_z, alpha=-self.estimator.lr)
        if self.estimator.radius is not None:
            z_new = tree.project_ball(z_new, None, self.estimator.radius)
        state.estimator["z"] = z_new
        apply(state.upper, state.x, d_x)
        state.t += 1
        return state

    # -- oracles and memory ------------------------------------------------------------------
    @staticmethod
    def _lower_oracles(
        problem: Problem, x: Params, y: Params, z: Params, batch: Batch
    ) -> dict[str, Params]:
        graph = problem.oracles.lower_graph(x, y, batch)
        hz, jz = graph.hvp_cross(z)
        return {"grad_y_g": graph.grad, "hvp": hz, "cross": jz}

    @staticmethod
    def _upper_oracles(problem: Problem, x: Params, y: Params, batch: Batch) -> dict[str, Params]:
        fg = problem.oracles.grad_f(x, y, batch)
        return {"grad_y_f": fg.y, "grad_x_f": fg.x}

    @staticmethod
    def _remember(
        state: State, level: str, batch: Batch, raw: dict[str, Params]
    ) -> dict[str, Params]:
        """SAGA directions of ``level``'s oracles in ``raw``, computed on ``batch``; the
        memory rows of ``batch`` take the new values."""
        j = batch.index
        if j is None:
            raise ValueError(
                "SABA (memory=saga) needs fixed minibatches (Batch.index is None): set "
                "task.n_samples, or use algorithm.memory=history"
            )
        memory = state.extra["memory"]
        return {k: saga(memory[k], j, raw[k]) for k in ORACLES if ORACLES[k] == level}


def _every_batch(problem: Problem, level: str, n: int) -> list[Batch]:
    """Each of the ``n`` fixed batches of ``level`` once (for ``init_memory='full'``)."""
    task = problem.task
    if hasattr(task, "fixed_batch"):
        return [task.fixed_batch(level, j) for j in range(n)]
    draw = problem.lower_batch if level == "lower" else problem.upper_batch
    seen: dict[int, Batch] = {}
    limit = 20 * n * (math.log(n) + 1) + 100  # coupon collector: ≈ n ln n draws
    draws = 0
    while len(seen) < n:
        batch = draw()
        if batch.index is None:
            raise ValueError("init_memory=full needs fixed minibatches (Batch.index is None)")
        seen.setdefault(batch.index, batch)
        draws += 1
        if draws > limit:
            raise RuntimeError(
                f"init_memory=full: {level} batches {set(range(n)) - set(seen)} never drawn"
            )
    return [seen[j] for j in sorted(seen)]
