"""Every (text task, dataset, model) choice the configs allow runs a step and an evaluation
(issue #11); the others are refused at compose time (tests/test_configs.py checks the refusals).
Tiny sizes: this checks that the inputs reach the model (single sentences or SNLI pairs, any
encoder), not what is learned."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from bilevel.app.config import ConfigError, check_config, compose
from bilevel.problem import Problem
from tests.text_tasks import needs_data

TASKS = ["hypercleaning", "hyperrep", "hyperrep_amazon", "hyperrep_trec", "auc", "hpo"]
TINY = ["algorithm=soba", "~settings", "scale.max_train=128", "scale.hidden_size=16",
        "scale.transformer.hidden=16", "scale.transformer.layers=1", "scale.transformer.heads=2",
        "scale.transformer.ffn=32"]  # fmt: skip
SMALLER = {"eval_size": 32, "n_train_tasks": 8, "n_test_tasks": 4,
           "eval_train_tasks": 4, "tasks_per_batch": 2, "max_len": 24}  # fmt: skip


@needs_data
@pytest.mark.parametrize("task", TASKS)
def test_every_allowed_combination_runs_a_step(task):
    ran = 0
    for dataset in ("snli", "sentiment140", "amazon", "trec"):
        for model in ("rnn", "nli_rnn", "transformer"):
            cfg = compose([f"task={task}", f"dataset={dataset}", f"model={model}", *TINY])
            for key, value in SMALLER.items():  # the keys this task has
                if key in cfg.task:
                    cfg.task[key] = value
            try:
                check_config(cfg)
            except ConfigError:
                continue  # refused in one line (tests/test_configs.py)
            t, algorithm = instantiate(cfg.task), instantiate(cfg.algorithm)
            x, y = t.init_params(torch.Generator().manual_seed(1))
            problem = Problem(t, torch.Generator().manual_seed(0))
            state = algorithm.step(problem, algorithm.init(problem, x, y))
            row = t.evaluate(state.x, state.y)
            assert math.isfinite(row["upper_loss"]), (task, dataset, model, row)
            ran += 1
    assert ran >= 2
