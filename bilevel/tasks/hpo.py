"""Hyperparameter optimization: learn the L2 coefficient of an RNN classifier (BO-REP's HO
experiment; spec BOREP-SLIP-ADAMBO §2.1 "Code — hyperparameter optimization", §4.3).

    x = {"lambda_raw": scalar},  coefficient λ = softplus(x)   (``lambda_map='softplus'``)
    y = the whole RNN classifier (model group ``rnn``)
    g(x, y; B) = (1/|B|) Σ_{i∈B} CE(y; u_i, y_i) + (λ/2)·‖y‖²      training batch B
    f(x, y; V) = (1/|V|) Σ_{j∈V} CE(y; u_j, y_j)                     held-out validation batch V

Why softplus: with λ = x itself (the reference code, init 0) an x step can make λ negative, and
g then stops being strongly convex in y (spec §4.3). softplus(x) > 0 keeps g λ-strongly convex
for every x; ∂g/∂x = softplus'(x)·‖y‖²/2 = σ(x)·‖y‖²/2 and ∂²g/∂x∂y = σ(x)·y.
``lambda_map='identity'`` is the reference parametrization λ = x (no positivity).

Data (small-scale stand-in for BO-REP's per-domain tasks, no meta-learning episodes): the Amazon
ARSC t4 file (dataset ``amazon``). Its "train" split is every domain but BO-REP's eight HO test
domains, its "test" split those eight (``bilevel.tasks.text.AMAZON_TEST_DOMAINS``). A seeded
subset of ``n_train + val_size`` training-domain reviews is drawn and split (seed
``instance_seed``) into a training part (g) and a disjoint, clean validation part (f).

Reference-code behaviour, explicit options only (docs/reference-quirks.md):
  * ``reg_kind='l2_norm'``: the un-squared penalty (λ/2)·‖y‖ = (λ/2)·sqrt(Σ‖w‖²) (quirk Q1);
    not smooth at y = 0. ``'l2'`` (default) is the paper's (λ/2)·‖y‖². These are
    ``bilevel.tasks.regularizers`` ``l2`` with coef λ and ``l2_norm`` with coef λ/2, written out
    here because λ is a tensor (that module's ``coef == 0`` test would sync with the host).
The reference's test-time 10× inner lr (Q16) and its lr schedule (Q10) belong to the meta
evaluation loop, which this task does not reproduce (evaluation is of the current iterate).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from bilevel import tree
from bilevel.data import split_train_val
from bilevel.oracles import Batch
from bilevel.tasks.text import TextTask
from bilevel.tree import Params


class HPO(TextTask):
    def __init__(
        self,
        dataset: dict[str, Any],
        model: dict[str, Any],
        n_train: int | None = 4000,
        val_size: int = 1000,
        n_test: int | None = 2000,
        batch_size: int = 50,
        val_batch_size: int = 50,
        max_len: int = 64,
        x_init: float = -7.0,
        lambda_map: Literal["softplus", "identity"] = "softplus",
        reg_kind: Literal["l2", "l2_norm"] = "l2",
        eval_size: int = 1000,
        data_dir: str | None = None,
        instance_seed: int = 0,
    ):
        if reg_kind not in ("l2", "l2_norm"):
            raise ValueError(f"unknown reg_kind {reg_kind!r}; choose from l2, l2_norm")
        if lambda_map not in ("softplus", "identity"):
            raise ValueError(f"unknown lambda_map {lambda_map!r}; choose softplus or identity")
        self.eval_size = eval_size
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.x_init, self.lambda_map, self.reg_kind = x_init, lambda_map, reg_kind
        total = None if n_train is None else n_train + val_size
        pool = self.load(
            dataset, model, data_dir, max_len, {"train": total, "test": n_test}, instance_seed
        ).splits["train"]
        train_idx, val_idx = split_train_val(len(pool), val_size, instance_seed)
        self.train, self.val = pool.subset(train_idx), pool.subset(val_idx)
        self.test = self.data.splits["test"]
        self.n_train = len(self.train)
        self.steps_per_epoch = math.ceil(self.n_train / batch_size)
        self.fix_eval_rows(instance_seed)  # seeded, stratified by label

    @property
    def uniform_convexity_p(self) -> float | None:
        """2 with the squared L2 penalty (λ(x) > 0 with softplus); None with ``l2_norm``."""
        return 2.0 if self.reg_kind == "l2" else None

    def init_params(self, generator):
        y = {k: v.requires_grad_() for k, v in self.build_model(generator).items()}
        x = {"lambda_raw": torch.tensor(float(self.x_init), device=self.device)}
        return x, y

    # -- losses ------------------------------------------------------------------------------
    def coef(self, x: Params) -> Tensor:
        """The L2 coefficient λ(x)."""
        raw = x["lambda_raw"]
        return F.softplus(raw) if self.lambda_map == "softplus" else raw

    def penalty(self, y: Params) -> Tensor:
        """‖y‖²/2 (``l2``) or ‖y‖/2 (``l2_norm``, Q1): g's regulariser is coef(x)·penalty(y)."""
        sq = tree.sq_norm(y)
        return 0.5 * (sq if self.reg_kind == "l2" else sq.sqrt())

    def _logits(self, y: Params, batch: dict[str, Tensor]) -> Tensor:
        return self._forward(y, self.data.fields, batch)

    def lower_loss(self, x, y, batch):
        d = batch.data
        return self._lower(x, y, self._logits(y, d), d["label"])

    def _lower(self, x: Params, y: Params, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels) + self.coef(x) * self.penalty(y)

    def upper_loss(self, x, y, batch):
        d = batch.data
        return F.cross_entropy(self._logits(y, d), d["label"])

    # -- sampling ------------------------------------------------------------------------------
    def sample_lower(self, generator):
        return Batch(self.draw(self.train, self.batch_size, generator), self.batch_size)

    def sample_upper(self, generator):
        return Batch(self.draw(self.val, self.val_batch_size, generator), self.val_batch_size)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, x, y):
        rows, logits = self.scored_rows(y, "train")
        with torch.no_grad():
            lower = float(self._lower(x, y, logits, rows["label"]))
        train_acc, train_loss = self.accuracy_and_loss(logits, rows["label"])
        val_acc, val_loss = self.split_metrics(y, "val")
        test_acc, test_loss = self.split_metrics(y, "test")
        return {
            "upper_loss": val_loss,
            "lower_loss": lower,  # g on the fixed evaluation rows of the training part
            "train_acc": train_acc,
            "train_loss": train_loss,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "l2_coef": float(self.coef(x).detach()),
        }
