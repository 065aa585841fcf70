"""Benchmark (issue #13): the released AccBO code against the suite, per iteration, side by side.

The released code (MingruiLiu-ML-Lab/Accelerated-Bilevel-Optimization-Unbounded-Smoothness,
``data_cleaning/``) is NOT part of this project: check it out in a temporary folder and pass
that folder; this script imports its ``methods`` package from there and runs it as released,
with three shims for a CPU-only machine without scikit-learn: ``Tensor.cuda`` is the identity
when CUDA is absent (its ``predict`` calls ``.cuda()``), ``sklearn.metrics.accuracy_score`` is
a two-line stand-in when scikit-learn is missing (its per-iteration accuracy), and its encoder's
``rnn`` default is switched to build an LSTM for the LSTM rows (its code has the switch but no
flag for it). Its per-iteration ``print`` goes to /dev/null.

Same task on both sides: SNLI hyper-cleaning, 4000 training pairs, the suite's vocabulary and
GloVe 50d vectors, a one-layer RNN (Elman or LSTM) of hidden 64 with max-pooling, batch 128 (the
released code pads each batch to its longest sentence and packs it; its batches are drawn from
the suite's training split), each method's settings from the released ``main.py`` (StocBiO: 3
inner steps, Q = 3; MA-SOBA; BO-REP: 3 steps every 2 iterations) and the suite's pair settings
(the same step counts and Neumann length). The models differ only in the head (the released NLI
model maps the 256 features to 64 outputs with one linear layer, quirk Q7; the suite's has a
64-unit hidden layer and 3 outputs). The released loop is timed as it runs, including its
per-iteration accuracy bookkeeping, but on batches collated in advance (its DataLoader's
collation is not charged to it).

Timing: interleaved blocks in one process, one thread, alternating which side goes first; each
block is ``--iters`` iterations. Reported: median ratio released / suite time per iteration
with min and max over the blocks.

    OMP_NUM_THREADS=1 python scripts/bench_reference.py --reference /tmp/acc/data_cleaning \
        [--iters 4] [--blocks 6] [--out results/bench_reference.csv]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from bench_common import ratio_summary, run_cases
from hydra.utils import instantiate

from bilevel.app.config import compose
from bilevel.problem import Problem

SETTINGS = {  # the released main.py's per-method values
    "stocbio": dict(outer_update_lr=1e-2, inner_update_lr=2e-3, inner_update_step=3),
    "ma_soba": dict(outer_update_lr=1e-2, inner_update_lr=1e-2, beta=0.9, nu=1e-2),
    "bo_rep": dict(
        outer_update_lr=2e-2, inner_update_lr=1e-2, beta=0.9, nu=1e-2, inner_update_step=3,
        update_interval=2,
    ),
}  # fmt: skip
MODULES = {"stocbio": "stocbio", "ma_soba": "ma_soba", "bo_rep": "bo_rep"}


def shim_reference(reference: Path) -> None:
    sys.path.insert(0, str(reference))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its predict() calls .cuda()
    try:
        import sklearn.metrics  # noqa: F401
    except ImportError:
        from importlib.machinery import ModuleSpec

        for name in ("sklearn", "sklearn.metrics"):  # specs: torch._dynamo probes find_spec
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__spec__ = ModuleSpec(name, None)
        sys.modules["sklearn.metrics"].accuracy_score = lambda a, b: float(
            np.mean(np.asarray(a) == np.asarray(b))
        )


def reference_batches(task, n: int, batch: int, seed: int) -> list:
    """Batches in the released collate format: ((s1 [T1, B, 50], s2 [T2, B, 50]), (len1, len2)),
    labels, indices; each sentence padded to its batch's longest."""
    gen = torch.Generator().manual_seed(seed)
    table, split = task.data.embeddings, task.train
    out = []
    for _ in range(n):
        idx = torch.randint(len(split), (batch,), generator=gen)
        sides, lens = [], []
        for field in ("premise", "hypothesis"):
            length = split.tensors[f"{field}_len"][idx].clamp(min=1)
            ids = split.tensors[f"{field}_ids"][idx, : int(length.max())]
            sides.append(table[ids].transpose(0, 1).contiguous().float())
            lens.append(length.numpy())
        out.append(((tuple(sides), tuple(lens)), split.tensors["label"][idx], idx.tolist()))
    return out


def reference_learner(algorithm: str, cell: str, n_train: int):
    import importlib

    net = importlib.import_module("methods.RNN_net")
    method = importlib.import_module(f"methods.{MODULES[algorithm]}")
    defaults = list(net.RecurrentEncoder.__init__.__defaults__)
    defaults[-1] = cell == "rnn"  # rnn=True: nn.RNN (released); False: nn.LSTM
    net.RecurrentEncoder.__init__.__defaults__ = tuple(defaults)
    args = types.SimpleNamespace(
        data="snli", word_embed_dim=50, encoder_dim=64, n_enc_layers=1, fc_dim=64, n_classes=3,
        pool_type="max", linear_fc=False, neumann_lr=1e-2, hessian_q=3, inner_update_step=1,
        beta=0.9, nu=1e-2, y_warm_start=3, update_interval=1, batch_size=128,
    )  # fmt: skip
    for key, value in SETTINGS[algorithm].items():
        setattr(args, key, value)
    return method.Learner(args, n_train)


def compare(algorithm: str, cell: str, iters: int, blocks: int) -> dict:
    cfg = compose([f"algorithm={algorithm}", "task=hypercleaning", "dataset=snli",
                   "model=nli_rnn", f"model.cell={cell}"])  # fmt: skip
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    learner = reference_learner(algorithm, cell, task.n_train)
    val = reference_batches(task, 1, 128, seed=10_000)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    seconds: dict[str, list[float]] = {"released": [], "suite": []}
    for block in range(blocks + 1):  # block 0: warm-up
        order = ("released", "suite") if block % 2 else ("suite", "released")
        for side in order:
            if side == "released":
                train = reference_batches(task, iters, 128, seed=block)
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    learner(train, val)
            else:
                problem = Problem(task, torch.Generator().manual_seed(block))
                state = algo.init(problem, x, y)
                start = time.perf_counter()
                for _ in range(iters):
                    state = algo.step(problem, state)
            if block:
                seconds[side].append((time.perf_counter() - start) / iters)
    return {
        "algorithm": algorithm,
        "cell": "elman" if cell == "rnn" else cell,
        **ratio_summary(seconds["released"], seconds["suite"]),
        "released_s_per_iter": statistics.median(seconds["released"]),
        "suite_s_per_iter": statistics.median(seconds["suite"]),
        "blocks": blocks,
        "iters": iters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="the released data_cleaning/ folder"
    )
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--algorithms", nargs="*", default=list(SETTINGS))
    parser.add_argument("--cells", nargs="*", default=["rnn", "lstm"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.reference / "methods" / "RNN_net.py").exists():
        parser.error(f"--reference {args.reference}: no methods/RNN_net.py there")
    shim_reference(args.reference)
    torch.set_num_threads(1)
    run_cases(
        args.cells,
        args.algorithms,
        lambda algorithm, cell: compare(algorithm, cell, args.iters, args.blocks),
        "released / suite",
        args.out,
    )


if __name__ == "__main__":
    main()
