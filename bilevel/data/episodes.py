"""N-way K-shot episodes (meta-learning tasks) over a pool of labelled examples.

``EpisodeSampler(labels, n_way, k_shot, q_query, seed)``; ``sample()`` draws ``n_way`` distinct
classes uniformly, then ``k_shot + q_query`` distinct examples of each (uniformly, without
replacement): the first ``k_shot`` go to the support set, the rest to the query set. Returned:
support / query index tensors (grouped by class), task-relative labels (0..n_way−1, the i-th
smallest chosen class is i) and the chosen original classes (``classes[rel]`` = original id,
for heads that keep the original label ids, as SLIP's SNLI tasks do).

Classes with fewer than ``k_shot + q_query`` examples are EXCLUDED at construction, with a
warning that lists them (the reference skipped them silently at each draw and so produced
single-class tasks: quirk Q37, TREC-test ABBR has 9 examples); fewer than ``n_way`` remaining
classes is an error. Classes are sampled from a sorted list, never from dict keys (quirk Q38).

``groups`` (optional, e.g. Amazon domains): each episode first picks one group, then its
classes within that group; ``group_weighting="examples"`` picks a group with probability
proportional to its number of examples (the BO-REP reference draws a random example and takes
its domain), ``"uniform"`` uniformly. Groups with fewer than ``n_way`` eligible classes are
excluded (with a warning).

Randomness: the sampler's own generator, seeded with ``seed`` (deterministic), or the
generator passed to ``sample(generator)`` (e.g. the run's). ``fixed_tasks(n)`` pre-draws a list
of ``n`` episodes (the papers' fixed 400/500 train and 50/100/500 test tasks: use one sampler per
split); ``stack_episodes`` stacks a list into batched tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Episode:
    support: Tensor  # [n_way·k_shot] example indices (dataset positions)
    support_labels: Tensor  # [n_way·k_shot] task-relative labels in 0..n_way-1
    query: Tensor  # [n_way·q_query]
    query_labels: Tensor  # [n_way·q_query]
    classes: Tensor  # [n_way] original class ids, ascending; classes[rel] = original
    group: Tensor  # [] group id (−1 without groups)


class EpisodeSampler:
    def __init__(
        self,
        labels: Tensor | Sequence[int],
        n_way: int,
        k_shot: int,
        q_query: int,
        seed: int = 0,
        index: Tensor | Sequence[int] | None = None,
        groups: Tensor | Sequence[int] | None = None,
        group_weighting: Literal["examples", "uniform"] = "examples",
    ):
        """``labels``: the pool's labels; ``index``: each pool entry's dataset position (the
        indices returned; default 0..len-1); ``groups``: a group id per pool entry."""
        y = torch.as_tensor(labels).long()
        if y.ndim != 1:
            raise ValueError("labels must be 1-d")
        if n_way < 1 or k_shot < 1 or q_query < 0:
            got = (n_way, k_shot, q_query)
            raise ValueError(f"need n_way ≥ 1, k_shot ≥ 1, q_query ≥ 0; got {got}")
        if group_weighting not in ("examples", "uniform"):
            raise ValueError(f"group_weighting: examples or uniform, got {group_weighting!r}")
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.index = torch.arange(len(y)) if index is None else torch.as_tensor(index).long()
        if self.index.shape != y.shape:
            raise ValueError("index must have one entry per label")
        g = torch.full_like(y, -1) if groups is None else torch.as_tensor(groups).long()
        if g.shape != y.shape:
            raise ValueError("groups must have one entry per label")
        self.group_weighting = group_weighting
        need = k_shot + q_query

        # per group (sorted): the eligible classes (sorted list) and their pool positions
        self.groups: list[int] = []
        self.group_sizes: list[int] = []
        self.classes: list[list[int]] = []
        self.members: list[dict[int, Tensor]] = []
        excluded, dropped = [], []
        for gid in sorted(set(g.tolist())):
            in_group = g == gid
            eligible: list[int] = []
            members: dict[int, Tensor] = {}
            for c in sorted(set(y[in_group].tolist())):
                pos = (in_group & (y == c)).nonzero().squeeze(1)
                if len(pos) >= need:
                    eligible.append(c)
                    members[c] = pos
                else:
                    excluded.append((gid, c, len(pos)))
            if len(eligible) < n_way:
                dropped.append(gid)
                continue
            self.groups.append(gid)
            self.group_sizes.append(int(in_group.sum()))
            self.classes.append(eligible)
            self.members.append(members)
        if excluded:
            what = ", ".join(
                f"class {c} ({n} examples)" if gid == -1 else f"group {gid} class {c} ({n})"
                for gid, c, n in excluded
            )
            log.info(  # a data notice, logged once per sampler like the loaders' (not a warning)
                "EpisodeSampler: excluded %s: fewer than k_shot + q_query = %d examples (quirk "
                "Q37: the reference kept them and built single-class tasks)",
                what,
                need,
            )
        if not self.groups:
            raise ValueError(
                f"EpisodeSampler: fewer than n_way = {n_way} classes have k_shot + q_query = "
                f"{need} examples" + ("" if groups is None else " in any group")
            )
        if dropped and groups is not None:
            log.info(
                "EpisodeSampler: excluded groups %s: fewer than n_way = %d eligible classes",
                dropped,
                n_way,
            )
        self._group_weights = torch.tensor(self.group_sizes, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def eligible_classes(self) -> list[int]:
        """The eligible classes (of all groups), sorted."""
        return sorted({c for cs in self.classes for c in cs})

    def sample(self, generator: torch.Generator | None = None) -> Episode:
        gen = self.generator if generator is None else generator
        if len(self.groups) == 1:
            gi = 0
        elif self.group_weighting == "examples":
            gi = int(torch.multinomial(self._group_weights, 1, generator=gen))
        else:
            gi = int(torch.randint(len(self.groups), (1,), generator=gen))
        classes = self.classes[gi]
        draw = torch.randperm(len(classes), generator=gen)[: self.n_way].tolist()
        chosen = sorted(classes[i] for i in draw)
        k, need = self.k_shot, self.k_shot + self.q_query
        support, query = [], []
        for c in chosen:
            pos = self.members[gi][c]
            pick = pos[torch.randperm(len(pos), generator=gen)[:need]]
            support.append(pick[:k])
            query.append(pick[k:])
        rel = torch.arange(self.n_way)
        return Episode(
            support=self.index[torch.cat(support)],
            support_labels=rel.repeat_interleave(k),
            query=self.index[torch.cat(query)],
            query_labels=rel.repeat_interleave(self.q_query),
            classes=torch.tensor(chosen),
            group=torch.tensor(self.groups[gi]),
        )

    def fixed_tasks(self, n: int, generator: torch.Generator | None = None) -> list[Episode]:
        """``n`` episodes drawn once (in order, from the sampler's generator by default)."""
        return [self.sample(generator) for _ in range(n)]


def stack_episodes(episodes: Sequence[Episode]) -> Episode:
    """One Episode whose tensors have a leading task dimension."""
    return Episode(
        *(torch.stack([getattr(e, f) for e in episodes]) for f in Episode.__dataclass_fields__)
    )
