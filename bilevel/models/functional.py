"""Using a model functionally: split its parameters into x and y, call it on given parameters.

A task keeps a model only as a function: ``x, y = split_params(model, upper)`` once, then
``functional(model)({**x, **y}, *inputs)`` in its losses, so the oracles differentiate w.r.t.
the dicts (never the module's own parameters, which stay untouched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bilevel.tree import Params

NamePredicate = Callable[[str], bool]


def prefix_predicate(prefixes: str | Sequence[str]) -> NamePredicate:
    """True for names equal to one of ``prefixes`` or below it (``'encoder'`` matches
    ``'encoder.rnn.weight_ih_l0'``, not ``'encoder2.w'``)."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def split_params(
    model: nn.Module, upper: NamePredicate | str | Sequence[str]
) -> tuple[Params, Params]:
    """(x, y): the model's trainable parameters, x = those whose name satisfies ``upper``, y = the
    rest; ``upper`` is a predicate on the name, or module prefixes (see :func:`prefix_predicate`).

    The tensors are detached copies (fresh leaves with ``requires_grad=True``, not sharing
    storage with the module), in ``named_parameters`` order. Parameters with
    ``requires_grad=False`` and buffers (e.g. frozen embeddings) are in neither: a functional call
    takes them from the module.
    """
    is_upper = upper if callable(upper) else prefix_predicate(upper)
    x: Params = {}
    y: Params = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            (x if is_upper(name) else y)[name] = p.detach().clone().requires_grad_(True)
    return x, y


def functional(model: nn.Module, strict: bool = False) -> Callable[..., Any]:
    """``f(params, *inputs) = model(*inputs)`` with the module's parameters replaced by
    ``params`` (``torch.func.functional_call``; names as in ``named_parameters``). Names absent
    from ``params`` (buffers, frozen parameters) are taken from the module unless ``strict``."""

    def call(params: Params, *inputs: Any, **kwargs: Any) -> Any:
        return functional_call(model, params, inputs, kwargs, strict=strict)

    return call


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (buffers never count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def seeded_init(generator: torch.Generator | None) -> Iterator[None]:
    """Run module construction on the CPU RNG seeded from ``generator`` (one draw), without
    disturbing the global RNG state afterwards; no-op when ``generator`` is None.

    torch's layers initialise from the global RNG; this makes a model a function of the task's
    parameter-initialisation generator, as everything else in the suite."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
