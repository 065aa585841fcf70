"""The figure pipeline end to end on a tiny registry entry: plan, run, reuse, table, plot."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from bilevel.app.claims import claim_status, evaluate_claims
from bilevel.app.config import PACKAGE_ROOT, ConfigError
from bilevel.app.figure import (
    available,
    load_entry,
    make_figure,
    plan,
    run_missing,
    runs_root_default,
    summarize,
    variant_of,
)
from bilevel.app.gallery import KEEP_MARKER, catalogue, render, write_gallery
from bilevel.app.study import split_sweep
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
    "claims": [
        {
            "text": "p = 2 ends below 10 on every panel",
            "per_panel": True,
            "check": "value('p = 2', 'true_hypergrad_norm_final') < 10",
        },
        {
            "text": "p = 4 ends above 10 (false)",
            "panel": "noisy",
            "check": "value('p = 4', 'true_hypergrad_norm_final') > 10",
        },
    ],
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
    assert (summary.peak_memory_mb > 50).all()  # from each run's run.json
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


def test_claims_are_evaluated_both_ways(registry, tmp_path):
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    make_figure("t/tiny", jobs=1, **kw)
    claims = pd.read_csv(tmp_path / "results" / "t" / "tiny_claims.csv", keep_default_na=False)
    true_rows = claims[claims.claim.str.startswith("p = 2")]
    assert list(true_rows.panel) == ["deterministic", "noisy"]
    assert (true_rows.status == "reproduced").all()
    false_row = claims[claims.claim.str.startswith("p = 4")].iloc[0]
    assert (
        false_row.status == "not reproduced"
        and "true_hypergrad_norm_final = " in false_row["values"]
    )
    assert claim_status(claims) == "partly reproduced (1/2 claims)"


def test_claim_checks_are_restricted_and_missing_values_not_evaluable():
    summary = pd.DataFrame({"panel": ["a"], "curve": ["c"], "y_final": [1.0]})
    with pytest.raises(ConfigError, match="may not use"):
        evaluate_claims([{"text": "t", "check": "__import__('os')"}], summary)
    with pytest.raises(ConfigError, match="may not use"):
        evaluate_claims([{"text": "t", "check": "value('c', 'y_final').real"}], summary)
    out = evaluate_claims([{"text": "t", "check": "value('nope', 'y_final') > 0"}], summary)
    assert out.status.iloc[0] == "not evaluable" and "nope" in out["values"].iloc[0]


def test_overrides_that_change_results_plan_runs_apart(registry, tmp_path):
    """`bilevel-figure NAME scale=paper --no-run` plans its runs under their own variant
    directory: it neither finds nor overwrites the default-scale runs."""
    assert variant_of([]) == "default"
    assert variant_of(["trainer.progress=true"]) == "default"
    assert variant_of(["trainer.device=cuda", "scale=paper"]) == "scale=paper,trainer.device=cuda"
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    make_figure("t/tiny", jobs=1, **kw)
    with pytest.raises(ConfigError, match=r"6 of 6 run\(s\) missing.*scale=paper"):
        make_figure("t/tiny", ["scale=paper"], run=False, **kw)
    runs = plan(load_entry("t/tiny", registry), ["scale=paper"])
    assert all(r.overrides[-1] == "scale=paper" for r in runs)
    assert (tmp_path / "results" / "t" / "tiny.csv").exists()
    assert not (tmp_path / "results" / "scale=paper").exists()


def test_runs_root_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("BILEVEL_RUNS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert runs_root_default() == PACKAGE_ROOT / "outputs" / "figures"
    monkeypatch.setenv("BILEVEL_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs_root_default() == tmp_path / "elsewhere"


def test_failed_rebuild_never_reuses_the_old_table(registry, tmp_path):
    """A run whose config changed and whose rebuild fails leaves no finished run behind for
    --no-run or the next figure to pick up; the old run is moved aside, not deleted."""
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    make_figure("t/tiny", jobs=1, **kw)
    broken = dict(
        TINY, curves=[{"label": "p = 2", "overrides": ["task.p=3"]}]
    )  # p = 3: the task constructor rejects odd p
    (registry / "t" / "tiny.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(RuntimeError, match="failed"):
        make_figure("t/tiny", jobs=1, **kw)
    with pytest.raises(ConfigError, match="missing or stale"):
        make_figure("t/tiny", run=False, **kw)
    replaced = list((tmp_path / "runs" / "t" / "tiny" / "default" / ".replaced").iterdir())
    assert replaced and all((d / "metrics.csv").exists() for d in replaced)


def test_figure_runs_through_the_joblib_launcher(registry, tmp_path):
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    entry = dict(TINY, panels=TINY["panels"][:1])
    (registry / "t" / "tiny.yaml").write_text(yaml.safe_dump(entry))
    make_figure("t/tiny", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], **kw)
    runs_dir = tmp_path / "runs" / "t" / "tiny" / "default"  # launcher keys are not a variant
    assert sorted(p.name for p in runs_dir.iterdir() if not p.name.startswith(".")) == [
        "deterministic__p=2__seed0",
        "deterministic__p=4__seed0",
    ]
    assert len(pd.read_csv(tmp_path / "results" / "t" / "tiny.csv")) == 2 * 13


def test_slurm_gpu_launch_is_composed_with_a_gpu_and_requeue(registry, tmp_path, monkeypatch):
    """The figure's missing runs go to SLURM as one array of one-GPU jobs that requeue on
    preemption and continue with resume=true; submitit is faked, nothing is submitted."""
    import submitit

    seen: dict = {}

    class FakeJob:
        def results(self):
            from hydra.core.utils import JobReturn, JobStatus

            ret = JobReturn()
            ret.status = JobStatus.COMPLETED
            return [ret]

    class FakeExecutor:
        def __init__(self, cluster, **init):
            seen["cluster"], seen["init"] = cluster, init

        def update_parameters(self, **params):
            seen["params"] = params

        def map_array(self, fn, *args):
            seen["overrides"] = list(args[0])
            return [FakeJob() for _ in args[0]]

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    entry = load_entry("t/tiny", registry)
    runs_dir = tmp_path / "runs" / "t" / "tiny" / "scale=paper"
    failed = run_missing(
        "t/tiny",
        plan(entry, ["scale=paper"]),
        runs_dir,
        launcher=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu"],
    )
    assert seen["cluster"] == "slurm" and seen["init"]["slurm_max_num_timeout"] >= 1
    params = seen["params"]
    assert params["gpus_per_node"] == 1 and params["slurm_partition"] == "gpu"
    assert params["slurm_additional_parameters"]["requeue"] is True
    assert params["timeout_min"] > 0 and params["mem_gb"] > 0 and params["cpus_per_task"] > 0
    assert len(seen["overrides"]) == 6
    for overrides in seen["overrides"]:
        assert "resume=true" in overrides and "scale=paper" in overrides
        assert any(o.startswith("hydra.sweep.subdir=") for o in overrides)
    assert len(failed) == 6  # the fake jobs wrote no run.json


def test_gallery_lists_every_spec_figure_and_keeps_the_hand_written_tail(tmp_path):
    rows = catalogue(PACKAGE_ROOT / "experiments")
    ids = [r["id"] for r in rows]
    spec = PACKAGE_ROOT.parent / "shared" / "spec" / "FIGURES.md"
    spec_ids = [
        line.split("|")[1].strip().split(" ")[0]
        for line in spec.read_text().splitlines()
        if line.startswith("| ") and "/" in line.split("|")[1]
    ]
    assert spec_ids and set(spec_ids) <= set(ids)
    assert set(available()) <= set(ids)
    text = render(PACKAGE_ROOT / "experiments", PACKAGE_ROOT / "results", "\n## kept\n")
    for fid in ids:
        assert f"| {fid} |" in text or f"[{fid}]" in text
    unbuilt = [r for r in rows if r["id"] not in set(available())]
    for row in unbuilt:  # an unregistered figure names the issue that builds it
        assert f"not built yet (issue #{row['issue']})" in text, row["id"]
    assert text.rstrip().endswith("## kept")
    (tmp_path / "README.md").write_text(f"old\n{KEEP_MARKER}\n## mine\nkept text\n")
    write_gallery(PACKAGE_ROOT / "experiments", tmp_path)
    out = (tmp_path / "README.md").read_text()
    assert out.count(KEEP_MARKER) == 1 and out.endswith("## mine\nkept text\n")
    assert "old\n" not in out


def test_a_run_that_coincides_with_another_figures_is_shared(registry, tmp_path, capsys):
    """Runs shared between entries where the settings coincide: a second entry with one curve
    of the first (same resolved config) copies that finished run instead of running it."""
    kw = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results", registry=registry)
    make_figure("t/tiny", jobs=1, **kw)
    other = dict(TINY, curves=[TINY["curves"][0], {"label": "p = 6", "overrides": [
        "task.p=6", "trainer.max_steps=12"]}])  # fmt: skip
    (registry / "t" / "other.yaml").write_text(yaml.safe_dump(other))
    capsys.readouterr()
    make_figure("t/other", jobs=1, **kw)
    out = capsys.readouterr().out
    assert out.count("shared, not rerun") == 3 and "3 to run" in out  # p = 2: 3 runs of 6
    mine = tmp_path / "runs" / "t" / "other" / "default" / "noisy__p=2__seed1" / "metrics.csv"
    theirs = tmp_path / "runs" / "t" / "tiny" / "default" / "noisy__p=2__seed1" / "metrics.csv"
    assert mine.read_text() == theirs.read_text()


def test_a_study_sweeps_one_value_key_and_summary_rate_is_the_factor_per_unit():
    """A study entry's budget grid is the one sweep override of a run (Hydra syntax, in order);
    ``summary.rate`` fits the factor by which a metric falls per unit of a column."""
    base, key, values, seed = split_sweep(["experiment=e", "a.q=1,2,4", "x=0.1", "seed=3"])
    assert (base, key, values, seed) == (["experiment=e", "x=0.1"], "a.q", [1, 2, 4], 3)
    assert split_sweep(["seed=0"])[1:3] == (None, [None])  # no sweep: one point
    with pytest.raises(ConfigError, match="second sweep"):
        split_sweep(["a=1,2", "b=3,4"])
    with pytest.raises(ConfigError, match="not a config group"):
        split_sweep(["algorithm/estimator=cg,neumann"])
    budgets = [1, 2, 4, 8, 16]
    table = pd.DataFrame(
        [
            {"panel": "p", "curve": "c", "seed": s, "step": i, "budget": b,
             "err": (1 + s) * 0.8**b, "status": "completed"}
            for s in (0, 1) for i, b in enumerate(budgets)
        ]
    )  # fmt: skip
    rate = {"last_k": 3, "rate": {"err": "budget"}}
    summary = summarize(table, {"plot": {"x": "budget", "y": "err"}, "summary": rate})
    assert summary.err_rate_last3.iloc[0] == pytest.approx(0.8)
    assert summary.err_final.iloc[0] == pytest.approx(1.5 * 0.8**16)  # median over the seeds
    assert summary.err_first.iloc[0] == pytest.approx(1.5 * 0.8)  # the first evaluation's
