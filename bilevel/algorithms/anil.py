"""ANIL (Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, §4: "Almost No Inner Loop"). Spec BOREP-SLIP-ADAMBO §2.9.

MAML with the inner loop restricted to the head: the representation x is shared and only
meta-learned, the head starts every task from the meta-learned initialisation y₀.

    for t:  sample a batch of ``tasks_per_step`` tasks τ (support S_τ, query Q_τ)
            for each τ:  y_τ = K SGD steps y ← y − α∇ᵧg(x, y; S_τ) from y₀     (``lower``: SGD)
                         h_τ = ∇_{(x, y₀)} f(x, y_τ; Q_τ) through the K steps (second order:
                         the x part collects ∇ₓf + Σ_i −α∇²ₓᵧg·v_i), or at y_τ (``first_order``)
            (x, y₀) ← upper rule(mean_τ h_τ)

Per task: K ``grad_g``, one ``grad_f``, and when second order K ``hvp`` + K ``cross``.
Options (shared with MAML, see :mod:`bilevel.algorithms.maml`): ``estimator`` (implicit
meta-gradient), ``reference_head_only`` (quirk Q24: the reference code's first-order head-only
version, y₀ not meta-learned; ``reference_head`` copy | persistent), ``support_grad_in_x``
(quirk Q11), and ``frozen_encoder`` (quirk Q25, R-ADAM's ANIL: the outer step never reaches the
parameters, so only the inner loop trains the persistent head and x stays at its
initialisation; reference mode only).
"""

from __future__ import annotations

from typing import Literal

from bilevel.algorithms.base import UpperFactory
from bilevel.algorithms.maml import MAML
from bilevel.hypergrad import Estimator
from bilevel.lower import LowerStrategy


class ANIL(MAML):
    """ANIL (Raghu et al. 2020): head-only inner loop from a meta-learned head init."""

    name = "anil"

    def __init__(
        self,
        lower: LowerStrategy,
        upper: UpperFactory,
        estimator: Estimator | None = None,
        tasks_per_step: int = 4,
        first_order: bool = False,
        reference_head_only: bool = False,
        reference_head: Literal["copy", "persistent"] = "copy",
        support_grad_in_x: bool = False,
        frozen_encoder: bool = False,
    ):
        super().__init__(
            lower,
            upper,
            estimator,
            tasks_per_step,
            "head",
            first_order,
            reference_head_only,
            reference_head,
            support_grad_in_x,
            frozen_encoder,
        )
