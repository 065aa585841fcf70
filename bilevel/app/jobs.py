"""Run many ``bilevel-run`` jobs from Python: the machinery shared by ``bilevel-figure`` and
``bilevel-tune``. A job is a run directory and its overrides; a failure never stops the others.

Two engines: with no launcher named, jobs run one after another or in a local pool of fresh
processes (one torch thread each) and every outcome is reported on one progress line as it
arrives; with ``hydra/launcher=...`` (basic, joblib, submitit_slurm, ``slurm_gpu``) the jobs are
one launch of that Hydra launcher, which takes the list of per-job override lists.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilevel.app.config import ConfigError


@dataclass
class Job:
    label: str
    run_dir: Path
    overrides: list[str]


@dataclass
class Outcome:
    """What became of one job: its run status (completed, diverged, ...) or ``failed`` with the
    first line of the error raised outside the trainer."""

    status: str
    train_seconds: float = float("nan")
    error: str = ""


def execute(run_dir: str, overrides: list[str]) -> tuple[str, float]:
    """Compose and train one run (in a pool worker: a fresh process, one torch thread)."""
    import torch

    from bilevel.app.config import compose
    from bilevel.app.run import build_and_run, register

    register()
    torch.set_num_threads(1)
    result = build_and_run(compose(overrides), Path(run_dir), progress=False)
    return result.status, result.train_seconds


def run_jobs(
    jobs: list[Job], n_jobs: int = 1, on_outcome: Callable[[Job, Outcome], None] | None = None
) -> dict[str, Outcome]:
    """Run ``jobs`` (``n_jobs`` at a time) and return their outcomes by label."""
    outcomes: dict[str, Outcome] = {}
    start = time.perf_counter()

    def record(i: int, job: Job, result: tuple[str, float] | BaseException) -> None:
        if isinstance(result, BaseException):
            first = str(result).splitlines()[0] if str(result) else ""
            outcome = Outcome("failed", error=f"{type(result).__name__}: {first}")
            msg = f"FAILED: {outcome.error}"
        else:
            outcome = Outcome(result[0], result[1])
            msg = f"{outcome.status}, train {outcome.train_seconds:.1f}s"
        outcomes[job.label] = outcome
        elapsed = time.perf_counter() - start
        print(f"  [{i}/{len(jobs)}] {job.label}: {msg} ({elapsed:.0f}s elapsed)", flush=True)
        if on_outcome is not None:
            on_outcome(job, outcome)

    if n_jobs <= 1:
        for i, job in enumerate(jobs, 1):
            try:
                result: tuple[str, float] | BaseException = execute(str(job.run_dir), job.overrides)
            except Exception as err:
                result = err
            record(i, job, result)
        return outcomes
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(execute, str(j.run_dir), j.overrides): j for j in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            exc = fut.exception()
            record(i, futures[fut], exc if exc is not None else fut.result())
    return outcomes


def split_launcher_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's launcher choice and settings (``hydra/launcher=joblib``,
    ``hydra.launcher.n_jobs=2``, any ``hydra.*``) from the overrides of the runs themselves.
    Run directories belong to the command: ``hydra.run.*``/``hydra.sweep.*`` are refused."""
    runs, launcher = [], []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith(("hydra.run", "hydra.sweep")):
            raise ConfigError(
                f"{override}: run directories are chosen by the command (--runs-dir), not by "
                "hydra.run/hydra.sweep"
            )
        (launcher if key.startswith(("hydra/", "hydra.")) else runs).append(override)
    return runs, launcher


def launcher_config(launcher: list[str], sweep_dir: Path) -> tuple[Any, Any]:
    """Hydra's multirun config for ``launcher`` (the project's tree, every job under
    ``sweep_dir``) and the config loader that composes each job: what a launcher is built from."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bilevel.app.config import config_dir
    from bilevel.app.schema import register

    register()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="bilevel", config_search_path=create_config_search_path(str(config_dir()))
    )
    try:
        cfg = hydra.compose_config(
            "config",
            [*launcher, f"hydra.sweep.dir='{sweep_dir.resolve()}'"],
            run_mode=RunMode.MULTIRUN,
            with_log_configuration=False,
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"launcher {' '.join(launcher)}: {first}") from None
    return cfg, hydra.config_loader


def job_overrides(jobs: list[Job], sweep_dir: Path) -> list[list[str]]:
    """One override list per job, each placing the job in its own directory below
    ``sweep_dir`` (``hydra.sweep.subdir``)."""
    root = sweep_dir.resolve()
    return [
        [*j.overrides, f"hydra.sweep.subdir='{j.run_dir.resolve().relative_to(root)}'"]
        for j in jobs
    ]


def run_jobs_hydra(jobs: list[Job], launcher: list[str], sweep_dir: Path) -> dict[str, Outcome]:
    """Run ``jobs`` (all below ``sweep_dir``) as one launch of the Hydra launcher that
    ``launcher`` selects; each job runs the body of
    ``bilevel-run``. Outcomes are read back from each run's ``run.json``."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    from bilevel.app.run import _main as hydra_task

    if not jobs:
        return {}
    cfg, loader = launcher_config(launcher, sweep_dir)
    plugin = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(cfg)),
        task_function=hydra_task,
        config=cfg,
    )
    print(f"  {len(jobs)} job(s) through {cfg.hydra.launcher._target_}", flush=True)
    returns = plugin.launch(job_overrides(jobs, sweep_dir), initial_job_idx=0)
    outcomes: dict[str, Outcome] = {}
    for i, (job, ret) in enumerate(zip(jobs, returns, strict=True), 1):
        info = job.run_dir / "run.json"
        if ret.status == JobStatus.FAILED:
            err = ret._return_value
            first = str(err).splitlines()[0] if str(err) else ""
            outcome = Outcome("failed", error=f"{type(err).__name__}: {first}")
        elif info.exists():
            data = json.loads(info.read_text())
            outcome = Outcome(data["status"], data.get("train_seconds", float("nan")))
        else:
            outcome = Outcome("failed", error=f"no run.json in {job.run_dir}")
        outcomes[job.label] = outcome
        detail = outcome.error or f"train {outcome.train_seconds:.1f}s"
        print(f"  [{i}/{len(jobs)}] {job.label}: {outcome.status}, {detail}", flush=True)
    return outcomes


def resolved_config(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from bilevel.app.config import compose

    return OmegaConf.to_container(compose(overrides), resolve=True)


@functools.lru_cache(maxsize=4096)
def _fingerprint_of(overrides: tuple[str, ...]) -> str:
    from bilevel.app.rundir import fingerprint

    return fingerprint(resolved_config(list(overrides)))


def config_fingerprint(overrides: list[str]) -> str:
    """The fingerprint of the config ``overrides`` compose to, composed once per process (the
    done check, the set-aside check and run sharing all ask for it)."""
    return _fingerprint_of(tuple(overrides))


def is_done(run_dir: Path, overrides: list[str]) -> bool:
    """A finished run (completed or diverged) whose config fingerprint is the one asked for."""
    from bilevel.app.rundir import finished_with

    return finished_with(run_dir, config_fingerprint(overrides))


def set_aside(run_dir: Path, overrides: list[str]) -> str | None:
    """Before a job is launched into ``run_dir`` (always with ``resume=true``): keep an
    interrupted run of the same config, whose checkpoint the launch continues; move anything
    else (another config's run, a failed rebuild, a run without checkpoint) to ``.replaced/``
    beside it, never deleting it. Returns where it went, or None."""
    from bilevel.app.rundir import holds_run

    if not holds_run(run_dir) and not (run_dir / "config.yaml").exists():
        return None
    info = run_dir / "run.json"
    if info.exists() and (run_dir / "checkpoint.pt").exists():
        data = json.loads(info.read_text())
        if data.get("fingerprint") == config_fingerprint(overrides):
            return None
    target = run_dir.parent / ".replaced" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    return str(target)


def finished_runs(root: Path) -> dict[str, Path]:
    """Fingerprint → directory of every finished (completed or diverged) run below ``root``,
    runs set aside in ``.replaced/`` excepted."""
    from bilevel.app.rundir import stored_fingerprints

    found: dict[str, Path] = {}
    for info_path in sorted(root.rglob("run.json")) if root.is_dir() else []:
        if ".replaced" in info_path.parts:
            continue
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("status") in ("completed", "diverged"):
            for fp in stored_fingerprints(info_path.parent, info):
                found.setdefault(fp, info_path.parent)
    return found


def adopt_shared(jobs: list[Job], share_root: Path) -> list[Job]:
    """Jobs whose config a finished run elsewhere below ``share_root`` already ran (another
    figure with a coinciding curve): that run's directory is copied into the job's (without its
    checkpoint: the run is finished) instead of running it again. Returns the jobs still to run."""
    index = finished_runs(share_root)
    left = []
    for job in jobs:
        source = index.get(config_fingerprint(job.overrides))
        if source is None or source.resolve() == job.run_dir.resolve():
            left.append(job)
            continue
        set_aside(job.run_dir, job.overrides)
        shutil.copytree(source, job.run_dir, ignore=shutil.ignore_patterns("checkpoint.pt*"))
        print(f"  {job.label}: the same config ran in {source}: shared, not rerun", flush=True)
    return left


def run_pending(
    name: str,
    jobs: list[Job],
    n_jobs: int = 1,
    launcher: list[str] | None = None,
    root: Path | None = None,
    share_root: Path | None = None,
) -> dict[str, Outcome]:
    """Run the jobs that are not done: finished runs of the same config are reused (with
    ``share_root``, also those of other figures below it), stale or failed directories moved
    aside, interrupted ones continued (``resume=true``). With ``launcher`` the jobs (all below
    ``root``) go through that Hydra launcher, else through the local pool of ``n_jobs``."""
    todo = [j for j in jobs if not is_done(j.run_dir, j.overrides)]
    if share_root is not None and todo:
        todo = adopt_shared(todo, share_root)
    how = " ".join(launcher) if launcher else f"{n_jobs} local job{'s' if n_jobs > 1 else ''}"
    print(
        f"{name}: {len(jobs)} runs, {len(jobs) - len(todo)} reused, {len(todo)} to run ({how})"
        + (f" in {root}" if root else ""),
        flush=True,
    )
    for job in todo:
        moved = set_aside(job.run_dir, job.overrides)
        if moved:
            print(f"  {job.label}: a stale or unfinished run moved to {moved}", flush=True)
    batch = [Job(j.label, j.run_dir, [*j.overrides, "resume=true"]) for j in todo]
    if launcher:
        if root is None:
            raise ValueError("a Hydra launcher needs the root directory of the jobs")
        return run_jobs_hydra(batch, launcher, root)
    return run_jobs(batch, n_jobs)
