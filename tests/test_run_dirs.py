"""Run directories never lose or mix results (bilevel.app.rundir): an occupied directory is
refused unless resume=true (same config only) or force=true; a run that fails to build leaves
the directory as it was; finished runs are recognised by their config fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bilevel.app.config import ConfigError, compose
from bilevel.app.run import build_and_run
from bilevel.app.rundir import (
    RESULT_NEUTRAL_KEYS,
    RunDirError,
    config_diff,
    fingerprint,
    is_finished,
    prepare,
)
from bilevel.trainer import CHECKPOINT

BASE = [
    "algorithm=soba",
    "task=quadratic",
    "trainer.max_steps=20",
    "trainer.eval_every=5",
    "trainer.checkpoint_every=5",
    "trainer.device=cpu",
    "trainer.progress=false",
]
FILES = ("config.yaml", "metrics.csv", "run.json", CHECKPOINT)


def resolved(*extra: str) -> dict:
    return OmegaConf.to_container(compose([*BASE, *extra]), resolve=True)


def run(run_dir: Path, *extra: str, **kwargs):
    return build_and_run(compose([*BASE, *extra]), run_dir, progress=False, **kwargs)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in FILES if (run_dir / name).exists()}


def info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture
def finished(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    assert run(run_dir).status == "completed"
    assert set(snapshot(run_dir)) == set(FILES)
    return run_dir


def test_an_occupied_directory_is_refused_and_left_unchanged(finished):
    before = snapshot(finished)
    with pytest.raises(RunDirError) as err:
        run(finished, "algorithm.upper.lr=0.3")
    msg = str(err.value)
    assert "\n" not in msg and str(finished) in msg and "status: completed" in msg
    assert "resume=true" in msg and "force=true" in msg
    assert snapshot(finished) == before
    # an interrupted or failed run counts as well: its metrics or checkpoint are there
    (finished / "run.json").unlink()
    with pytest.raises(RunDirError, match="no run.json"):
        run(finished)


def test_hydra_files_alone_are_not_a_previous_run(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run.log").write_text("")
    assert prepare(tmp_path, resolved(), resume=False, force=False).action == "new"
    assert run(tmp_path).status == "completed"
    assert (tmp_path / ".hydra" / "config.yaml").exists() and (tmp_path / "run.log").exists()


def test_force_replaces_the_previous_run(finished):
    (finished / "wandb").mkdir()  # a logger's files go with the run
    result = run(finished, "algorithm.upper.lr=0.3", "trainer.max_steps=10", "force=true")
    assert result.status == "completed"
    df = pd.read_csv(finished / "metrics.csv")
    assert df["step"].tolist() == [0, 5, 10]
    assert info(finished)["fingerprint"] == fingerprint(
        resolved("algorithm.upper.lr=0.3", "trainer.max_steps=10")
    )
    assert OmegaConf.load(finished / "config.yaml").algorithm.upper.lr == 0.3
    assert not (finished / "wandb").exists()
    # the keyword wins over the config (bilevel.app.jobs passes force=True)
    assert run(finished, force=True).status == "completed"
    assert is_finished(finished, resolved())


def test_resume_with_the_same_config_continues(tmp_path):
    ref = tmp_path / "ref"
    run(ref)
    run_dir = tmp_path / "run"
    cfg = compose(BASE)
    # an interrupted run of the same config: its checkpoint at step 10
    from hydra.utils import instantiate

    from bilevel.trainer import Trainer

    def stop_at_10(trainer, state):
        if state.t == 10:
            trainer.request_stop()

    first = Trainer(
        instantiate(cfg.task), instantiate(cfg.algorithm), run_dir, max_steps=20, eval_every=5,
        checkpoint_every=5, seed=cfg.seed, device="cpu", progress=False,
        config=OmegaConf.to_container(cfg, resolve=True), callbacks=[stop_at_10],
    )  # fmt: skip
    assert first.fit().status == "interrupted"
    with pytest.raises(RunDirError, match="status: interrupted"):
        run(run_dir)
    # neutral keys may change on resume (progress, checkpoint cadence)
    result = run(run_dir, "resume=true", "trainer.checkpoint_every=10")
    assert result.status == "completed"
    df, want = pd.read_csv(run_dir / "metrics.csv"), pd.read_csv(ref / "metrics.csv")
    assert df["step"].tolist() == [0, 5, 10, 15, 20]  # no row twice
    cols = [c for c in want.columns if c != "wall_s"]
    pd.testing.assert_frame_equal(df[cols], want[cols], check_exact=True)
    # resuming the finished run changes nothing
    before = (run_dir / "metrics.csv").read_bytes()
    run(run_dir, "resume=true")
    assert (run_dir / "metrics.csv").read_bytes() == before


@pytest.mark.parametrize(
    "extra, keys",
    [
        (["algorithm=stocbio"], ["algorithm._target_"]),
        (["algorithm.upper.lr=0.3"], ["algorithm.upper.lr"]),
        (["trainer.max_steps=40"], ["trainer.max_steps"]),
    ],
)
def test_resume_with_another_config_is_refused_naming_the_keys(finished, extra, keys):
    before = snapshot(finished)
    with pytest.raises(RunDirError) as err:
        run(finished, *extra, "resume=true")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"resume=true: {CHECKPOINT} in {finished} was written by a different")
    assert all(k in msg for k in keys) and "force=true" in msg
    assert snapshot(finished) == before
    # resume=true force=true: a different config's checkpoint is replaced, not continued
    assert run(finished, *extra, "resume=true", "force=true").status == "completed"
    assert is_finished(finished, resolved(*extra)) and not is_finished(finished, resolved())


def test_the_trainer_refuses_a_checkpoint_of_another_config(finished):
    from hydra.utils import instantiate

    from bilevel.trainer import Trainer

    cfg = compose([*BASE, "algorithm.upper.lr=0.3"])
    trainer = Trainer(
        instantiate(cfg.task), instantiate(cfg.algorithm), finished, max_steps=20,
        device="cpu", progress=False, config=OmegaConf.to_container(cfg, resolve=True),
        resume=True,
    )  # fmt: skip
    before = snapshot(finished)
    with pytest.raises(RunDirError, match="algorithm.upper.lr differs"):
        trainer.fit()
    assert snapshot(finished) == before


def test_resume_without_a_checkpoint(tmp_path):
    # nothing there: a fresh run, as before
    assert run(tmp_path / "empty", "resume=true").status == "completed"
    # a finished run without checkpoint: rerun afresh under its own config only
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.checkpoint_every=0")
    assert not (run_dir / CHECKPOINT).exists()
    before = snapshot(run_dir)
    with pytest.raises(
        RunDirError, match=r"config \(algorithm.upper.lr differs\) and no checkpoint"
    ):
        run(run_dir, "algorithm.upper.lr=0.3", "resume=true")
    assert snapshot(run_dir) == before
    assert run(run_dir, "trainer.checkpoint_every=0", "resume=true").status == "completed"
    assert pd.read_csv(run_dir / "metrics.csv")["step"].is_unique


@pytest.mark.parametrize(
    "extra",
    [["force=true", "algorithm.upper.lr=0.3"], ["resume=true"], ["resume=true", "force=true"]],
)
def test_a_rerun_that_fails_to_build_leaves_the_directory_untouched(
    finished, monkeypatch, tmp_path, extra
):
    def broken(*args, **kwargs):
        raise FileNotFoundError("bad data")

    cfg = compose([*BASE, *extra])
    assert cfg.task._target_ == "bilevel.tasks.quadratic.Quadratic"
    monkeypatch.setattr("bilevel.tasks.quadratic.Quadratic", broken)  # fails at instantiate
    before = snapshot(finished)
    with pytest.raises(Exception, match="bad data"):
        build_and_run(cfg, finished, progress=False)
    assert snapshot(finished) == before
    with pytest.raises(Exception, match="bad data"):  # nor does it leave a config.yaml
        build_and_run(cfg, tmp_path / "new", progress=False)
    assert not (tmp_path / "new" / "config.yaml").exists()


def test_is_finished_follows_status_and_config(finished):
    assert is_finished(finished, resolved())
    assert is_finished(finished, resolved("trainer.progress=true", "name=label"))
    assert not is_finished(finished, resolved("algorithm.upper.lr=0.3"))
    assert not is_finished(finished, resolved("seed=1"))
    assert not is_finished(finished.parent / "nothing", resolved())
    data = info(finished)
    (finished / "run.json").write_text(json.dumps({**data, "status": "interrupted"}))
    assert not is_finished(finished, resolved())
    (finished / "run.json").write_text(json.dumps({**data, "status": "diverged"}))
    assert is_finished(finished, resolved())


def test_a_run_stored_before_a_key_became_neutral_is_still_recognised(finished, tmp_path):
    """run.json keeps the fingerprint of its day; a key declared neutral since (here: one that
    only the old fingerprint saw) must not make a finished run stale. Its config.yaml, under
    today's neutral keys, is what decides; a real difference still does."""
    from bilevel.app.jobs import finished_runs

    data = info(finished)
    (finished / "run.json").write_text(json.dumps({**data, "fingerprint": "0" * 16}))
    assert is_finished(finished, resolved())
    assert finished_runs(finished.parent)[fingerprint(resolved())] == finished
    (finished / CHECKPOINT).unlink()  # resume=true without a checkpoint: the same run, redone
    assert prepare(finished, resolved(), resume=True, force=False).action == "replace"
    config = OmegaConf.load(finished / "config.yaml")
    config.seed = 1
    OmegaConf.save(config, finished / "config.yaml")
    assert not is_finished(finished, resolved())
    assert fingerprint(resolved()) not in finished_runs(finished.parent)


def test_the_data_directory_is_neutral_on_text_tasks_too():
    """A text task resolves paths.data_dir into task.data_dir: where the files are read from
    (another checkout, an absolute path) is not what a run computes."""
    text = [*BASE, "task=hypercleaning", "dataset=snli", "model=nli_rnn"]
    here = OmegaConf.to_container(compose(text), resolve=True)
    elsewhere = OmegaConf.to_container(compose([*text, "paths.data_dir=/elsewhere"]), resolve=True)
    assert elsewhere["task"]["data_dir"] == "/elsewhere" != here["task"]["data_dir"]
    assert fingerprint(here) == fingerprint(elsewhere) and config_diff(here, elsewhere) == []


def test_fingerprint_ignores_neutral_keys_only():
    base = resolved()
    fp = fingerprint(base)
    assert len(fp) == 16 and int(fp, 16) >= 0
    for extra in (
        "trainer.progress=true",
        "trainer.checkpoint_every=3",
        "resume=true",
        "force=true",
        "name=x",
        "logger=wandb",
        "paths.data_dir=/elsewhere",
    ):
        assert fingerprint(resolved(extra)) == fp, extra
        assert config_diff(base, resolved(extra)) == [], extra
    for extra, key in (
        ("algorithm.upper.lr=0.3", "algorithm.upper.lr"),
        ("seed=1", "seed"),
        ("trainer.eval_every=10", "trainer.eval_every"),
        ("trainer.device=auto", "trainer.device"),
    ):
        assert fingerprint(resolved(extra)) != fp, extra
        assert config_diff(base, resolved(extra)) == [key]
    assert "algorithm._target_" in config_diff(base, resolved("algorithm=stocbio"))
    assert {"resume", "force", "logger", "paths", "trainer.progress"} <= set(RESULT_NEUTRAL_KEYS)
    assert issubclass(RunDirError, ConfigError)


def test_the_cli_refuses_in_one_line_and_force_replaces(cli, tmp_path):
    run_dir = tmp_path / "run"
    args = [*BASE, "trainer.max_steps=5", f"hydra.run.dir={run_dir}"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / ".hydra").is_dir()  # Hydra's own files did not count as a previous run
    before = snapshot(run_dir)
    again = cli(*args, "algorithm.upper.lr=0.3")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"bilevel-run: error: {run_dir} already holds a run (status: completed); "
        "resume=true continues it, force=true replaces it (deletes its files)"
    ]
    assert snapshot(run_dir) == before
    forced = cli(*args, "algorithm.upper.lr=0.3", "force=true")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert is_finished(run_dir, resolved("trainer.max_steps=5", "algorithm.upper.lr=0.3"))


# Every run directory that exists says what became of its run: a failure at each stage.


def test_failure_while_building_in_a_fresh_directory_is_recorded(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Exception, match="odd|even"):
        build_and_run(
            compose(["task=unibio_synthetic", "task.p=3", "trainer.max_steps=5"]), run_dir
        )
    record = info(run_dir)
    assert record["status"] == "failed" and "task.p must be an even integer" in record["error"]
    assert len(record["error"].splitlines()) == 1
    assert not list(run_dir.glob("*.tmp"))


@pytest.mark.parametrize("stage", ["init", "step", "evaluate"])
def test_failure_in_the_trainer_is_recorded_at_every_stage(stage, tmp_path, monkeypatch):
    from bilevel.algorithms.soba import SOBA
    from bilevel.trainer import Trainer

    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        if stage != "step" or calls["n"] > 3:
            raise RuntimeError(f"injected failure in {stage}")
        return original(*args, **kwargs)

    target = {"init": (SOBA, "init"), "step": (SOBA, "step"), "evaluate": (Trainer, "_evaluate")}
    owner, name = target[stage]
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, broken)
    with pytest.raises(RuntimeError, match="injected"):
        run(tmp_path / "run")
    record = info(tmp_path / "run")
    assert (
        record["status"] == "failed"
        and record["error"] == f"RuntimeError: injected failure in {stage}"
    )
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_full_disk_during_a_checkpoint_leaves_the_previous_one_to_resume(tmp_path, monkeypatch):
    import errno

    import torch

    import bilevel.trainer as trainer_module

    saves = {"n": 0}
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the checkpoint at step 10
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(trainer_module.torch, "save", save)
    run_dir = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        run(run_dir)
    assert info(run_dir)["status"] == "failed" and "No space left" in info(run_dir)["error"]
    assert not list(run_dir.glob("*.tmp"))
    monkeypatch.setattr(trainer_module.torch, "save", real_save)
    result = run(run_dir, resume=True)  # continues from the step-5 checkpoint
    assert result.status == "completed"
    steps = pd.read_csv(run_dir / "metrics.csv").step.tolist()
    assert steps == sorted(set(steps)) and steps[-1] == 20
