"""Run many ``bilevel-run`` jobs from Python: the machinery shared by ``bilevel-figure`` and
``bilevel-tune``. A job is a run directory and its overrides; jobs run one after another or in
a pool of fresh processes (one torch thread each), a failure never stops the others, and every
outcome is reported on one progress line as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path


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
