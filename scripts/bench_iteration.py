"""Benchmark (issue #13): does an iteration cost what its oracle calls cost? Per algorithm on
SNLI hyper-cleaning (the suite's NLI model, Elman or LSTM, hidden 64, batch 128, each pair's
settings), the time of ``--steps`` iterations against the sum over oracle kinds of (calls made, as
the run's OracleCounter counts them) × (that oracle's cost measured alone on real batches: ∇f,
∇ᵧg, an HVP and a cross product, each on its own graph). A ratio above 1 is time spent outside
the oracles (the algorithm's own vector work, sampling, state copies); below 1, oracle work
shared between calls (``hvp_cross`` from one pass, a Neumann series or a gradient step on one
graph) that the sum counts twice.

Every block of iterations is paired with its own round of oracle timings (``--oracle-calls``
calls of each kind, median), taken right before or right after it (alternating by block), and
the block's ratio uses that round's costs: a machine that speeds up or slows down during the
run (a 2-core VM drifts by tens of percent over minutes) moves both sides of a ratio alike.

    OMP_NUM_THREADS=1 python scripts/bench_iteration.py [--cells rnn lstm] [--steps 6] \
        [--repeats 3] [--oracle-calls 3] [--out results/bench_iteration.csv]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from bench_oracles import time_interleaved
from hydra.utils import instantiate

from bilevel.app.config import compose
from bilevel.oracles import ORACLE_KINDS
from bilevel.problem import Problem

ALGORITHMS = ("stocbio", "ttsa", "soba", "ma_soba", "saba", "bo_rep", "slip", "adambo", "accbo",
              "vr_adambo", "sustain", "vrbo", "f2sa", "unibio")  # fmt: skip


def build(algorithm: str, cell: str):
    cfg = compose([f"algorithm={algorithm}", "task=hypercleaning", "dataset=snli",
                   "model=nli_rnn", f"model.cell={cell}"])  # fmt: skip
    task, trainer = instantiate(cfg.task), cfg.trainer
    horizon = trainer.max_steps or math.ceil(trainer.epochs * task.steps_per_epoch)  # as run.py
    return task, instantiate(cfg.algorithm), int(horizon)


def oracle_timer(task, draws: int = 4) -> Callable[[int], dict[str, float]]:
    """A function that times ``calls`` calls of each oracle kind alone (interleaved, median) on
    real upper / lower batches of ``task`` and returns seconds per call."""
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0))
    oracles = problem.oracles
    lower = [problem.lower_batch() for _ in range(draws)]
    upper = [problem.upper_batch() for _ in range(draws)]
    v = {k: torch.randn_like(t) for k, t in y.items()}
    turn = {"i": 0}

    def nxt(batches):
        turn["i"] += 1
        return batches[turn["i"] % draws]

    fns = {
        "grad_f": lambda: oracles.grad_f(x, y, nxt(upper)),
        "grad_g": lambda: oracles.grad_y_g(x, y, nxt(lower)),
        "hvp": lambda: oracles.hvp(x, y, v, nxt(lower)),
        "cross": lambda: oracles.cross(x, y, v, nxt(lower)),
    }
    return lambda calls: time_interleaved(fns, calls)


def iteration(
    algorithm: str,
    cell: str,
    oracle_costs: Callable[[int], dict[str, float]],
    steps: int,
    repeats: int,
    oracle_calls: int,
):
    task, algo, horizon = build(algorithm, cell)  # a run's length (TTSA's horizon steps)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    seconds, predicted, costs, calls = [], [], [], {}
    for block in range(repeats + 1):  # block 0: warm-up
        problem = Problem(task, torch.Generator().manual_seed(block), horizon=horizon)
        state = algo.init(problem, x, y)
        before = dict(problem.oracles.counter.calls)
        cost = oracle_costs(oracle_calls) if block % 2 else None  # before or after, alternating
        start = time.perf_counter()
        for _ in range(steps):
            state = algo.step(problem, state)
        elapsed = time.perf_counter() - start
        cost = cost or oracle_costs(oracle_calls)
        after = problem.oracles.counter.calls
        calls = {k: (after[k] - before.get(k, 0)) / steps for k in ORACLE_KINDS}
        if block:
            seconds.append(elapsed / steps)
            predicted.append(sum(calls[k] * cost[k] for k in ORACLE_KINDS))
            costs.append(cost)
    ratios = [s / p for s, p in zip(seconds, predicted, strict=True)]
    return {
        "algorithm": algorithm,
        "s_per_iter": statistics.median(seconds),
        "oracle_sum_s": statistics.median(predicted),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        **{f"calls_{k}": calls[k] for k in ORACLE_KINDS},
        **{f"cost_{k}_s": statistics.median(c[k] for c in costs) for k in ORACLE_KINDS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="*", default=["rnn", "lstm"], choices=["rnn", "lstm"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--oracle-calls", type=int, default=3)
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for cell in args.cells:
        name = "elman" if cell == "rnn" else cell
        timer = oracle_timer(build("soba", cell)[0])
        for algorithm in args.algorithms:
            row = iteration(algorithm, cell, timer, args.steps, args.repeats, args.oracle_calls)
            rows.append({"cell": name, **row})
            spread = f"(min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f})"
            print(
                f"{algorithm} {name}: iteration / sum of its oracle costs = "
                f"{row['ratio_median']:.2f} {spread}",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False, float_format="%.4g")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
