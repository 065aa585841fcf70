"""The figure pipeline end to end on a tiny registry entry: plan, run, reuse, table, plot."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from bilevel.app.config import ConfigError
from bilevel.app.figure import load_entry, make_figure, plan
from bilevel.plots import seed_bands

TINY = {
    "title": "tiny",
    "experiment": "unibio/fig1",
    "seeds": [0, 1],
    "panels": [
        {"label": "deterministic", "overrides": ["task.noise_lower=0.0"], "seeds": [0]},
        {"label": "noisy", "overrides": ["task.noise_lower=1.0", "task.noise_upper=0.01"]},
    ],
    "curves": [
        {"label": "p = 2", "overrides": ["task.p=2", "trainer.max_steps=12"]},
        {"label": "p = 4", "overrides": ["task.p=4", "trainer.max_steps=12"]},
    ],
    "plot": {"x": "step", "y": "true_hypergrad_norm", "logy": True, "band": [0.0, 1.0]},
    "summary": {"last_k": 5},
}


@pytest.fixture
def registry(tmp_path):
    reg = tmp_path / "experiments"
    (reg / "t").mkdir(parents=True)
    (reg / "t" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return reg


def test_plan_is_panels_by_curves_by_seeds(registry):
    runs = plan(load_entry("t/tiny", registry))
    assert len(runs) == 1 * 2 + 2 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert all("experiment=unibio/fig1" in r.overrides for r in runs)


def test_make_figure_runs_then_reuses(registry, tmp_path, capsys):
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    png = make_figure("t/tiny", jobs=1, **kw)
    assert png.exists() and png.stat().st_size > 10_000
    table = pd.read_csv(tmp_path / "results" / "t" / "tiny.csv")
    assert len(table) == 6 * 13  # 6 runs, evaluations at steps 0..12
    assert set(table.panel) == {"deterministic", "noisy"}
    summary = pd.read_csv(tmp_path / "results" / "t" / "tiny_summary.csv")
    assert list(summary.seeds) == [1, 1, 2, 2]
    assert (summary.true_hypergrad_norm_final > 0).all()
    assert "6 to run" in capsys.readouterr().out
    make_figure("t/tiny", jobs=1, **kw)  # everything reused
    assert "6 reused, 0 to run" in capsys.readouterr().out
    make_figure("t/tiny", from_table=True, **kw)  # redraw without runs


def test_changed_config_is_rerun_and_no_run_refuses(registry, tmp_path):
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    make_figure("t/tiny", jobs=1, **kw)
    entry = dict(
        TINY, curves=[{"label": "p = 2", "overrides": ["task.p=2", "trainer.max_steps=8"]}]
    )
    (registry / "t" / "tiny.yaml").write_text(yaml.safe_dump(entry))
    with pytest.raises(ConfigError, match="missing or stale"):
        make_figure("t/tiny", run=False, **kw)


def test_unknown_figure_lists_registered(registry):
    with pytest.raises(ConfigError, match="t/tiny"):
        load_entry("t/nope", registry)


def test_seed_bands_median_and_quantiles():
    df = pd.DataFrame({"panel": "a", "curve": "c", "step": [0, 0, 0], "y": [1.0, 2.0, 10.0]})
    out = seed_bands(df, "step", "y", ["panel", "curve"], band=(0.0, 1.0))
    assert out.loc[0, "median"] == 2.0 and out.loc[0, "lo"] == 1.0 and out.loc[0, "hi"] == 10.0
