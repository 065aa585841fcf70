"""The recurrence of a one-layer RNN run cell by cell, pooled as it goes: the second-order path of
:class:`bilevel.models.rnn.RNNEncoder` (issue #13).

Why: with the fused kernels off (a double backward needs that, ``bilevel.oracles.second_order``),
``nn.RNN`` / ``nn.LSTM`` run PyTorch's generic recurrence, which stacks the T per-step outputs into
[T, B, H]. The backward of that stack is recorded (``create_graph``) as T ``select``s of the
gradient, and differentiating each ``select`` again — the Hessian-vector or cross product —
allocates and zero-fills a whole [T, B, H] buffer to write one step into it: O(T²) memory
traffic, about 15% of a StocBiO step on SNLI (Elman, hidden 64). Here the input projection of
all steps is one matrix product, each step adds the hidden projection and applies the cell, and
the steps are stacked by a function whose backward is a single ``unbind`` (itself differentiable
by one stack): every backward is linear in T. The values are those of the module (same
parameters, same gate order) up to rounding. (Pooling as the loop goes, a running max, was
measured too: its per-step max and mask nodes cost more than they save.)

:func:`double_backward` marks the calls that will be differentiated twice (the oracle layer's
``second_order`` context enters it); :func:`in_double_backward` is what the encoder reads. First-
order calls keep the module's fused kernels, which are faster there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_DOUBLE_BACKWARD: ContextVar[bool] = ContextVar("bilevel_double_backward", default=False)


@contextmanager
def double_backward() -> Iterator[None]:
    """The forward passes inside will be differentiated twice (HVPs, cross products)."""
    token = _DOUBLE_BACKWARD.set(True)
    try:
        yield
    finally:
        _DOUBLE_BACKWARD.reset(token)


def in_double_backward() -> bool:
    return _DOUBLE_BACKWARD.get()


def supports(rnn: nn.Module) -> bool:
    """A one-layer unidirectional ``nn.RNN`` (tanh or relu) or ``nn.LSTM`` without projections."""
    if isinstance(rnn, nn.LSTM):
        return rnn.num_layers == 1 and not rnn.bidirectional and rnn.proj_size == 0
    return type(rnn) is nn.RNN and rnn.num_layers == 1 and not rnn.bidirectional


class _StackSteps(torch.autograd.Function):
    """torch.stack(steps, dim=1) whose backward is ONE ``unbind`` (differentiable again: its own
    backward is a stack), instead of T recorded ``select``s (see the module docstring). Usable
    under torch.func transforms (``setup_context``, forward-mode ``jvp``, ``vmap``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*steps: Tensor) -> Tensor:
        return torch.stack(steps, dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, ...]:
        return grad.unbind(1)

    @staticmethod
    def jvp(ctx, *tangents: Tensor) -> Tensor:
        return torch.stack(tangents, dim=1)


def recurrence(rnn: nn.RNN | nn.LSTM, inputs: Tensor) -> Tensor:
    """The output [B, T, H] of ``rnn`` on ``inputs`` [B, T, E] (batch first, zero initial
    state), computed cell by cell: the values of ``rnn(inputs)[0]``, with a backward that stays
    linear in T when differentiated again."""
    lstm = isinstance(rnn, nn.LSTM)
    w_hh_t, b_hh = rnn.weight_hh_l0.t(), getattr(rnn, "bias_hh_l0", None)
    projected = F.linear(inputs, rnn.weight_ih_l0, getattr(rnn, "bias_ih_l0", None))
    if b_hh is not None:  # both biases enter every step: added once, for all steps
        projected = projected + b_hh
    act = torch.relu if getattr(rnn, "nonlinearity", "tanh") == "relu" else torch.tanh
    state = inputs.new_zeros(inputs.shape[0], rnn.hidden_size)
    cell = torch.zeros_like(state) if lstm else None
    outputs = []
    for x_t in projected.unbind(1):
        gates = torch.addmm(x_t, state, w_hh_t)
        if lstm:
            i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's gate order
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            state = torch.sigmoid(o) * torch.tanh(cell)
        else:
            state = act(gates)
        outputs.append(state)
    return _StackSteps.apply(*outputs)
