"""Benchmark (issue #13 (b)): the suite's iteration against a straightforward implementation of
the same math, per algorithm and RNN cell, on SNLI hyper-cleaning (GloVe 50d, hidden 64, batch
128, the pair's settings).

Both sides run the SAME algorithm object (so the same update rule, batches, oracle calls and
counts); only how each oracle is computed differs. The straightforward side is what one writes
without the suite's oracle layer:

* padded batches: every batch at the split's width (no trimming to its longest sentence) and the
  whole batch through the RNN in one call (no length buckets);
* a fresh graph per product: each Hessian-vector or cross product runs its own forward pass and
  ∇ᵧg with ``create_graph`` (a Neumann series rebuilds it Q times; the suite builds it once);
* separate HVP and cross products (the suite takes both from one reverse pass);
* a gradient step and a product on one batch each pay their forward pass;
* PyTorch's default CPU kernels for the double backward (the suite turns the fused RNN kernels
  off inside second-order calls, ``bilevel.oracles.second_order``).

Timing: interleaved blocks in one process, one thread, the order of the two sides alternating
block by block; each block is ``--steps`` iterations from the same initial state and seed on
both sides (initialization untimed). Reported: the median ratio straightforward / suite over
the blocks with its min and max, and the relative difference of the last hypergradient estimate
of the first block (same math: equal up to rounding and the length-bucket summation order).

    OMP_NUM_THREADS=1 python scripts/bench_straightforward.py [--steps 4] [--blocks 6] \
        [--out results/bench_straightforward.csv]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_common import ratio_summary, run_cases
from hydra.utils import instantiate

import bilevel.data.text as text
from bilevel import tree
from bilevel.app.config import compose
from bilevel.oracles import Batch, Oracles, _grad
from bilevel.problem import Problem
from bilevel.tree import Params

ALGORITHMS = ("stocbio", "ma_soba", "bo_rep")
CELLS = ("rnn", "lstm")  # Elman, LSTM


class FreshGraph:
    """The :class:`bilevel.oracles.LowerGraph` interface computed the straightforward way: the
    gradient and every product on a fresh forward pass, HVP and cross product separately."""

    def __init__(self, oracles: Oracles, x: Params, y: Params, batch: Batch, with_x: bool):
        self._oracles, self._x, self._y, self._batch = oracles, x, y, batch
        self.loss = None

    @property
    def grad(self) -> Params:
        return self._oracles.grad_y_g(self._x, self._y, self._batch)

    def _product(self, v: Params, wrt_x: bool) -> Params:
        xl, yl = tree.leaves(self._x, requires_grad=wrt_x), tree.leaves(self._y)
        with torch.enable_grad():
            gy = _grad(self._oracles.task.lower_loss(xl, yl, self._batch), yl, create_graph=True)
            dot = sum((gy[k] * v[k].detach()).sum() for k in gy)
            return _grad(dot, xl if wrt_x else yl)

    def hvp(self, v: Params) -> Params:
        self._oracles.counter.add("hvp", self._batch.size)
        return self._product(v, wrt_x=False)

    def cross(self, v: Params) -> Params:
        self._oracles.counter.add("cross", self._batch.size)
        return self._product(v, wrt_x=True)

    def hvp_cross(self, v: Params) -> tuple[Params, Params]:
        return self.hvp(v), self.cross(v)


class StraightforwardOracles(Oracles):
    """Oracles whose second-order calls are :class:`FreshGraph` products."""

    def lower_graph(self, x: Params, y: Params, batch: Batch, with_x: bool = True) -> FreshGraph:
        return FreshGraph(self, x, y, batch, with_x)


def build(algorithm: str, cell: str, straightforward: bool):
    overrides = [f"algorithm={algorithm}", "task=hypercleaning", "dataset=snli",
                 "model=nli_rnn", f"model.cell={cell}"]  # fmt: skip
    if straightforward:
        overrides.append("model.length_buckets=1")
    cfg = compose(overrides)
    return instantiate(cfg.task), instantiate(cfg.algorithm)


def run_block(task, algo, straightforward: bool, seed: int, steps: int) -> tuple[float, Params]:
    gather = text.PaddedSplit.gather
    if straightforward:  # the split's full width, as a padded data loader gives it
        text.PaddedSplit.gather = lambda self, idx, trim=True: gather(self, idx, trim=False)
    try:
        x, y = task.init_params(torch.Generator().manual_seed(1))
        problem = Problem(task, torch.Generator().manual_seed(seed))
        if straightforward:
            problem.oracles = StraightforwardOracles(task, problem.oracles.counter)
        state = algo.init(problem, x, y)
        start = time.perf_counter()
        for _ in range(steps):
            state = algo.step(problem, state)
        return time.perf_counter() - start, state.hypergrad.value
    finally:
        text.PaddedSplit.gather = gather


def compare(algorithm: str, cell: str, steps: int, blocks: int) -> dict:
    sides = {False: build(algorithm, cell, False), True: build(algorithm, cell, True)}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    h_diff = float("nan")
    for block in range(blocks + 1):  # block 0 warms both sides up and checks the math
        order = (False, True) if block % 2 else (True, False)
        out = {}
        for side in order:
            elapsed, out[side] = run_block(*sides[side], side, block, steps)
            if block:
                seconds[side].append(elapsed)
        if block == 0:  # the last hypergradient estimate: relative difference
            h, ref = tree.flatten(out[True]), tree.flatten(out[False])
            h_diff = float((h - ref).abs().max() / ref.abs().max())
    return {
        "algorithm": algorithm,
        "cell": "elman" if cell == "rnn" else cell,
        **ratio_summary(seconds[True], seconds[False]),
        "suite_s_per_step": statistics.median(seconds[False]) / steps,
        "hypergrad_rel_diff": h_diff,
        "blocks": blocks,
        "steps": steps,
        "note": f"; hypergradients differ by {h_diff:.1e} (relative)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS))
    parser.add_argument("--cells", nargs="*", default=list(CELLS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_cases(
        args.cells,
        args.algorithms,
        lambda algorithm, cell: compare(algorithm, cell, args.steps, args.blocks),
        "straightforward / suite",
        args.out,
    )


if __name__ == "__main__":
    main()
