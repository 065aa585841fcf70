"""Benchmark: length-aware text batches (issue #13). A step on a batch cut to its longest
sentence (the default) against the same step on the batch padded to the split's width, in
interleaved blocks in one process (1 thread), the same draws on both sides; reports the time
ratio padded / trimmed per (algorithm, dataset, model).

    python scripts/bench_length_aware.py [--steps 5] [--blocks 6]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra.utils import instantiate

import bilevel.data.text as text
from bilevel.app.config import compose
from bilevel.problem import Problem

CASES = [("soba", "snli", "nli_rnn"), ("stocbio", "snli", "nli_rnn"),
         ("soba", "snli", "transformer"), ("soba", "sentiment140", "rnn")]  # fmt: skip


def ratio(algorithm: str, dataset: str, model: str, steps: int, blocks: int) -> float:
    cfg = compose([f"algorithm={algorithm}", "task=hypercleaning", f"dataset={dataset}",
                   f"model={model}", "task.n_train=4000"])  # fmt: skip
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    gather = text.PaddedSplit.gather
    seconds = {True: 0.0, False: 0.0}
    try:
        for block in range(blocks + 1):  # block 0: warm-up, not counted
            for trim in (True, False):
                text.PaddedSplit.gather = lambda self, idx, trim_=True, t=trim: gather(
                    self, idx, trim=t and trim_
                )
                problem = Problem(task, torch.Generator().manual_seed(block))
                state = algo.init(problem, x, y)
                start = time.perf_counter()
                for _ in range(steps):
                    state = algo.step(problem, state)
                if block:
                    seconds[trim] += time.perf_counter() - start
    finally:
        text.PaddedSplit.gather = gather
    return seconds[False] / seconds[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for case in CASES:
        r = ratio(*case, args.steps, args.blocks)
        print(f"{' '.join(case)}: padded / trimmed time per step = {r:.2f}", flush=True)


if __name__ == "__main__":
    main()
