"""Label noise (hyper-cleaning), clean validation splits, and class imbalance (deep AUC).

Label noise, paper mode (default): ``corrupt_labels(labels, rate, n_classes, seed)`` corrupts
EXACTLY ``round(rate·n)`` training examples (Python's ``round``, half to even), chosen uniformly
without replacement, each to a uniformly drawn DIFFERENT class ((y + U{1..C−1}) mod C), once,
from its own seeded generator; it returns the noisy labels and the corruption mask.

Label noise, reference quirk (spec ACCBO-UNIBIO Q5 = BOREP-SLIP Q28, "label noise re-sampled at
every access"): :class:`PerAccessNoise` redraws the noise every time a batch is read: each label
independently, with probability ``rate``, becomes (y + U{1..C−1}) mod C. Use it only when a
task's option asks for the reference behaviour; it draws from the generator it is given (the
run's), so runs stay reproducible.

Validation: ``split_train_val`` splits the CLEAN training data with a seed; corrupt only the
train part (``hypercleaning_split`` does both), so the validation split is never corrupted
(the reference validated on noisy data, quirks Q2/Q27).

Imbalance: ``imbalance(labels, pos_ratio, seed)`` subsamples so that the positive fraction
(label 1) of the returned set is EXACTLY ``pos_ratio`` (as the fraction a/b with the smallest
denominator ≤ 1000 that equals it to 1e-9), keeping as many examples as the classes allow, or
``n_negatives`` negatives as in the reference (1000 negatives, 4000 positives at 0.8).
``positive_ratio(labels)`` is the positive fraction of the WHOLE given set: pass the whole
training set (the reference took p from the first batch it saw, quirks Q23/Q40).

Evaluation subsets: ``stratified_subset(labels, n, seed)`` draws ``n`` rows with a seed,
stratified by label (class counts proportional to the set's, every class present when
n ≥ the number of classes), so that a metric on a subset of a label-sorted file (Sentiment140)
sees every class, not the first rows' one.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor


def _as_labels(labels: Tensor | Sequence[int], n_classes: int | None = None) -> Tensor:
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.is_floating_point():
        raise ValueError(f"labels must be a 1-d integer tensor, got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    if n_classes is not None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be ≥ 2, got {n_classes}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got {int(y.min())}..")
    return y


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must lie in [0, 1], got {rate}")


def corrupt_labels(
    labels: Tensor | Sequence[int], rate: float, n_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """``(noisy, is_corrupted)``: exactly ``round(rate·n)`` labels moved to another class."""
    _check_rate(rate)
    y = _as_labels(labels, n_classes)
    generator = torch.Generator().manual_seed(seed)
    k = round(rate * len(y))
    chosen = torch.randperm(len(y), generator=generator)[:k]
    shift = torch.randint(1, n_classes, (k,), generator=generator)
    noisy = y.clone()
    noisy[chosen] = (y[chosen] + shift) % n_classes
    is_corrupted = torch.zeros(len(y), dtype=torch.bool)
    is_corrupted[chosen] = True
    return noisy, is_corrupted


class PerAccessNoise:
    """Reference quirk Q5/Q28: ``noise(labels, generator)`` returns a fresh noisy copy of a
    batch's labels at every call (each flipped with probability ``rate`` to a different class).
    A fixed number of random numbers is drawn per call (2 per label), on the CPU generator."""

    def __init__(self, rate: float, n_classes: int):
        _check_rate(rate)
        if n_classes < 2:
            raise ValueError(f"n_classes must be ≥ 2, got {n_classes}")
        self.rate = rate
        self.n_classes = n_classes

    def __call__(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        n = labels.shape[0]
        flip = torch.rand(n, generator=generator) < self.rate
        shift = torch.randint(1, self.n_classes, (n,), generator=generator)
        flip, shift = flip.to(labels.device), shift.to(labels.device)
        return torch.where(flip, (labels + shift) % self.n_classes, labels)


def split_train_val(n: int, val_size: float | int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)``: ``(train_idx, val_idx)``, both sorted.
    ``val_size``: a fraction in (0, 1) (``round(val_size·n)`` examples) or a count."""
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"a fractional val_size lies in (0, 1), got {val_size}")
        n_val = round(val_size * n)
    else:
        n_val = int(val_size)
    if not 0 < n_val < n:
        raise ValueError(f"val_size={val_size} gives {n_val} of {n} examples for validation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class HyperCleaningSplit(NamedTuple):
    train_idx: Tensor  # positions in the clean training set
    val_idx: Tensor  # positions in the clean training set (labels never corrupted)
    train_labels: Tensor  # noisy labels of train_idx (aligned with it)
    is_corrupted: Tensor  # bool, aligned with train_idx


def hypercleaning_split(
    labels: Tensor | Sequence[int],
    n_classes: int,
    rate: float,
    val_size: float | int,
    seed: int,
) -> HyperCleaningSplit:
    """Split clean training data into train/val (seed ``seed``), then corrupt the train part
    only (seed ``seed + 1``)."""
    y = _as_labels(labels, n_classes)
    train_idx, val_idx = split_train_val(len(y), val_size, seed)
    noisy, is_corrupted = corrupt_labels(y[train_idx], rate, n_classes, seed + 1)
    return HyperCleaningSplit(train_idx, val_idx, noisy, is_corrupted)


def positive_ratio(labels: Tensor | Sequence[int]) -> float:
    """Fraction of label 1 in ``labels`` (binary); pass the WHOLE training set (Q23/Q40)."""
    y = _as_labels(labels, 2)
    if len(y) == 0:
        raise ValueError("positive_ratio of an empty label set")
    return float((y == 1).double().mean())


def imbalance(
    labels: Tensor | Sequence[int],
    pos_ratio: float,
    seed: int,
    n_negatives: int | None = None,
) -> Tensor:
    """Indices (sorted) of a subset whose positive fraction is exactly ``pos_ratio``.

    Negatives (label 0) and positives (label 1) are each drawn uniformly without replacement
    (seeded). Without ``n_negatives`` the subset is as large as the classes allow."""
    y = _as_labels(labels, 2)
    if not 0.0 < pos_ratio < 1.0:
        raise ValueError(f"pos_ratio must lie in (0, 1), got {pos_ratio}")
    frac = Fraction(pos_ratio).limit_denominator(1000)
    if abs(float(frac) - pos_ratio) > 1e-9:
        raise ValueError(f"pos_ratio={pos_ratio} is not a fraction with denominator ≤ 1000")
    a, b = frac.numerator, frac.denominator  # a positives per b - a negatives
    pos, neg = (y == 1).nonzero().squeeze(1), (y == 0).nonzero().squeeze(1)
    if n_negatives is not None:
        if n_negatives % (b - a):
            raise ValueError(
                f"n_negatives={n_negatives} is not a multiple of {b - a}: no subset has a "
                f"positive fraction of exactly {frac}"
            )
        t = n_negatives // (b - a)
        if t * a > len(pos) or n_negatives > len(neg):
            raise ValueError(
                f"{n_negatives} negatives and {t * a} positives requested, "
                f"{len(neg)} and {len(pos)} available"
            )
    else:
        t = min(len(pos) // a, len(neg) // (b - a))
        if t == 0:
            raise ValueError(
                f"too few examples ({len(pos)} positives, {len(neg)} negatives) for ratio {frac}"
            )
    generator = torch.Generator().manual_seed(seed)
    keep_pos = pos[torch.randperm(len(pos), generator=generator)[: t * a]]
    keep_neg = neg[torch.randperm(len(neg), generator=generator)[: t * (b - a)]]
    return torch.cat([keep_pos, keep_neg]).sort().values


def stratified_subset(labels: Tensor | Sequence[int], n: int, seed: int) -> Tensor:
    """Sorted indices of a seeded subset of ``min(n, len(labels))`` rows, stratified by label.

    Each class c gets ⌊n·N_c/N⌋ rows, at least one when n ≥ the number of classes; the rows
    left over go to the classes with the largest remainders n·N_c/N − ⌊·⌋ (ties: the smaller
    label). Within a class the rows are drawn uniformly without replacement from the generator
    seeded with ``seed``, so the subset is a function of (labels, n, seed). n ≥ N: every row."""
    y = _as_labels(labels)
    total = len(y)
    if n < 0:
        raise ValueError(f"subset size must be ≥ 0, got {n}")
    if n >= total:
        return torch.arange(total)
    classes, counts = torch.unique(y, return_counts=True)
    quota = [n * int(c) / total for c in counts]
    alloc = [int(q) for q in quota]
    if n >= len(classes):
        alloc = [max(a, 1) for a in alloc]
    while sum(alloc) > n:  # the minimum of one row per class overshot: trim the most over-served
        i = max((j for j in range(len(alloc)) if alloc[j] > 1), key=lambda j: alloc[j] - quota[j])
        alloc[i] -= 1
    while sum(alloc) < n:  # largest remainders first (max keeps the first of equal keys)
        i = max(
            (j for j in range(len(alloc)) if alloc[j] < int(counts[j])),
            key=lambda j: quota[j] - alloc[j],
        )
        alloc[i] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes.tolist(), alloc, strict=True):
        rows = (y == c).nonzero().squeeze(1)
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:k]])
    return torch.cat(chosen).sort().values
