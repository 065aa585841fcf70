"""The oracle layer: the only place that calls autograd for bilevel quantities (DESIGN §3).

Oracles of a bilevel problem min_x f(x, y*(x)), y*(x) = argmin_y g(x, y):

* ``grad_f``   -> ∇ₓf and ∇ᵧf from one backward pass                     (kind ``grad_f``)
* ``grad_y_g`` -> ∇ᵧg, ``grad_x_g`` -> ∇ₓg                              (kind ``grad_g``)
* ``hvp``      -> ∇²ᵧᵧg·v                                                 (kind ``hvp``)
* ``cross``    -> ∇²ₓᵧg·v = ∂ₓ⟨∇ᵧg, v⟩                                    (kind ``cross``)
* ``hvp_cross``-> both products from ONE reverse pass through ∇ᵧg        (``hvp`` + ``cross``)
* ``lower_graph`` -> ∇ᵧg kept with its graph, so several products on the same batch (a Neumann
  series on one Hessian batch, or a gradient step plus an HVP) share a single forward pass.

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
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from bilevel import tree
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
    """Context for a double backward: math SDPA everywhere; cuDNN off on CUDA, for this call only.

    The forward pass must run inside it too: kernels are chosen when the graph is recorded.
    """
    on_cuda = torch.device(device).type == "cuda" if device is not None else False
    previous = torch.backends.cudnn.enabled, torch._C._get_mkldnn_enabled()
    try:
        if on_cuda:
            torch.backends.cudnn.enabled = False
        else:
            torch._C._set_mkldnn_enabled(False)  # fused CPU RNN: slow double backward
        with sdpa_kernel(SDPBackend.MATH):
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
