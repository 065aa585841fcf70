"""MAML (Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", ICML 2017, Algorithm 2; first-order MAML, §5.2), whose machinery ANIL reuses with
a head-only inner loop (``bilevel/algorithms/anil.py``). Spec BOREP-SLIP-ADAMBO §2.9, §1.

Meta-parameters θ = (x, y₀): the representation x and the head initialisation y₀ (state.y).

    for t:  sample a batch of ``tasks_per_step`` tasks τ, each with a support set S_τ and a
            query set Q_τ (``problem.episodes``)
            for each τ:  θ'_τ = K SGD steps θ ← θ − α∇g(θ; S_τ) from θ        (``lower``: SGD)
                         (``adapt='all'``: every parameter, the paper; ``'head'``: only y, x fixed)
                         h_τ = ∇_θ f(θ'_τ; Q_τ), differentiated THROUGH the K steps
                         (second order, the paper) or at θ'_τ (``first_order``: FOMAML)
            θ ← upper rule(mean_τ h_τ)                                (torch.optim SGD or Adam)

The inner loop runs in the oracle layer (``oracles.adapt`` + ``oracles.grad_f_through``): K
``grad_g`` and one ``grad_f`` per task, plus K ``hvp`` and K ``cross`` per task when second order.
``state.hypergrad`` is the task-averaged meta-gradient over keys ``x.<name>`` and ``y.<name>``:
``grad_x_f`` its first-order part (∇f at the adapted point), ``second_order`` = first-order part
minus meta-gradient (what flows back through the steps), so that value = grad_x_f − second_order.

Options beyond the paper:

* ``estimator`` (default None): implicit meta-gradient for head adaptation (``adapt='head'``):
  after the K steps, the x part is the bilevel hypergradient ∇ₓf − ∇²ₓᵧg·[∇²ᵧᵧg]⁻¹∇ᵧf of the
  task's (support, query) pair at y_K, estimated by any hypergradient estimator of the suite
  (exact for y_K = argmin g; iMAML-style); the y₀ part is the first-order ∇ᵧf(y_K) (one more
  ``grad_f``). The head may then be adapted by any ``lower`` strategy.
* ``reference_head_only`` (quirk Q24): the reference code's "MAML"/"ANIL" (R-SLIP, R-ADAM):
  first-order, head-only adaptation; only x is meta-learned, by ∇ₓf(x, y_K; Q_τ) averaged over
  the tasks; y₀ is never meta-trained. ``reference_head`` says where the adapted head starts:
  ``copy`` (R-SLIP: a copy of the fixed, never-trained initial head per task) or ``persistent``
  (R-ADAM: one shared head adapted in place and carried across tasks and batches; §1). The
  reference code's test-time adaptation of that persistent head (quirk Q7) is not reproduced:
  evaluation never changes the training state.
* ``support_grad_in_x`` (quirk Q11, reference mode only): the encoder gradient also collects
  ∇ₓg of every support backward pass, h_x = ∇ₓf + Σ_{i<K} ∇ₓg(x, y_i; S_τ).
* ``frozen_encoder`` (quirk Q25, reference mode only): R-ADAM's ANIL sets the gradients after
  zero_grad has emptied them, so its outer step changes nothing; only the inner loop trains the
  (persistent) head and x stays at its initialisation.

The lower strategy's ``lr`` and ``steps`` are α and K; its ``interval`` is ignored (every task
adapts), its ``warm_start_with`` refines the persistent head once (reference mode). Adaptations
that are differentiated (second order) or that move x need ``lower`` = plain SGD
(:class:`bilevel.lower.SGD`); other strategies adapt the head first-order on the support set.
"""

from __future__ import annotations

from typing import Literal

from bilevel import tree
from bilevel.algorithms.base import Algorithm, State, UpperFactory
from bilevel.hypergrad import Estimator, Hypergrad
from bilevel.lower import SGD, LowerStrategy
from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tree import Params
from bilevel.upper import apply


class _Episode(Problem):
    """The run's problem restricted to one task: every lower batch is the task's support set and
    every upper batch its query set (same oracles, counter and generator)."""

    def __init__(self, problem: Problem, support: Batch, query: Batch):
        self.task, self.generator, self.oracles = problem.task, problem.generator, problem.oracles
        self._support, self._query = support, query

    def lower_batch(self) -> Batch:
        return self._support

    def upper_batch(self) -> Batch:
        return self._query


def meta_params(x: Params, y: Params | None) -> Params:
    """The meta-parameters as one dict (``x.<name>``, ``y.<name>``), sharing the tensors."""
    out = {f"x.{k}": v for k, v in x.items()}
    if y is not None:
        out.update({f"y.{k}": v for k, v in y.items()})
    return out


class MAML(Algorithm):
    """MAML (Finn et al. 2017, Alg. 2): adapt every parameter (``adapt='all'``) K SGD steps per
    task, meta-gradient through the steps (``first_order=true``: FOMAML); the batch-of-tasks
    machinery ANIL shares (see the module doc). ``frozen_encoder`` (quirk Q25, reference mode):
    the outer step never reaches the parameters (R-ADAM's ANIL)."""

    name = "maml"

    def __init__(
        self,
        lower: LowerStrategy,
        upper: UpperFactory,
        estimator: Estimator | None = None,
        tasks_per_step: int = 25,
        adapt: Literal["all", "head"] = "all",
        first_order: bool = False,
        reference_head_only: bool = False,
        reference_head: Literal["copy", "persistent"] = "copy",
        support_grad_in_x: bool = False,
        frozen_encoder: bool = False,
    ):
        self.lower, self.upper, self.estimator = lower, upper, estimator
        self.tasks_per_step = tasks_per_step
        self.adapt = adapt
        self.first_order = first_order
        self.reference_head_only = reference_head_only
        self.reference_head = reference_head
        self.support_grad_in_x = support_grad_in_x
        self.frozen_encoder = frozen_encoder

    # -- configuration ---------------------------------------------------------------------------
    @property
    def _persistent(self) -> bool:
        return self.reference_head_only and self.reference_head == "persistent"

    @property
    def _differentiated(self) -> bool:
        """Whether the meta-gradient goes through the inner steps (second order)."""
        return not (self.first_order or self.reference_head_only or self.estimator is not None)

    def _check(self) -> None:
        """Reject combinations without a meaning (at ``init``, so that every part of the config
        tree still instantiates with every other; the message names the keys)."""
        name = self.name or type(self).__name__
        sgd = type(self.lower) is SGD
        if self.tasks_per_step < 1:
            raise ValueError(f"{name}: tasks_per_step must be >= 1, got {self.tasks_per_step}")
        reference_only = {
            "reference_head=persistent": self.reference_head == "persistent",
            "support_grad_in_x": self.support_grad_in_x,
            "frozen_encoder": self.frozen_encoder,
        }
        for key, on in reference_only.items():
            if on and not self.reference_head_only:
                raise ValueError(
                    f"{name}: {key} is a reference-code quirk; it needs reference_head_only=true"
                )
        if self.reference_head_only and self.estimator is not None:
            raise ValueError(f"{name}: reference_head_only is first order; set estimator to null")
        if self.estimator is not None and (self.adapt != "head" or self.first_order):
            raise ValueError(
                f"{name}: an estimator (implicit meta-gradient) needs adapt=head and "
                "first_order=false"
            )
        if self.support_grad_in_x and not sgd:
            raise ValueError(f"{name}: support_grad_in_x needs lower=sgd")
        moves_x = self.adapt == "all" and not self.reference_head_only
        if not sgd and (moves_x or self._differentiated):
            raise ValueError(
                f"{name}: the inner loop is differentiated or adapts x, which needs lower=sgd "
                f"(plain SGD steps), got {type(self.lower).__name__}; use first_order=true, "
                "adapt=head, or an estimator"
            )

    # -- the algorithm ---------------------------------------------------------------------------
    def init(self, problem: Problem, x: Params, y: Params) -> State:
        self._check()
        learned = meta_params(x, None if self.reference_head_only else y)
        state = State(x=x, y=y, upper=self.upper(list(learned.values())))
        if self.estimator is not None:
            state.estimator = self.estimator.init_state(x, y)
        if self._persistent:
            state.lower = self.lower.init_state(y)
            self.lower.warm_start(problem, x, y, state.lower)
        return state

    def step(self, problem: Problem, state: State) -> State:
        episodes = problem.episodes(self.tasks_per_step)
        total: Hypergrad | None = None
        for support, query in episodes:
            h = self._task(problem, state, support, query)
            total = h if total is None else _add(total, h)
        state.hypergrad = _scale(total, 1.0 / len(episodes))
        if not self.frozen_encoder:
            learned = meta_params(state.x, None if self.reference_head_only else state.y)
            apply(state.upper, learned, state.hypergrad.value)
        state.t += 1
        return state

    def _task(self, problem: Problem, state: State, support: Batch, query: Batch) -> Hypergrad:
        """The meta-gradient of one task (a Hypergrad over the meta-parameter keys)."""
        oracles, x = problem.oracles, state.x
        if type(self.lower) is not SGD:  # first-order head adaptation by any lower strategy
            y_k = state.y if self._persistent else tree.clone(state.y)
            lower_state = state.lower if self._persistent else self.lower.init_state(y_k)
            self.lower.run(_Episode(problem, support, query), x, y_k, lower_state)
        else:
            adapted = oracles.adapt(
                x,
                state.y,
                support,
                self.lower.lr,
                self.lower.steps,
                create_graph=self._differentiated,
                adapt_x=self.adapt == "all" and not self.reference_head_only,
                support_grad_x=self.support_grad_in_x,
            )
            y_k = adapted.y
            if self._persistent:
                tree.copy_(state.y, y_k)
        if self.estimator is not None:
            h = self.estimator(_Episode(problem, support, query), x, y_k, state.estimator)
            gy = oracles.grad_f(x, y_k, query, wrt_x=False).y
            return _join(h, gy)
        if type(self.lower) is not SGD:
            fg = oracles.grad_f(x, y_k, query)
            grad = Hypergrad(fg.x, fg.x, tree.zeros_like(fg.x))
            return _join(grad, None if self.reference_head_only else fg.y)
        mg = oracles.grad_f_through(adapted, query)
        if self.reference_head_only:
            fx = meta_params(mg.x_direct, None)
            extra = adapted.support_grad_x
            if extra is None:
                return Hypergrad(fx, fx, tree.zeros_like(fx))
            # value = ∇ₓf + Σ∇ₓg: the contamination is carried as −second_order
            extra = meta_params(extra, None)
            return Hypergrad(tree.add(fx, extra), fx, tree.scale(extra, -1.0))
        value = meta_params(mg.x, mg.y)
        first = meta_params(mg.x_direct, mg.y_direct)
        return Hypergrad(value, first, tree.sub(first, value))

    def lower_point(self, state: State) -> Params:
        return state.y


def _join(h: Hypergrad, grad_y: Params | None) -> Hypergrad:
    """An x-space Hypergrad plus a first-order y₀ part (if any), over the meta-parameter keys."""
    return Hypergrad(
        meta_params(h.value, grad_y),
        meta_params(h.grad_x_f, grad_y),
        meta_params(h.second_order, None if grad_y is None else tree.zeros_like(grad_y)),
    )


def _add(a: Hypergrad, b: Hypergrad) -> Hypergrad:
    return Hypergrad(
        tree.add(a.value, b.value),
        tree.add(a.grad_x_f, b.grad_x_f),
        tree.add(a.second_order, b.second_order),
    )


def _scale(a: Hypergrad, c: float) -> Hypergrad:
    return Hypergrad(
        tree.scale(a.value, c), tree.scale(a.grad_x_f, c), tree.scale(a.second_order, c)
    )
