"""Run every ``bilevel-run`` command of the README's Quickstart block and report what it learned:
the first and last value of the run's key metric (true ‖∇Φ‖, cleaning AUC, test accuracy or
AUC) and the wall time of the whole command. Writes ``results/quickstart.csv``.

    python scripts/check_quickstart.py
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["true_hypergrad_norm", "cleaning_auc", "test_auc", "test_acc", "test_loss"]


def quickstart_commands(readme: Path = ROOT / "README.md") -> list[str]:
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", readme.read_text(), re.S)
    if block is None:
        raise SystemExit("README.md: no ```bash block under '## Quickstart'")
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln.startswith("bilevel-run") and "--cfg" not in ln]


def main() -> int:
    rows = []
    for command in quickstart_commands():
        with tempfile.TemporaryDirectory() as tmp:
            argv = [*shlex.split(command), f"hydra.run.dir={tmp}", "trainer.progress=false"]
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - start
            metrics = Path(tmp) / "metrics.csv"
            row = {"command": command, "exit": done.returncode, "wall_s": round(seconds, 1)}
            if metrics.exists():
                df = pd.read_csv(metrics)
                for name in METRICS:
                    if name in df.columns:
                        row[f"{name}_first"] = df[name].iloc[0]
                        row[f"{name}_last"] = df[name].iloc[-1]
                row["steps"] = int(df.step.iloc[-1])
            else:
                row["error"] = (done.stderr.strip().splitlines() or [""])[-1]
        print({k: v for k, v in row.items() if v == v}, flush=True)
        rows.append(row)
    out = ROOT / "results" / "quickstart.csv"
    pd.DataFrame(rows).to_csv(out, index=False, float_format="%.4g")
    print(f"wrote {out}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
