"""The oracle layer: the only place that calls autograd for bilevel quantities (DESIGN §3).

Oracles of a bilevel problem min_x f(x, y*(x)), y*(x) = argmin_y g(x, y):

* ``grad_f``   -> ∇ₓf and ∇ᵧf from one backward pass                     (kind ``grad_f``)
* ``grad_y_g`` -> ∇ᵧg, ``grad_x_g`` -> ∇ₓg                              (kind ``grad_g``)
* ``hvp``      -> ∇²ᵧᵧg·v                                                 (kind ``hvp``)
* ``cross``    -> ∇²ₓᵧg·v = ∂ₓ⟨∇ᵧg, v⟩                                    (kind ``cross``)
* ``hvp_cross``-> both products from ONE reverse pass through ∇ᵧg        (``hvp`` + ``cross``)
* ``lower_graph`` -> ∇ᵧg kept with its graph, so several products on the same batch (a Neumann
  series on one Hessian batch, or a gradient step plus an HVP) share a single forward pass.
* ``adapt``    -> K SGD steps on g(x, ·; support) from y₀ (and optionally on x too), the
  inner loop of MAML/ANIL; with ``create_graph`` the adapted point stays differentiable in
  (x, y₀)                                                              (K × ``grad_g``)
* ``grad_f_through`` -> f(x_K, y_K; query) differentiated w.r.t. (x, y₀) through the K steps
  (second-order meta-gradient) or at the adapted point (first order)
                                   (``grad_f``; + K ``hvp`` + K ``cross`` through the steps)

Every call is counted by kind and by batch size (:class:`OracleCounter`), so figures can put
oracle calls on the x-axis. Second-order calls run inside :func:`second_order`, which disables
cuDNN only for the call (cuDNN RNN kernels have no double backward) and forces the math
attention kernel (fused SDPA kernels have no double backward), DESIGN §5.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from bilevel import tree
from bilevel.models.recurrence import double_backward
from bilevel.tree import Params

ORACLE_KINDS = ("grad_f", "grad_g", "hvp", "cross")


@dataclass
class Batch:
    """A minibatch as the task defines it; ``size`` is what the oracle counter records.

    ``index`` identifies a fixed minibatch of a finite sum (a task that partitions its samples
    into fixed batches sets it), for methods that keep per-batch memory (SABA's SAGA tables)."""

    data: Any
    size: int
    index: int | None = None


class BilevelLosses(Protocol):
    def upper_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...
    def lower_loss(self, x: Params, y: Params, batch: Batch) -> Tensor: ...


@runtime_checkable
class HeadOnRepresentation(Protocol):
    """A lower level that sees x only through a representation of the batch (hyper-
    representation): g(x, y; B) = ``lower_loss_on(represent(x, B), y, B)``. Adapting y with x
    held fixed (ANIL's inner loop) then computes the representation once, not once per step."""

    def represent(self, x: Params, batch: Batch) -> Any: ...
    def lower_loss_on(self, features: Any, y: Params, batch: Batch) -> Tensor: ...


@dataclass
class OracleCounter:
    """Calls and samples per oracle kind, plus calls per (kind, batch size)."""

    calls: Counter = field(default_factory=Counter)
    samples: Counter = field(default_factory=Counter)
    by_batch_size: Counter = field(default_factory=Counter)

    def add(self, kind: str, batch_size: int, n: int = 1) -> None:
        self.calls[kind] += n
        self.samples[kind] += n * batch_size
        self.by_batch_size[f"{kind}@{batch_size}"] += n

    def columns(self) -> dict[str, int]:
        """The oracle columns of ``metrics.csv``."""
        cols = {f"calls_{k}": int(self.calls[k]) for k in ORACLE_KINDS}
        cols["oracle_calls"] = int(sum(self.calls.values()))
        cols["samples"] = int(sum(self.samples.values()))
        return cols

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {
            "calls": dict(self.calls),
            "samples": dict(self.samples),
            "by_batch_size": dict(self.by_batch_size),
        }

    def load_state_dict(self, sd: dict[str, dict[str, int]]) -> None:
        self.calls = Counter(sd["calls"])
        self.samples = Counter(sd["samples"])
        self.by_batch_size = Counter(sd["by_batch_size"])


@contextlib.contextmanager
def second_order(device: torch.device | str | None = None) -> Iterator[None]:
    """Context for a double backward: math SDPA everywhere; cuDNN off on CUDA, for this call only;
    one-layer RNN encoders run their O(T) cell-by-cell path (bilevel.models.recurrence).

    The forward pass must run inside it too: kernels are chosen when the graph is recorded.
    """
    on_cuda = torch.device(device).type == "cuda" if device is not None else False
    previous = torch.backends.cudnn.enabled, torch._C._get_mkldnn_enabled()
    try:
        if on_cuda:
            torch.backends.cudnn.enabled = False
        else:
            torch._C._set_mkldnn_enabled(False)  # fused CPU RNN: slow double backward
        with sdpa_kernel(SDPBackend.MATH), double_backward():
            yield
    finally:
        torch.backends.cudnn.enabled = previous[0]
        torch._C._set_mkldnn_enabled(previous[1])


def _grad(out: Tensor, inputs: Params, **kw: Any) -> Params:
    grads = torch.autograd.grad(out, list(inputs.values()), materialize_grads=True, **kw)
    return dict(zip(inputs.keys(), grads, strict=True))


@dataclass
class FGrad:
    loss: Tensor
    x: Params
    y: Params


class LowerGraph:
    """∇ᵧg(x, y; B) with its autograd graph kept, for repeated products on one batch.

    Building it costs one forward + one backward with ``create_graph``; it is counted as a
    ``grad_g`` call only if the gradient itself is read (``.grad``).
    """

    def __init__(self, oracles: Oracles, x: Params, y: Params, batch: Batch, with_x: bool):
        self._oracles, self._batch = oracles, batch
        self._device = next(iter(y.values())).device
        self._x = tree.leaves(x, requires_grad=with_x)
        self._y = tree.leaves(y)
        with second_order(self._device):
            loss = oracles.task.lower_loss(self._x, self._y, batch)
            self._gy = _grad(loss, self._y, create_graph=True)
        self.loss = loss.detach()  # g(x, y; B), free with the gradient (line searches)
        self._grad_counted = False

    @property
    def grad(self) -> Params:
        if not self._grad_counted:
            self._oracles.counter.add("grad_g", self._batch.size)
            self._grad_counted = True
        return tree.detach(self._gy)

    def _vjp(self, v: Params, inputs: Params) -> Params:
        with second_order(self._device):
            grads = torch.autograd.grad(
                list(self._gy.values()),
                list(inputs.values()),
                grad_outputs=[v[k].detach() for k in self._gy],
                retain_graph=True,
                materialize_grads=True,
            )
        return dict(zip(inputs.keys(), grads, strict=True))

    def hvp(self, v: Params) -> Params:
        """∇²ᵧᵧg·v."""
        self._oracles.counter.add("hvp", self._batch.size)
        return self._vjp(v, self._y)

    def cross(self, v: Params) -> Params:
        """∇²ₓᵧg·v (a vector in x-space)."""
        self._oracles.counter.add("cross", self._batch.size)
        return self._vjp(v, self._x)

    def hvp_cross(self, v: Params) -> tuple[Params, Params]:
        """(∇²ᵧᵧg·v, ∇²ₓᵧg·v) from one reverse pass."""
        self._oracles.counter.add("hvp", self._batch.size)
        self._oracles.counter.add("cross", self._batch.size)
        both = self._vjp(
            v,
            {
                **{("y", k): t for k, t in self._y.items()},
                **{("x", k): t for k, t in self._x.items()},
            },
        )
        hv = {k: both[("y", k)] for k in self._y}
        jv = {k: both[("x", k)] for k in self._x}
        return hv, jv


class Oracles:
    """Counted first- and second-order oracles of a task's f and g."""

    def __init__(self, task: BilevelLosses, counter: OracleCounter | None = None):
        self.task = task
        self.counter = counter if counter is not None else OracleCounter()

    # -- first order -------------------------------------------------------------------
    def grad_f(self, x: Params, y: Params, batch: Batch, wrt_x: bool = True) -> FGrad:
        """f, ∇ₓf and ∇ᵧf on one batch from a single backward pass."""
        self.counter.add("grad_f", batch.size)
        xl, yl = tree.leaves(x, requires_grad=wrt_x), tree.leaves(y)
        with torch.enable_grad():
            loss = self.task.upper_loss(xl, yl, batch)
            grads = _grad(
                loss,
                {
                    **{("x", k): t for k, t in xl.items() if wrt_x},
                    **{("y", k): t for k, t in yl.items()},
                },
            )
        gx = {k: grads[("x", k)] for k in xl} if wrt_x else tree.zeros_like(x)
        return FGrad(loss.detach(), gx, {k: grads[("y", k)] for k in yl})

    def grad_y_g(self, x: Params, y: Params, batch: Batch) -> Params:
        """∇ᵧg on one batch."""
        self.counter.add("grad_g", batch.size)
        yl = tree.leaves(y)
        with torch.enable_grad():
            return _grad(self.task.lower_loss(tree.detach(x), yl, batch), yl)

    def grad_x_g(self, x: Params, y: Params, batch: Batch) -> Params:
        """∇ₓg on one batch (penalty methods such as F2SA)."""
        self.counter.add("grad_g", batch.size)
        xl = tree.leaves(x)
        with torch.enable_grad():
            return _grad(self.task.lower_loss(xl, tree.detach(y), batch), xl)

    # -- second order ------------------------------------------------------------------
    def lower_graph(self, x: Params, y: Params, batch: Batch, with_x: bool = True) -> LowerGraph:
        """∇ᵧg with its graph, for several products (and the gradient) on one batch."""
        with torch.enable_grad():
            return LowerGraph(self, x, y, batch, with_x)

    def hvp(self, x: Params, y: Params, v: Params, batch: Batch) -> Params:
        with torch.enable_grad():
            return self.lower_graph(x, y, batch, with_x=False).hvp(v)

    def cross(self, x: Params, y: Params, v: Params, batch: Batch) -> Params:
        with torch.enable_grad():
            return self.lower_graph(x, y, batch).cross(v)

    def hvp_cross(self, x: Params, y: Params, v: Params, batch: Batch) -> tuple[Params, Params]:
        with torch.enable_grad():
            return self.lower_graph(x, y, batch).hvp_cross(v)

    # -- meta-learning: differentiable adaptation (MAML, ANIL) -----------------------------
    def adapt(
        self,
        x: Params,
        y0: Params,
        batch: Batch,
        lr: float,
        steps: int,
        create_graph: bool = False,
        adapt_x: bool = False,
        support_grad_x: bool = False,
    ) -> Adapted:
        """K = ``steps`` SGD steps on the lower loss g(·; ``batch``) from (x, y₀), all on one
        batch (a task's support set): y_{i+1} = y_i − lr·∇ᵧg(x_i, y_i), and, when ``adapt_x``
        (MAML adapting every parameter), x_{i+1} = x_i − lr·∇ₓg(x_i, y_i); otherwise x_i = x.

        ``create_graph=True`` records every step (each ∇g taken with ``create_graph``, inside
        :func:`second_order`), so the adapted point is a differentiable function of (x, y₀): the
        inner loop of second-order MAML/ANIL, to be differentiated by :meth:`grad_f_through`.
        ``create_graph=False`` takes detached steps (first-order MAML / FO-ANIL; the reference
        code).
        ``support_grad_x`` (first order only) also returns Σᵢ ∇ₓg(x_i, y_i) from the same backward
        passes (quirk Q11). The inputs are never modified.

        Counted: ``steps`` ``grad_g`` calls on ``batch`` (∇ₓg and ∇ᵧg of one step come from one
        backward pass). The second-order work is counted when the graph is differentiated. When x
        is not adapted and the task is a :class:`HeadOnRepresentation`, the K steps share one
        representation of the batch (its graph too: one backward through it for all K steps).
        """
        if support_grad_x and create_graph:
            raise ValueError(
                "adapt: support_grad_x is a first-order quirk (Q11); not with create_graph"
            )
        self.counter.add("grad_g", batch.size, steps)
        device = next(iter(y0.values())).device
        with_x = adapt_x or support_grad_x
        acc = tree.zeros_like(x) if support_grad_x else None
        context = second_order(device) if create_graph else contextlib.nullcontext()
        with context, torch.enable_grad():
            x0 = tree.leaves(x, requires_grad=create_graph)
            ys0 = tree.leaves(y0, requires_grad=create_graph)
            xi, yi = x0, ys0
            # x held fixed: its representation of the batch is the same at every step
            shared = not with_x and isinstance(self.task, HeadOnRepresentation)
            features = self.task.represent(x0, batch) if shared else None
            for _ in range(steps):
                if not create_graph:
                    xi, yi = tree.leaves(xi, requires_grad=with_x), tree.leaves(yi)
                if shared:
                    loss = self.task.lower_loss_on(features, yi, batch)
                else:
                    loss = self.task.lower_loss(xi, yi, batch)
                wrt = {("y", k): t for k, t in yi.items()}
                if with_x:
                    wrt.update({("x", k): t for k, t in xi.items()})
                grads = _grad(loss, wrt, create_graph=create_graph)
                gx = {k: grads[("x", k)] for k in xi} if with_x else None
                with torch.set_grad_enabled(create_graph):
                    yi = _sgd_step(yi, {k: grads[("y", k)] for k in yi}, lr)
                    if adapt_x:
                        xi = _sgd_step(xi, gx, lr)
                if acc is not None:
                    acc = tree.add(acc, gx)
        if not create_graph:
            xi, yi = tree.detach(xi), tree.detach(yi)
        return Adapted(xi, yi, x0, ys0, batch, steps, create_graph, acc)

    def grad_f_through(self, adapted: Adapted, batch: Batch) -> MetaGrad:
        """The query loss f(x_K, y_K; ``batch``) and its meta-gradient w.r.t. the starting point.

        When ``adapted`` kept its graph, ONE reverse pass goes from f back through the K recorded
        steps to (x, y₀) (second-order MAML/ANIL: each step contributes (I − lr∇²g)·v, i.e. one
        Hessian-vector product of g; with x held fixed, ∇²ᵧᵧg·v and ∇²ₓᵧg·v). The same pass returns
        ∇f at the adapted point (``x_direct``, ``y_direct``). Otherwise the meta-gradient is ∇f at
        the adapted point (first order).

        Counted: one ``grad_f`` on ``batch``; through a recorded graph also ``steps`` ``hvp`` and
        ``steps`` ``cross`` on the support batch (one reverse pass through an inner step = one HVP
        and one cross product, as :meth:`LowerGraph.hvp_cross`; when x is adapted too, that pass is
        the full Hessian-vector product of g in (x, y), counted the same way).
        """
        self.counter.add("grad_f", batch.size)
        if not adapted.create_graph:
            xl, yl = tree.leaves(adapted.x), tree.leaves(adapted.y)
            with torch.enable_grad():
                loss = self.task.upper_loss(xl, yl, batch)
                grads = _grad(
                    loss,
                    {
                        **{("x", k): t for k, t in xl.items()},
                        **{("y", k): t for k, t in yl.items()},
                    },
                )
            gx, gy = {k: grads[("x", k)] for k in xl}, {k: grads[("y", k)] for k in yl}
            return MetaGrad(loss.detach(), gx, gy, gx, gy)
        if adapted.steps:
            self.counter.add("hvp", adapted.batch.size, adapted.steps)
            self.counter.add("cross", adapted.batch.size, adapted.steps)
        device = next(iter(adapted.y.values())).device
        with second_order(device), torch.enable_grad():
            # an alias of x_K used only by f, so the same pass also yields the direct ∂f/∂x
            x_f = {k: v.view_as(v) for k, v in adapted.x.items()}
            loss = self.task.upper_loss(x_f, adapted.y, batch)
            inputs = {
                **{("x", k): t for k, t in adapted.x0.items()},
                **{("y", k): t for k, t in adapted.y0.items()},
                **{("xd", k): t for k, t in x_f.items()},
                **{("yd", k): t for k, t in adapted.y.items()},
            }
            grads = _grad(loss, inputs)
        return MetaGrad(
            loss.detach(),
            {k: grads[("x", k)] for k in adapted.x0},
            {k: grads[("y", k)] for k in adapted.y0},
            {k: grads[("xd", k)] for k in x_f},
            {k: grads[("yd", k)] for k in adapted.y},
        )


# -- meta-learning results ----------------------------------------------------------------------
@dataclass
class Adapted:
    """The point reached by :meth:`Oracles.adapt`: K SGD steps on g(·; support) from (x, y₀).

    ``x``, ``y`` are the adapted point (x_K is x itself when x is not adapted). With
    ``create_graph`` they are non-leaf tensors whose graph reaches the leaves ``x0``, ``y0``; hand
    them to :meth:`Oracles.grad_f_through` exactly once (its backward frees the graph). Without
    it they are detached and ``x0``, ``y0`` are detached too. ``support_grad_x`` is
    Σ_{i<K} ∇ₓg(x, y_i; support) when it was asked for (the reference code's encoder gradient,
    contaminated by the support backward passes: quirk Q11), else None.
    """

    x: Params
    y: Params
    x0: Params
    y0: Params
    batch: Batch
    steps: int
    create_graph: bool
    support_grad_x: Params | None = None


@dataclass
class MetaGrad:
    """Derivatives of the query loss f(x_K, y_K; query) at an adapted point.

    ``x``, ``y``: the meta-gradient w.r.t. the starting point (x, y₀): through the K inner steps
    when the adaptation kept its graph (second-order MAML/ANIL), else equal to the direct part
    (first order). ``x_direct``, ``y_direct``: ∇ₓf and ∇ᵧf at (x_K, y_K) with the adapted point
    held fixed (the first-order part); ``x − x_direct`` is what flows back through the steps.
    """

    loss: Tensor
    x: Params
    y: Params
    x_direct: Params
    y_direct: Params


def _sgd_step(p: Params, g: Params, lr: float) -> Params:
    """p − lr·g tensor by tensor (plain ops, so that the step is recorded for a double backward)."""
    return {k: v - lr * g[k] for k, v in p.items()}
