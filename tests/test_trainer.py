"""The training loop: resume after an interruption or a crash is exact, resuming a finished run
changes nothing, seeds decide the run, and evaluation is not charged to the clock."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bilevel.app.config import compose
from bilevel.app.run import build_and_run
from bilevel.trainer import CHECKPOINT, Trainer

# StocBiO on a noisy quadratic: every step draws fresh samples, so a resume that loses or
# replays an RNG stream, the oracle counters or the optimizer state changes the metrics.
# ~settings: trainer mechanics on the algorithm defaults (cheap steps), not the tuned pair
NOISY = [
    "algorithm=stocbio",
    "task=quadratic",
    "~settings",
    "task.noise_std=0.5",
    "trainer.max_steps=60",
    "trainer.eval_every=10",
    "trainer.checkpoint_every=10",
    "trainer.device=cpu",
    "trainer.progress=false",
]


def read(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    df = pd.read_csv(run_dir / "metrics.csv")
    info = json.loads((run_dir / "run.json").read_text())
    return df, info


def assert_same_run(df: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Identical metrics except the clock."""
    assert df["step"].is_unique, df["step"].tolist()
    pd.testing.assert_frame_equal(
        df.drop(columns="wall_s"), ref.drop(columns="wall_s"), check_exact=True
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Run A: uninterrupted, through build_and_run (what bilevel-run does)."""
    cfg = compose(NOISY)
    run_dir = tmp_path_factory.mktemp("run_a")
    result = build_and_run(cfg, run_dir, progress=False)
    assert result.status == "completed"
    df, info = read(run_dir)
    assert df["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    return cfg, run_dir, df, info


def make_trainer(cfg, run_dir: Path, **kwargs) -> Trainer:
    """A Trainer with fresh task and algorithm instances, set up as build_and_run does."""
    tr = cfg.trainer
    return Trainer(
        instantiate(cfg.task),
        instantiate(cfg.algorithm),
        run_dir,
        max_steps=tr.max_steps,
        eval_every=tr.eval_every,
        checkpoint_every=tr.checkpoint_every,
        seed=cfg.seed,
        device=tr.device,
        config=OmegaConf.to_container(cfg, resolve=True),
        progress=False,
        **kwargs,
    )


def checkpoint_step(run_dir: Path) -> int:
    return torch.load(run_dir / CHECKPOINT, weights_only=False)["state"]["t"]


def test_interrupt_and_resume_is_exact(reference, tmp_path):
    cfg, _, ref, _ = reference

    def stop_at_25(trainer, state):
        if state.t == 25:
            trainer.request_stop()

    first = make_trainer(cfg, tmp_path, callbacks=[stop_at_25]).fit()
    assert first.status == "interrupted"
    df, info = read(tmp_path)
    assert info["status"] == "interrupted" and info["steps"] == 25
    assert df["step"].tolist() == [0, 10, 20]
    assert checkpoint_step(tmp_path) == 25  # the stop wrote a checkpoint at the current step

    second = make_trainer(cfg, tmp_path, resume=True).fit()
    assert second.status == "completed"
    df, info = read(tmp_path)
    assert info["status"] == "completed" and info["steps"] == 60
    assert_same_run(df, ref)
    assert df["wall_s"].is_monotonic_increasing
    assert info["train_seconds"] == df["wall_s"].iloc[-1]


def test_crash_and_resume_is_exact(reference, tmp_path):
    cfg, _, ref, _ = reference

    def crash_at_33(trainer, state):
        if state.t == 33:
            raise RuntimeError("boom at 33")

    with pytest.raises(RuntimeError, match="boom at 33"):
        make_trainer(cfg, tmp_path, callbacks=[crash_at_33]).fit()
    df, info = read(tmp_path)
    assert info["status"] == "failed"
    assert "RuntimeError" in info["error"] and "boom at 33" in info["error"]
    assert df["step"].tolist() == [0, 10, 20, 30]
    assert checkpoint_step(tmp_path) == 30  # the last periodic checkpoint

    result = make_trainer(cfg, tmp_path, resume=True).fit()
    assert result.status == "completed"
    df, info = read(tmp_path)
    assert info["status"] == "completed" and "error" not in info
    assert_same_run(df, ref)


def test_resume_of_a_finished_run_through_the_cli_changes_nothing(reference, cli, tmp_path):
    _, run_a, _, _ = reference
    run_dir = tmp_path / "run"
    build_and_run(compose(NOISY), run_dir, progress=False)
    before = (run_dir / "metrics.csv").read_text()
    info_before = json.loads((run_dir / "run.json").read_text())

    proc = cli(*NOISY, f"hydra.run.dir={run_dir}", "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    df, info = read(run_dir)
    assert df["step"].is_unique
    # byte-identical, wall clock included: nothing was re-run, nothing appended
    assert (run_dir / "metrics.csv").read_text() == before
    assert info["status"] == "completed"
    assert info["train_seconds"] == info_before["train_seconds"]
    assert info["steps"] == 60


def test_same_seed_same_run_other_seed_other_run(reference, tmp_path):
    cfg, _, ref, _ = reference
    build_and_run(compose(NOISY), tmp_path / "again", progress=False)
    assert_same_run(read(tmp_path / "again")[0], ref)

    build_and_run(compose([*NOISY, "seed=1"]), tmp_path / "seed1", progress=False)
    other, info = read(tmp_path / "seed1")
    assert info["seed"] == 1
    assert other["step"].tolist() == ref["step"].tolist()
    assert not other["upper_loss"].equals(ref["upper_loss"])
    assert not other["hypergrad_norm"].iloc[1:].equals(ref["hypergrad_norm"].iloc[1:])


def test_noise_alone_changes_the_run(reference, tmp_path):
    """Same seed, same init: only the sampling noise differs between noise levels."""
    _, _, ref, _ = reference
    build_and_run(compose([*NOISY, "task.noise_std=0.0"]), tmp_path, progress=False)
    clean = read(tmp_path)[0]
    assert clean["upper_loss"].iloc[0] == ref["upper_loss"].iloc[0]  # same x0, y0
    assert not clean["upper_loss"].equals(ref["upper_loss"])


def test_evaluation_is_excluded_from_the_clock(tmp_path):
    cfg = compose([*NOISY, "trainer.max_steps=20", "trainer.eval_every=1"])
    trainer = make_trainer(cfg, tmp_path)
    pause, evaluate = 0.05, trainer.task.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(pause)
        return evaluate(*args, **kwargs)

    trainer.task.evaluate = slow_evaluate
    start = time.perf_counter()
    result = trainer.fit()
    elapsed = time.perf_counter() - start
    assert result.status == "completed"
    df, info = read(tmp_path)
    assert len(df) == 21
    evaluation = pause * len(df)
    assert elapsed >= evaluation  # the evaluations did happen...
    wall = df["wall_s"]
    assert wall.is_monotonic_increasing and wall.iloc[0] >= 0
    assert wall.iloc[-1] < evaluation / 2, wall.tolist()  # ...but off the clock
    assert info["train_seconds"] == wall.iloc[-1] == result.train_seconds
    assert math.isfinite(info["train_seconds"]) and info["train_seconds"] > 0
    # the time off the training clock is accounted for: run.json's eval_seconds holds the
    # evaluations' pauses, and warm-up is its own entry
    assert evaluation <= info["eval_seconds"] < elapsed
    assert 0 < info["warmup_seconds"] < elapsed


def test_build_and_run_writes_the_run_directory(tiny_cfg, run_cfg, tmp_path):
    cfg = tiny_cfg("algorithm=soba", "seed=3")
    result = run_cfg(cfg, tmp_path)
    assert result.status == "completed" and result.run_dir == tmp_path
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml"))
    assert saved == OmegaConf.to_container(cfg, resolve=True)  # the resolved config
    df, info = read(tmp_path)
    assert (info["seed"], info["steps"], info["max_steps"]) == (3, 20, 20)
    assert df["step"].iloc[-1] == 20 and result.rows[-1]["step"] == 20
    assert (tmp_path / CHECKPOINT).exists()  # a completed run keeps its final checkpoint


WARMUP_ALGORITHMS = [
    "stocbio", "ttsa", "soba", "ma_soba", "bo_rep", "slip", "adambo", "accbo", "vr_adambo",
    "sustain", "vrbo", "f2sa", "unibio",
]  # fmt: skip


@pytest.mark.parametrize("algorithm", WARMUP_ALGORITHMS)
def test_warmup_runs_init_once_and_changes_nothing(algorithm, tmp_path, monkeypatch):
    """The warm-up step runs on a copy of the initialized state (issue #13: it used to repeat
    ``algorithm.init``, e.g. BO-REP's 75-step refinement): init is called once, and the metrics
    equal those of the same run without warm-up."""
    cfg = compose([f"algorithm={algorithm}", *NOISY[1:], "trainer.max_steps=6",
                   "trainer.eval_every=3", "trainer.checkpoint_every=0"])  # fmt: skip
    frames = []
    for warmup in (True, False):
        trainer = make_trainer(cfg, tmp_path / str(warmup), warmup=warmup)
        calls: list[int] = []

        def counted_init(*args, calls=calls, real_init=trainer.algorithm.init):
            calls.append(1)
            return real_init(*args)

        monkeypatch.setattr(trainer.algorithm, "init", counted_init)
        assert trainer.fit().status == "completed"
        assert len(calls) == 1
        frames.append(read(tmp_path / str(warmup))[0])
    assert_same_run(*frames)


def test_blow_up_guard_marks_a_runaway_loss_diverged(tmp_path):
    """A finite but runaway loss is 'diverged' under trainer.diverge_above, 'completed' without."""
    cfg = compose([*NOISY, "trainer.max_steps=10", "trainer.checkpoint_every=0"])
    first = make_trainer(cfg, tmp_path / "a", diverge_above=1e-3).fit()
    assert first.status == "diverged"
    assert read(tmp_path / "a")[1]["status"] == "diverged"
    assert make_trainer(cfg, tmp_path / "b", diverge_above=None).fit().status == "completed"


def test_run_json_records_the_peak_memory_of_the_run(tmp_path):
    """Issue #12: run.json has the run's peak memory (CPU: the resident high-water mark, reset
    at the start of each run, so a run that allocates 400 MB more shows it and the next run in
    the same process does not inherit it)."""
    cfg = compose([*NOISY, "trainer.max_steps=4", "trainer.checkpoint_every=0"])

    held: list[torch.Tensor] = []

    def grow(trainer, state):  # 400 MB more, kept alive until the run ends
        if not held:
            held.append(torch.ones(100_000_000))

    big = make_trainer(cfg, tmp_path / "big", callbacks=[grow]).fit()
    held.clear()
    small = make_trainer(cfg, tmp_path / "small").fit()
    assert big.status == small.status == "completed"
    info_big, info_small = (read(tmp_path / n)[1] for n in ("big", "small"))
    assert info_big["peak_memory_kind"].startswith("cpu_max_rss")
    assert info_small["peak_memory_mb"] > 50
    if info_small["peak_memory_kind"] == "cpu_max_rss":  # Linux: reset per run
        assert info_big["peak_memory_mb"] > info_small["peak_memory_mb"] + 300


def test_steps_csv_logs_the_hypergradient_norms_every_k_steps_and_resumes(reference, tmp_path):
    """trainer.log_every: steps.csv has the norms at every k-th step (the same value as the
    evaluation rows at the shared steps), and an interrupted run resumes it without gaps or
    repeats."""
    cfg, _, ref, _ = reference

    def stop_at_25(trainer, state):
        if state.t == 25:
            trainer.request_stop()

    first = make_trainer(cfg, tmp_path, log_every=2, callbacks=[stop_at_25]).fit()
    assert first.status == "interrupted"
    assert make_trainer(cfg, tmp_path, log_every=2, resume=True).fit().status == "completed"
    steps = pd.read_csv(tmp_path / "steps.csv")
    assert steps["step"].tolist() == list(range(2, 61, 2))
    assert (steps["hypergrad_norm"] > 0).all() and steps["second_order_norm"].notna().all()
    at_evals = steps.set_index("step").loc[[10, 20, 30], "hypergrad_norm"].to_numpy()
    expected = ref.set_index("step").loc[[10, 20, 30], "hypergrad_norm"].to_numpy()
    assert at_evals == pytest.approx(expected, rel=1e-5)


def test_torch_lazy_imports_are_off_the_training_clock(tmp_path):
    """The first torch.optim optimizer of a process imports torch._dynamo (about 1.4 s); the
    trainer imports it before starting the clock, so the first run of a process (a figure
    worker's first job) is not charged for it. Checked in a fresh process: at the algorithm's
    init, the import has already happened."""
    code = f"""
import sys
from hydra.utils import instantiate
from bilevel.app.config import compose
from bilevel.trainer import Trainer
cfg = compose(["algorithm=soba", "task=quadratic", "trainer.max_steps=2"])
algorithm = instantiate(cfg.algorithm)
init = algorithm.init
def watched(*args):
    print("dynamo imported at init:", "torch._dynamo" in sys.modules)
    return init(*args)
algorithm.init = watched
Trainer(instantiate(cfg.task), algorithm, {str(tmp_path)!r}, max_steps=2, progress=False).fit()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "dynamo imported at init: True" in out.stdout
