"""Benchmark (issue #13): where the wall time of a short run goes. Runs ``bilevel-run`` with the
given overrides in a fresh process (one thread), times the whole process, and splits it with the
run's ``run.json``: training (the algorithm's init and steps), evaluation (evaluations, probes,
step logs), warm-up, and the rest (interpreter start, imports, config composition, data
preparation, model construction, writing the run directory). One untimed run first, so the
timed ones find the prepared data in its cache (``bilevel.tasks.text.prepare``; the first run
of a dataset on a machine reads and tokenizes the files, ~1.8 s more here). Also times, in
their own fresh processes, the floor no run avoids: ``import torch`` and the ``torch._dynamo``
import that the first ``torch.optim`` optimizer triggers (torch wraps optimizer methods in a
lazy ``_disable_dynamo``; the trainer imports it before its clock starts).

    OMP_NUM_THREADS=1 python scripts/bench_overhead.py [--repeats 3] [--out CSV] [OVERRIDE ...]

Default overrides: a one-epoch small-scale BO-REP run on SNLI hyper-cleaning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

DEFAULT = ["algorithm=bo_rep", "task=hypercleaning", "trainer.epochs=1"]
FLOOR = {
    "import torch": "import torch",
    "import torch + first optimizer": (
        "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)"
    ),
}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(-1, args.repeats):  # run -1: untimed, fills the prepared-data cache
            run_dir = Path(tmp) / f"run{r}"
            cmd = [sys.executable, "-m", "bilevel.app.run", *args.overrides,
                   "trainer.progress=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
            total = timed(cmd, env)
            if r < 0:
                continue
            info = json.loads((run_dir / "run.json").read_text())
            floor = {k: timed([sys.executable, "-c", code], env) for k, code in FLOOR.items()}
            parts = {
                "total_s": total,
                "train_s": info["train_seconds"],
                "eval_s": info["eval_seconds"],
                "warmup_s": info["warmup_seconds"],
            }
            parts["rest_s"] = total - parts["train_s"] - parts["eval_s"]
            parts["outside_share"] = parts["rest_s"] / total
            parts.update({f"{k}_s": v for k, v in floor.items()})
            rows.append(parts)
            print(", ".join(f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
    table = pd.DataFrame(rows)
    summary = table.median().rename("median").to_frame().T
    summary.insert(0, "run", " ".join(args.overrides))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary.assign(
            repeats=args.repeats,
            outside_share_min=table.outside_share.min(),
            outside_share_max=table.outside_share.max(),
        ).to_csv(args.out, index=False, float_format="%.4g")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
