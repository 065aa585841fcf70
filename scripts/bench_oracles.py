"""Benchmark of the oracle layer: cost ratios measured in one run (not absolute times).

For an LSTM sentence classifier and a small transformer encoder (y = model parameters,
x = per-sample weights of the lower loss, as in hyper-cleaning) it times, relative to one
gradient ∇ᵧg:
  * one HVP, one cross product, and ``hvp_cross`` (both from one reverse pass) against an HVP
    plus a cross product computed separately (each with its own forward pass);
  * an HVP written out directly (one graph, used once) with the fused (mkldnn) CPU kernels on and
    off, against the oracle layer's (kernels off for the second-order call only);
  * a Q-term Neumann series on one ``LowerGraph`` (one forward) against Q separate HVP calls
    (one forward each), the straightforward implementation.

And on the real task (SNLI hyper-cleaning, the suite's NLI model with an Elman RNN and an LSTM,
hidden 64, GloVe 50d, real batches of 128 pairs, length buckets as configured): ∇ᵧg, an HVP, a
cross product and ``hvp_cross`` through the oracle layer, and the HVP with the generic
recurrence instead of the cell-by-cell one (``bilevel.models.recurrence``; issue #13).

Timings are interleaved (each round calls every variant once) and summarized by their median.

    python scripts/bench_oracles.py [--repeats 20] [--batch 128] [--length 24]
        [--out results/bench_oracles.csv]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from bilevel import tree
from bilevel.oracles import Batch, Oracles, second_order


class WeightedTask:
    """g = Σ_i σ(x_i)·CE_i / n over a batch; f = plain CE (a hyper-cleaning shape)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
        self.model, self.inputs, self.labels = model, inputs, labels

    def _ce(self, y, reduction):
        logits = functional_call(self.model, y, (self.inputs,))
        return nn.functional.cross_entropy(logits, self.labels, reduction=reduction)

    def lower_loss(self, x, y, batch):
        return (torch.sigmoid(x["w"]) * self._ce(y, "none")).mean()

    def upper_loss(self, x, y, batch):
        return self._ce(y, "mean")


class LSTMClassifier(nn.Module):
    def __init__(self, d: int, h: int, layers: int = 2):
        super().__init__()
        self.rnn = nn.LSTM(d, h, num_layers=layers, batch_first=True)
        self.head = nn.Linear(h, 2)

    def forward(self, s):
        out, _ = self.rnn(s)
        return self.head(out.max(dim=1).values)


class TransformerClassifier(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 2)

    def forward(self, s):
        return self.head(self.enc(s).mean(dim=1))


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds; each round calls every function
    once, in turn, so a change of machine load hits all of them alike (a ratio measured this
    way does not flip between reruns as block-after-block timing did). The order rotates by one
    every round: the call right after another one runs measurably slower (the allocator's state:
    an HVP right after ∇ᵧg measured 3.6-3.9 gradients, the same HVP later in the round 3.0-3.3),
    and a fixed order had charged that to one variant. One warm-up round."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for round_ in range(repeats + 1):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            fns[key]()
            if round_:
                samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench(name: str, model: nn.Module, n: int, seq: int, d: int, q: int, repeats: int):
    gen = torch.Generator().manual_seed(0)
    task = WeightedTask(model, torch.randn(n, seq, d, generator=gen), torch.randint(0, 2, (n,)))
    oracles = Oracles(task)
    y = tree.detach(dict(model.named_parameters()))
    x = {"w": torch.zeros(n)}
    v = {k: torch.randn_like(t) for k, t in y.items()}
    batch = Batch(None, n)

    def neumann_shared():
        g = oracles.lower_graph(x, y, batch, with_x=False)
        u = v
        for _ in range(q):
            u = tree.add(u, g.hvp(u), alpha=-0.01)

    def neumann_naive():
        u = v
        for _ in range(q):
            u = tree.add(u, oracles.hvp(x, y, u, batch), alpha=-0.01)

    def grad():  # as the lower-level steps call it: fused kernels allowed
        oracles.grad_y_g(x, y, batch)

    def hvp_with(keep_fused_cpu: bool) -> Callable[[], object]:
        def run():  # one HVP with the fused (mkldnn) CPU kernels on or off
            kernels = sdpa_kernel(SDPBackend.MATH) if keep_fused_cpu else second_order()
            with kernels, torch.enable_grad():
                yl = tree.leaves(y)
                g = torch.autograd.grad(
                    task.lower_loss(x, yl, batch), list(yl.values()), create_graph=True
                )
                torch.autograd.grad(g, list(yl.values()), [v[k] for k in yl])

        return run

    fns: dict[str, Callable[[], object]] = {
        "grad_y_g": grad,
        "hvp": lambda: oracles.hvp(x, y, v, batch),
        "hvp, fused CPU kernels on": hvp_with(True),
        "hvp, fused CPU kernels off": hvp_with(False),
        "cross": lambda: oracles.cross(x, y, v, batch),
        "hvp_cross (one pass)": lambda: oracles.hvp_cross(x, y, v, batch),
        "hvp + cross (separate)": lambda: (
            oracles.hvp(x, y, v, batch),
            oracles.cross(x, y, v, batch),
        ),
        f"neumann Q={q}, one graph": neumann_shared,
        f"neumann Q={q}, naive": neumann_naive,
    }
    times = time_interleaved(fns, repeats)
    base = times["grad_y_g"]
    rows = [{"model": name, "what": k, "cost_in_gradients": t / base} for k, t in times.items()]
    rows.append(
        {
            "model": name,
            "what": "hvp_cross speed-up over separate",
            "cost_in_gradients": times["hvp + cross (separate)"] / times["hvp_cross (one pass)"],
        }
    )
    rows.append(
        {
            "model": name,
            "what": "neumann speed-up, one graph over naive",
            "cost_in_gradients": times[f"neumann Q={q}, naive"]
            / times[f"neumann Q={q}, one graph"],
        }
    )
    return rows


def bench_task(cell: str, repeats: int, draws: int = 4):
    """Oracle costs on SNLI hyper-cleaning's lower batches (``draws`` real batches in turn)."""
    from hydra.utils import instantiate

    import bilevel.models.rnn as rnn_module
    from bilevel.app.config import compose
    from bilevel.problem import Problem

    cfg = compose(["task=hypercleaning", "dataset=snli", "model=nli_rnn", f"model.cell={cell}"])
    task = instantiate(cfg.task)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0))
    oracles = problem.oracles
    batches = [problem.lower_batch() for _ in range(draws)]
    v = {k: torch.randn_like(t) for k, t in y.items()}
    turn = {"i": 0}

    def batch() -> Batch:
        turn["i"] += 1
        return batches[turn["i"] % draws]

    def generic_hvp():
        taken = rnn_module.in_double_backward
        rnn_module.in_double_backward = lambda: False
        try:
            oracles.hvp(x, y, v, batch())
        finally:
            rnn_module.in_double_backward = taken

    fns: dict[str, Callable[[], object]] = {
        "grad_y_g": lambda: oracles.grad_y_g(x, y, batch()),
        "hvp": lambda: oracles.hvp(x, y, v, batch()),
        "hvp, generic recurrence": generic_hvp,
        "cross": lambda: oracles.cross(x, y, v, batch()),
        "hvp_cross (one pass)": lambda: oracles.hvp_cross(x, y, v, batch()),
    }
    times = time_interleaved(fns, repeats)
    name = f"snli-nli_rnn-{'elman' if cell == 'rnn' else cell}"
    return [
        {"model": name, "what": k, "cost_in_gradients": t / times["grad_y_g"]}
        for k, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--q", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    # the hyper-cleaning shapes: batch 128, GloVe-50d inputs, 24 steps (a length-trimmed SNLI
    # batch's longest sentence is ~20-30 tokens)
    n, seq = args.batch, args.length
    rows = bench("lstm-1x64", LSTMClassifier(50, 64, 1), n, seq, 50, args.q, args.repeats)
    rows += bench(
        "transformer-2x64", TransformerClassifier(64, 2), n, seq, 64, args.q, args.repeats
    )
    for cell in ("rnn", "lstm"):
        rows += bench_task(cell, args.repeats)
    import pandas as pd

    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False, float_format="%.3f")


if __name__ == "__main__":
    main()
