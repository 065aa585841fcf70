"""Data hyper-cleaning (BO-REP/SLIP/AccBO/UniBiO experiments; spec ACCBO-UNIBIO §2.2,
BOREP-SLIP-ADAMBO §4.1): learn one weight per training sample on label-corrupted data.

    x = {"logits": λ ∈ R^N}, one logit per training sample, weight σ(λ_i)
    y = the classifier (``lower_params='model'``, the papers), its head only (``'head'``), or a
    linear classifier on the frozen encoder's features (``'linear'``: the head without hidden
    layers, a strongly convex lower level as in the classical hyper-cleaning of Franceschi et
    al. 2017 and StocBiO's MNIST experiment; ``task=hypercleaning_linear``)
    g(x, y; B) = (1/|B|) Σ_{i∈B} σ(λ_i)·CE(y; u_i, ỹ_i) + reg(y)      noisy training batch B
    f(x, y; V) = (1/|V|) Σ_{j∈V} CE(y; u_j, y_j)                      CLEAN validation batch V

λ is gathered by the batch's sample indices, so a step costs the same for any N. With y = the
head only (``'head'``, ``'linear'``) the frozen encoder's output of every row is computed once,
in ``init_params``, and batches carry it: a step runs the head, not the encoder. The training
labels are corrupted once, with a seed (a fraction ``noise_rate`` flipped to another class); a
clean validation split is held out of the training data and never corrupted.

Reference-code behaviour, explicit options only (docs/reference-quirks.md):
  * ``noise_mode='per_access'``: labels re-drawn at every access (A-Q5, B-Q28);
  * ``upper_data='noisy_train'``: f on noisy training batches, no clean split (A-Q2, B-Q27);
  * ``reg.kind='l2_norm'``: the un-squared L2 regulariser (B-Q1, A-Q25).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from bilevel.data import PerAccessNoise, hypercleaning_split
from bilevel.oracles import Batch
from bilevel.tasks.regularizers import regularizer, uniform_convexity_order
from bilevel.tasks.text import TextTask
from bilevel.tree import Params

log = logging.getLogger(__name__)

# The most memory the frozen encoder's cached output may take (all splits together); above it
# every batch runs the encoder, as without a cache.
FEATURE_CACHE_MAX_BYTES = 4 * 2**30


class HyperCleaning(TextTask):
    def __init__(
        self,
        dataset: dict[str, Any],
        model: dict[str, Any],
        noise_rate: float = 0.2,
        n_train: int | None = 4000,
        val_size: int = 1000,
        n_test: int | None = 2000,
        batch_size: int = 128,
        val_batch_size: int = 128,
        max_len: int = 48,
        x_init: float = 0.0,
        lower_params: Literal["model", "head", "linear"] = "model",
        reg: dict[str, Any] | None = None,
        noise_mode: Literal["fixed", "per_access"] = "fixed",
        upper_data: Literal["clean_val", "noisy_train"] = "clean_val",
        eval_size: int = 1000,
        data_dir: str | None = None,
        instance_seed: int = 0,
    ):
        self.noise_rate, self.batch_size = noise_rate, batch_size
        self.val_batch_size, self.x_init, self.lower_params = val_batch_size, x_init, lower_params
        self.reg = {"kind": "l2", "coef": 1e-4, "p": 2.0, **(reg or {})}
        self.noise_mode, self.upper_data, self.eval_size = noise_mode, upper_data, eval_size
        if lower_params == "linear":  # y = one linear layer on the frozen encoder's features
            model = {**model, "fc": []}
        total = None if n_train is None else n_train + val_size
        train = self.load(
            dataset, model, data_dir, max_len, {"train": total, "test": n_test}, instance_seed
        ).splits["train"]
        split = hypercleaning_split(
            train.labels, self.data.n_classes, noise_rate, val_size, instance_seed
        )
        self.train_positions = split.train_idx  # rows of the loaded data, disjoint from val
        self.clean_labels = train.labels[split.train_idx]
        self.is_corrupted = split.is_corrupted
        noisy = train.subset(split.train_idx).with_labels(split.train_labels)
        # x is indexed by position in the training subset: renumber 0..N-1
        positions = torch.arange(len(noisy))
        self.train = replace(noisy, tensors={**noisy.tensors, "index": positions})
        self.val = train.subset(split.val_idx)
        self.test = self.data.splits["test"]
        self.per_access = PerAccessNoise(noise_rate, self.data.n_classes)
        self.n_train = len(self.train)
        self.steps_per_epoch = math.ceil(self.n_train / batch_size)
        self.frozen: Params = {}
        # evaluation rows: seeded, stratified by the CLEAN label (the training split's labels
        # are the noisy ones; train_acc is scored against the clean ones)
        self.fix_eval_rows(instance_seed, labels={"train": self.clean_labels})

    @property
    def uniform_convexity_p(self) -> float | None:
        """The order of the regulariser ``reg`` (2 for l2, p for p_norm; None for l2_norm)."""
        return uniform_convexity_order(self.reg["kind"], self.reg["coef"], self.reg["p"])

    def to(self, device):
        super().to(device)
        self.clean_labels = self.clean_labels.to(self.device)
        self.is_corrupted = self.is_corrupted.to(self.device)
        return self

    def init_params(self, generator):
        params = self.build_model(generator)
        if self.lower_params in ("head", "linear"):
            y = {k: v for k, v in params.items() if k.startswith("head.")}
            self.frozen = {k: v for k, v in params.items() if k not in y}
            self._cache_features()
        else:
            y, self.frozen = params, {}
        x = {"logits": torch.full((self.n_train,), self.x_init, device=self.device)}
        return x, {k: v.requires_grad_() for k, v in y.items()}

    def _cache_features(self, chunk: int = 1024) -> None:
        """With y = the head only, the frozen encoder's output for a row never changes: compute
        it once for every row of every split (a ``features`` column, gathered with the batch)
        instead of a forward pass through the encoder for every batch of every step. The same
        vectors as the per-batch pass (the encoders mask padding; tested). Not done when the
        encoder draws dropout (its output would be random per call), nor above
        :data:`FEATURE_CACHE_MAX_BYTES`."""
        splits = {}  # without the cache of an earlier init_params
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            tensors = {k: v for k, v in split.tensors.items() if k != "features"}
            splits[name] = replace(split, tensors=tensors)
            setattr(self, name, splits[name])
        if any(_draws_dropout(m) for n, m in self.module.named_children() if n != "head"):
            return
        encode = partial(self._forward, self.frozen, self.data.fields, features_only=True)
        with torch.no_grad():
            first = encode(splits["train"].gather(torch.arange(1)))
        size = sum(map(len, splits.values())) * first.shape[-1] * first.element_size()
        if size > FEATURE_CACHE_MAX_BYTES:  # e.g. 550k SNLI pairs x 16384 features at paper scale
            log.info("frozen encoder: %.1f GiB of features, not cached", size / 2**30)
            return
        for name, split in splits.items():
            with torch.no_grad():
                feats = [encode(split.gather(r)) for r in torch.arange(len(split)).split(chunk)]
            features = {**split.tensors, "features": torch.cat(feats)}
            setattr(self, name, replace(split, tensors=features))

    # -- losses ------------------------------------------------------------------------------
    def _logits(self, y: Params, batch: dict[str, Tensor]) -> Tensor:
        if "features" in batch:  # the frozen encoder's output, cached (_cache_features)
            head = {k.removeprefix("head."): v for k, v in y.items()}
            return functional_call(self.module.head, head, (batch["features"],))
        return self._forward({**self.frozen, **y}, self.data.fields, batch)

    def lower_loss(self, x, y, batch):
        return self._lower(x, y, self._logits(y, batch.data), batch.data)

    def _lower(self, x: Params, y: Params, logits: Tensor, d: dict[str, Tensor]) -> Tensor:
        weights = torch.sigmoid(x["logits"][d["index"]])
        ce = F.cross_entropy(logits, d["label"], reduction="none")
        return (weights * ce).mean() + regularizer(
            y, self.reg["coef"], self.reg["kind"], self.reg["p"]
        )

    def upper_loss(self, x, y, batch):
        d = batch.data
        return F.cross_entropy(self._logits(y, d), d["label"])

    # -- sampling ------------------------------------------------------------------------------
    def sample_lower(self, generator):
        data = self.draw(self.train, self.batch_size, generator)
        if self.noise_mode == "per_access":
            clean = self.clean_labels[data["index"]]
            data["label"] = self.per_access(clean, generator)
        return Batch(data, self.batch_size)

    def sample_upper(self, generator):
        if self.upper_data == "noisy_train":
            return self.sample_lower(generator)
        return Batch(self.draw(self.val, self.val_batch_size, generator), self.val_batch_size)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, x, y):
        rows, logits = self.scored_rows(y, "train")  # one forward for g and the train metrics
        with torch.no_grad():
            lower = float(self._lower(x, y, logits, rows))  # g on fixed rows of the noisy data
        clean = self.clean_labels[rows["index"]]
        train_acc, train_loss = self.accuracy_and_loss(logits, clean)
        val_acc, val_loss = self.split_metrics(y, "val")
        test_acc, test_loss = self.split_metrics(y, "test")
        return {
            "upper_loss": val_loss,
            "lower_loss": lower,
            "train_acc": train_acc,
            "train_loss": train_loss,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "cleaning_auc": cleaning_auc(x["logits"].detach(), self.is_corrupted),
        }


def cleaning_auc(logits: Tensor, is_corrupted: Tensor) -> float:
    """ROC-AUC of the weights σ(λ) for telling clean (positive) from corrupted samples:
    P(λ_clean > λ_corrupted), ties counted one half (Mann–Whitney U)."""
    clean, bad = logits[~is_corrupted], logits[is_corrupted]
    if len(clean) == 0 or len(bad) == 0:
        return math.nan
    ranks = torch.empty_like(logits, dtype=torch.float64)
    order = torch.argsort(logits)
    ranks[order] = torch.arange(1, len(logits) + 1, dtype=torch.float64, device=logits.device)
    # average ranks over ties
    uniq, inverse = torch.unique(logits, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64, device=logits.device)
    counts = torch.zeros(len(uniq), dtype=torch.float64, device=logits.device)
    sums.index_add_(0, inverse, ranks)
    counts.index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    r_clean = ranks[~is_corrupted].sum()
    n1, n0 = len(clean), len(bad)
    return float((r_clean - n1 * (n1 + 1) / 2) / (n1 * n0))


def _draws_dropout(module: nn.Module) -> bool:
    """Whether ``module``'s output is random in training mode: a dropout layer, or a rate
    (``nn.LSTM``'s, attention's) above 0, in training mode."""
    for m in module.modules():
        rate = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "dropout", 0.0)
        if m.training and isinstance(rate, float) and rate > 0:
            return True
    return False
