"""docs/algorithms.md cannot drift: every registered algorithm has one row, its parts are the
config's defaults, and its oracle-cost formulas match the counts measured on its test task."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bilevel.algorithms import REGISTRY
from bilevel.app.config import compose
from bilevel.lower import EpochSGD
from bilevel.oracles import ORACLE_KINDS
from bilevel.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
MEASURE = 60  # iterations, a multiple of every interval and checkpoint period in the configs
# fewer tasks per step on the meta-learning task: the formulas are checked at that value
FAST = {"meta_synthetic": ["algorithm.tasks_per_step=2"]}


def catalogue() -> dict[str, dict[str, str]]:
    lines = (ROOT / "docs" / "algorithms.md").read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for ln in rows[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        assert row["algorithm"] not in table, f"two rows for {row['algorithm']}"
        table[row["algorithm"]] = row
    return table


def test_every_registered_algorithm_has_one_row_and_a_config():
    rows = catalogue()
    assert set(rows) == set(REGISTRY)
    for name in REGISTRY:
        assert (ROOT / "configs" / "algorithm" / f"{name}.yaml").exists()


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_row_matches_config_and_registry(name):
    row = catalogue()[name]
    cfg = compose([f"algorithm={name}", f"task={row['test task']}"])
    assert instantiate(cfg.algorithm).__class__ is REGISTRY[name]
    for part in ("lower", "estimator", "upper"):
        node = cfg.algorithm.get(part)
        name = "—" if node is None else node._target_.rsplit(".", 1)[1]
        assert name == row[part], (part, name)


def _expected(formula: str, cfg, algo) -> float:
    """``formula`` evaluated on the config; Epoch-SGD's p is the one the built ``algo`` runs
    with (UniBiO takes it from the task at init)."""
    a = cfg.algorithm
    est = a.get("estimator")
    built_p = getattr(getattr(algo, "lower", None), "p", None)
    names = {
        "lower": a.get("lower"),
        "estimator": est,
        "upper": a.get("upper"),
        "algo": a,
        "E_k": (est.q - 1) / 2 if est is not None and "q" in est else 0.0,
        "epoch_sgd_steps": lambda low: sum(
            EpochSGD(
                T1=low.T1, budget=low.budget, p=built_p or low.p, max_epochs=low.max_epochs
            ).epoch_lengths()
        ),
    }
    if not re.fullmatch(r"[\w.\s+\-*/()]+", formula):
        raise ValueError(f"bad formula {formula!r}")
    return float(eval(formula, {"__builtins__": {}}, names))  # noqa: S307


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_oracle_counts_per_iteration_match_the_catalogue(name):
    row = catalogue()[name]
    task_name = row["test task"]
    cfg = compose([f"algorithm={name}", f"task={task_name}", *FAST.get(task_name, [])])
    OmegaConf.resolve(cfg)
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0), horizon=MEASURE + 1)
    state = algo.init(problem, x, y)
    state = algo.step(problem, state)  # iteration 0 may differ (no previous point yet)
    before = dict(problem.oracles.counter.calls)
    for _ in range(MEASURE):
        state = algo.step(problem, state)
    after = problem.oracles.counter.calls
    random_k = "E_k" in "".join(row[k] for k in ORACLE_KINDS)
    for kind in ORACLE_KINDS:
        measured = (after[kind] - before.get(kind, 0)) / MEASURE
        expected = _expected(row[kind], cfg, algo)
        if random_k and kind == "hvp":
            assert measured == pytest.approx(expected, rel=0.35, abs=0.2), (kind, measured)
        else:
            assert measured == pytest.approx(expected), (kind, measured, row[kind])


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_fixed_seed_gives_identical_results(name):
    row = catalogue()[name]
    noise = {
        "quadratic": ["task.noise_std=0.5"],
        "unibio_synthetic": ["task.noise_lower=0.5"],
        "quadratic_finite_sum": [],
    }
    cfg = compose(
        [f"algorithm={name}", f"task={row['test task']}", *noise.get(row["test task"], [])]
    )
    finals = []
    for _ in range(2):
        task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
        x, y = task.init_params(torch.Generator().manual_seed(3))
        problem = Problem(task, torch.Generator().manual_seed(4), horizon=15)
        state = algo.init(problem, x, y)
        for _ in range(15):
            state = algo.step(problem, state)
        finals.append(torch.cat([v.reshape(-1) for v in (*state.x.values(), *state.y.values())]))
    assert torch.equal(finals[0], finals[1])
    assert torch.isfinite(finals[0]).all()
