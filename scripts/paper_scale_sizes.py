"""Sizes of the real tasks at ``scale=paper`` and ESTIMATED GPU memory / hours per run.

    OMP_NUM_THREADS=1 python scripts/paper_scale_sizes.py  # prints the table, writes the CSV

Writes results/paper_scale_sizes.csv. No data is read, nothing runs on a GPU: each (task,
dataset, model) config is composed with ``scale=paper`` and its model is built on the ``meta``
device (no memory) from the composed ``model`` group, so params_x / params_y are exact for the
suite's paper-scale model (the transformer's token table assumes BERT's 30,522 words, the AdamBO
reference's vocabulary; the frozen GloVe table is a buffer, in neither x nor y). Training-set
sizes and epochs are the papers' (spec sections in SIZES) where the spec has them, else the data
on disk (said so).

Everything else is an ESTIMATE, order of magnitude only (docs/cluster.md):
  memory = 6 x fp32 (x + y)   [x, y, their gradients, the estimator's z, momentum / Adam state]
         + activations of one batch in a second-order pass: tokens x layers x width x 4 B x 3
           (width: LSTM 8h = 4 gates + c + h + tanh c + input; transformer 8h + 2 ffn +
           2 heads T; x 3 for the double-backward graph) + 1.5 GB CUDA context / allocator;
  hours  = 8 (lower gradient + upper gradient + HVP, forward and backward) x 2 x params
           (embedding tables excluded) x tokens of one batch x steps, at a sustained
           100 TFLOP/s on an H200; evaluation excluded.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bilevel.app.config import compose  # noqa: E402
from bilevel.models import build_model  # noqa: E402

STATE_COPIES, DOUBLE_BACKWARD, CONTEXT_GB, TFLOPS, BERT_VOCAB = 6, 3, 1.5, 100e12, 30522
A, B, D = "spec ACCBO-UNIBIO", "spec BOREP-SLIP-ADAMBO", "shared/data/README.md"
# (overrides, rows of the training split or None (episodes), epochs, where the sizes come from)
SIZES = [
    (["task=hypercleaning"], 550_152, 20, f"{A} §2.2: SNLI train 550,152 pairs, 20 epochs"),
    (
        ["task=hypercleaning", "dataset=sentiment140", "model=rnn"],
        200_000,
        25,
        f"{D} §6: 200k-tweet sample (on disk 57,214); {B} §4.1: 25 epochs (batch 512 there)",
    ),
    (["task=hyperrep"], None, 20, f"{B} §4.4: 500 tasks / 20 per batch, 20 epochs"),
    (
        ["task=hyperrep", "model=transformer"],
        None,
        20,
        f"{B} §4.4 sizes; fails as of writing (SNLI's two fields into a one-field transformer)",
    ),
    (["task=hyperrep_amazon"], None, 1, f"{B} §4.2: 400 tasks / 20 per batch, 1 epoch"),
    (["task=hyperrep_trec"], None, 20, f"{B} §4.5: 500 tasks / 20 per batch, 20 epochs"),
    (["task=auc"], 2_500, 25, f"{A} §2.1: R-ACC train 2,500 (79 steps), 25 epochs"),
    (["task=auc", "model=transformer"], 2_500, 25, f"{A} §2.1 sizes (model: AdamBO's, §4.6 INF)"),
    (
        ["task=hpo"],
        21_483,
        1,
        f"{D} §5a: 32,101 reviews - 10,618 in the 8 HO test domains (on disk); {B} §4.3: 1 epoch",
    ),
]


def build(model_cfg: dict, n_classes: int) -> torch.nn.Module:
    """The composed model, on the meta device (shapes only)."""
    cfg = dict(model_cfg)
    kind = cfg.pop("kind")
    glove = cfg.pop("glove", False)
    if cfg.pop("cls_token", None) is not None:
        cfg["cls_id"] = 2
    if kind != "transformer":
        cfg["freeze_embeddings"] = bool(glove)  # GloVe: a frozen buffer, as in make_model
    with torch.device("meta"):
        return build_model(kind, n_classes=n_classes, vocab_size=BERT_VOCAB, **cfg)


def row(overrides: list[str], n_rows: int | None, epochs: int, source: str) -> dict:
    cfg = compose([*overrides, "scale=paper"])
    task = OmegaConf.to_container(cfg.task, resolve=True)
    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = overrides[0].split("=", 1)[1]
    model = build(mcfg, int(cfg.dataset.n_classes))
    params = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    total = sum(params.values())
    head = sum(v for n, v in params.items() if n.startswith("head."))
    compute = sum(v for n, v in params.items() if "embedding" not in n)
    if "n_train_tasks" in task:  # hyper-representation: x = encoder, y = head; episode batches
        px, py, n_train = total - head, head, None
        batch = task["tasks_per_batch"] * task["n_way"] * task["k_shot"]
        steps = math.ceil(task["n_train_tasks"] / task["tasks_per_batch"])
    else:
        n_train = n_rows - task.get("val_size", 0)  # cleaning / HPO hold out val_size rows
        batch = task["batch_size"]
        steps = math.ceil(n_train / batch)
        px, py = {"hypercleaning": (n_train, total), "auc": (total + 2, 1), "hpo": (1, total)}[name]
    seq = task["max_len"] + (1 if mcfg["kind"] == "transformer" else 0)  # + [CLS]
    seqs = len(cfg.dataset.fields)  # SNLI: premise and hypothesis, each encoded
    tokens = batch * seqs * seq
    h, layers = mcfg["hidden"], mcfg["layers"]
    width = 8 * h + (2 * mcfg["ffn"] + 2 * mcfg["heads"] * seq if "ffn" in mcfg else 0)
    act = tokens * layers * width * 4 * DOUBLE_BACKWARD
    mem = STATE_COPIES * 4 * (px + py) + act
    hours = 8 * 2 * compute * tokens * steps * epochs / TFLOPS / 3600
    return {
        "task": name,
        "dataset": cfg.dataset.name,
        "model": mcfg["kind"],
        "n_train": n_train if n_train is not None else "",
        "params_x": px,
        "params_y": py,
        "batch": batch,
        "seq_len": seq,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "est_gpu_mem_gb": round(mem / 1e9 + CONTEXT_GB, 1),
        "est_hours_per_run_h200": float(f"{hours:.2g}"),
        "how": f"estimated (memory, hours); params exact; sizes: {source}",
    }


def main() -> None:
    rows = [row(*spec) for spec in SIZES]
    out = ROOT / "results" / "paper_scale_sizes.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = [k for k in rows[0] if k != "how"]
    print(",".join(cols))
    for r in rows:
        print(",".join(str(r[k]) for k in cols))
    print(f"wrote {out.relative_to(ROOT)} (memory and hours ESTIMATED, see the docstring)")


if __name__ == "__main__":
    main()
