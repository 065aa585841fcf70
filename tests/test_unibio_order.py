"""UniBiO takes the order p of the lower level's uniform convexity from the task it runs on
(``Task.uniform_convexity_p``): the synthetic problem's p, a text task's p-norm regulariser's p,
2 for strongly convex lower levels; a task without one runs with p = 2 and says so. The order
reaches Epoch-SGD (periodic update and warm start) and the Neumann change of variable."""

from __future__ import annotations

import logging

import pytest
import text_tasks
import torch
from tiny_text import sorted_sentiment140

from bilevel import tree
from bilevel.tasks.quadratic import Quadratic
from bilevel.tasks.regularizers import uniform_convexity_order


def parts(algo) -> tuple[float, float, float | None]:
    """(Epoch-SGD p, its warm start's p, the estimator's lluc_p) of a UniBiO after init."""
    return algo.lower.p, algo.lower.warm_start_with.p, algo.estimator.lluc_p


def test_regulariser_orders():
    assert uniform_convexity_order("l2", 1e-4) == 2.0
    assert uniform_convexity_order("p_norm", 1e-4, 4.0) == 4.0
    assert uniform_convexity_order("l2_norm", 1e-4) is None  # not uniformly convex
    assert uniform_convexity_order("p_norm", 0.0, 4.0) is None  # no penalty
    assert uniform_convexity_order("p_norm", 1e-4, 1.5) is None


@pytest.mark.parametrize("p", [2, 6])
def test_synthetic_task_gives_its_p(p, caplog):
    with caplog.at_level(logging.INFO, logger="bilevel.algorithms.unibio"):
        task, algo, _, _ = text_tasks.build(
            "algorithm=unibio", "task=unibio_synthetic", f"task.p={p}"
        )
    assert task.uniform_convexity_p == p
    assert parts(algo) == (p, p, None if p == 2 else p)  # scalar y: the change of variable
    if p > 2:
        assert "on the scalar lower variable (exact)" in caplog.text
    assert sum(algo.lower.epoch_lengths()) == {2: 75, 6: 70}[p]  # spec ACCBO-UNIBIO §3.2 table
    # an explicit algorithm.p wins over the task's
    _, algo, _, _ = text_tasks.build(
        "algorithm=unibio", "task=unibio_synthetic", f"task.p={p}", "algorithm.p=4"
    )
    assert parts(algo) == (4, 4, 4)


def test_quadratic_is_order_two(caplog):
    with caplog.at_level(logging.INFO, logger="bilevel.algorithms.unibio"):
        task, algo, problem, state = text_tasks.build("algorithm=unibio", "task=quadratic")
    assert task.uniform_convexity_p == 2
    assert parts(algo) == (2, 2, None)  # p = 2: D ≡ 1, no change of variable
    assert "p = 2 (from task Quadratic)" in caplog.text
    algo.step(problem, state)


class NoOrder(Quadratic):
    uniform_convexity_p = None


def test_task_without_an_order_runs_with_p2_and_says_so(caplog):
    from hydra.utils import instantiate

    from bilevel.app.config import compose
    from bilevel.problem import Problem

    algo = instantiate(compose(["algorithm=unibio", "task=quadratic"]).algorithm)
    task = NoOrder(dim_x=3, dim_y=4)
    x, y = task.init_params(torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="bilevel.algorithms.unibio"):
        algo.init(Problem(task, torch.Generator().manual_seed(0)), x, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "bilevel.algorithms.unibio"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "NoOrder states no order" in lines[0] and "using p = 2" in lines[0]
    assert parts(algo) == (2, 2, None)


def tiny_hypercleaning(root, *overrides: str):
    """UniBiO on hyper-cleaning, composed from the configs, on tiny Sentiment140 files."""
    return text_tasks.build(
        "algorithm=unibio",
        "task=hypercleaning",
        "dataset=sentiment140",
        "model=rnn",
        f"paths.data_dir={root}",
        "dataset.glove=null",
        "scale.hidden_size=8",
        "model.fc=[8]",
        "task.val_size=20",
        "task.n_test=null",
        "task.eval_size=20",
        "task.batch_size=8",
        "task.val_batch_size=8",
        "task.max_len=8",
        *overrides,
    )


def test_text_task_with_a_p_norm_regulariser_gives_its_p(tmp_path, caplog):
    root = sorted_sentiment140(tmp_path, n_train=40, n_test=10)
    with caplog.at_level(logging.INFO, logger="bilevel.algorithms.unibio"):
        task, algo, problem, state = tiny_hypercleaning(
            root,
            *("task.reg.kind=p_norm", "task.reg.p=4", "task.reg.coef=1e-2"),
            *("algorithm.lower.T1=5", "algorithm.lower.budget=100"),  # synthetic_exp.py's
        )
    assert task.uniform_convexity_p == 4
    # Epoch-SGD of order 4 (formerly 2: task.p does not exist here); the change of variable is
    # exact only for a scalar y, so on the network the Neumann series is the plain one, and the
    # notice says so in one line
    assert parts(algo) == (4, 4, None)
    assert algo.lower.epoch_lengths() == [5, 14, 40]  # p = 2: 5, 10, 20, 40
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bilevel.algorithms.unibio"]
    assert line.startswith("UniBiO: p = 4 (from task HyperCleaning)") and "plain Neumann" in line
    algo.step(problem, state)
    assert torch.isfinite(tree.flatten(state.hypergrad.value)).all()
    # forced on: D = (p-1)|y|^(p-2) on every parameter of the network, and the notice says so
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bilevel.algorithms.unibio"):
        _, algo, _, state = tiny_hypercleaning(
            root,
            *("task.reg.kind=p_norm", "task.reg.p=4", "task.reg.coef=1e-2"),
            "algorithm.change_of_variable=true",
        )
    assert parts(algo) == (4, 4, 4)
    assert f"on each of the {tree.numel(state.y)} lower parameters (forced" in caplog.text

    # the squared L2 regulariser: order 2; the un-squared one (quirk B-Q1): none -> p = 2, warned
    task, algo, _, _ = tiny_hypercleaning(root)
    assert task.uniform_convexity_p == 2 and parts(algo) == (2, 2, None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bilevel.algorithms.unibio"):
        task, algo, _, _ = tiny_hypercleaning(root, "task.reg.kind=l2_norm")
    assert task.uniform_convexity_p is None and parts(algo) == (2, 2, None)
    assert "HyperCleaning states no order" in caplog.text
