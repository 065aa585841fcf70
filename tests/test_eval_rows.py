"""Evaluation rows of the text tasks: a seeded subset of each split, stratified by label.

The Sentiment140 files are sorted by label, so metrics on the first ``eval_size`` rows of a
split saw one class only. Here tiny Sentiment140 files are written sorted by label (as
tests/test_data.py makes its tiny files) and every evaluated subset must hold every class, in
the split's proportions, and be the same for the same instance seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_text import DATASET, MODEL, sorted_sentiment140

from bilevel.data import stratified_subset
from bilevel.tasks.auc import DeepAUC
from bilevel.tasks.hypercleaning import HyperCleaning


def test_stratified_subset_sees_every_class_in_proportion_and_is_seeded():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 90 + [3] * 10)  # sorted by label
    idx = stratified_subset(labels, 100, seed=5)
    counts = torch.bincount(labels[idx], minlength=4).tolist()
    assert counts == [60, 30, 9, 1]  # proportional (largest remainders), every class present
    assert len(set(idx.tolist())) == 100 and bool((idx[1:] > idx[:-1]).all())  # distinct, sorted
    assert torch.equal(idx, stratified_subset(labels, 100, seed=5))  # deterministic
    assert not torch.equal(idx, stratified_subset(labels, 100, seed=6))  # the seed matters
    # a rare class keeps one row even when its share rounds to zero
    few = stratified_subset(labels, 20, 0)
    assert torch.bincount(labels[few], minlength=4).tolist() == [12, 6, 1, 1]
    assert torch.equal(stratified_subset(labels, 5000, 0), torch.arange(1000))  # n ≥ N: all


def hypercleaning(root: Path, seed: int = 0) -> HyperCleaning:
    return HyperCleaning(
        DATASET,
        MODEL,
        noise_rate=0.2,
        n_train=None,
        val_size=60,
        n_test=None,
        batch_size=8,
        val_batch_size=8,
        max_len=8,
        eval_size=40,
        data_dir=str(root),
        instance_seed=seed,
    )


def test_hypercleaning_evaluates_every_class_of_every_split(tmp_path):
    root = sorted_sentiment140(tmp_path, n_train=120, n_test=50)  # 240 train rows, 100 test
    task = hypercleaning(root)
    clean = task.clean_labels
    assert float(clean[:60].float().mean()) < 0.2 < 0.8 < float(clean[-60:].float().mean())
    for role, labels in (
        ("train", task.clean_labels),
        ("val", task.val.labels),
        ("test", task.test.labels),
    ):
        idx = task.eval_index[role]
        assert len(idx) == 40  # every split is larger than eval_size
        seen = torch.bincount(labels[idx], minlength=2)
        # both classes, in the split's proportion (±1 row of rounding)
        share = float(labels.float().mean()) * 40
        assert bool((seen > 0).all()), role
        assert abs(int(seen[1]) - share) <= 1, (role, seen.tolist(), share)
    # the same rows for the same instance seed (a new task object), other rows for another seed
    again = hypercleaning(root)
    for role in ("train", "val", "test"):
        assert torch.equal(task.eval_index[role], again.eval_index[role])
    other = hypercleaning(root, seed=1)
    assert not torch.equal(task.eval_index["test"], other.eval_index["test"])
    # evaluate() scores those rows: train_acc against the clean labels of the same rows
    x, y = task.init_params(torch.Generator().manual_seed(0))
    metrics = task.evaluate(x, y)
    rows, logits = task.scored_rows(y, "train")
    clean = task.clean_labels[rows["index"]]
    assert metrics["train_acc"] == pytest.approx(float((logits.argmax(-1) == clean).float().mean()))
    assert 0.0 < float(clean.float().mean()) < 1.0


def test_deep_auc_evaluates_both_classes_with_the_split_ratio(tmp_path):
    root = sorted_sentiment140(tmp_path, n_train=200, n_test=60)
    task = DeepAUC(
        DATASET,
        MODEL,
        imratio=0.8,
        n_train=None,
        batch_size=8,
        val_batch_size=8,
        max_len=8,
        eval_size=50,
        data_dir=str(root),
        instance_seed=0,
    )
    for role in ("train", "val", "test"):
        split = getattr(task, role)
        idx = task.eval_index[role]
        seen = torch.bincount(split.labels[idx], minlength=2)
        assert len(idx) == 50 and bool((seen > 0).all()), (role, seen.tolist())
        assert abs(int(seen[1]) - 50 * float(split.labels.float().mean())) <= 1
    x, y = task.init_params(torch.Generator().manual_seed(0))
    metrics = task.evaluate(x, y)
    for key in ("train_auc", "val_auc", "test_auc"):  # NaN if a subset held one class only
        assert metrics[key] == metrics[key], key
