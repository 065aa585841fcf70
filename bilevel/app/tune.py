"""``bilevel-tune``: choose an (algorithm, task) pair's settings by a grid search.

    bilevel-tune algorithm=soba task=quadratic \\
        algorithm.upper.lr=0.01,0.1,1 algorithm.lower.lr=0.1,0.5 \\
        seed=0,1 task.noise_std=0,0.5 --replicate task.noise_std --log --write

Every sweep override (Hydra syntax: ``a,b,c``, ``range(...)``) is a grid axis, except ``seed``
and the keys named by ``--replicate``: those are replicates that every grid point runs on.
A trial's score is the mean of ``--metric`` over its last ``--last`` evaluations (of log10
values with ``--log``); a grid point's score is the mean over its replicates (``--aggregate
worst``: its worst replicate). The selection rule: the best score (``--mode``) among the grid
points none of whose replicates diverged, failed or produced a non-finite score and, with
``--require task.noise_std=0:0.044``, whose replicates of that value reach the bound (in the
metric's units; when no point does, among all). Trials run through the figure machinery (``--jobs``
processes) into ``outputs/tune/...``; finished trials with an unchanged resolved config are
reused. Every trial lands in a tidy table (``results/tuning/<task>/<algorithm>.csv``) and
``--write`` writes the chosen values into the pair's settings file with the command, grid and
rule as provenance (``--scale-delta``: as the small-scale value beside the paper value;
``--write-if-beats 0.55``: only when the chosen score beats that bound, e.g. leaves chance).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilevel.app.config import PACKAGE_ROOT, ConfigError, config_dir

RESULTS = PACKAGE_ROOT / "results" / "tuning"


@dataclass
class Trial:
    label: str
    point: dict[str, str]  # grid key -> value (override text)
    replicate: dict[str, str]  # replicate key (seed included) -> value
    overrides: list[str]


def _sweep_values(override: Any) -> list[str]:
    """The values of one parsed override as override text (one value unless it is a sweep)."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    return list(override.sweep_string_iterator())


def plan(
    overrides: list[str], replicate_keys: list[str]
) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """Split the command line into fixed overrides, grid axes and replicate axes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    fixed, grid, replicates = [], {}, {}
    for ovr in parsed:
        key = ovr.get_key_element()
        if key == "seed" or key in replicate_keys:
            replicates[key] = _sweep_values(ovr)
        elif ovr.is_sweep_override():
            grid[key] = _sweep_values(ovr)
        else:
            fixed.append(ovr.input_line)
    replicates.setdefault("seed", ["0", "1"])
    missing = [k for k in replicate_keys if k not in replicates]
    if missing:
        raise ConfigError(f"--replicate {missing[0]}: give its values, e.g. {missing[0]}=a,b")
    if not grid:
        raise ConfigError("no grid: give at least one swept key, e.g. algorithm.upper.lr=0.01,0.1")
    return fixed, grid, replicates


def trials(fixed: list[str], grid: dict[str, list[str]], replicates: dict[str, list[str]]):
    out = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        for rvalues in itertools.product(*replicates.values()):
            rep = dict(zip(replicates, rvalues, strict=True))
            label = "__".join(f"{k}={v}" for k, v in {**point, **rep}.items())
            overrides = [
                *fixed,
                *(f"{k}={v}" for k, v in {**point, **rep}.items()),
                "trainer.progress=false",
            ]
            out.append(Trial(label, point, rep, overrides))
    return out


def score(metrics_csv: Path, metric: str, last: int, log: bool) -> float:
    """Mean of ``metric`` over the last ``last`` evaluations (of log10 with ``log``); nan when
    the metric is missing or not finite."""
    import pandas as pd

    if not metrics_csv.exists():
        return math.nan
    df = pd.read_csv(metrics_csv)
    if metric not in df.columns:
        raise ConfigError(f"--metric {metric}: not logged (logged: {', '.join(df.columns)})")
    tail = df[metric].tail(last).astype(float)
    if log:
        tail = tail.where(tail > 0).map(math.log10)
    value = float(tail.mean())
    return value if math.isfinite(value) else math.nan


def pair_of(overrides: list[str]) -> dict[str, str]:
    """The chosen algorithm, task, dataset and model of a command line."""
    from bilevel.app.config import compose

    choices = compose(overrides, return_hydra_config=True).hydra.runtime.choices
    return {k: str(choices[k]) for k in ("algorithm", "task", "dataset", "model")}


def settings_path(pair: dict[str, str], data: bool = False) -> Path:
    """The settings file of a pair (``data``: of the pair on its dataset and model)."""
    root = config_dir() / "settings"
    if data:
        return (
            root
            / "data"
            / pair["task"]
            / f"{pair['dataset']}-{pair['model']}"
            / (pair["algorithm"] + ".yaml")
        )
    return root / pair["task"] / f"{pair['algorithm']}.yaml"


def _parse_value(text: str) -> Any:
    """An override's value as Hydra reads it (1e-2 a float, {a:1} a dict), as plain data."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(f"key={text}").value()


def write_settings(
    path: Path, chosen: dict[str, str], provenance: list[str], scale_delta: bool, title: str = ""
) -> None:
    """Set the chosen keys in the settings file at ``path`` (created if missing), keeping its
    other keys and its header comment (less an earlier ``# Tuned`` block), and append the
    provenance lines to the header."""
    import yaml

    header, body = ["# @package _global_", *([f"# {title}"] if title else [])], {}
    if path.exists():
        text = path.read_text()
        header, in_tuned = [], False
        for line in (ln for ln in text.splitlines() if ln.startswith("#")):
            in_tuned = line.startswith("# Tuned") or (in_tuned and line.startswith("#   "))
            if not in_tuned:  # an earlier tuning's block is replaced by this one
                header.append(line)
        body = yaml.safe_load(text) or {}
    for key, text in chosen.items():
        node = body
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = _parse_value(text)
        if scale_delta:
            old = node.get(leaf)
            paper = old
            if isinstance(old, str) and old.startswith("${by_scale:"):
                inner = yaml.safe_load(old.removeprefix("${by_scale:").removesuffix("}"))
                paper = inner.get("paper")
            if paper is None:
                raise ConfigError(
                    f"--scale-delta: {path} has no paper value for {key}; set it first"
                )
            value = f"${{by_scale:{{paper: {paper}, small: {value}}}}}"
        node[leaf] = value
    header += [f"# {line}" for line in provenance]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False))


def settings_table() -> str:
    """docs/settings.md: which (algorithm, task[, dataset-model]) pairs have settings and where
    they come from (regenerated by ``bilevel-tune --table``; a test keeps it current)."""
    root = config_dir() / "settings"
    algorithms = sorted(p.stem for p in (config_dir() / "algorithm").glob("*.yaml"))
    rows: dict[str, dict[str, str]] = {}
    notes = []
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root).with_suffix("")
        row = str(rel.parent) if rel.parts[0] != "data" else f"{rel.parts[1]} ({rel.parts[2]})"
        text = path.read_text()
        tuned, by_scale = "# Tuned" in text, "${by_scale:" in text
        first = next((ln[2:] for ln in text.splitlines()[1:] if ln.startswith("# ")), "")
        kind = "S" if "STRUCTURAL" in first else "I" if "INFERRED" in first else "P"
        kind = "T" if tuned and not by_scale else (f"{kind}+t" if by_scale else kind)
        rows.setdefault(row, {})[rel.name] = kind
        notes.append(f"| `{rel}` | {kind} | {first} |")
    head = "| task (dataset-model) | " + " | ".join(algorithms) + " |"
    lines = [
        "# Settings per (algorithm, task)",
        "",
        "Generated by `bilevel-tune --table` from `configs/settings/` (a test keeps it current).",
        "A run with `algorithm=A task=T` applies `configs/settings/T/A.yaml`, then",
        "`configs/settings/data/T/<dataset>-<model>/A.yaml` for the chosen dataset and model; the",
        "command line wins over both. A pair without a file runs on the algorithm's defaults",
        "(`configs/algorithm/`) and says so in one line at start-up.",
        "",
        "P: the paper's values (the file names the spec section); I: inferred from a related",
        "row of the specs (the file says from which); P+t / I+t: those values at `scale=paper`",
        "and a value tuned here at `scale=small` (`${by_scale:...}`); T: tuned here",
        "with `bilevel-tune` (the file records the command, grid, seeds and selection rule; the",
        "trials are in `results/tuning/`); S: a structural choice only (e.g. SABA's memory",
        "form) with the algorithm's default steps; blank: no settings, the algorithm's defaults.",
        "",
        head,
        "|" + "---|" * (len(algorithms) + 1),
    ]
    for row in sorted(rows):
        cells = [rows[row].get(a, "") for a in algorithms]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where each paper value comes from, the pairs no spec covers, and the contradictions",
        "between sources: `docs/settings-sources.md`.",
        "",
        "| file | kind | provenance (first line) |",
        "|---|---|---|",
        *notes,
        "",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    return str(path.relative_to(PACKAGE_ROOT) if path.is_relative_to(PACKAGE_ROOT) else path)


def meets_requirements(table: Any, keys: list[str], args: argparse.Namespace) -> list[bool]:
    """Per grid point (in groupby order): whether every ``--require KEY=VALUE:BOUND`` holds, i.e.
    each replicate with KEY=VALUE scores at most BOUND (``--mode max``: at least), BOUND in the
    metric's units (its log10 is compared with ``--log``)."""
    import pandas as pd

    ok = pd.Series(True, index=table.index)
    for req in args.require:
        try:
            key_value, bound_text = req.rsplit(":", 1)
            key, value = key_value.split("=", 1)
            bound = float(bound_text)
        except ValueError:
            raise ConfigError(f"--require {req}: expected KEY=VALUE:BOUND") from None
        if key not in table.columns:
            raise ConfigError(f"--require {req}: {key} is not a replicate or grid key")
        if args.log:
            bound = math.log10(bound)
        rows = table[key].astype(str) == value
        beats = table.score <= bound if args.mode == "min" else table.score >= bound
        ok &= ~rows | beats.fillna(False)
    return list(ok.groupby([table[k] for k in keys], sort=False).all())


def tune(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    import pandas as pd

    from bilevel.app.jobs import Job, run_pending, split_launcher_overrides

    overrides, launcher = split_launcher_overrides(overrides)
    fixed, grid, replicates = plan(overrides, args.replicate)
    pair = pair_of(fixed)
    where = f"{pair['task']}/{pair['algorithm']}"
    if args.data:
        where = f"{pair['task']}/{pair['dataset']}-{pair['model']}/{pair['algorithm']}"
    runs_root = args.runs_dir / where
    todo = trials(fixed, grid, replicates)
    jobs = [Job(t.label, runs_root / t.label, t.overrides) for t in todo]
    n_points = math.prod(len(v) for v in grid.values())
    print(
        f"bilevel-tune {where}: {n_points} grid points x {len(todo) // n_points} replicates",
        flush=True,
    )
    run_pending(f"bilevel-tune {where}", jobs, args.jobs, launcher, runs_root)

    rows = []
    for t, job in zip(todo, jobs, strict=True):
        info = job.run_dir / "run.json"
        status = json.loads(info.read_text())["status"] if info.exists() else "failed"
        value = score(job.run_dir / "metrics.csv", args.metric, args.last, args.log)
        rows.append({**t.point, **t.replicate, "status": status, "score": value})
    table = pd.DataFrame(rows)
    keys = list(grid)
    ok = table.status.eq("completed") & table.score.notna()
    worst = "max" if args.mode == "min" else "min"
    by_point = (
        table.assign(ok=ok)
        .groupby(keys, sort=False)
        .agg(
            score=("score", "mean" if args.aggregate == "mean" else worst),
            replicates_ok=("ok", "sum"),
            replicates=("ok", "size"),
        )
        .reset_index()
    )
    by_point["meets"] = meets_requirements(table, keys, args)
    valid = by_point[by_point.replicates_ok == by_point.replicates]
    met = bool(args.require) and bool(valid.meets.any())
    if met:
        valid = valid[valid.meets]
    elif args.require:
        print("no grid point meets every --require; choosing among all", flush=True)
    out = args.out or RESULTS / f"{where}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    shown = by_point.sort_values("score", ascending=args.mode == "min")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    if valid.empty:
        raise ConfigError(f"every grid point had a diverged or failed replicate; see {out}")
    best = valid.sort_values("score", ascending=args.mode == "min").iloc[0]
    # the pair's settings: the chosen grid point and the fixed algorithm keys it ran with
    chosen = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in fixed if o.startswith("algorithm.")}
    chosen.update({k: str(best[k]) for k in keys})
    over = "mean" if args.aggregate == "mean" else "worst"
    rule = (
        f"{args.mode} over grid points of the {over} over replicates of the mean "
        f"{'log10 ' if args.log else ''}{args.metric} over the last {args.last} evaluations; "
        "points with a diverged/failed replicate excluded"
        + (f"; among the points meeting {', '.join(args.require)}" if met else "")
        + ("; NO point met " + ", ".join(args.require) if args.require and not met else "")
    )
    print(f"chosen ({rule}): " + " ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)
    gate = args.write_if_beats
    if args.write and gate is not None:
        bound = math.log10(gate) if args.log else gate
        beats = best.score < bound if args.mode == "min" else best.score > bound
        if not beats:
            print(f"not written: the chosen score {best.score:.4g} does not beat {gate}")
            return {"chosen": chosen, "score": float(best.score), "table": out, "written": False}
        rule += f"; written because its score beats {gate}"
    if args.write:
        path = settings_path(pair, data=args.data)
        command = "bilevel-tune " + " ".join(shlex.quote(a) for a in args.argv)
        provenance = [
            f"Tuned {datetime.date.today().isoformat()}"
            + (" (small-scale value)" if args.scale_delta else "")
            + f": {' '.join(f'{k}={v}' for k, v in chosen.items())}, score {best.score:.4g}",
            f"  command: {command}",
            f"  rule: {rule}; trials: {_shown(out)}",
        ]
        title = " ".join(f"{k}={v}" for k, v in pair.items())
        write_settings(path, chosen, provenance, args.scale_delta, f"Settings of {title}.")
        print(f"wrote {path}", flush=True)
    return {"chosen": chosen, "score": float(best.score), "table": out, "written": args.write}


def cli(argv: list[str] | None = None) -> None:
    """Entry point of ``bilevel-tune``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="bilevel-tune",
        description="Grid search over an (algorithm, task) pair's settings (see module doc).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; sweeps are grid axes")
    parser.add_argument("--metric", default="true_hypergrad_norm")
    parser.add_argument("--mode", choices=["min", "max"], default="min")
    parser.add_argument("--last", type=int, default=3, help="evaluations averaged per run")
    parser.add_argument("--log", action="store_true", help="average log10 of the metric")
    parser.add_argument(
        "--aggregate",
        choices=["mean", "worst"],
        default="mean",
        help="a grid point's score: the mean over its replicates, or the worst replicate",
    )
    parser.add_argument("--replicate", action="append", default=[], help="a replicate axis")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        help="KEY=VALUE:BOUND: choose among points whose KEY=VALUE replicates reach BOUND",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--runs-dir", type=Path, default=PACKAGE_ROOT / "outputs" / "tune")
    parser.add_argument("--out", type=Path, default=None, help="trial table (CSV)")
    parser.add_argument("--write", action="store_true", help="write the pair's settings file")
    parser.add_argument(
        "--write-if-beats",
        type=float,
        default=None,
        metavar="BOUND",
        help="with --write: write only if the chosen score beats BOUND (> for max, < for min)",
    )
    parser.add_argument(
        "--data", action="store_true", help="the pair on its dataset and model (settings/data)"
    )
    parser.add_argument(
        "--scale-delta", action="store_true", help="write as by_scale small-scale values"
    )
    parser.add_argument("--table", action="store_true", help="regenerate docs/settings.md and exit")
    args = parser.parse_args(argv)
    if args.write_if_beats is not None and not args.write:
        parser.error("--write-if-beats gates --write; add --write (or drop the bound)")
    args.argv = argv
    if args.table:
        out = PACKAGE_ROOT / "docs" / "settings.md"
        out.write_text(settings_table())
        print(f"wrote {out}")
        return
    try:
        tune(args, args.overrides)
    except ConfigError as err:
        print(f"bilevel-tune: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
