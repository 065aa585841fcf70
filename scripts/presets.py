"""Does learning x help with each pair's settings? ``results/presets.csv`` (issue #8).

For every (algorithm, real task) pair of the papers' figures (spec FIGURES.md), at
``scale=small`` with the pair's settings (nothing else on the command line but the budget
below), the final held-out metric of the bilevel run and of the same run with x frozen
(``algorithm.upper.lr=0``: same seed, same batches, same lower-level work), for each seed.
A pair is "ahead" when the learned run beats the frozen one on the mean over seeds.

    python scripts/presets.py [--jobs 2] [--seeds 0,1] [--only TASK ...]

Runs go to ``outputs/presets/`` and are reused when their resolved config is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from bilevel.app.config import PACKAGE_ROOT, compose, settings_files
from bilevel.app.figure import is_done
from bilevel.app.jobs import Job, run_jobs

# (name, task overrides, held-out metric (higher is better), budget, the figures' methods)
CLEANING_SNLI = [
    "unibio",
    "accbo",
    "bo_rep",
    "stocbio",
    "ttsa",
    "saba",
    "ma_soba",
    "sustain",
    "vrbo",
]
CLEANING_S140 = ["stocbio", "ttsa", "soba", "saba", "ma_soba", "bo_rep", "slip", "f2sa"]
AUC = ["adambo", "accbo", "bo_rep", "saba", "ma_soba", "stocbio", "sustain", "ttsa", "vrbo"]
HYPERREP_ADAMBO = ["adambo", "maml", "anil", "stocbio", "ttsa", "saba", "ma_soba", "bo_rep", "slip"]
GROUPS = [
    ("hypercleaning/snli", ["task=hypercleaning"], "test_acc", CLEANING_SNLI),
    (
        "hypercleaning/sentiment140",
        ["task=hypercleaning", "dataset=sentiment140", "model=rnn"],
        "test_acc",
        CLEANING_S140,
    ),
    ("auc/rnn", ["task=auc"], "test_auc", AUC),
    ("auc/transformer", ["task=auc", "model=transformer"], "test_auc", ["adambo"]),
    (
        "hyperrep_amazon",
        ["task=hyperrep_amazon"],
        "test_acc",
        ["maml", "anil", "stocbio", "ttsa", "soba", "saba", "ma_soba", "bo_rep"],
    ),
    (
        "hyperrep/snli",
        ["task=hyperrep"],
        "test_acc",
        ["maml", "anil", "stocbio", "ttsa", "f2sa", "saba", "ma_soba", "bo_rep", "slip", "adambo"],
    ),
    ("hyperrep/transformer", ["task=hyperrep", "model=transformer"], "test_acc", HYPERREP_ADAMBO),
    ("hyperrep_trec", ["task=hyperrep_trec"], "test_acc", HYPERREP_ADAMBO),
    ("hpo", ["task=hpo"], "test_acc", ["stocbio", "ttsa", "soba", "saba", "ma_soba", "bo_rep"]),
]  # fmt: skip
BUDGET = ["trainer.epochs=2", "trainer.checkpoint_every=0", "trainer.progress=false"]


def plan(seeds: list[int], only: list[str]) -> list[tuple[dict, Job]]:
    planned = []
    for name, task, metric, algorithms in GROUPS:
        if only and not any(name.startswith(o) for o in only):
            continue
        for algorithm in algorithms:
            for seed in seeds:
                for mode, extra in (("learned", []), ("frozen", ["algorithm.upper.lr=0"])):
                    label = f"{name.replace('/', '-')}__{algorithm}__seed{seed}__{mode}"
                    overrides = [*task, f"algorithm={algorithm}", f"seed={seed}", *BUDGET, *extra]
                    meta = {"group": name, "algorithm": algorithm, "seed": seed, "mode": mode}
                    planned.append(({**meta, "metric": metric}, Job(label, Path(), overrides)))
    return planned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", nargs="*", default=[], help="group prefixes, e.g. hpo auc")
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs") / "presets")
    parser.add_argument("--out", type=Path, default=PACKAGE_ROOT / "results" / "presets.csv")
    args = parser.parse_args()
    planned = plan([int(s) for s in args.seeds.split(",")], args.only)
    for _, job in planned:
        job.run_dir = args.runs_dir / job.label
    todo = [job for _, job in planned if not is_done(job.run_dir, job.overrides)]
    print(f"presets: {len(planned)} runs, {len(planned) - len(todo)} reused, {len(todo)} to run")
    run_jobs(todo, args.jobs)
    rows = []
    for meta, job in planned:
        info, metrics = job.run_dir / "run.json", job.run_dir / "metrics.csv"
        status = json.loads(info.read_text())["status"] if info.exists() else "failed"
        df = pd.read_csv(metrics) if metrics.exists() else pd.DataFrame()
        last = df.iloc[-1] if len(df) else {}
        row = {**meta, "status": status, "value": float(last.get(meta["metric"], float("nan")))}
        row["cleaning_auc"] = float(last.get("cleaning_auc", float("nan")))
        row["steps"] = int(last.get("step", 0))
        rows.append(row)
    runs = pd.DataFrame(rows)
    keys = ["group", "algorithm", "seed", "metric"]
    wide = runs.pivot_table(index=keys, columns="mode", values=["value", "cleaning_auc"])
    wide.columns = [f"{v}_{m}" if v != "value" else m for v, m in wide.columns]
    wide = wide.reset_index()
    status = runs.pivot_table(index=keys, columns="mode", values="status", aggfunc="first")
    wide = wide.merge(status.add_prefix("status_").reset_index(), on=keys)
    wide["gain"] = wide["learned"] - wide["frozen"]
    first = {name: task for name, task, _, _ in GROUPS}
    wide["settings"] = [
        " ".join(
            str(p.relative_to(PACKAGE_ROOT / "configs"))
            for p in settings_files(
                compose(
                    [*first[g], f"algorithm={a}"], return_hydra_config=True
                ).hydra.runtime.choices
            )
        )
        or "defaults"
        for g, a in zip(wide.group, wide.algorithm, strict=True)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wide.to_csv(args.out, index=False, float_format="%.4g")
    pairs = wide.groupby(["group", "algorithm"], sort=False)[["learned", "frozen", "gain"]].mean()
    pairs["ahead"] = pairs.gain > 0
    print(pairs.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {args.out}; {int(pairs.ahead.sum())}/{len(pairs)} pairs ahead of frozen x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
