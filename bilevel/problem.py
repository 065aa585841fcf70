"""What an algorithm sees of a run: the task's oracles and its samplers, one RNG for everything.

The trainer builds a :class:`Problem` and checkpoints its generator, so that a resumed run draws
the same batches and random truncation indices as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch

from bilevel.oracles import Batch, OracleCounter, Oracles


class Problem:
    """``horizon``: the run's length in iterations when it is known (the trainer's
    ``max_steps``), for schedules that depend on it (TTSA's horizon-dependent steps)."""

    def __init__(
        self,
        task: Any,
        generator: torch.Generator,
        counter: OracleCounter | None = None,
        horizon: int | None = None,
    ):
        self.task = task
        self.generator = generator
        self.oracles = Oracles(task, counter)
        self.horizon = horizon

    def lower_batch(self) -> Batch:
        """A fresh minibatch for g (the lower level)."""
        return self.task.sample_lower(self.generator)

    def upper_batch(self) -> Batch:
        """A fresh minibatch for f (the upper level)."""
        return self.task.sample_upper(self.generator)

    def episodes(self, n: int) -> list[tuple[Batch, Batch]]:
        """``n`` meta-learning episodes (support, query), each from one task: one outer iteration
        of MAML/ANIL is one batch of tasks. Delegates to the task's ``sample_episodes``."""
        sample = getattr(self.task, "sample_episodes", None)
        if sample is None:
            raise TypeError(
                f"task {type(self.task).__name__} has no meta-learning episodes "
                "(no sample_episodes); meta-learning algorithms (maml, anil) need a "
                "meta-learning task such as task=meta_synthetic"
            )
        return sample(self.generator, n)

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] from the run's CPU generator (no device sync)."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator).item())
