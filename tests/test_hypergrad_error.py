"""diagnostics/hypergrad-error (issue #12): the estimators' known rates on the quadratic task,
read from the committed table and from a fresh run of the study, and the study's accounting.

Known rates: the truncated Neumann series (and z-SGD from z = 0, the same recursion) leaves the
error (I − ηH)^Q H⁻¹∇ᵧf, so the error falls per term by ρ = max|1 − ηλ(H)| once the slowest
eigen-direction dominates; CG terminates in at most d = dim y iterations.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bilevel.app.config import PACKAGE_ROOT, compose
from bilevel.app.figure import load_entry, make_figure
from bilevel.diagnostics.hypergrad_error import contraction, evaluate, lower_hessian_eigenvalues
from bilevel.hypergrad import ZSGD, ConjugateGradient, Neumann
from bilevel.tasks.quadratic import Quadratic

NAME = "diagnostics/hypergrad-error"
TABLE = PACKAGE_ROOT / "results" / f"{NAME}.csv"


def fitted_factor(rows: pd.DataFrame, from_budget: float) -> float:
    """exp of the least-squares slope of log rel_error against the budget, budget ≥ from_budget."""
    tail = rows[rows.budget >= from_budget]
    return float(np.exp(np.polyfit(tail.budget, np.log(tail.rel_error), 1)[0]))


def check_rates(table: pd.DataFrame, dim_y: int) -> None:
    """Neumann's factor per term within 10% (log scale) of ρ = max|1 − ηλ| over Q ≥ 32, and CG
    below 1e-6 within dim_y iterations, on the noise-free panel."""
    clean = table[table.panel == "noise-free"]
    neumann = [c for c in clean.curve.unique() if c.startswith("Neumann")]
    assert neumann
    for curve in neumann:
        rows = clean[clean.curve == curve]
        rho = rows.rho.iloc[0]
        assert 0 < rho < 1, curve
        assert abs(math.log(fitted_factor(rows, 32)) / math.log(rho) - 1) < 0.1, curve
    cg = clean[clean.curve == "CG"]
    assert cg[cg.rel_error < 1e-6].budget.min() <= dim_y


def test_committed_table_reproduces_the_known_rates():
    """The acceptance check of issue #12, on results/diagnostics/hypergrad-error.csv."""
    table = pd.read_csv(TABLE)
    dim_y = compose([f"experiment={NAME}"]).task.dim_y
    check_rates(table, dim_y)
    # the oracle calls are the counter's: Neumann (textbook) Q terms = Q − 1 HVPs + ∇f + cross
    neumann = table[table.curve.str.startswith("Neumann")]
    assert (neumann.oracle_calls == neumann.budget + 1).all()


def test_the_study_reproduces_them_from_scratch(tmp_path):
    """The registry entry cut to its noise-free panel and two curves, regenerated and redrawn."""
    entry = load_entry(NAME)
    entry["panels"] = [p for p in entry["panels"] if p["label"] == "noise-free"]
    entry["curves"] = [
        {"label": "Neumann η_N = 0.1", "overrides": ["algorithm.estimator.lr=0.1",
                                                     "algorithm.estimator.q=16,32,64"]},
        {"label": "CG", "overrides": ["algorithm/estimator=cg",
                                      "algorithm.estimator.iters=range(1,21)"]},
    ]  # fmt: skip
    entry["claims"] = [
        {
            "text": "CG ends below 1e-6 with fewer calls than Neumann",
            "panel": "noise-free",
            "check": "value('CG', 'rel_error_final') < 1e-6 and value('CG', 'oracle_calls') "
            "< value('Neumann η_N = 0.1', 'oracle_calls')",
        }
    ]
    registry = tmp_path / "experiments"
    (registry / "diagnostics").mkdir(parents=True)
    (registry / f"{NAME}.yaml").write_text(yaml.safe_dump(entry, allow_unicode=True))
    kw = dict(results_dir=tmp_path / "results", registry=registry)
    make_figure(NAME, **kw)
    table = pd.read_csv(tmp_path / "results" / f"{NAME}.csv")
    check_rates(table, 20)
    assert list(table.step[table.curve == "CG"]) == list(range(20))  # the grid, in order
    summary = pd.read_csv(tmp_path / "results" / f"{NAME}_summary.csv")
    row = summary.set_index("curve").loc["Neumann η_N = 0.1"]
    assert abs(math.log(row.rel_error_rate_last2) / math.log(row.rho_final) - 1) < 0.1
    claims = pd.read_csv(tmp_path / "results" / f"{NAME}_claims.csv")
    assert (claims.status == "reproduced").all()
    make_figure(NAME, from_table=True, **kw)  # redrawn from the table alone
    assert pd.read_csv(tmp_path / "results" / f"{NAME}_summary.csv").equals(summary)


class _Algorithm:
    def __init__(self, estimator):
        self.estimator = estimator


@pytest.fixture
def task():
    return Quadratic(dim_x=4, dim_y=6, mu=1.0, cond=5.0)


def test_evaluate_counts_calls_and_predicts_rho(task):
    eigs = torch.linalg.eigvalsh(task.A)
    x, _ = task.init_params(torch.Generator().manual_seed(0))
    torch.testing.assert_close(lower_hessian_eigenvalues(task, x, task.y_star(x)), eigs)
    row = evaluate(task, _Algorithm(Neumann(q=5, lr=0.3)), seed=0, steps=1)
    assert (row["calls_grad_f"], row["calls_hvp"], row["calls_cross"]) == (1, 4, 1)
    assert row["rho"] == pytest.approx(float((1 - 0.3 * eigs).abs().max()))  # |1 − 0.3·5|
    row = evaluate(task, _Algorithm(ZSGD(lr=0.1)), seed=0, steps=7)
    assert row["oracle_calls"] == 21 and row["rho"] == pytest.approx(0.9)
    kappa = float(eigs[-1] / eigs[0])
    cg = ConjugateGradient(iters=50, tol=1e-12)
    assert contraction(cg, eigs) == pytest.approx((kappa**0.5 - 1) / (kappa**0.5 + 1))
    row = evaluate(task, _Algorithm(cg), seed=0, steps=1)
    assert row["rel_error"] < 1e-10 and row["calls_hvp"] <= 6  # exact within d = 6
