"""Metric sinks. The local CSV table is always written; W&B mirrors the same rows when enabled."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Literal


class MetricsLogger:
    def start(self, run_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Begin (or continue, with the rows already recorded) a run."""

    def log(self, row: dict[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


class CSVLogger(MetricsLogger):
    """``metrics.csv``: one row per evaluation, appended and flushed as it comes, so that an
    interrupted run keeps every finished evaluation. The columns are fixed by the first row."""

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.columns: list[str] | None = None
        self.path: Path | None = None

    def start(self, run_dir, config, rows):
        self.path = Path(run_dir) / self.filename
        self.columns = None
        self.path.unlink(missing_ok=True)
        for row in rows:
            self.log(row)

    def log(self, row):
        assert self.path is not None
        new = self.columns is None
        if new:
            self.columns = list(row)
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)


def default_names(run_dir: Path, config: dict[str, Any]) -> dict[str, str]:
    """W&B ``name`` and ``group`` when ``logger.name``/``logger.group`` are null: the name is the
    root ``name`` key, else ``<Algorithm>-<task>-seed<N>``; the group is the sweep directory
    of a multirun job (``<date>/<time>``; Hydra writes ``multirun.yaml`` there), else none
    (``bilevel-figure NAME logger=wandb logger.group=NAME`` groups a figure's runs)."""
    algorithm = str((config.get("algorithm") or {}).get("_target_", "run")).rsplit(".", 1)[-1]
    task = str((config.get("task") or {}).get("_target_", "task")).rsplit(".", 1)[-1]
    names = {"name": config.get("name") or f"{algorithm}-{task}-seed{config.get('seed', 0)}"}
    parent = run_dir.resolve().parent
    if (parent / "multirun.yaml").exists():
        names["group"] = f"{parent.parent.name}/{parent.name}"
    return names


class WandbLogger(MetricsLogger):
    """Mirrors the rows to Weights & Biases (``wandb.init``/``log``/``finish``); ``mode`` is
    ``online``, ``offline`` (sync later with ``wandb sync``) or ``disabled``. The run is finished
    after each job so that sequential multirun jobs never merge."""

    def __init__(
        self,
        project: str = "bilevel",
        mode: Literal["online", "offline", "disabled", "shared"] = "offline",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
    ):
        self.kwargs = dict(
            project=project,
            mode=mode,
            entity=entity,
            group=group,
            name=name,
            tags=list(tags) if tags else None,
        )
        self.run = None

    def start(self, run_dir, config, rows):
        import wandb

        kwargs = {**self.kwargs, **default_names(Path(run_dir), config)}
        kwargs.update({k: v for k, v in self.kwargs.items() if v is not None})
        self.run = wandb.init(dir=str(run_dir), config=config, reinit="finish_previous", **kwargs)
        for row in rows:
            self.log(row)

    def log(self, row):
        if self.run is not None:
            clean = {
                k: v
                for k, v in row.items()
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
            }
            self.run.log(clean, step=int(row["step"]))

    def finish(self, status):
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None
