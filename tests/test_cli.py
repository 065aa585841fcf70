"""``bilevel-run`` end to end (subprocesses, kept few and tiny): a multirun sweep, a diverging
job inside a sweep, and the W&B logger in disabled and offline modes."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

COLUMNS = [
    "step",
    "epoch",
    "wall_s",
    "oracle_calls",
    "calls_grad_f",
    "calls_grad_g",
    "calls_hvp",
    "calls_cross",
    "samples",
    "upper_loss",
    "hypergrad_norm",
    "grad_x_f_norm",
    "second_order_norm",
    "true_hypergrad_norm",
    "lower_error",
]
TINY = ["task=quadratic", "trainer.max_steps=20", "trainer.progress=false"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and (p / "run.json").exists()),
        key=lambda p: int(p.name.split("_", 1)[0]),
    )


def load_job(job: Path) -> tuple[dict, pd.DataFrame, dict]:
    config = yaml.safe_load((job / "config.yaml").read_text())
    info = json.loads((job / "run.json").read_text())
    return config, pd.read_csv(job / "metrics.csv"), info


def test_multirun_sweep(cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "algorithm=stocbio,soba,bo_rep",
        "seed=0,1",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert len(jobs) == 6, [p.name for p in sweep.iterdir()]
    seen = set()
    for job in jobs:
        assert (job / "config.yaml").is_file() and (job / "metrics.csv").is_file()
        config, df, info = load_job(job)
        algorithm = config["algorithm"]["_target_"].rsplit(".", 1)[1]
        seen.add((algorithm, config["seed"]))
        assert config["trainer"]["max_steps"] == 20
        assert config["task"]["_target_"] == "bilevel.tasks.quadratic.Quadratic"

        missing = [c for c in COLUMNS if c not in df.columns]
        assert not missing, (job.name, missing)
        assert df["step"].tolist()[0] == 0 and df["step"].iloc[-1] == 20
        assert df["step"].is_unique and df["step"].is_monotonic_increasing
        assert (df["epoch"] == df["step"] / config["task"]["steps_per_epoch"]).all()
        last = df.iloc[-1]
        assert last["oracle_calls"] > 0 and last["samples"] > 0
        assert last["oracle_calls"] == sum(
            last[c] for c in ("calls_grad_f", "calls_grad_g", "calls_hvp", "calls_cross")
        )
        assert math.isfinite(last["hypergrad_norm"]) and math.isfinite(last["upper_loss"])
        assert math.isfinite(last["true_hypergrad_norm"]) and last["lower_error"] >= 0

        assert info["status"] == "completed", info
        assert info["seed"] == config["seed"]
        assert "git_revision" in info
        assert info["torch_version"] == torch.__version__
        assert info["device"] == "cpu"
        assert info["train_seconds"] == last["wall_s"] > 0
    assert seen == {(a, s) for a in ("StocBiO", "SOBA", "BOREP") for s in (0, 1)}
    # seeds 0 and 1 of one algorithm are different runs
    runs = [load_job(job) for job in jobs]
    for algorithm in ("StocBiO", "SOBA", "BOREP"):
        first, second = (
            df for config, df, _ in runs if config["algorithm"]["_target_"].endswith(algorithm)
        )
        assert not first["upper_loss"].equals(second["upper_loss"]), algorithm


def test_diverging_job_is_marked_and_the_sweep_goes_on(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # the diverging job runs first: the completed one after it proves the sweep went on
    proc = cli(
        "-m",
        "algorithm=stocbio",
        "algorithm.upper.lr=1e100,0.01",
        *TINY,
        "trainer.eval_every=5",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 3, proc.stderr[-3000:]  # EXIT_CODES: diverged is the worst here
    assert "bilevel-run: 2 runs: 1 diverged, 1 completed" in proc.stderr
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    (cfg_bad, df_bad, info_bad), (cfg_ok, df_ok, info_ok) = map(load_job, jobs)
    assert cfg_bad["algorithm"]["upper"]["lr"] == 1e100
    assert info_bad["status"] == "diverged", info_bad
    assert info_ok["status"] == "completed", info_ok
    # the diverged run stopped at the first evaluation that saw a non-finite value, and its
    # rows up to there are in metrics.csv
    assert info_bad["steps"] < info_bad["max_steps"]
    assert len(df_bad) >= 2 and df_bad["step"].iloc[-1] == info_bad["steps"]
    assert math.isfinite(df_bad["upper_loss"].iloc[0])
    bad_last = df_bad.iloc[-1][["hypergrad_norm", "upper_loss", "true_hypergrad_norm"]]
    assert not all(math.isfinite(v) for v in bad_last.astype(float)), bad_last
    assert df_ok["step"].iloc[-1] == 20
    assert np.isfinite(df_ok[["hypergrad_norm", "upper_loss"]].iloc[1:].to_numpy()).all()


def test_wandb_disabled_and_offline(cli, tmp_path):
    sweep = tmp_path / "sweep"
    start = time.perf_counter()
    proc = cli(
        "-m",
        "logger=wandb",
        "logger.mode=disabled,offline",
        "algorithm=soba",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        timeout=240,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    (cfg_off, df_off, info_off), (cfg_on, df_on, info_on) = map(load_job, jobs)
    assert (cfg_off["logger"]["mode"], cfg_on["logger"]["mode"]) == ("disabled", "offline")
    assert info_off["status"] == info_on["status"] == "completed"
    assert df_off["step"].iloc[-1] == df_on["step"].iloc[-1] == 20
    # disabled: no W&B files; offline: one offline run under the job's own directory
    assert not list(jobs[0].glob("wandb/offline-run-*"))
    runs = list(jobs[1].glob("wandb/offline-run-*"))
    assert len(runs) == 1, list(jobs[1].rglob("*"))
    data = list(runs[0].glob("run-*.wandb"))
    assert data and data[0].stat().st_size > 0
    # offline W&B must not make a two-job sweep slow (it would point at a network wait)
    assert elapsed < 90, f"bilevel-run with W&B offline took {elapsed:.0f} s"


def test_help_lists_the_groups_a_user_chooses(cli):
    out = cli("--help")
    assert out.returncode == 0, out.stderr
    assert "algorithm: accbo, adambo" in out.stdout and "task: auc, hpo" in out.stdout
    assert "slurm_gpu" in out.stdout and "docs/settings.md" in out.stdout
    assert "algorithm/tuned" not in out.stdout and "settings/auc" not in out.stdout


BAD_INPUT = [
    (["trainer.max_steps=-5"], "trainer.max_steps=-5"),
    (["trainer.epochs=0"], "trainer.epochs="),
    (["task.batch_size=0"], "task.batch_size=0"),
    (["algorithm.upper.lr=-5"], "algorithm.upper.lr=-5"),
    (["algorithm.upper.lr=fast"], "algorithm.upper.lr='fast'"),  # torch.optim's float | Tensor
    (["algorithm.upper_decay=null"], "algorithm.upper_decay=None"),
    (["task.dim_x=2.5"], "task.dim_x=2.5"),
    (["task.noise_std=-1"], "task.noise_std=-1"),
    (["trainer.device=gpu"], "trainer.device='gpu'"),
    (["logger=wandb", "logger.mode=onlne"], "logger.mode=onlne"),
    (["task=hypercleaning", "task.noise_rate=1.5"], "task.noise_rate=1.5"),
    (["task=hypercleaning", "dataset=sentiment140"], "model=nli_rnn"),
    (["-m", "seed=0,1", "--cfg", "hydra"], "--cfg"),
]


@pytest.mark.parametrize("overrides,names", BAD_INPUT, ids=[c[1] for c in BAD_INPUT])
def test_bad_input_fails_with_one_line_before_any_run_directory(
    overrides, names, tmp_path, monkeypatch, capsys
):
    """Through the command-line entry point (in process): exit code 2, one line on stderr that
    names the key and what is allowed, no traceback, nothing written."""
    from bilevel.app import run

    monkeypatch.chdir(tmp_path)
    argv = ["bilevel-run", "algorithm=soba", "task=quadratic", *overrides, "hydra.run.dir=out"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        run.cli()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("bilevel-run: error: ") and names in err, err
    assert any(w in err for w in ("expected", "not one of", "use ", "drop ")), err  # what works
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "outcomes,code",
    [
        (["completed"], 0),
        (["diverged"], 3),
        (["interrupted"], 4),
        (["boom"], 1),
        (["completed", "boom", "diverged"], 1),
        (["completed", "interrupted", "diverged"], 4),
    ],
)
def test_exit_code_says_what_became_of_the_runs(outcomes, code, tmp_path, monkeypatch, capsys):
    """Distinct exit codes per status (bilevel.app.run.EXIT_CODES); a multirun attempts every
    run and exits with the most severe; a failing run is one line on stderr, its traceback in
    the run directory, and the sweep goes on."""
    from bilevel.app import run
    from bilevel.trainer import RunResult

    queue = list(outcomes)

    def fake_build_and_run(cfg, run_dir, *a, **k):
        status = queue.pop(0)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if status == "boom":
            raise RuntimeError("injected\nsecond line")
        return RunResult(status, [{"step": 1, "upper_loss": 0.5}], 0.1, Path(run_dir), {})

    monkeypatch.setattr(run, "build_and_run", fake_build_and_run)
    monkeypatch.chdir(tmp_path)
    seeds = ",".join(str(i) for i in range(len(outcomes)))
    sweep = ["-m", f"seed={seeds}", "hydra.sweep.dir=out"] if len(outcomes) > 1 else []
    argv = ["bilevel-run", *sweep[:1], "task=quadratic", *(sweep[1:] or ["hydra.run.dir=out"])]
    monkeypatch.setattr(sys, "argv", argv)
    if code:
        with pytest.raises(SystemExit) as exit_info:
            run.cli()
        assert exit_info.value.code == code
    else:
        run.cli()
    assert not queue  # every run was attempted
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if "boom" in outcomes:
        assert "bilevel-run: failed: RuntimeError: injected (" in err
        assert "injected" in next(tmp_path.rglob("traceback.txt")).read_text()
    if len(outcomes) > 1:
        assert f"bilevel-run: {len(outcomes)} runs: " in err


def test_wandb_runs_get_a_name_and_the_sweep_as_group(tmp_path, monkeypatch):
    """logger.name/group null: the name says algorithm, task and seed (or the root ``name``),
    a multirun job's group is its sweep directory; values given in the config win."""
    import wandb

    from bilevel.logging import WandbLogger

    sweep = tmp_path / "multiruns" / "2026-11-30" / "10-00-00"
    (sweep / "3_seed=2").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    config = {"algorithm": {"_target_": "bilevel.algorithms.SOBA"}, "seed": 2, "name": "",
              "task": {"_target_": "bilevel.tasks.quadratic.Quadratic"}}  # fmt: skip
    seen = []
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw))
    WandbLogger(mode="disabled").start(sweep / "3_seed=2", config, [])
    WandbLogger(mode="disabled").start(tmp_path / "single", {**config, "name": "mine"}, [])
    WandbLogger(mode="disabled", group="g", name="n").start(sweep / "3_seed=2", config, [])
    assert (seen[0]["name"], seen[0]["group"]) == ("SOBA-Quadratic-seed2", "2026-11-30/10-00-00")
    assert (seen[1]["name"], seen[1]["group"]) == ("mine", None)
    assert (seen[2]["name"], seen[2]["group"]) == ("n", "g")
