"""unibio/fig5 (issue #12): the power-law fit behind UniBiO Fig. 5 (the running average of
‖∇Φ(x_t)‖ over t < T against T, linear regression on log–log axes, a slope per p), checked on a
table with a known power law, and the committed table and summary checked against it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bilevel.app.claims import NOT_REPRODUCED, REPRODUCED
from bilevel.app.config import PACKAGE_ROOT, ConfigError
from bilevel.app.figure import add_running_means, load_entry, plan, summarize
from bilevel.plots import plot_panels, power_law_fit

NAME = "unibio/fig5"
RESULTS = PACKAGE_ROOT / "results" / "unibio"
Y = "true_hypergrad_norm_running_mean"


def power_law_table(slopes: dict[str, float], seeds: int = 2, t_max: int = 400) -> pd.DataFrame:
    """One run per (curve, seed): y = (1 + seed)·T^slope for T ≥ 10, a flat 1 below (outside the
    fitted range), T = step + 1."""
    rows = []
    for curve, slope in slopes.items():
        for seed in range(seeds):
            for step in range(t_max):
                t = step + 1
                y = (1 + seed) * (t**slope if t >= 10 else 10**slope)
                rows.append({"panel": "a", "curve": curve, "seed": seed, "step": step,
                             "n_averaged": t, Y: y, "status": "completed"})  # fmt: skip
    return pd.DataFrame(rows)


def test_the_fit_recovers_a_known_power_law_per_curve():
    """``summary.slope``: slope and R² of the log–log fit, per curve, median over seeds."""
    table = power_law_table({"p = 2": -1.0, "p = 8": -0.25})
    entry = {
        "plot": {"x": "n_averaged", "y": Y},
        "summary": {"slope": {Y: "n_averaged"}, "slope_range": [10, None], "slope_points": 8},
    }
    summary = summarize(table, entry).set_index("curve")
    assert summary.loc["p = 2", f"{Y}_slope"] == pytest.approx(-1.0)
    assert summary.loc["p = 8", f"{Y}_slope"] == pytest.approx(-0.25)
    assert summary[f"{Y}_slope_r2"].tolist() == pytest.approx([1.0, 1.0])
    # the flat prefix T < 10 bends the line when it is not excluded: R² < 1, a shallower slope
    entry["summary"]["slope_range"] = None
    bent = summarize(table, entry).set_index("curve")
    assert bent.loc["p = 2", f"{Y}_slope"] > -1.0 and bent.loc["p = 2", f"{Y}_slope_r2"] < 1.0


def test_the_fit_weighs_each_decade_alike_and_reports_its_range():
    """``points``: the rows nearest n log-spaced x; R² in [0, 1]; fewer than two x: NaN."""
    t = np.arange(1, 1001, dtype=float)
    y = np.where(t <= 100, t**-1.0, 0.01 * (t / 100) ** -0.1)  # a knee at T = 100
    dense = power_law_fit(t, y)  # 900 of the 1000 points lie after the knee
    even = power_law_fit(t, y, points=7)  # T = 1, 3, 10, 32, 100, 316, 1000
    assert even.n == 7 and (even.x_lo, even.x_hi) == (1.0, 1000.0)
    assert dense.slope > even.slope  # the dense grid follows the flat last decade
    assert 0.0 <= even.r2 <= 1.0 and 0.0 <= dense.r2 <= 1.0
    ranged = power_law_fit(t, y, x_range=[2, 50])
    assert ranged.slope == pytest.approx(-1.0) and (ranged.x_lo, ranged.x_hi) == (2.0, 50.0)
    assert ranged(10.0) == pytest.approx(0.1)
    assert math.isnan(power_law_fit([5.0, 5.0], [1.0, 2.0]).slope)


def test_running_means_are_prefix_means_per_run():
    """``running_mean``: the mean over a run's evaluations so far, T = their count."""
    table = pd.DataFrame(
        {"panel": "a", "curve": ["c"] * 3 + ["d"] * 3, "seed": 0, "step": [2, 0, 1, 0, 1, 2],
         "m": [5.0, 1.0, 3.0, 2.0, np.nan, 4.0]}
    )  # fmt: skip
    out = add_running_means(table, ["m"])
    c = out[out.curve == "c"].sort_values("step")
    assert c.m_running_mean.tolist() == [1.0, 2.0, 3.0] and c.n_averaged.tolist() == [1, 2, 3]
    d = out[out.curve == "d"].sort_values("step")  # a missing value is not averaged
    assert d.m_running_mean.iloc[2] == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="running_mean"):
        add_running_means(table, ["absent"])


def test_a_panel_can_set_overrides_per_curve():
    """``per_curve`` applies after the curve's overrides: a step size per p on one panel."""
    entry = load_entry(NAME)
    runs = {(r.panel, r.curve): r.overrides for r in plan(entry)}
    first, common = (p["label"] for p in entry["panels"])
    assert runs[first, "p = 8"].index("algorithm.upper.lr=0.01") > runs[first, "p = 8"].index(
        "task.p=8"
    )
    assert "algorithm.upper.lr=0.03" in runs[common, "p = 8"]
    entry["panels"][0]["per_curve"] = {"p = 3": ["x=1"]}
    with pytest.raises(ConfigError, match="per_curve"):
        plan(entry)


def test_the_plot_draws_each_fit_dashed():
    """``plot.fit``: one dashed line per curve beside its median."""
    table = power_law_table({"p = 2": -1.0, "p = 8": -0.25}, seeds=1, t_max=50)
    spec = {"x": "n_averaged", "y": Y, "logx": True, "logy": True}
    spec["fit"] = {"fits": {Y: "n_averaged"}, "range": [10, None], "points": 5}
    ax = plot_panels(table, spec, ["a"], ["p = 2", "p = 8"]).axes[0]
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 2
    assert any("slope -0.25" in t.get_text() for t in ax.texts)


def test_committed_table_and_summary_hold_the_fitted_slopes():
    """results/unibio/fig5*: the running average is the prefix mean of the logged ‖∇Φ(x_t)‖,
    the summary's slope and R² per p are the entry's fit of that table."""
    entry = load_entry(NAME)
    table = pd.read_csv(RESULTS / "fig5.csv")
    summary = pd.read_csv(RESULTS / "fig5_summary.csv")
    assert {f"{Y}_slope", f"{Y}_slope_r2", "train_seconds"} <= set(summary.columns)
    assert len(summary) == len(entry["panels"]) * len(entry["curves"])
    assert summary[f"{Y}_slope_r2"].between(0, 1).all()
    assert (summary[f"{Y}_slope"] < 0).all() and (summary.train_seconds > 0).all()
    redone = add_running_means(table.drop(columns=[Y, "n_averaged"]), ["true_hypergrad_norm"])
    np.testing.assert_allclose(redone[Y], table[Y], rtol=1e-4)
    assert (table.n_averaged == table.step + 1).all()  # an evaluation at every iteration
    again = summarize(table, entry)
    np.testing.assert_allclose(again[f"{Y}_slope"], summary[f"{Y}_slope"], rtol=1e-3)
    claims = pd.read_csv(RESULTS / "fig5_claims.csv")  # every claim, with a status
    assert set(claims.claim) == {c["text"] for c in entry["claims"]}
    assert claims.status.isin([REPRODUCED, NOT_REPRODUCED]).all()
