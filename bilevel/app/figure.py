"""``bilevel-figure NAME``: regenerate one registered paper figure.

A registry entry (``experiments/<NAME>.yaml``) names a Hydra experiment config and the grid of
runs behind the figure: panels × curves × seeds, each a list of overrides. The command composes
every run, reuses finished runs whose resolved config is unchanged, runs the missing ones (in
parallel with ``--jobs``), gathers their ``metrics.csv`` into one tidy table
(``results/<NAME>.csv``), writes a summary (``results/<NAME>_summary.csv``) and draws
``results/<NAME>.png``. ``--no-run`` refuses to run anything; ``--from-table`` redraws from the
committed table alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bilevel.app.config import PACKAGE_ROOT, ConfigError

REGISTRY = PACKAGE_ROOT / "experiments"


@dataclass
class PlannedRun:
    run_id: str
    panel: str
    curve: str
    seed: int
    overrides: list[str]


def available(registry: Path = REGISTRY) -> list[str]:
    return sorted(str(p.relative_to(registry).with_suffix("")) for p in registry.rglob("*.yaml"))


def load_entry(name: str, registry: Path = REGISTRY) -> dict[str, Any]:
    path = registry / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(available(registry))
        raise ConfigError(f"no figure {name!r} in {registry}; registered: {names}")
    entry = yaml.safe_load(path.read_text())
    for key in ("experiment", "panels", "curves", "plot"):
        if key not in entry:
            raise ConfigError(f"{path}: missing key '{key}'")
    return entry


def _slug(text: str) -> str:
    text = text.replace("σ", "sigma").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9.=-]+", "", text) or "x"


def plan(entry: dict[str, Any]) -> list[PlannedRun]:
    runs = []
    for panel in entry["panels"]:
        seeds = panel.get("seeds", entry.get("seeds", [0]))
        for curve in entry["curves"]:
            for seed in seeds:
                run_id = f"{_slug(panel['label'])}__{_slug(curve['label'])}__seed{seed}"
                overrides = [
                    f"experiment={entry['experiment']}",
                    *panel.get("overrides", []),
                    *curve.get("overrides", []),
                    f"seed={seed}",
                    "trainer.progress=false",
                ]
                runs.append(PlannedRun(run_id, panel["label"], curve["label"], seed, overrides))
    return runs


def _resolved_yaml(overrides: list[str]) -> str:
    from omegaconf import OmegaConf

    from bilevel.app.config import compose

    return OmegaConf.to_yaml(compose(overrides), resolve=True)


def is_done(run_dir: Path, overrides: list[str]) -> bool:
    """A finished run whose resolved config equals the one the registry asks for."""
    info, cfg = run_dir / "run.json", run_dir / "config.yaml"
    if not (info.exists() and cfg.exists()):
        return False
    status = json.loads(info.read_text()).get("status")
    return status in ("completed", "diverged") and cfg.read_text() == _resolved_yaml(overrides)


def run_missing(name: str, runs: list[PlannedRun], runs_root: Path, jobs: int) -> list[str]:
    """Run every planned run that is not done; return the ids of failed runs."""
    from bilevel.app.jobs import Job, run_jobs

    todo = [r for r in runs if not is_done(runs_root / name / r.run_id, r.overrides)]
    print(
        f"{name}: {len(runs)} runs, {len(runs) - len(todo)} reused, {len(todo)} to run "
        f"({jobs} job{'s' if jobs > 1 else ''})",
        flush=True,
    )
    outcomes = run_jobs(
        [Job(r.run_id, runs_root / name / r.run_id, r.overrides) for r in todo], jobs
    )
    return [label for label, outcome in outcomes.items() if outcome.status == "failed"]


def gather(name: str, runs: list[PlannedRun], runs_root: Path):
    import pandas as pd

    frames = []
    for r in runs:
        run_dir = runs_root / name / r.run_id
        metrics = run_dir / "metrics.csv"
        if not metrics.exists():
            raise ConfigError(f"{metrics} is missing; run 'bilevel-figure {name}' without --no-run")
        df = pd.read_csv(metrics)
        info = json.loads((run_dir / "run.json").read_text())
        df.insert(0, "seed", r.seed)
        df.insert(0, "curve", r.curve)
        df.insert(0, "panel", r.panel)
        df["status"] = info["status"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def summarize(table, entry: dict[str, Any]):
    """Per panel and curve: seeds, the final value and the mean over the last k evaluations
    (median over seeds), train seconds and oracle calls (median over seeds)."""
    y = entry["plot"]["y"]
    k = entry.get("summary", {}).get("last_k", 1)
    rows = []
    for (panel, curve), g in table.groupby(["panel", "curve"], sort=False):
        per_seed = g.sort_values("step").groupby("seed")
        last = per_seed.tail(1)
        rows.append(
            {
                "panel": panel,
                "curve": curve,
                "seeds": g.seed.nunique(),
                f"{y}_final": last[y].median(),
                f"{y}_mean_last{k}": per_seed.apply(lambda s: s[y].tail(k).mean()).median(),
                "train_seconds": last["wall_s"].median(),
                "oracle_calls": last["oracle_calls"].median(),
                "diverged": int((last["status"] == "diverged").sum()),
            }
        )
    import pandas as pd

    return pd.DataFrame(rows)


def make_figure(
    name: str,
    *,
    run: bool = True,
    from_table: bool = False,
    jobs: int = 1,
    runs_root: Path | None = None,
    results_dir: Path | None = None,
    registry: Path = REGISTRY,
) -> Path:
    import pandas as pd

    from bilevel.plots import plot_panels

    entry = load_entry(name, registry)
    runs_root = runs_root or Path("outputs") / "figures"
    results_dir = results_dir or PACKAGE_ROOT / "results"
    table_path = results_dir / f"{name}.csv"
    out_png = results_dir / f"{name}.png"
    out_png.parent.mkdir(parents=True, exist_ok=True)
    runs = plan(entry)
    if from_table:
        if not table_path.exists():
            raise ConfigError(f"{table_path} does not exist; run 'bilevel-figure {name}' first")
        table = pd.read_csv(table_path)
    else:
        if run:
            failed = run_missing(name, runs, runs_root, jobs)
            if failed:
                raise RuntimeError(
                    f"{len(failed)} run(s) failed: {', '.join(failed)}; see "
                    f"their run.json under {runs_root / name}"
                )
        else:
            missing = [
                r.run_id for r in runs if not is_done(runs_root / name / r.run_id, r.overrides)
            ]
            if missing:
                raise ConfigError(
                    f"--no-run: {len(missing)} run(s) missing or stale, e.g. "
                    f"{missing[0]} (under {runs_root / name})"
                )
        table = gather(name, runs, runs_root)
        keep = [
            "panel",
            "curve",
            "seed",
            "step",
            "epoch",
            "wall_s",
            "oracle_calls",
            "status",
            entry["plot"]["y"],
            entry["plot"]["x"],
        ]
        table = table[list(dict.fromkeys(c for c in keep if c in table.columns))]
        table.to_csv(table_path, index=False, float_format="%.6g")
        summarize(table, entry).to_csv(
            results_dir / f"{name}_summary.csv", index=False, float_format="%.4g"
        )
    fig = plot_panels(
        table,
        entry["plot"],
        [p["label"] for p in entry["panels"]],
        [c["label"] for c in entry["curves"]],
        entry.get("title", name),
    )
    fig.savefig(out_png, dpi=130)
    print(f"wrote {out_png}" + ("" if from_table else f", {table_path}"), flush=True)
    return out_png


def cli(argv: list[str] | None = None) -> None:
    """Entry point of ``bilevel-figure``."""
    parser = argparse.ArgumentParser(
        prog="bilevel-figure", description="Regenerate a registered paper figure."
    )
    parser.add_argument("name", nargs="?", help="registry entry, e.g. unibio/fig1")
    parser.add_argument("--list", action="store_true", help="list registered figures")
    parser.add_argument("--no-run", action="store_true", help="use stored runs only")
    parser.add_argument(
        "--from-table", action="store_true", help="redraw from results/<name>.csv without any run"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel runs (default: min(2, cpus))",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs") / "figures")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.list or not args.name:
        print("\n".join(available()))
        return
    try:
        make_figure(
            args.name,
            run=not args.no_run,
            from_table=args.from_table,
            jobs=args.jobs,
            runs_root=args.runs_dir,
            results_dir=args.results_dir,
        )
    except (ConfigError, RuntimeError) as err:
        print(f"bilevel-figure: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
