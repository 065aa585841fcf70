"""Benchmark: a hyper-cleaning step costs the same for any number of training samples N.

The per-sample weights λ ∈ R^N are gathered by batch index, so only the batch's entries enter a
step. This script builds the SNLI hyper-cleaning task once, tiles its training split to each N
(the cost of a step does not depend on which sentences they are), and times steps of an
algorithm for every N in one run. It reports time per step relative to the smallest N.

    python scripts/bench_hypercleaning.py [--sizes 10000 100000] [--algorithm soba] [--steps 30]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from hydra.utils import instantiate

from bilevel.app.config import compose
from bilevel.problem import Problem


def tile(task, n: int) -> None:
    """Make the task's training split n samples long by repeating it (indices renumbered)."""
    reps = -(-n // task.n_train)
    tensors = {k: v.repeat(reps, *([1] * (v.dim() - 1)))[:n] for k, v in task.train.tensors.items()}
    tensors["index"] = torch.arange(n)
    task.train = replace(task.train, tensors=tensors)
    task.clean_labels = task.clean_labels.repeat(reps)[:n]
    task.is_corrupted = task.is_corrupted.repeat(reps)[:n]
    task.n_train = n


def time_steps(cfg, n: int, steps: int) -> float:
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    tile(task, n)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0))
    state = algo.init(problem, x, y)
    for _ in range(3):  # warm-up
        state = algo.step(problem, state)
    start = time.perf_counter()
    for _ in range(steps):
        state = algo.step(problem, state)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--algorithm", default="soba")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="alternate sizes this many times")
    args = parser.parse_args()
    cfg = compose(
        [
            "task=hypercleaning",
            f"algorithm={args.algorithm}",
            "scale.max_train=2000",
            "trainer.progress=false",
        ]
    )
    times: dict[int, list[float]] = {n: [] for n in args.sizes}
    for _ in range(args.repeats):  # interleaved, so drift of the machine hits every size
        for n in args.sizes:
            times[n].append(time_steps(cfg, n, args.steps))
    base = min(times[args.sizes[0]])
    print(f"{'N':>10} {'step cost / N=' + str(args.sizes[0]):>22}")
    for n in args.sizes:
        print(f"{n:>10} {min(times[n]) / base:>22.3f}")


if __name__ == "__main__":
    main()
