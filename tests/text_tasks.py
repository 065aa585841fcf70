"""Helpers of the text-task tests: the shared/data marker and a composed, initialised run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from bilevel.app.config import compose
from bilevel.data import resolve_data_dir
from bilevel.problem import Problem

try:
    resolve_data_dir(None)
    HAVE_DATA = True
except Exception:
    HAVE_DATA = False
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="shared/data is not beside the repository")


def build(*overrides: str) -> tuple[Any, Any, Problem, Any]:
    """(task, algorithm, problem, state) of the composed config: init seed 1, run seed 0."""
    cfg = compose(list(overrides))
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0))
    return task, algo, problem, algo.init(problem, x, y)
