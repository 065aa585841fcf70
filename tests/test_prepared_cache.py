"""The on-disk cache of prepared text data (bilevel.tasks.text.prepare, issue #13): a later
process loads the padded tensors and vocabulary instead of reading and tokenizing the files,
with the same result; any change of the files, the arguments or the code makes a new entry;
an unreadable entry is rebuilt; ``BILEVEL_CACHE_DIR=off`` keeps nothing."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_text import DATASET, sorted_sentiment140

import bilevel.tasks.text as text

ARGS = dict(max_len=16, splits={"train": "train", "test": "test"}, limit={}, seed=0)


def prepare_fresh(data_dir):
    """``prepare`` without the in-process memo (the disk cache stays): what a new process does."""
    return text.prepare.__wrapped__(DATASET, str(data_dir), **ARGS)


def same(a: text.TextData, b: text.TextData) -> None:
    assert a.vocab == b.vocab and a.fields == b.fields and a.n_classes == b.n_classes
    for role in a.splits:
        assert a.splits[role].tensors.keys() == b.splits[role].tensors.keys()
        for key, tensor in a.splits[role].tensors.items():
            torch.testing.assert_close(tensor, b.splits[role].tensors[key], rtol=0, atol=0)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BILEVEL_CACHE_DIR", str(cache))
    data = sorted_sentiment140(tmp_path / "data", 12, 4)
    return data, cache


def test_a_second_process_loads_the_cache_with_the_same_result(setup, monkeypatch):
    data, cache = setup
    first = prepare_fresh(data)
    entries = list(cache.glob("sentiment140-*.pt"))
    assert len(entries) == 1

    def no_files(*args, **kwargs):
        raise AssertionError("read the files although the cache holds them")

    monkeypatch.setitem(text.LOADERS, "sentiment140", no_files)
    same(prepare_fresh(data), first)


def test_changed_files_or_arguments_make_a_new_entry(setup):
    data, cache = setup
    prepare_fresh(data)
    text.prepare.__wrapped__(DATASET, str(data), **{**ARGS, "seed": 1})
    assert len(list(cache.glob("*.pt"))) == 2
    train = data / "sentiment140" / "train_random_subset.csv.gz"
    stat = train.stat()
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    prepare_fresh(data)
    assert len(list(cache.glob("*.pt"))) == 3


def test_an_unreadable_entry_is_rebuilt(setup, caplog):
    data, cache = setup
    first = prepare_fresh(data)
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    with caplog.at_level("WARNING"):
        same(prepare_fresh(data), first)
    assert "unreadable" in caplog.text
    same(text._from_payload(torch.load(entry, weights_only=True)), first)  # rewritten


def test_off_keeps_nothing(setup, monkeypatch):
    data, cache = setup
    monkeypatch.setenv("BILEVEL_CACHE_DIR", "off")
    prepare_fresh(data)
    assert not cache.exists()
