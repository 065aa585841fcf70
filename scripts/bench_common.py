"""Shared pieces of the per-iteration benchmarks (bench_straightforward, bench_reference): the
ratio summary of interleaved blocks and the loop over (cell, algorithm) cases with its table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median, min and max of the per-block ratios numerator / denominator."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}  # fmt: skip


def run_cases(
    cells: list[str],
    algorithms: list[str],
    compare: Callable[[str, str], dict],
    what: str,
    out: Path | None,
) -> pd.DataFrame:
    """``compare(algorithm, cell)`` for every case, a progress line each ("<what> = ratio"), the
    rows written to ``out`` (CSV) when given."""
    rows = []
    for cell in cells:
        for algorithm in algorithms:
            row = compare(algorithm, cell)
            rows.append(row)
            extra = row.get("note", "")
            print(
                f"{algorithm} {row['cell']}: {what} = {row['ratio_median']:.2f} "
                f"(min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}){extra}",
                flush=True,
            )
    table = pd.DataFrame(rows).drop(columns="note", errors="ignore")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False, float_format="%.4g")
        print(f"wrote {out}")
    return table
