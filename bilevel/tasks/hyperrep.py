"""Hyper-representation (meta-learning) on text: a shared encoder learned over few-shot tasks
(BO-REP Amazon reviews, SLIP SNLI, AdamBO TREC; spec BOREP-SLIP-ADAMBO §4.2, §4.4, §4.5).

    x = the encoder (every model parameter outside the head; for the NLI model also the
        projection layer)                                      y = the head (``head.*``)
    g(x, y; S) = CE(y ∘ x; S) + reg(y)          support set(s) S      (lower: adaptation)
    f(x, y; Q) = CE(y ∘ x; Q)                   query set(s) Q        (upper)

Tasks: N-way, K-shot episodes (:class:`bilevel.data.EpisodeSampler`) drawn ONCE with the
instance seed: ``n_train_tasks`` from the training split and ``n_test_tasks`` from the test
split, each with ``k_shot`` support and ``q_query`` query examples per class. Labels keep their
original ids (the head has ``n_classes`` outputs), as in every reference. With ``group_by`` (the
Amazon ``domain_id``), a task's examples come from one group (domain), chosen with probability
proportional to its size (BO-REP). Classes too small for K + Q examples are excluded with a
warning (Q37).

Sampling: MAML/ANIL draw ``sample_episodes`` (support and query of the same task). Every other
algorithm runs on the shared-head problem: a lower batch is the support sets of
``tasks_per_batch`` random training tasks, an upper batch the query sets of an independent draw
(batch ``index`` = the task id when ``tasks_per_batch`` is 1, for SABA's per-batch memory).
``steps_per_epoch`` = n_train_tasks / tasks_per_batch (the papers' 25 batches of 20 tasks).

``evaluate(x, y)`` never touches the training state. The representation of every evaluated
example is computed once (x is fixed during adaptation); then, for all tasks at once
(``torch.func.vmap``), a COPY of the head takes ``test_inner_steps`` SGD steps of
``test_inner_lr`` on the task's support loss g and is scored on its query set:
  * ``test_acc`` / ``test_loss``: adapted, over the test tasks; ``test_acc_unadapted`` and
    ``test_upper_loss``: the shared head y itself;
  * ``train_acc`` / ``train_loss``: the same adaptation on the first ``eval_train_tasks``
    training tasks; ``upper_loss`` / ``lower_loss``: f on their query sets and g on their
    support sets at the shared y (no adaptation).
The reference code adapts its persistent head in place at test time and keeps the change (Q7);
its per-method test learning rates (Q16) are one ``test_inner_lr`` here, shared by all methods.

Reference options: ``reg.kind=l2_norm`` (R-BOREP / R-SLIP: c·‖y‖, quirk Q1),
``zero_beyond_premise`` (SNLI: the hypothesis only up to the premise's length, quirk Q34).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from bilevel.data import EpisodeSampler, stack_episodes, zero_beyond_premise
from bilevel.oracles import Batch
from bilevel.tasks.regularizers import regularizer, uniform_convexity_order
from bilevel.tasks.text import TextTask
from bilevel.tree import Params

HEAD = "head."


class HyperRep(TextTask):
    def __init__(
        self,
        dataset: dict[str, Any],
        model: dict[str, Any],
        n_way: int = 2,
        k_shot: int = 10,
        q_query: int = 10,
        n_train_tasks: int = 500,
        n_test_tasks: int = 100,
        tasks_per_batch: int = 20,
        n_train: int | None = None,
        n_test: int | None = None,
        max_len: int = 48,
        reg: dict[str, Any] | None = None,
        test_inner_steps: int = 3,
        test_inner_lr: float = 0.1,
        eval_train_tasks: int = 100,
        eval_chunk: int = 1024,
        group_by: str | None = None,
        group_weighting: Literal["examples", "uniform"] = "examples",
        train_split: str | None = None,
        test_split: str | None = None,
        zero_beyond_premise: bool = False,
        data_dir: str | None = None,
        instance_seed: int = 0,
    ):
        for key, value in (("n_train_tasks", n_train_tasks), ("tasks_per_batch", tasks_per_batch)):
            if value < 1:
                raise ValueError(f"task.{key} must be >= 1, got {value}")
        if zero_beyond_premise and tuple(dataset["fields"]) != ("premise", "hypothesis"):
            raise ValueError("task.zero_beyond_premise needs a premise/hypothesis dataset (snli)")
        self.reg = {"kind": "l2", "coef": 1e-4, "p": 2.0, **(reg or {})}
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.n_train_tasks, self.tasks_per_batch = n_train_tasks, tasks_per_batch
        self.test_inner_steps, self.test_inner_lr = test_inner_steps, test_inner_lr
        self.eval_train_tasks, self.eval_chunk = eval_train_tasks, eval_chunk
        self.zero_beyond_premise = zero_beyond_premise
        splits = {
            "train": train_split or dataset["train_split"],
            "test": test_split or dataset["test_split"],
        }
        data = self.load(
            dataset,
            model,
            data_dir,
            max_len,
            {"train": n_train, "test": n_test},
            instance_seed,
            splits=splits,
            extra_columns=(group_by,) if group_by else (),
        )
        self.train, self.test = data.splits["train"], data.splits["test"]
        self.train_tasks, self.test_tasks = (
            self._fixed_tasks(split, n, instance_seed + k, group_by, group_weighting, name)
            for k, (split, n, name) in enumerate(
                ((self.train, n_train_tasks, "train"), (self.test, n_test_tasks, "test"))
            )
        )
        self.steps_per_epoch = math.ceil(n_train_tasks / tasks_per_batch)

    def _fixed_tasks(self, split, n, seed, group_by, weighting, name) -> dict[str, Tensor]:
        """``n`` episodes of ``split`` drawn once: support / query row positions [n, ·]."""
        try:
            sampler = EpisodeSampler(
                split.labels,
                self.n_way,
                self.k_shot,
                self.q_query,
                seed=seed,
                groups=split.tensors[group_by] if group_by else None,
                group_weighting=weighting,
            )
        except ValueError as err:
            raise ValueError(f"task=hyperrep, {name} split: {err}") from None
        episodes = stack_episodes(sampler.fixed_tasks(n))
        return {"support": episodes.support, "query": episodes.query}

    @property
    def uniform_convexity_p(self) -> float | None:
        """The order of the head's regulariser ``reg`` (2 for l2, p for p_norm; None for
        l2_norm)."""
        return uniform_convexity_order(self.reg["kind"], self.reg["coef"], self.reg["p"])

    # -- parameters and losses -------------------------------------------------------------------
    def init_params(self, generator):
        params = self.build_model(generator)
        if not any(k.startswith(HEAD) for k in params):
            raise ValueError("task=hyperrep needs a model with a `head` (model=rnn|nli_rnn|...)")
        x = {k: v.requires_grad_() for k, v in params.items() if not k.startswith(HEAD)}
        y = {k: v.requires_grad_() for k, v in params.items() if k.startswith(HEAD)}
        return x, y

    def _logits(self, x: Params, y: Params, data: dict[str, Tensor]) -> Tensor:
        return self._forward({**x, **y}, self.data.fields, data)

    def represent(self, x: Params, batch: Batch) -> Tensor:
        """The head's input for ``batch`` (x only: the head is not part of it)."""
        return self._forward(x, self.data.fields, batch.data, features_only=True)

    def lower_loss_on(self, features: Tensor, y: Params, batch: Batch) -> Tensor:
        """g from the representation: CE of the head y on ``features`` + reg(y)."""
        ce = self._head_loss(
            {k[len(HEAD) :]: v for k, v in y.items()}, features, batch.data["label"]
        )[0]
        return ce + regularizer(y, self.reg["coef"], self.reg["kind"], self.reg["p"])

    def lower_loss(self, x, y, batch):
        return self.lower_loss_on(self.represent(x, batch), y, batch)

    def upper_loss(self, x, y, batch):
        d = batch.data
        return F.cross_entropy(self._logits(x, y, d), d["label"])

    # -- sampling ------------------------------------------------------------------------------
    def _rows(self, split, positions: Tensor) -> dict[str, Tensor]:
        data = split.gather(positions.reshape(-1).cpu())  # host indices: trimmed batches
        return zero_beyond_premise(data) if self.zero_beyond_premise else data

    def _batch(self, part: str, ids: Tensor) -> Batch:
        """The ``part`` (support | query) sets of training tasks ``ids``, as one batch."""
        data = self._rows(self.train, self.train_tasks[part][ids])
        index = int(ids[0]) if len(ids) == 1 else None
        return Batch(data, len(data["label"]), index)

    def _task_ids(self, generator: torch.Generator, n: int, distinct: bool) -> Tensor:
        if distinct and n <= self.n_train_tasks:
            return torch.randperm(self.n_train_tasks, generator=generator)[:n]
        return torch.randint(self.n_train_tasks, (n,), generator=generator)

    def sample_lower(self, generator):
        return self._batch("support", self._task_ids(generator, self.tasks_per_batch, False))

    def sample_upper(self, generator):
        return self._batch("query", self._task_ids(generator, self.tasks_per_batch, False))

    def sample_episodes(self, generator, n_tasks):
        """``n_tasks`` distinct training tasks (when the pool has that many) as (support, query)
        pairs of the same task."""
        ids = self._task_ids(generator, n_tasks, True)
        return [(self._batch("support", i[None]), self._batch("query", i[None])) for i in ids]

    # -- evaluation ------------------------------------------------------------------------------
    def _features(self, x: Params, y: Params, split, positions: Tensor) -> Tensor:
        """The head's inputs for the rows ``positions`` [T, m]: [T, m, d], without grad."""
        flat = positions.reshape(-1)
        out = []
        with torch.no_grad():
            for start in range(0, len(flat), self.eval_chunk):
                data = self._rows(split, flat[start : start + self.eval_chunk])
                call = self._forward({**x, **y}, self.data.fields, data, features_only=True)
                out.append(call)
        return torch.cat(out).reshape(*positions.shape, -1)

    def _head_loss(self, head: Params, feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(CE, logits) of one task's head on its features."""
        logits = functional_call(self.module.head, head, (feats,))
        return F.cross_entropy(logits, labels), logits

    def _adapted_query(
        self, x: Params, y: Params, split, tasks: dict[str, Tensor]
    ) -> dict[str, float]:
        """Per task: a copy of the head after ``test_inner_steps`` SGD steps on g(support),
        scored on the query set (``acc``, ``loss``); and at the shared head: the query accuracy
        ``acc_shared``, f (``upper``) and g (``lower``), averaged over the tasks."""
        fs = self._features(x, y, split, tasks["support"])
        fq = self._features(x, y, split, tasks["query"])
        ls = split.labels[tasks["support"].to(split.labels.device)]
        lq = split.labels[tasks["query"].to(split.labels.device)]
        shared = {k[len(HEAD) :]: v.detach() for k, v in y.items()}
        reg = self.reg

        def support_loss(head: Params, feats: Tensor, labels: Tensor) -> Tensor:
            ce = self._head_loss(head, feats, labels)[0]
            return ce + regularizer(head, reg["coef"], reg["kind"], reg["p"])

        n = fs.shape[0]
        heads = {k: v.expand(n, *v.shape).clone() for k, v in shared.items()}
        step = vmap(grad(support_loss))
        with torch.enable_grad():
            for _ in range(self.test_inner_steps):
                g = step(heads, fs, ls)
                heads = {k: v - self.test_inner_lr * g[k] for k, v in heads.items()}
        with torch.no_grad():
            q_loss, logits = vmap(self._head_loss)(heads, fq, lq)
            acc = (logits.argmax(-1) == lq).float().mean()
            f_shared, logits0 = vmap(self._head_loss, in_dims=(None, 0, 0))(shared, fq, lq)
            g_shared = vmap(support_loss, in_dims=(None, 0, 0))(shared, fs, ls)
        return {
            "acc": float(acc),
            "loss": float(q_loss.mean()),
            "acc_shared": float((logits0.argmax(-1) == lq).float().mean()),
            "upper": float(f_shared.mean()),
            "lower": float(g_shared.mean()),
        }

    def evaluate(self, x, y):
        k = min(self.eval_train_tasks, self.n_train_tasks)
        train = self._adapted_query(
            x, y, self.train, {p: v[:k] for p, v in self.train_tasks.items()}
        )
        test = self._adapted_query(x, y, self.test, self.test_tasks)
        return {
            "upper_loss": train["upper"],
            "lower_loss": train["lower"],
            "train_acc": train["acc"],
            "train_loss": train["loss"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
            "test_acc_unadapted": test["acc_shared"],
            "test_upper_loss": test["upper"],
        }
