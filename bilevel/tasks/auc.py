"""Deep AUC maximisation on imbalanced Sentiment140 (AccBO/AdamBO experiments; spec ACCBO-UNIBIO
§2.1, BOREP-SLIP-ADAMBO §4.6): the AUC-margin (AUC-M) square loss of Yuan et al. (2021, LibAUC)
written as a bilevel problem.

Score h = σ(logit₁) of the binary classifier, used for the loss AND the metric (Q26: the
reference scores the metric with softmax[:, 1]). p = positive fraction of the WHOLE imbalanced
training split (Q23/Q40: the reference fixes p from the first batch of 32), margin m. With
batch means over the whole batch and class indicators 1⁺ = 1{y=1}, 1⁻ = 1{y=0}:

    S(w, a, b; B) = (1−p)·E[(h−a)²·1⁺] + p·E[(h−b)²·1⁻]
    C(w; B)       = p(1−p)·m + E[p·h·1⁻ − (1−p)·h·1⁺]
    F(w, a, b, α; B) = S + 2(1+α)·C − p(1−p)·α²

    x = {model parameters w, "a", "b"}  (a, b scalars, init 0);  y = {"alpha": α} (init 0)
    f(x, α; V) = F(x, α; V)                                       validation batch V
    g(x, α; B) = −(α-part of F) = p(1−p)·α² − 2α·C(w; B)          training batch B

g differs from the reference's −F only by −S − 2C, which does not depend on α: the same
∇_α g, ∇²_αα g = 2p(1−p) (g is 2p(1−p)-strongly convex), ∇²_xα g = −2∇_w C (zero in a, b),
and the same minimiser. Setting ∇_α g = 2p(1−p)α − 2C = 0:

    α*(x) = C(w) / (p(1−p)) = m + E[h | y=0] − E[h | y=1]

(the second form when the set's positive fraction is exactly p, as on the training split).
:meth:`DeepAUC.y_star` evaluates it on the whole training split, so the trainer logs
``lower_error`` = |α − α*(x)| (AdamBO App. H). φ and the true hypergradient have no closed form
for a network: ``phi`` / ``hypergrad_true`` are not defined.

Data: a seeded pool of ``n_train`` rows of the Sentiment140 training file is split in two
halves (train / val, as the reference's 50/50 split) and each half is made imbalanced with
:func:`bilevel.data.imbalance` (positive fraction exactly ``imratio``; the reference imbalances
first and then splits, so its halves are only ≈ imratio). Test: the Sentiment140 test file,
not rebalanced. Metrics: global rank-based ROC-AUC over whole evaluation sets (Q24: the
reference averages per-batch AUCs): at most ``eval_size`` rows per split, drawn once with the
instance seed and stratified by label (each set keeps its split's positive fraction).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bilevel.data import imbalance, positive_ratio
from bilevel.oracles import Batch
from bilevel.tasks.hypercleaning import cleaning_auc
from bilevel.tasks.text import TextTask
from bilevel.tree import Params

SCALARS = ("a", "b")


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Global ROC-AUC of ``scores`` for label 1 against label 0: P(s⁺ > s⁻), ties one half."""
    return cleaning_auc(scores, labels != 1)


class DeepAUC(TextTask):
    uniform_convexity_p = 2.0  # g is 2p(1−p)-strongly convex in α (``p`` is the positive ratio)

    def __init__(
        self,
        dataset: dict[str, Any],
        model: dict[str, Any],
        imratio: float = 0.8,
        margin: float = 1.0,
        n_train: int | None = 4000,
        n_test: int | None = None,
        batch_size: int = 32,
        val_batch_size: int = 32,
        max_len: int = 48,
        eval_size: int = 2000,
        eval_chunk: int = 1024,
        data_dir: str | None = None,
        instance_seed: int = 0,
    ):
        if dataset["n_classes"] != 2:
            raise ValueError(
                f"deep AUC needs a binary dataset, got n_classes={dataset['n_classes']}"
            )
        self.imratio, self.margin = imratio, margin
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.eval_size, self.eval_chunk = eval_size, eval_chunk
        pool = self.load(
            dataset, model, data_dir, max_len, {"train": n_train, "test": n_test}, instance_seed
        ).splits["train"]
        gen = torch.Generator().manual_seed(instance_seed + 11)
        order = torch.randperm(len(pool), generator=gen)
        halves = order[: len(pool) // 2], order[len(pool) // 2 :]
        train_idx, val_idx = (
            half[imbalance(pool.labels[half], imratio, instance_seed + k)]
            for k, half in enumerate(halves)
        )
        self.train, self.val = pool.subset(train_idx), pool.subset(val_idx)
        self.test = self.data.splits["test"]
        self.p = positive_ratio(self.train.labels)  # the whole training split (Q23/Q40)
        self.n_train = len(self.train)
        self.steps_per_epoch = math.ceil(self.n_train / batch_size)
        self.fix_eval_rows(instance_seed)  # seeded, stratified: each split's positive fraction

    def init_params(self, generator):
        x = {k: v.requires_grad_() for k, v in self.build_model(generator).items()}
        for k in SCALARS:
            x[k] = torch.zeros((), device=self.device, requires_grad=True)
        return x, {"alpha": torch.zeros((), device=self.device, requires_grad=True)}

    # -- the AUC-M objective ---------------------------------------------------------------------
    def scores(self, x: Params, data: dict[str, Tensor]) -> Tensor:
        """h = σ(logit₁), the score of the loss and of the metric (Q26)."""
        w = {k: v for k, v in x.items() if k not in SCALARS}
        return torch.sigmoid(self._forward(w, self.data.fields, data)[:, 1])

    def _square(self, x: Params, h: Tensor, labels: Tensor) -> Tensor:
        """S = (1−p)·E[(h−a)²·1⁺] + p·E[(h−b)²·1⁻] (whole-batch means)."""
        p, pos = self.p, (labels == 1).to(h.dtype)
        return (
            (1 - p) * (h - x["a"]).square() * pos + p * (h - x["b"]).square() * (1 - pos)
        ).mean()

    def _cross(self, h: Tensor, labels: Tensor) -> Tensor:
        """C = p(1−p)·m + E[p·h·1⁻ − (1−p)·h·1⁺] (whole-batch means)."""
        p, pos = self.p, (labels == 1).to(h.dtype)
        return p * (1 - p) * self.margin + (p * h * (1 - pos) - (1 - p) * h * pos).mean()

    def _upper(self, x: Params, alpha: Tensor, h: Tensor, labels: Tensor) -> Tensor:
        q = self.p * (1 - self.p)
        return self._square(x, h, labels) + 2 * (1 + alpha) * self._cross(h, labels) - q * alpha**2

    def _lower(self, alpha: Tensor, h: Tensor, labels: Tensor) -> Tensor:
        return self.p * (1 - self.p) * alpha**2 - 2 * alpha * self._cross(h, labels)

    def upper_loss(self, x, y, batch):
        d = batch.data
        return self._upper(x, y["alpha"], self.scores(x, d), d["label"])

    def lower_loss(self, x, y, batch):
        d = batch.data
        return self._lower(y["alpha"], self.scores(x, d), d["label"])

    def y_star(self, x: Params) -> Params:
        """α*(x) = C(w) / (p(1−p)) on the whole training split (the minimiser of g)."""
        h, labels = self._all_scores(x, self.train, torch.arange(len(self.train)))
        return {"alpha": self._cross(h, labels) / (self.p * (1 - self.p))}

    # -- sampling ------------------------------------------------------------------------------
    def sample_lower(self, generator):
        return Batch(self.draw(self.train, self.batch_size, generator), self.batch_size)

    def sample_upper(self, generator):
        return Batch(self.draw(self.val, self.val_batch_size, generator), self.val_batch_size)

    # -- evaluation ------------------------------------------------------------------------------
    def _all_scores(self, x: Params, split, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and labels of the rows ``rows`` of ``split``, in chunks, without grad."""
        rows = rows.to(self.device)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(rows), self.eval_chunk):
                chunks.append(self.scores(x, split.gather(rows[start : start + self.eval_chunk])))
        return torch.cat(chunks), split.labels[rows.to(split.labels.device)].to(self.device)

    def evaluate(self, x, y):
        alpha = y["alpha"].detach()
        out: dict[str, float] = {}
        with torch.no_grad():
            for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
                h, labels = self._all_scores(x, split, self.eval_index[name])
                out[f"{name}_auc"] = roc_auc(h, labels)
                out[f"{name}_loss"] = float(self._upper(x, alpha, h, labels))
                if name == "train":
                    out["lower_loss"] = float(self._lower(alpha, h, labels))
        out["upper_loss"] = out["val_loss"]  # f on the validation split
        out["alpha"] = float(alpha)
        return out
