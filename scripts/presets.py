"""Does learning x help with each pair's settings? ``results/presets.csv`` (issue #8).

For every (algorithm, real task) pair of the papers' figures (spec FIGURES.md), at
``scale=small`` with the pair's settings (nothing else on the command line but the group's
budget below), the final held-out metric of the bilevel run and of the same run with x frozen
(``algorithm.upper.lr=0``: same seed, same batches, same lower-level work), for each seed.
A pair is "ahead" when the learned run beats the frozen one on the mean over seeds.

    OMP_NUM_THREADS=1 python scripts/presets.py [--jobs 1] [--seeds 0,1] [--only TASK ...]

Runs go to ``outputs/presets/`` and are reused when their resolved config is unchanged, or
copied from a finished run of the same config elsewhere below ``outputs/`` (a tuning or figure
run; ``bilevel.app.jobs.run_pending``: stale or failed run directories are moved to
``outputs/presets/.replaced/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from bilevel.app.config import PACKAGE_ROOT, compose, settings_files
from bilevel.app.jobs import Job, run_pending

# (name, task overrides, held-out metric (higher is better), budget, the figures' methods).
# The budget is per group (docs/presets.md): the whole command is 276 runs, about 2-2.5 h with
# --jobs 2 from scratch (runs of the same config made by the tuning scripts are shared). Each
# group runs the length at which its small-scale steps were tuned, or where learning x shows.
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
# Budgets. HPO: 1 epoch; y has settled by then on the majority class (test acc 0.808 at step 80
# for every method) and x does not move. Deep AUC (RNN): 10 epochs, the
# least where the network (x) beats its frozen init (MA-SOBA seed 0: test AUC 0.419 -> 0.410
# after 6 epochs, 0.430 after 10, 0.498 after 25). AUC transformer: 5 epochs (AdamBO: 0.51 ->
# 0.63 after 4). Hyper-representation (TREC, Amazon, SNLI with the RNN and the transformer):
# 50 steps, the length at which their small-scale upper steps were tuned
# (scripts/tune_hyperrep.sh; the tuning runs of the chosen points are shared, not rerun); MAML's
# second-order inner steps make it the costly pair (Amazon ~10 s a step).
# Hyper-cleaning (SNLI, Sentiment140): 10 epochs, the task's default length, at which their
# small-scale steps were tuned (scripts/tune_cleaning_snli.sh and
# scripts/tune_cleaning_sentiment140.sh); the learned runs are those tuning runs (shared).
GROUPS = [
    ("hpo", ["task=hpo"], "test_acc", ["trainer.epochs=1"],
     ["stocbio", "ttsa", "soba", "saba", "ma_soba", "bo_rep"]),
    ("hypercleaning/sentiment140", ["task=hypercleaning", "dataset=sentiment140", "model=rnn"],
     "test_acc", ["trainer.epochs=10"], CLEANING_S140),
    ("auc/rnn", ["task=auc"], "test_auc", ["trainer.epochs=10"], AUC),
    ("auc/transformer", ["task=auc", "model=transformer"], "test_auc", ["trainer.epochs=5"],
     ["adambo"]),
    ("hyperrep_trec", ["task=hyperrep_trec"], "test_acc", ["trainer.max_steps=50"],
     HYPERREP_ADAMBO),
    ("hyperrep_amazon", ["task=hyperrep_amazon"], "test_acc", ["trainer.max_steps=50"],
     ["maml", "anil", "stocbio", "ttsa", "soba", "saba", "ma_soba", "bo_rep"]),
    ("hypercleaning/snli", ["task=hypercleaning"], "test_acc", ["trainer.epochs=10"],
     CLEANING_SNLI),
    ("hyperrep/snli", ["task=hyperrep"], "test_acc", ["trainer.max_steps=50"],
     ["maml", "anil", "stocbio", "ttsa", "f2sa", "saba", "ma_soba", "bo_rep", "slip", "adambo"]),
    ("hyperrep/transformer", ["task=hyperrep", "model=transformer"], "test_acc",
     ["trainer.max_steps=50"], HYPERREP_ADAMBO),
]  # fmt: skip
COMMON = ["trainer.checkpoint_every=0", "trainer.progress=false"]
# Per-run diagnostics kept beside the metric: did y learn (train metric), did x move
# (hypergradient norm; HPO's coefficient λ; hyper-cleaning's AUC of the weights at spotting the
# corrupted labels, 0.5 at x = 0).
DIAGNOSTICS = ["hypergrad_norm", "l2_coef", "cleaning_auc"]


def plan(seeds: list[int], only: list[str]) -> list[tuple[dict, Job]]:
    planned = []
    for name, task, metric, budget, algorithms in GROUPS:
        if only and not any(name.startswith(o) for o in only):
            continue
        for algorithm in algorithms:
            for seed in seeds:
                for mode, extra in (("learned", []), ("frozen", ["algorithm.upper.lr=0"])):
                    label = f"{name.replace('/', '-')}__{algorithm}__seed{seed}__{mode}"
                    overrides = [
                        *task,
                        f"algorithm={algorithm}",
                        f"seed={seed}",
                        *budget,
                        *COMMON,
                        *extra,
                    ]
                    meta = {"group": name, "algorithm": algorithm, "seed": seed, "mode": mode}
                    planned.append(({**meta, "metric": metric}, Job(label, Path(), overrides)))
    return planned


def summarise(meta: dict, job: Job, outcome) -> dict:
    """One run's row: status (and error), the final metric, its value at step 0, the final
    train metric and the diagnostics."""
    info, metrics = job.run_dir / "run.json", job.run_dir / "metrics.csv"
    record = json.loads(info.read_text()) if info.exists() else {}
    status, error = record.get("status", "failed"), record.get("error", "")
    if outcome is not None and outcome.status == "failed":
        # the launcher saw it fail (a run that fails to build may leave no or a stale run.json)
        status, error = "failed", error or outcome.error
    df = pd.read_csv(metrics) if metrics.exists() else pd.DataFrame()
    last, first = (df.iloc[-1], df.iloc[0]) if len(df) else ({}, {})
    metric = meta["metric"]
    train = metric.replace("test_", "train_")
    row = {**meta, "status": status, "error": error}
    row["value"] = float(last.get(metric, float("nan")))
    row["init"] = float(first.get(metric, float("nan")))
    row["train"] = float(last.get(train, float("nan")))
    for key in DIAGNOSTICS:
        row[key] = float(last.get(key, float("nan")))
    row["steps"] = int(last.get("step", 0))
    row["train_seconds"] = float(record.get("train_seconds", float("nan")))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--only", nargs="*", default=[], help="group prefixes, e.g. hpo auc (other rows kept)"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs") / "presets")
    parser.add_argument("--out", type=Path, default=PACKAGE_ROOT / "results" / "presets.csv")
    args = parser.parse_args()
    planned = plan([int(s) for s in args.seeds.split(",")], args.only)
    for _, job in planned:
        job.run_dir = args.runs_dir / job.label
    # runs of the same config made elsewhere (tuning, figures) are shared, not rerun
    outcomes = run_pending(
        "presets", [job for _, job in planned], args.jobs, share_root=Path("outputs")
    )
    runs = pd.DataFrame([summarise(meta, job, outcomes.get(job.label)) for meta, job in planned])
    keys = ["group", "algorithm", "seed", "metric", "init"]
    per_mode = ["value", "train", *DIAGNOSTICS, "status", "error", "steps", "train_seconds"]
    learned = runs[runs["mode"] == "learned"].set_index(keys)[per_mode]
    frozen = runs[runs["mode"] == "frozen"].drop(columns="init")
    frozen = frozen.set_index(keys[:-1])[per_mode]
    wide = learned.reset_index().merge(
        frozen.reset_index(), on=keys[:-1], suffixes=("_learned", "_frozen")
    )
    wide = wide.rename(columns={"value_learned": "learned", "value_frozen": "frozen"})
    wide["gain"] = wide["learned"] - wide["frozen"]
    optional = [f"{k}_{m}" for k in DIAGNOSTICS for m in ("learned", "frozen")]
    wide = wide.drop(columns=[c for c in optional if wide[c].isna().all()])
    first = {name: task for name, task, *_ in GROUPS}
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
    if args.only and args.out.exists():  # --only replaces its groups' rows, keeps the others
        kept = pd.read_csv(args.out)
        kept = kept[~kept.group.isin(set(wide.group))]
        order = {name: i for i, (name, *_) in enumerate(GROUPS)}
        wide = pd.concat([kept, wide], ignore_index=True)
        wide = wide.sort_values("group", key=lambda g: g.map(order), kind="stable")
    wide.to_csv(args.out, index=False, float_format="%.4g")
    ok = (wide.status_learned != "failed") & (wide.status_frozen != "failed")
    pairs = wide[ok].groupby(["group", "algorithm"], sort=False)[["learned", "frozen", "gain"]]
    pairs = pairs.agg({"learned": "mean", "frozen": "mean", "gain": ["mean", "min", "max"]})
    pairs.columns = ["learned", "frozen", "gain", "gain_min", "gain_max"]
    pairs["ahead"] = pairs.gain > 0
    print(pairs.to_string(float_format=lambda v: f"{v:.4f}"))
    failed = wide[~ok].groupby(["group", "algorithm"], sort=False).error_learned.first()
    for (g, a), err in failed.items():
        print(f"FAILED {g} {a}: {err}")
    print(
        f"wrote {args.out}; {int(pairs.ahead.sum())}/{len(pairs)} pairs ahead of frozen x, "
        f"{len(failed)} pairs failed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
