"""The task contract (DESIGN §3): a bilevel problem min_x f(x, y*(x)), y*(x) = argmin_y g(x, y).

A task owns its data and models and exposes
  * ``init_params(generator) -> (x, y)``: parameter dicts (name -> tensor) on the task's device;
  * ``upper_loss(x, y, batch)`` (f) and ``lower_loss(x, y, batch)`` (g), differentiable in x, y;
  * ``sample_upper(generator)`` / ``sample_lower(generator)``: fresh minibatches;
  * ``evaluate(x, y) -> dict``: metrics of the current iterate (no effect on training state);
  * ``steps_per_epoch``;
  * where known, closed forms ``y_star(x)``, ``phi(x)``, ``hypergrad_true(x)`` (diagnostics, tests);
  * ``uniform_convexity_p``: the order p of g(x, ·)'s uniform convexity (UniBiO's LLUC
    assumption, ⟨∇g(y) − ∇g(y'), y − y'⟩ ≥ μ‖y − y'‖^p): 2 for a strongly convex lower level,
    the order of the term that makes g uniformly convex otherwise (the synthetic problem's p, a
    p-norm regulariser's p), None where the task states none (UniBiO then says so and uses 2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from bilevel.oracles import Batch
from bilevel.tree import Params


class Task(ABC):
    steps_per_epoch: int = 1
    device: torch.device = torch.device("cpu")
    uniform_convexity_p: float | None = None

    def to(self, device: torch.device | str) -> Task:
        """Move the task's data and models to ``device``; returns self."""
        self.device = torch.device(device)
        return self

    @abstractmethod
    def init_params(self, generator: torch.Generator) -> tuple[Params, Params]: ...

    @abstractmethod
    def upper_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...

    @abstractmethod
    def lower_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...

    @abstractmethod
    def sample_upper(self, generator: torch.Generator) -> Batch: ...

    @abstractmethod
    def sample_lower(self, generator: torch.Generator) -> Batch: ...

    @abstractmethod
    def evaluate(self, x: Params, y: Params) -> dict[str, float]: ...

    @property
    def has_closed_form(self) -> bool:
        return all(hasattr(self, m) for m in ("y_star", "phi", "hypergrad_true"))


def gaussian(
    shape: tuple[int, ...],
    std: float,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """N(0, std²) drawn on the CPU generator (reproducible across devices), then moved."""
    if std == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return (std * torch.randn(shape, generator=generator, dtype=dtype)).to(device)
