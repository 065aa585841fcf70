"""``bilevel-figure NAME [OVERRIDES...]``: regenerate one registered paper figure.

A registry entry (``experiments/<NAME>.yaml``) names a Hydra experiment config and the grid of
runs behind the figure: panels × curves × seeds, each a list of overrides, plus the plot, the
summary and the paper's claims as checks over the summary. The command composes every run
(the entry's overrides, then the command line's), reuses finished runs whose config
fingerprint is unchanged, launches the missing ones (a local pool with ``--jobs``, or any Hydra
launcher: ``hydra/launcher=joblib``, ``hydra/launcher=slurm_gpu``), gathers their
``metrics.csv`` into one tidy table, writes a summary, evaluates the claims, draws PNG and PDF,
and rewrites the gallery (``results/README.md``).

Where things go: runs under ``<runs root>/<NAME>/<variant>/<run id>`` (runs root: ``--runs-dir``,
else ``$BILEVEL_RUNS_DIR``, else ``outputs/figures`` of the checkout: never the working
directory); results under ``results/<NAME>.*`` for the committed small scale and
``results/<variant>/<NAME>.*`` when overrides change results (``scale=paper`` →
``results/scale=paper/unibio/fig1.png``). The variant names those overrides, so results of
different scales never overwrite each other.

A study entry (``study:``, e.g. ``diagnostics/hypergrad-error``) is not trained: each planned run
(and each value of its budget sweep) is built from its config and evaluated in-process by the
study's function (:mod:`bilevel.app.study`); the rows form the table, and the summary, claims,
plot and gallery are the same as for trained runs. ``summary.rate: {metric: column}`` adds
``<metric>_rate_last<k>``: the factor by which the metric falls per unit of that column over the
last k rows (a least-squares fit of its log), for geometric rates.

Power laws (UniBiO Fig. 5): ``running_mean: [metric, ...]`` adds ``<metric>_running_mean``, the
mean of the metric over a run's evaluations so far, and ``n_averaged``, their count (T when every
iteration is evaluated), to the table; ``summary.slope: {metric: column}`` adds
``<metric>_slope`` and ``<metric>_slope_r2``: the least-squares line through (log x, log y)
(:func:`bilevel.plots.power_law_fit`, over ``summary.slope_range`` at ``summary.slope_points``
log-spaced x values), ``summary.slope_also_from: [lo, ...]`` the same fit from each lo on
(``<metric>_slope_from<lo>``, ``..._r2``: is a slope a property of the window?), and
``plot.fit: true`` draws the main fit dashed with its slope. A panel's
``per_curve: {curve label: [overrides]}`` applies after the curve's own overrides (a step size per
curve on one panel, a common one on another).

Affine bounds (``diagnostics/smoothness``): ``summary.affine: {metric: column}`` adds the
least-squares line metric ≈ L0 + L1·column with L0, L1 ≥ 0 over all the rows of a panel and
curve, every seed together (:func:`bilevel.plots.affine_fit`): ``<metric>_L0``, ``<metric>_L1``,
``<metric>_residual`` (RMS, the metric's units), ``<metric>_const_residual`` (the same for the
best constant L), ``<metric>_r2``, ``<metric>_points``, and ``<metric>_L1_seed_min`` /
``..._max`` (the fit of each seed alone: is L1's sign a property of every run?);
``plot: {kind: scatter, fit: true}`` draws the points and the fit.
"""

from __future__ import annotations

import argparse
import hashlib
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
RESULTS = PACKAGE_ROOT / "results"
ENTRY_KEYS = {"title", "experiment", "seeds", "panels", "curves", "plot", "summary", "claims"}
ENTRY_KEYS |= {"notes", "paper", "spec", "table", "study", "running_mean"}
DEFAULT_VARIANT = "default"


@dataclass
class PlannedRun:
    run_id: str
    panel: str
    curve: str
    seed: int
    overrides: list[str]


def available(registry: Path = REGISTRY) -> list[str]:
    return sorted(
        str(p.relative_to(registry).with_suffix(""))
        for p in registry.rglob("*.yaml")
        if p.name != "catalogue.yaml"
    )


def load_entry(name: str, registry: Path = REGISTRY) -> dict[str, Any]:
    path = registry / f"{name}.yaml"
    if name == "catalogue" or not path.exists():
        names = ", ".join(available(registry))
        raise ConfigError(f"no figure {name!r} in {registry}; registered: {names}")
    try:
        entry = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected a mapping")
    for key in ("experiment", "panels", "curves", "plot"):
        if key not in entry:
            raise ConfigError(f"{path}: missing key '{key}'")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(ENTRY_KEYS)}")
    return entry


def runs_root_default() -> Path:
    """Where figure runs live unless ``--runs-dir`` says otherwise; independent of the cwd."""
    env = os.environ.get("BILEVEL_RUNS_DIR")
    return Path(env) if env else PACKAGE_ROOT / "outputs" / "figures"


GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "η": "eta", "λ": "lambda", "μ": "mu",
         "ν": "nu", "ρ": "rho", "σ": "sigma"}  # fmt: skip


def _slug(text: str) -> str:
    for letter, name in GREEK.items():
        text = text.replace(letter, name)
    text = text.replace(" ", "")
    return re.sub(r"[^A-Za-z0-9.=-]+", "", text) or "x"


def variant_of(overrides: list[str]) -> str:
    """A directory name for the command-line overrides that change results (every override
    but the result-neutral keys such as ``trainer.progress``); ``default`` when none."""
    from bilevel.app.rundir import RESULT_NEUTRAL_KEYS

    def neutral(override: str) -> bool:
        key = override.lstrip("+~").split("=", 1)[0]
        return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)

    kept = sorted(o for o in overrides if not neutral(o))
    if not kept:
        return DEFAULT_VARIANT
    text = ",".join(re.sub(r"[^A-Za-z0-9.=_,:+-]+", "_", o) for o in kept)
    if len(text) > 80:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        text = f"{text[:60]}-{digest}"
    return text


def plan(entry: dict[str, Any], extra: list[str] | None = None) -> list[PlannedRun]:
    """Every run of the entry: panels × curves × seeds; the overrides of the panel, the curve, the
    panel's ``per_curve`` ones for that curve, the seed; ``extra`` overrides come last (win)."""
    labels = {c["label"] for c in entry["curves"]}
    runs = []
    for panel in entry["panels"]:
        seeds = panel.get("seeds", entry.get("seeds", [0]))
        per_curve = panel.get("per_curve", {})
        unknown = set(per_curve) - labels
        if unknown:
            where = f"panel {panel['label']!r}"
            raise ConfigError(f"{where}: per_curve names no curve {sorted(unknown)}")
        for curve in entry["curves"]:
            for seed in seeds:
                run_id = f"{_slug(panel['label'])}__{_slug(curve['label'])}__seed{seed}"
                overrides = [
                    f"experiment={entry['experiment']}",
                    *panel.get("overrides", []),
                    *curve.get("overrides", []),
                    *per_curve.get(curve["label"], []),
                    f"seed={seed}",
                    "trainer.progress=false",
                    *(extra or []),
                ]
                runs.append(PlannedRun(run_id, panel["label"], curve["label"], seed, overrides))
    return runs


def run_missing(
    name: str,
    runs: list[PlannedRun],
    runs_dir: Path,
    jobs: int = 1,
    launcher: list[str] | None = None,
    share_root: Path | None = None,
) -> list[str]:
    """Launch every planned run that is not done (into ``runs_dir/<run id>``); a finished run of
    the same config by another figure below ``share_root`` is copied instead. Return the ids of
    failed runs."""
    from bilevel.app.jobs import Job, run_pending

    batch = [Job(r.run_id, runs_dir / r.run_id, r.overrides) for r in runs]
    outcomes = run_pending(name, batch, jobs, launcher, runs_dir, share_root)
    return [label for label, outcome in outcomes.items() if outcome.status == "failed"]


def gather(name: str, runs: list[PlannedRun], runs_dir: Path, table: str = "metrics"):
    """Every run's table (``metrics``: one row per evaluation; ``steps``: the hypergradient
    norms every ``trainer.log_every`` steps) with panel, curve, seed, status and peak memory."""
    import pandas as pd

    frames = []
    for r in runs:
        run_dir = runs_dir / r.run_id
        metrics = run_dir / f"{table}.csv"
        if not metrics.exists():
            raise ConfigError(f"{metrics} is missing; run 'bilevel-figure {name}' without --no-run")
        df = pd.read_csv(metrics)
        info = json.loads((run_dir / "run.json").read_text())
        df.insert(0, "seed", r.seed)
        df.insert(0, "curve", r.curve)
        df.insert(0, "panel", r.panel)
        df["status"] = info["status"]
        df["peak_memory_mb"] = info.get("peak_memory_mb", float("nan"))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def summary_metrics(entry: dict[str, Any]) -> list[str]:
    """The metrics summarized: the plot's y metrics, then ``summary.metrics``."""
    extra = entry.get("summary", {}).get("metrics", [])
    return list(dict.fromkeys([*_as_list(entry["plot"]["y"]), *extra]))


def _rate(rows, x: str, y: str, k: int) -> float:
    """exp of the least-squares slope of log ``y`` against ``x`` over the last ``k`` rows: the
    factor by which y falls per unit of x (NaN if fewer than two positive values)."""
    import numpy as np

    tail = rows.tail(k)
    tail = tail[tail[y] > 0]
    if len(tail) < 2 or tail[x].nunique() < 2:
        return float("nan")
    return float(np.exp(np.polyfit(tail[x].astype(float), np.log(tail[y].astype(float)), 1)[0]))


def add_running_means(table, metrics: list[str]):
    """``<metric>_running_mean``: the mean of each metric over a run's evaluations up to each row
    (ordered by step), and ``n_averaged``, how many (UniBiO Fig. 5: (1/T)·Σ_{t<T} ‖∇Φ(x_t)‖
    with T = n_averaged when every iteration is evaluated, step t holding x_t)."""
    if not metrics:
        return table
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise ConfigError(f"running_mean: {missing} not in the table ({', '.join(table.columns)})")
    keys = ["panel", "curve", "seed"]
    out = table.sort_values([*keys, "step"], kind="stable").copy()
    runs = out.groupby(keys, sort=False)
    for m in metrics:  # evaluations without the metric (NaN) are not counted
        seen = out[m].notna().groupby([out[k] for k in keys], sort=False).cumsum()
        out[f"{m}_running_mean"] = runs[m].cumsum() / seen
    out["n_averaged"] = runs.cumcount() + 1
    return out.sort_index()


def _slope(rows, x: str, y: str, x_range: Any, points: int | None) -> Any:
    """Slope and R² of the power law fitted to one run (:func:`bilevel.plots.power_law_fit`)."""
    import pandas as pd

    from bilevel.plots import power_law_fit

    fit = power_law_fit(rows[x], rows[y], x_range, points)
    return pd.Series({"slope": fit.slope, "r2": fit.r2})


def slope_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's power-law fits: ``{"fits": {metric: x}, "range": [lo, hi], "points": n,
    "also_from": [lo, ...]}``."""
    summary = entry.get("summary", {})
    return {
        "fits": summary.get("slope", {}),
        "range": summary.get("slope_range"),
        "points": summary.get("slope_points"),
        "also_from": summary.get("slope_also_from", []),
    }


def affine_columns(g, y: str, x: str) -> dict[str, float]:
    """``summary.affine``'s columns for one panel and curve (module docstring)."""
    from bilevel.plots import affine_fit

    pooled = affine_fit(g[x], g[y])
    per_seed = [affine_fit(s[x], s[y]).l1 for _, s in g.groupby("seed")]
    return {
        f"{y}_L0": pooled.l0,
        f"{y}_L1": pooled.l1,
        f"{y}_residual": pooled.residual,
        f"{y}_const_residual": pooled.const_residual,
        f"{y}_r2": pooled.r2,
        f"{y}_points": pooled.n,
        f"{y}_L1_seed_min": min(per_seed),
        f"{y}_L1_seed_max": max(per_seed),
    }


def summarize(table, entry: dict[str, Any]):
    """Per panel and curve: seeds, for each summarized metric its first and final values and its
    mean over the last k evaluations (median over seeds), train seconds and oracle calls (median
    over seeds), peak memory (run.json, median over seeds), diverged seeds; with ``summary.rate``
    ({metric: x column}) the metric's factor per unit of x over the last k rows (:func:`_rate`,
    median over seeds); with ``summary.slope`` ({metric: x column}) the slope and R² of the
    power law fitted on log–log axes (:func:`_slope`, median over seeds), over
    ``summary.slope_range`` and from each ``summary.slope_also_from`` value on; with
    ``summary.affine`` ({metric: x column}) the fit metric ≈ L0 + L1·x over all seeds' rows
    (:func:`affine_columns`)."""
    import pandas as pd

    k = entry.get("summary", {}).get("last_k", 1)
    rates = entry.get("summary", {}).get("rate", {})
    slopes = slope_settings(entry)
    metrics = [m for m in summary_metrics(entry) if m in table.columns]
    rows = []
    for (panel, curve), g in table.groupby(["panel", "curve"], sort=False):
        row: dict[str, Any] = {"panel": panel, "curve": curve, "seeds": g.seed.nunique()}
        for y in metrics:
            evals = g.dropna(subset=[y]).sort_values("step").groupby("seed")[y]
            row[f"{y}_first"] = evals.first().median()
            row[f"{y}_final"] = evals.last().median()
            row[f"{y}_mean_last{k}"] = evals.apply(lambda s: s.tail(k).mean()).median()
        last = g.sort_values("step").groupby("seed").tail(1)
        for column, name in (("wall_s", "train_seconds"), ("oracle_calls", "oracle_calls")):
            if column in last:  # not in a steps.csv table
                row[name] = last[column].median()
        if "peak_memory_mb" in last:  # tables made before run.json recorded it lack it
            row["peak_memory_mb"] = last["peak_memory_mb"].median()
        row["diverged"] = int((last["status"] == "diverged").sum())
        for y, x in rates.items():
            runs = g.sort_values("step").groupby("seed")[[x, y]]
            row[f"{y}_rate_last{k}"] = runs.apply(_rate, x, y, k).median()
        main = list(slopes["range"] or [None, None])
        windows = {"": main, **{f"_from{lo:g}": [lo, main[1]] for lo in slopes["also_from"]}}
        for y, x in slopes["fits"].items():
            runs = g.sort_values("step").groupby("seed")[[x, y]]
            for suffix, window in windows.items():
                fits = runs.apply(_slope, x, y, window, slopes["points"]).median()
                row[f"{y}_slope{suffix}"] = fits["slope"]
                row[f"{y}_slope{suffix}_r2"] = fits["r2"]
        for y, x in entry.get("summary", {}).get("affine", {}).items():
            row.update(affine_columns(g, y, x))
        rows.append(row)
    return pd.DataFrame(rows)


def results_paths(name: str, variant: str, results_dir: Path) -> dict[str, Path]:
    base = results_dir if variant == DEFAULT_VARIANT else results_dir / variant
    stem = base / name
    return {
        "table": stem.with_name(f"{stem.name}.csv"),
        "summary": stem.with_name(f"{stem.name}_summary.csv"),
        "claims": stem.with_name(f"{stem.name}_claims.csv"),
        "png": stem.with_name(f"{stem.name}.png"),
    }


def make_figure(
    name: str,
    overrides: list[str] | None = None,
    *,
    run: bool = True,
    from_table: bool = False,
    jobs: int = 1,
    runs_root: Path | None = None,
    results_dir: Path | None = None,
    registry: Path = REGISTRY,
    gallery: bool = True,
) -> Path:
    """Regenerate figure ``name``; return the PNG path."""
    import pandas as pd

    from bilevel.app.claims import claim_status, evaluate_claims
    from bilevel.app.jobs import split_launcher_overrides
    from bilevel.plots import plot_panels, save_figure

    entry = load_entry(name, registry)
    run_overrides, launcher = split_launcher_overrides(list(overrides or []))
    variant = variant_of(run_overrides)
    runs_root = runs_root or runs_root_default()
    runs_dir = runs_root / name / variant
    results_dir = results_dir or RESULTS
    paths = results_paths(name, variant, results_dir)
    runs = plan(entry, run_overrides)
    if from_table:
        if not paths["table"].exists():
            raise ConfigError(f"{paths['table']} does not exist; run 'bilevel-figure {name}' first")
        table = pd.read_csv(paths["table"])
    elif "study" in entry:  # no runs to launch or reuse: evaluated here (--no-run: the same)
        from bilevel.app.study import run_study

        paths["table"].parent.mkdir(parents=True, exist_ok=True)
        run_study(entry["study"], runs).to_csv(paths["table"], index=False, float_format="%.6g")
        table = pd.read_csv(paths["table"])  # as --from-table reads it: the same summary
    else:
        if run:
            failed = run_missing(name, runs, runs_dir, jobs, launcher, share_root=runs_root)
            if failed:
                raise RuntimeError(
                    f"{len(failed)} run(s) failed: {', '.join(failed)}; see their run.json "
                    f"under {runs_dir}"
                )
        else:
            from bilevel.app.jobs import is_done

            missing = [r.run_id for r in runs if not is_done(runs_dir / r.run_id, r.overrides)]
            print(f"{name}: {len(runs)} runs planned in {runs_dir}, {len(missing)} missing")
            for r in runs:
                if r.run_id in missing:
                    print(f"  {r.run_id}: {' '.join(r.overrides)}")
            if missing:
                raise ConfigError(
                    f"--no-run: {len(missing)} of {len(runs)} run(s) missing or stale, e.g. "
                    f"{missing[0]} (under {runs_dir})"
                )
        table = gather(name, runs, runs_dir, entry.get("table", "metrics"))
        table = add_running_means(table, _as_list(entry.get("running_mean", [])))
        plot = entry["plot"]
        keep = ["panel", "curve", "seed", "step", "epoch", "wall_s", "oracle_calls", "samples"]
        keep += ["status", "peak_memory_mb", *_as_list(plot["x"]), *summary_metrics(entry)]
        fits = {**slope_settings(entry)["fits"], **entry.get("summary", {}).get("affine", {})}
        keep += [*fits.values(), *fits]
        table = table[list(dict.fromkeys(c for c in keep if c in table.columns))]
        paths["table"].parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(paths["table"], index=False, float_format="%.6g")
    summary = summarize(table, entry)
    paths["png"].parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(paths["summary"], index=False, float_format="%.4g")
    claims = evaluate_claims(entry.get("claims", []), summary, f"{name}: claims")
    claims.to_csv(paths["claims"], index=False)
    plot = dict(entry["plot"])
    if plot.get("fit") is True:  # the summary's power laws and affine bounds, drawn
        plot["fit"] = {
            **slope_settings(entry),
            "affine": entry.get("summary", {}).get("affine", {}),
        }
    fig = plot_panels(
        table,
        plot,
        [p["label"] for p in entry["panels"]],
        [c["label"] for c in entry["curves"]],
        entry.get("title", name),
    )
    written = save_figure(fig, paths["png"])
    print(f"{name}: claims {claim_status(claims)}", flush=True)
    for row in claims.itertuples():
        print(f"  [{row.status}] {row.claim}{' (' + row.panel + ')' if row.panel else ''}: "
              f"{row.values}", flush=True)  # fmt: skip
    print(f"wrote {', '.join(str(p) for p in written)}", flush=True)
    if gallery and variant == DEFAULT_VARIANT and results_dir == RESULTS and registry == REGISTRY:
        from bilevel.app.gallery import write_gallery

        write_gallery()
    return paths["png"]


def cli(argv: list[str] | None = None) -> None:
    """Entry point of ``bilevel-figure``."""
    parser = argparse.ArgumentParser(
        prog="bilevel-figure",
        description="Regenerate a registered paper figure. Overrides (KEY=VALUE) apply to every "
        "run of the figure (scale=paper trainer.device=cuda); hydra/launcher=joblib|"
        "submitit_slurm|slurm_gpu and hydra.launcher.* choose how the missing runs launch.",
    )
    parser.add_argument("name", nargs="?", help="registry entry, e.g. unibio/fig1")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--list", action="store_true", help="list registered figures")
    parser.add_argument("--all", action="store_true", help="every registered figure")
    parser.add_argument("--no-run", action="store_true", help="use stored runs only")
    parser.add_argument(
        "--from-table", action="store_true", help="redraw from results/<name>.csv without any run"
    )
    parser.add_argument("--gallery", action="store_true", help="only rewrite results/README.md")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel local runs when no hydra/launcher is given (default: min(2, cpus))",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="runs root (default: $BILEVEL_RUNS_DIR or "
        "outputs/figures of the checkout)"
    )  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.all and args.name:
        overrides.insert(0, args.name)
    try:
        if args.gallery:
            from bilevel.app.gallery import write_gallery

            print(f"wrote {write_gallery()}")
            return
        if args.list or not (args.name or args.all):
            print("\n".join(available()))
            return
        names = available() if args.all else [args.name]
        for name in names:
            table = results_paths(name, variant_of(overrides), args.results_dir or RESULTS)["table"]
            if args.all and args.from_table and not table.exists():
                print(f"{name}: no committed table ({table}): not built yet, skipped")
                continue
            make_figure(
                name,
                overrides,
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
