"""Tiny text data for data-free tests of the text tasks: Sentiment140 files written sorted by
label (all negatives, then all positives, as the real files), and small dataset/model configs."""

from __future__ import annotations

import gzip
from pathlib import Path

DATASET = {
    "name": "sentiment140",
    "hub_id": None,
    "fields": ["text"],
    "n_classes": 2,
    "train_split": "train",
    "test_split": "test",
    "glove": None,
    "min_freq": 1,
    "vocab_size": None,
}
MODEL = {"kind": "rnn", "cell": "lstm", "embed_dim": 8, "hidden": 8, "fc": [8], "glove": False}
WORDS = ("good", "bad", "fine", "sad", "glad", "mad", "ok", "meh")


def _csv(rows: list[tuple[int, str]]) -> bytes:
    lines = [f'"{4 * y}","{i}","Mon May 11 2009","q","u","{t}"\n' for i, (y, t) in enumerate(rows)]
    return gzip.compress("".join(lines).encode())


def sorted_sentiment140(root: Path, n_train: int, n_test: int) -> Path:
    """Sentiment140 files sorted by label: all negatives first, then all positives."""
    folder = root / "sentiment140"
    folder.mkdir(parents=True)
    for name, n in (
        ("train_random_subset.csv.gz", n_train),
        ("testdata.manual.2009.06.14.csv.gz", n_test),
    ):
        rows = [
            (y, f"{WORDS[i % 8]} {WORDS[(3 * i) % 8]} {i % 5}") for y in (0, 1) for i in range(n)
        ]
        (folder / name).write_bytes(_csv(rows))
    return root
