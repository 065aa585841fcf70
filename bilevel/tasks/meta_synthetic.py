"""Few-shot regression with a shared representation: the suite's small meta-learning task.

Instance (fixed by ``instance_seed``): a ground-truth representation W* ∈ R^{k×d} (entries
N(0, 1/d)) and a mean head w̄ ~ N(0, head_mean² I_k). A task τ has its own head
w_τ ~ N(w̄, head_std² I_k) and draws inputs u ~ N(0, I_d) with targets

    t = w_τᵀ φ(W* u) + ε,   ε ~ N(0, noise_std²),   φ = tanh (``activation=tanh``) or identity.

Each task has a K-shot support set (``k_support`` points) and a query set (``k_query`` points).
Parameters: x = {"W": k×d} (the representation, meta-learned), y = {"head": k} (the head).

    g(x, y; support) = ½ mean_j (yᵀφ(W u_j) − t_j)² + (reg/2)‖y‖²      (lower: adaptation)
    f(x, y; query)   = ½ mean_j (yᵀφ(W u_j) − t_j)²                     (upper: query loss)

Meta-learning algorithms (MAML, ANIL) draw ``sample_episodes`` (support and query of the SAME
task). Every other bilevel algorithm runs unchanged on the shared-head problem
g = E_τ support loss + (reg/2)‖y‖², f = E_τ query loss: ``sample_lower`` is a random task's
support set and ``sample_upper`` a random (independent) task's query set.

Training tasks: a fixed pool of ``n_train_tasks`` tasks (drawn from ``instance_seed``; a batch's
``index`` is the task id), or, with ``n_train_tasks=None``, a fresh task from the run's
generator at every draw. ``n_test_tasks`` held-out tasks are fixed by ``instance_seed`` too.

``evaluate(x, y)`` (never touches the training state):
  * ``upper_loss``, ``lower_loss``: f and g of the shared head y averaged over the training pool
    (over the test tasks when the pool is infinite);
  * ``test_loss_unadapted``: the query loss of y on the test tasks;
  * ``test_loss``: the query loss on each test task after ``test_inner_steps`` SGD steps with
    ``test_inner_lr`` on that task's support loss g, from a COPY of y (and of x when
    ``test_adapt=all``), averaged over the test tasks.
No closed forms (y*, Φ) are provided.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from bilevel.oracles import Batch
from bilevel.tasks.base import Task
from bilevel.tree import Params

TaskSet = dict[str, Tensor]  # "us", "ts" (support), "uq", "tq" (query), leading dim = task


class MetaSynthetic(Task):
    @property
    def uniform_convexity_p(self) -> float | None:
        """2: g is a least-squares loss in the head plus (reg/2)‖y‖² (None without it)."""
        return 2.0 if self.reg > 0 else None

    def __init__(
        self,
        dim_input: int = 20,
        dim_rep: int = 5,
        activation: Literal["tanh", "linear"] = "tanh",
        head_mean: float = 1.0,
        head_std: float = 1.0,
        noise_std: float = 0.1,
        k_support: int = 10,
        k_query: int = 20,
        n_train_tasks: int | None = 500,
        n_test_tasks: int = 100,
        reg: float = 1e-3,
        test_inner_steps: int = 5,
        test_inner_lr: float = 0.5,
        test_adapt: Literal["head", "all"] = "head",
        init_scale: float = 1.0,
        steps_per_epoch: int = 100,
        instance_seed: int = 0,
        dtype: str = "float64",
    ):
        if n_train_tasks is not None and n_train_tasks < 1:
            raise ValueError(f"task.n_train_tasks must be >= 1 or null, got {n_train_tasks}")
        self.d, self.k = dim_input, dim_rep
        self.activation = activation
        self.head_std, self.noise_std = head_std, noise_std
        self.k_support, self.k_query = k_support, k_query
        self.n_train_tasks, self.n_test_tasks = n_train_tasks, n_test_tasks
        self.reg = reg
        self.test_inner_steps, self.test_inner_lr = test_inner_steps, test_inner_lr
        self.test_adapt = test_adapt
        self.init_scale = init_scale
        self.steps_per_epoch = steps_per_epoch
        self.dtype = getattr(torch, dtype)
        dt = self.dtype
        gen = torch.Generator().manual_seed(instance_seed)
        self.W_star = torch.randn(dim_rep, dim_input, generator=gen, dtype=dt) / dim_input**0.5
        self.head_bar = head_mean * torch.randn(dim_rep, generator=gen, dtype=dt)
        # separate streams: the test tasks do not change with the size of the training pool
        train_gen = torch.Generator().manual_seed(instance_seed + 1_000_003)
        test_gen = torch.Generator().manual_seed(instance_seed + 2_000_003)
        self.train = self._draw_tasks(n_train_tasks, train_gen) if n_train_tasks else None
        self.test = self._draw_tasks(n_test_tasks, test_gen)

    # -- data ----------------------------------------------------------------------------------
    def _features(self, W: Tensor, u: Tensor) -> Tensor:
        """φ(W u) for inputs u (..., d) and W (k, d) or per-task (n, k, d) with u (n, m, d)."""
        z = u @ W.transpose(-1, -2)
        return torch.tanh(z) if self.activation == "tanh" else z

    def _draw_tasks(self, n: int, gen: torch.Generator) -> TaskSet:
        """n tasks on the CPU generator (reproducible across devices), moved to the device."""
        dt, d = self.dtype, self.d
        heads = self.head_bar + self.head_std * torch.randn(n, self.k, generator=gen, dtype=dt)
        out = {}
        for name, m in (("s", self.k_support), ("q", self.k_query)):
            u = torch.randn(n, m, d, generator=gen, dtype=dt)
            noise = self.noise_std * torch.randn(n, m, generator=gen, dtype=dt)
            t = torch.einsum("nmk,nk->nm", self._features(self.W_star, u), heads) + noise
            out[f"u{name}"], out[f"t{name}"] = u, t
        return {k: v.to(self.device) for k, v in out.items()}

    def to(self, device):
        super().to(device)
        if self.train is not None:
            self.train = {k: v.to(self.device) for k, v in self.train.items()}
        self.test = {k: v.to(self.device) for k, v in self.test.items()}
        return self

    def _tasks(
        self, generator: torch.Generator, n: int, distinct: bool
    ) -> list[tuple[TaskSet, int | None]]:
        """n training tasks as (tensors of one task, pool index or None)."""
        if self.train is None:
            fresh = self._draw_tasks(n, generator)
            return [({k: v[i] for k, v in fresh.items()}, None) for i in range(n)]
        pool = self.n_train_tasks
        if distinct and n <= pool:
            ids = torch.randperm(pool, generator=generator)[:n].tolist()
        else:
            ids = torch.randint(pool, (n,), generator=generator).tolist()
        return [({k: v[i] for k, v in self.train.items()}, i) for i in ids]

    def _support(self, task: TaskSet, index: int | None) -> Batch:
        return Batch({"u": task["us"], "t": task["ts"]}, self.k_support, index)

    def _query(self, task: TaskSet, index: int | None) -> Batch:
        return Batch({"u": task["uq"], "t": task["tq"]}, self.k_query, index)

    def sample_episodes(
        self, generator: torch.Generator, n_tasks: int
    ) -> list[tuple[Batch, Batch]]:
        """``n_tasks`` (support, query) pairs, each of one task; distinct tasks within a call
        when the pool has enough of them."""
        return [
            (self._support(t, i), self._query(t, i))
            for t, i in self._tasks(generator, n_tasks, True)
        ]

    def sample_lower(self, generator):
        task, i = self._tasks(generator, 1, False)[0]
        return self._support(task, i)

    def sample_upper(self, generator):
        task, i = self._tasks(generator, 1, False)[0]
        return self._query(task, i)

    # -- parameters and losses -------------------------------------------------------------------
    def init_params(self, generator):
        dt = self.dtype
        W = (
            self.init_scale
            * torch.randn(self.k, self.d, generator=generator, dtype=dt)
            / self.d**0.5
        )
        head = self.init_scale * torch.randn(self.k, generator=generator, dtype=dt) / self.k**0.5
        return {"W": W.to(self.device)}, {"head": head.to(self.device)}

    def _mse(self, W: Tensor, head: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """½ mean over the last axis of the squared residual: one value per task (or a scalar)."""
        pred = (self._features(W, u) @ head.unsqueeze(-1)).squeeze(-1)
        return 0.5 * (pred - t).square().mean(dim=-1)

    def lower_loss(self, x, y, batch):
        head = y["head"]
        loss = self._mse(x["W"], head, batch.data["u"], batch.data["t"])
        return loss + 0.5 * self.reg * head.square().sum()

    def upper_loss(self, x, y, batch):
        return self._mse(x["W"], y["head"], batch.data["u"], batch.data["t"])

    # -- evaluation ------------------------------------------------------------------------------
    def _adapt_copies(self, x: Params, y: Params, tasks: TaskSet) -> tuple[Tensor, Tensor]:
        """Per-task copies (W_τ, h_τ) after the test adaptation on each task's support set.

        The tasks are independent, so one backward pass of the sum of their support losses
        gives every copy its own gradient."""
        n = tasks["us"].shape[0]
        W = x["W"].detach()
        h = y["head"].detach().expand(n, -1).clone()
        if self.test_adapt == "all":
            W = W.expand(n, -1, -1).clone()
        with torch.enable_grad():
            for _ in range(self.test_inner_steps):
                h.requires_grad_(True)
                W.requires_grad_(self.test_adapt == "all")
                loss = self._mse(W, h, tasks["us"], tasks["ts"])
                loss = loss.sum() + 0.5 * self.reg * h.square().sum()
                wrt = [h, W] if self.test_adapt == "all" else [h]
                grads = torch.autograd.grad(loss, wrt)
                with torch.no_grad():
                    h = h - self.test_inner_lr * grads[0]
                    if self.test_adapt == "all":
                        W = W - self.test_inner_lr * grads[1]
        return W.detach(), h.detach()

    def _per_task_mse(self, W: Tensor, h: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """One query/support loss per task of a task set (u: (n, m, d)); h: (k,) or (n, k)."""
        return self._mse(W, h.expand(u.shape[0], -1), u, t)

    def evaluate(self, x, y):
        W, head = x["W"].detach(), y["head"].detach()
        pool = self.train if self.train is not None else self.test
        with torch.no_grad():
            upper = self._per_task_mse(W, head, pool["uq"], pool["tq"]).mean()
            support = self._per_task_mse(W, head, pool["us"], pool["ts"]).mean()
            lower = support + 0.5 * self.reg * head.square().sum()
            test0 = self._per_task_mse(W, head, self.test["uq"], self.test["tq"]).mean()
        W_a, h_a = self._adapt_copies(x, y, self.test)
        with torch.no_grad():
            test = self._per_task_mse(W_a, h_a, self.test["uq"], self.test["tq"]).mean()
        return {
            "upper_loss": float(upper),
            "lower_loss": float(lower),
            "test_loss_unadapted": float(test0),
            "test_loss": float(test),
        }
