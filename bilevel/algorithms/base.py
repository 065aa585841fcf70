"""The algorithm contract (DESIGN §3): ``init(problem, x, y) -> State`` and
``step(problem, state) -> State``, as benchopt's stochastic solvers (``init`` + ``get_step``).

Algorithms use only the :class:`~bilevel.problem.Problem` (oracles and fresh batches) and the
shared parts (estimators, lower strategies, upper rules); never data loading, devices, logging
or checkpoints. Everything they carry between iterations is in :class:`State`, which the trainer
checkpoints with :func:`state_dict` / :func:`load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from bilevel import tree
from bilevel.hypergrad import Estimator, Hypergrad
from bilevel.lower import LowerStrategy
from bilevel.problem import Problem
from bilevel.tree import Params

UpperFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
DecayClock = Literal["iteration", "horizon"]


@dataclass
class State:
    """Iterates and everything an algorithm carries: x, y, iteration t, optimizer, and the
    estimator's and lower strategy's own dicts; ``hypergrad`` is the last estimate (diagnostics)."""

    x: Params
    y: Params
    t: int = 0
    upper: torch.optim.Optimizer | None = None
    estimator: dict[str, Any] = field(default_factory=dict)
    lower: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    hypergrad: Hypergrad | None = None


class Algorithm:
    """Base class. ``name`` is the registry key (= configs/algorithm/<name>.yaml);
    ``lower_point`` is the y at which the algorithm's hypergradient is taken."""

    name: ClassVar[str] = ""

    def new_state(self, x: Params, y: Params, **extra: Any) -> State:
        """A fresh State: the upper optimizer on x and the parts' own dicts, for whichever of
        ``self.upper``, ``self.estimator`` and ``self.lower`` the algorithm has."""
        upper, estimator = getattr(self, "upper", None), getattr(self, "estimator", None)
        lower = getattr(self, "lower", None)
        return State(
            x=x,
            y=y,
            upper=upper(list(x.values())) if upper is not None else None,
            estimator=estimator.init_state(x, y) if estimator is not None else {},
            lower=lower.init_state(y) if lower is not None else {},
            extra=dict(extra),
        )

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        raise NotImplementedError

    def step(self, problem: Problem, state: State) -> State:
        raise NotImplementedError

    def lower_point(self, state: State) -> Params:
        return state.y


class DecayingSteps:
    """Step-size schedule shared by every algorithm with ``upper_decay`` / ``lower_decay`` (one
    code path): a = ``upper_decay`` / ``lower_decay`` scales the upper step (the optimizer's lr)
    and the lower SGD step by a factor s_a; a = 0 keeps a step constant. T₀ = ``decay_time``.

    * ``decay_clock='iteration'``: s_a(t) = (1 + t/T₀)^{−a}, a decay per iteration with time
      constant T₀ (T₀ = 1: lr₀/(t+1)^a);
    * ``decay_clock='horizon'``: s_a = max(1, T/T₀)^{−a}, CONSTANT over a run of known length
      T (``problem.horizon``, the trainer's ``max_steps``): the tuned rates lr₀ are the steps of
      a run of at most T₀ iterations, and a longer run uses smaller constant steps in T^{−a}
      (TTSA's theorem for a non-convex upper level: α ∝ T^{−3/5}, β ∝ T^{−2/5}).

    Subclasses call :meth:`init_decay` in ``__init__``, store ``state.extra['upper_lr0']`` in
    ``init`` and :meth:`schedule` at the start of each step.
    """

    upper_decay: float = 0.0
    lower_decay: float = 0.0
    decay_clock: DecayClock = "iteration"
    decay_time: float = 1.0

    def init_decay(
        self, upper_decay: float, lower_decay: float, decay_clock: DecayClock, decay_time: float
    ) -> None:
        """Check and keep the schedule's settings."""
        if decay_clock not in ("iteration", "horizon"):
            raise ValueError(f"unknown decay_clock {decay_clock!r}; choose iteration or horizon")
        if decay_time <= 0:
            raise ValueError(f"decay_time must be > 0, got {decay_time}")
        self.upper_decay, self.lower_decay = upper_decay, lower_decay
        self.decay_clock, self.decay_time = decay_clock, decay_time

    def step_scale(self, decay: float, t: int, horizon: int | None) -> float:
        """lr_t / lr₀ of a step with exponent ``decay`` at iteration t of a run of ``horizon``
        iterations (see the class docstring)."""
        if not decay:
            return 1.0
        if self.decay_clock == "iteration":
            return (1.0 + t / self.decay_time) ** -decay
        if horizon is None:
            raise ValueError(
                f"{type(self).__name__}: decay_clock=horizon needs the run length: build the "
                "Problem with horizon=<max steps> (the Trainer does), or use decay_clock=iteration"
            )
        return max(1.0, horizon / self.decay_time) ** -decay

    def schedule(self, problem: Problem, state: State) -> None:
        """Set this iteration's step sizes (a no-op with zero decays)."""
        if self.upper_decay:
            scale = self.step_scale(self.upper_decay, state.t, problem.horizon)
            groups = state.upper.param_groups
            for group, lr0 in zip(groups, state.extra["upper_lr0"], strict=True):
                group["lr"] = lr0 * scale
        if self.lower_decay:
            state.lower["lr_scale"] = self.step_scale(self.lower_decay, state.t, problem.horizon)


class LowerEstimateUpper(DecayingSteps, Algorithm):
    """The common shape of double-loop and periodic methods (StocBiO, BO-REP, UniBiO):

        y ← lower update at x_t (all steps, or periodic);
        h_t ← hypergradient estimate at (x_t, y);
        x_{t+1} ← upper rule(h_t).

    ``lower``, ``estimator`` and ``upper`` are the parts; subclasses only name the paper. Step
    sizes follow :class:`DecayingSteps` (``upper_decay``, ``lower_decay``, ``decay_clock``,
    ``decay_time``).
    """

    def __init__(
        self,
        lower: LowerStrategy,
        estimator: Estimator,
        upper: UpperFactory,
        upper_decay: float = 0.0,
        lower_decay: float = 0.0,
        decay_clock: DecayClock = "iteration",
        decay_time: float = 1.0,
    ):
        self.init_decay(upper_decay, lower_decay, decay_clock, decay_time)
        self.lower, self.estimator, self.upper = lower, estimator, upper

    def init(self, problem: Problem, x: Params, y: Params) -> State:
        state = self.new_state(x, y)
        self.lower.warm_start(problem, x, y, state.lower)
        state.extra["upper_lr0"] = [g["lr"] for g in state.upper.param_groups]
        return state

    def step(self, problem: Problem, state: State) -> State:
        from bilevel.upper import apply

        self.schedule(problem, state)
        self.lower.update(problem, state.x, state.y, state.lower, state.t)
        y_hat = self.lower.point(state.y, state.lower)
        state.hypergrad = self.estimator(problem, state.x, y_hat, state.estimator)
        apply(state.upper, state.x, state.hypergrad.value)
        state.t += 1
        return state

    def lower_point(self, state: State) -> Params:
        return self.lower.point(state.y, state.lower)


# -- checkpointing of State ----------------------------------------------------------------
def state_dict(obj: Any) -> Any:
    """A torch-serialisable copy of a State (tensors cloned, optimizers by their state_dict)."""
    if isinstance(obj, State):
        return {k: state_dict(v) for k, v in obj.__dict__.items() if k != "hypergrad"}
    if isinstance(obj, torch.optim.Optimizer):
        return obj.state_dict()
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: state_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(state_dict(v) for v in obj)
    return obj


def load_state_dict(target: Any, saved: Any) -> Any:
    """Load ``saved`` into ``target`` in place where possible (tensors, optimizers); return the
    value to store for immutable leaves."""
    if isinstance(target, State):
        for k, v in saved.items():
            setattr(target, k, load_state_dict(getattr(target, k), v))
        return target
    if isinstance(target, torch.optim.Optimizer):
        target.load_state_dict(saved)
        return target
    if isinstance(target, torch.Tensor) and isinstance(saved, torch.Tensor):
        if target.shape == saved.shape:
            with torch.no_grad():
                target.copy_(saved)
            return target
        return saved.to(target.device)
    if isinstance(target, dict) and isinstance(saved, dict):
        for k, v in saved.items():
            target[k] = load_state_dict(target[k], v) if k in target else v
        return target
    return saved


def params_finite(state: State) -> bool:
    """Whether x and y are finite (one host sync; called at evaluation time only)."""
    total = tree.sq_norm(state.x) + tree.sq_norm(state.y)
    return bool(torch.isfinite(total))
