"""The data layer (``bilevel.data``): unit tests on tiny files written here in every format
(malformed ones must raise a DataError naming the file and line), the hub paths with
``datasets.load_dataset`` mocked (no internet here), and integration tests on the real files of
``shared/data`` (skipped when it is absent).

Measured on the real files (this machine, CPU): SNLI train-subset vocabulary (premise +
hypothesis, min_freq 1) 10,771 entries, GloVe 6B-50d subset coverage 96.3% of its non-special
types (asserted ≥ 0.95) and 99.9% of its tokens (asserted ≥ 0.99); vocab + encoding + padding
of the 20k pairs ≈ 1.0 s (asserted < 10 s).
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import warnings
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch

from bilevel.data import (
    BOS,
    EOS,
    DataError,
    EpisodeSampler,
    PaddedSplit,
    PerAccessNoise,
    Tokenizer,
    Vocab,
    build_vocab,
    column_tensor,
    corrupt_labels,
    encode,
    find_gz_or_plain,
    glove_embeddings,
    hypercleaning_split,
    imbalance,
    lengths_to_mask,
    load_amazon,
    load_sentiment140,
    load_snli,
    load_trec,
    positive_ratio,
    read_glove,
    resolve_data_dir,
    split_train_val,
    stack_episodes,
    zero_beyond_premise,
)
from bilevel.data import paths as data_paths

REAL = data_paths.DEFAULT_DATA_DIR
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")


def write(path: Path, text: str | bytes, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def raises_at(path_part: str, line: int | None):
    """pytest.raises(DataError) whose message names the file (and the line)."""
    where = f"{path_part}:{line}:" if line is not None else path_part
    return pytest.raises(DataError, match=where.replace(".", r"\."))


# --------------------------------------------------------------------------- data directory


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    explicit, env, default = (tmp_path / n for n in ("explicit", "env", "default"))
    for d in (explicit, env, default):
        d.mkdir()
    monkeypatch.setattr(data_paths, "DEFAULT_DATA_DIR", default)
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(env))
    assert resolve_data_dir(str(explicit)) == explicit
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("BILEVEL_DATA_DIR")
    assert resolve_data_dir(None) == default
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("explicit") == explicit  # relative to the working directory


def test_resolve_data_dir_errors_name_all_three(tmp_path, monkeypatch):
    monkeypatch.setattr(data_paths, "DEFAULT_DATA_DIR", tmp_path / "nodefault")
    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    with pytest.raises(DataError) as e:
        resolve_data_dir(None)
    assert "paths.data_dir" in str(e.value) and "BILEVEL_DATA_DIR" in str(e.value)
    assert "nodefault" in str(e.value)
    (tmp_path / "nodefault").mkdir()
    with pytest.raises(DataError, match="missing"):  # an explicit setting never falls back
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        resolve_data_dir(None)


# ------------------------------------------------------------------------------------- SNLI


def snli_dir(tmp_path: Path, labels: str = "neutral\nentailment\n-\ncontradiction\n") -> Path:
    root = tmp_path / "snli" / "SNLI"
    write(root / "s1.dev", "A man sleeps . \nA dog runs . \nX . \nTwo kids play . \n")
    write(root / "s2.dev", "He is tired . \nAn animal moves . \nY . \nNobody plays . \n")
    write(root / "labels.dev", labels)
    return tmp_path


def test_snli_infersent(tmp_path):
    ds = load_snli("dev", data_dir=snli_dir(tmp_path))
    assert ds.column_names == ["premise", "hypothesis", "label"]
    assert ds["label"] == [1, 0, 2]  # entailment 0, neutral 1, contradiction 2; "-" dropped
    assert ds[0]["premise"] == "A man sleeps . "  # raw text kept


def test_snli_infersent_errors(tmp_path):
    snli_dir(tmp_path, labels="neutral\nentails\n-\ncontradiction\n")
    with raises_at("labels.dev.gz", 2):
        load_snli("dev", data_dir=tmp_path)
    snli_dir(tmp_path, labels="neutral\nentailment\n")
    with raises_at("labels.dev.gz", 3):  # line counts differ
        load_snli("dev", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"s1\.test"):  # missing file
        load_snli("test", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown SNLI split"):
        load_snli("validation", data_dir=tmp_path)


def test_snli_train_tsv(tmp_path):
    header = "gold_label\tsentence1\tsentence2\n"
    rows = "entailment\tA man.\tA person.\ncontradiction\tA dog.\tA cat.\n-\ta\tb\n"
    write(tmp_path / "snli" / "snli_1.0_train_subset20k.tsv", header + rows)
    ds = load_snli("train", data_dir=tmp_path)  # no InferSent train file: the TSV subset
    assert ds["label"] == [0, 2] and ds["premise"] == ["A man.", "A dog."]
    write(tmp_path / "snli" / "snli_1.0_train_subset20k.tsv", header + "neutral\tonly two\n")
    with raises_at("snli_1.0_train_subset20k.tsv.gz", 2):
        load_snli("train", data_dir=tmp_path)
    write(tmp_path / "snli" / "snli_1.0_train_subset20k.tsv", "label\ts1\ts2\n" + rows)
    with raises_at("snli_1.0_train_subset20k.tsv.gz", 1):
        load_snli("train", data_dir=tmp_path)


# ------------------------------------------------------------------------------ Sentiment140


def s140_row(polarity: str, text: str) -> str:
    return f'"{polarity}","1","Mon May 11 03:17:40 UTC 2009","q","user","{text}"\n'


def test_sentiment140_csv(tmp_path):
    rows = [
        s140_row("4", "I love it"),
        s140_row("2", "meh"),
        s140_row("0", 'two\nlines and ""quotes""'),
        s140_row("0", "sad"),
    ]
    write(tmp_path / "sentiment140" / "testdata.manual.2009.06.14.csv", "".join(rows))
    ds = load_sentiment140("test", data_dir=tmp_path)
    assert ds["label"] == [1, 0, 0]  # the neutral row is dropped
    assert ds["text"][1] == 'two\nlines and "quotes"'
    # errors name the line where the bad record starts (record 3 spans lines 3-4 above)
    bad = rows[:3] + ['"0","1","date","q","user"\n']
    write(tmp_path / "sentiment140" / "testdata.manual.2009.06.14.csv", "".join(bad))
    with raises_at("testdata.manual.2009.06.14.csv.gz", 5):
        load_sentiment140("test", data_dir=tmp_path)
    bad = rows[:1] + [s140_row("3", "what")]
    write(tmp_path / "sentiment140" / "testdata.manual.2009.06.14.csv", "".join(bad))
    with raises_at("testdata.manual.2009.06.14.csv.gz", 2):
        load_sentiment140("test", data_dir=tmp_path)
    bad = s140_row("4", "ok").encode() + b'"0","2","d","q","u","caf\xe9"\n'
    write(tmp_path / "sentiment140" / "train_random_subset.csv", bad)
    with raises_at("train_random_subset.csv.gz", 2):  # not UTF-8
        load_sentiment140("train", data_dir=tmp_path)


def test_empty_files_and_nul_bytes_name_the_file(tmp_path):
    """Issue #14: an empty or header-only file is a DataError naming it (not a later
    'premise_ids missing'); a NUL byte is a DataError naming file and line."""
    tsv = tmp_path / "snli" / "snli_1.0_train_subset20k.tsv"
    csv_file = tmp_path / "sentiment140" / "testdata.manual.2009.06.14.csv"
    for header in ("gold_label\tsentence1\tsentence2\n", ""):
        write(tsv, header)
        with pytest.raises(DataError, match=r"subset20k\.tsv\.gz: no samples"):
            load_snli("train", data_dir=tmp_path)
    write(csv_file, "")
    with pytest.raises(DataError, match=r"14\.csv\.gz: no samples"):
        load_sentiment140("test", data_dir=tmp_path)
    write(tsv, "gold_label\tsentence1\tsentence2\nentailment\tA m\x00an.\tA person.\n")
    with raises_at("snli_1.0_train_subset20k.tsv.gz", 2):
        load_snli("train", data_dir=tmp_path)
    write(csv_file, s140_row("4", "fine") + s140_row("0", "bad\x00byte"), gz=False)
    (tmp_path / "sentiment140" / "testdata.manual.2009.06.14.csv.gz").unlink()
    with raises_at("testdata.manual.2009.06.14.csv", 2):
        load_sentiment140("test", data_dir=tmp_path)


def test_a_data_file_is_found_gzipped_or_not(tmp_path):
    """GloVe (and any file named with or without .gz in a config) is found either way."""
    plain = write(tmp_path / "glove" / "g.txt", "the 0.1 0.2\n", gz=False)
    assert find_gz_or_plain(tmp_path / "glove" / "g.txt.gz") == plain
    zipped = write(tmp_path / "glove" / "h.txt", "the 0.1 0.2\n")
    assert find_gz_or_plain(tmp_path / "glove" / "h.txt") == zipped
    with pytest.raises(DataError, match=r"k\.txt\.gz: file not found \(also tried k\.txt\)"):
        find_gz_or_plain(tmp_path / "glove" / "k.txt.gz")


# ------------------------------------------------------------------------------------- TREC


def test_trec(tmp_path):
    text = b"NUM:dist How far ?\nHUM:ind Who was Galileo ?\nLOC:other Where is sister\xf0city ?\n"
    write(tmp_path / "trec" / "TREC_10.label", text)
    ds = load_trec("test", data_dir=tmp_path)
    assert ds["label"] == [5, 3, 4]  # ABBR ENTY DESC HUM LOC NUM
    assert ds["fine_label"] == [40, 29, 35]
    assert ds["text"][2] == "Where is sister\u00f0city ?"  # Latin-1
    write(tmp_path / "trec" / "TREC_10.label", b"NUM:dist How far ?\nWHAT:x Who ?\n")
    with raises_at("TREC_10.label.gz", 2):
        load_trec("test", data_dir=tmp_path)
    write(tmp_path / "trec" / "TREC_10.label", b"NUM:dist How far ?\nNUM:distance Far ?\n")
    with raises_at("TREC_10.label.gz", 2):  # unknown fine label
        load_trec("test", data_dir=tmp_path)
    write(tmp_path / "trec" / "TREC_10.label", b"NUM:dist How far ?\nno label here\n")
    with raises_at("TREC_10.label.gz", 2):
        load_trec("test", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"train_5500\.label.*not found"):
        load_trec("train", data_dir=tmp_path)
    (tmp_path / "trec" / "train_5500.label.gz").write_bytes(b"not gzip data\n")
    with raises_at("train_5500.label.gz", 1):  # unreadable (not gzip)
        load_trec("train", data_dir=tmp_path)


# ----------------------------------------------------------------------------------- Amazon


def amazon_records(**extra) -> list[dict]:
    return [
        {"domain": "books", "text": "great read", "label": "positive", **extra},
        {"domain": "dvd", "text": "boring", "label": "negative", **extra},
    ]


def write_json_lines(path: Path, records: list) -> Path:
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return write(path, "[\n" + body + "\n]\n")


def test_amazon(tmp_path):
    write_json_lines(tmp_path / "amazon" / "dataset_arsc_t4.json", amazon_records())
    ds = load_amazon(data_dir=tmp_path)
    assert ds.column_names == ["domain", "text", "label"]
    assert ds["label"] == [0, 1]  # BO-REP: positive 0, negative 1
    assert len(load_amazon(data_dir=tmp_path, domains=["dvd"])) == 1
    # BO-REP's own dataset.json layout (one JSON line), by path
    single = write(tmp_path / "dataset.json", json.dumps(amazon_records()), gz=False)
    assert load_amazon(single)["text"] == ["great read", "boring"]
    # arsc_all: task/split columns and filters; pooling tasks warns
    records = amazon_records(task="t2", split="train") + amazon_records(task="t4", split="dev")
    write_json_lines(tmp_path / "amazon" / "arsc_all.json", records)
    with pytest.warns(UserWarning, match="several ARSC tasks"):
        assert len(load_amazon("arsc_all.json.gz", data_dir=tmp_path)) == 4
    ds = load_amazon("arsc_all.json.gz", data_dir=tmp_path, task="t4", split="dev")
    assert ds.column_names == ["domain", "text", "label", "task", "split"] and len(ds) == 2


def test_amazon_errors(tmp_path):
    path = tmp_path / "amazon" / "dataset_arsc_t4.json"
    write(path, '[\n{"domain": "a", "text": "t", "label": "positive"},\n{"domain": "a", "te\n]\n')
    with raises_at("dataset_arsc_t4.json.gz", 3):
        load_amazon(data_dir=tmp_path)
    write_json_lines(path, [*amazon_records(), {"domain": "a", "text": "t", "label": "meh"}])
    with raises_at("dataset_arsc_t4.json.gz", 4):
        load_amazon(data_dir=tmp_path)
    write_json_lines(path, [*amazon_records(), {"domain": "a", "label": "positive"}])
    with raises_at("dataset_arsc_t4.json.gz", 4):
        load_amazon(data_dir=tmp_path)
    bad = write(tmp_path / "bad.json", '[{"domain": "a",\n "text": }]', gz=False)
    with raises_at("bad.json", 2):
        load_amazon(bad)
    with pytest.raises(DataError, match="not found"):
        load_amazon("nothing.json", data_dir=tmp_path)


# -------------------------------------------------------------------- hub (mocked network)


def fake_hub(monkeypatch, tables: dict[tuple[str, str], datasets.Dataset]):
    calls = []

    def load_dataset(hub_id, split=None, cache_dir=None):
        calls.append((hub_id, split))
        if (hub_id, split) not in tables:
            raise ConnectionError("no internet")
        return tables[(hub_id, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_paths(monkeypatch):
    snli_label = datasets.ClassLabel(names=["entailment", "contradiction", "neutral"])
    snli = datasets.Dataset.from_dict(
        {"premise": ["a", "b", "c"], "hypothesis": ["d", "e", "f"], "label": [0, -1, 2]},
        features=datasets.Features(
            {
                "premise": datasets.Value("string"),
                "hypothesis": datasets.Value("string"),
                "label": snli_label,
            }
        ),
    )
    coarse = datasets.ClassLabel(names=["NUM", "ABBR", "ENTY", "DESC", "HUM", "LOC"])
    fine = datasets.ClassLabel(names=["NUM:dist", "ABBR:exp"])
    trec = datasets.Dataset.from_dict(
        {"text": ["How far ?", "What is X ?"], "coarse_label": [0, 1], "fine_label": [0, 1]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "coarse_label": coarse, "fine_label": fine}
        ),
    )
    s140 = datasets.Dataset.from_dict(
        {"text": ["x", "y", "z"], "date": ["d"] * 3, "user": ["u"] * 3, "sentiment": [4, 2, 0]}
    )
    calls = fake_hub(
        monkeypatch,
        {
            ("stanfordnlp/snli", "validation"): snli,
            ("CogComp/trec", "test"): trec,
            ("stanfordnlp/sentiment140", "test"): s140,
        },
    )
    ds = load_snli("dev", hub_id="stanfordnlp/snli")
    assert ds.column_names == ["premise", "hypothesis", "label"]
    assert list(ds["label"]) == [0, 1]  # -1 dropped; mapped by class name (neutral is 1)
    ds = load_trec("test", hub_id="CogComp/trec")
    assert ds["label"] == [5, 0] and ds["fine_label"] == [40, 1]  # mapped by class name
    ds = load_sentiment140("test", hub_id="stanfordnlp/sentiment140")
    assert ds.column_names == ["text", "label"] and ds["label"] == [1, 0]
    assert calls[0] == ("stanfordnlp/snli", "validation")
    with pytest.raises(DataError, match="no internet"):
        load_snli("train", hub_id="stanfordnlp/snli")


# ------------------------------------------------------------------ tokenizer and vocabulary


def test_tokenizer():
    tok = Tokenizer()
    assert tok("An airplane.") == ["an", "airplane", "."]
    assert tok("I don't like John's 3.5 cats (really)!") == [
        *("i", "do", "n't", "like", "john", "'s", "3.5", "cats", "(", "really", ")", "!"),
    ]
    assert tok("Two women are embracing . ") == ["two", "women", "are", "embracing", "."]
    assert tok("café") == ["café"]
    assert Tokenizer(mode="whitespace", lower=False)("Hi there.") == ["Hi", "there."]
    with pytest.raises(ValueError):
        Tokenizer(mode="bert")


def test_vocab(tmp_path):
    texts = ["b a a", "c b a", "d"]
    vocab = build_vocab(texts, min_freq=1)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c", "d"]  # count desc, then string
    assert vocab["zzz"] == 1 and vocab.encode(["a", "q"]) == [2, 1]
    assert build_vocab(texts, min_freq=2).itos == ["<pad>", "<unk>", "a", "b"]
    assert build_vocab(texts, max_size=3).itos == ["<pad>", "<unk>", "a"]
    specials = build_vocab(texts, max_size=5, specials=(BOS, EOS))
    assert specials.itos[:4] == ["<pad>", "<unk>", BOS, EOS] and len(specials) == 5
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab
    ds = datasets.Dataset.from_dict({"p": ["x y"], "h": ["y z"]})
    assert set(build_vocab(ds, fields=("p", "h")).itos) == {"<pad>", "<unk>", "x", "y", "z"}


class CountingTokenizer(Tokenizer):
    calls = 0

    def __call__(self, text):
        CountingTokenizer.calls += 1
        return super().__call__(text)


def test_encode_pad_and_cache(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a b c d e", "b", "", "c zz"], "label": [0, 1, 0, 1]})
    vocab = build_vocab(["a b c d e", "b"], specials=(BOS, EOS))  # "zz" is unknown
    enc = encode(ds, vocab, max_len=3)
    assert enc["text"] == ds["text"]  # raw text kept
    assert enc["text_len"] == [3, 1, 0, 2]
    assert enc["text_ids"][3] == [vocab["c"], vocab.unk_id]
    assert encode(ds, vocab, drop_unk=True)["text_ids"][3] == [vocab["c"]]
    wrapped = encode(ds, vocab, max_len=4, add_bos_eos=True)["text_ids"]
    assert wrapped[0] == [vocab[BOS], vocab["a"], vocab["b"], vocab[EOS]]
    assert wrapped[2] == [vocab[BOS], vocab[EOS]]

    split = PaddedSplit.from_dataset(enc)
    ids, lengths = split.tensors["text_ids"], split.tensors["text_len"]
    assert ids.shape == (4, 3) and ids.dtype == torch.int64
    assert lengths.tolist() == [3, 1, 1, 2]  # an empty text: length 1, one <pad>
    assert ids[1].tolist() == [vocab["b"], 0, 0] and ids[2].tolist() == [0, 0, 0]
    assert PaddedSplit.from_dataset(enc, max_len=5).tensors["text_ids"].shape == (4, 5)
    assert PaddedSplit.from_dataset(enc, max_len=2).tensors["text_len"].tolist() == [2, 1, 1, 2]
    pair = {"premise_len": torch.tensor([2, 3]), "hypothesis_ids": torch.tensor([[5, 6, 7]] * 2)}
    q34 = zero_beyond_premise(pair)["hypothesis_ids"]
    assert q34.tolist() == [[5, 6, 0], [5, 6, 7]] and pair["hypothesis_ids"][0, 2] == 7
    mask = lengths_to_mask(lengths, 3)
    assert mask.tolist()[1] == [True, False, False]

    batch = split.gather(torch.tensor([3, 0]))
    assert batch["label"].tolist() == [1, 0] and batch["index"].tolist() == [3, 0]
    assert batch["text_ids"].shape == (2, 3)
    sub = split.subset(torch.tensor([2, 3]))
    assert len(sub) == 2 and sub.gather(torch.tensor([1]))["index"].tolist() == [3]
    assert split.with_labels(torch.tensor([1, 1, 1, 1])).labels.tolist() == [1, 1, 1, 1]
    selected = PaddedSplit.from_dataset(enc.select([3, 0]))  # an indices mapping
    assert selected.tensors["text_ids"].tolist() == ids[[3, 0], :].tolist()

    tok = CountingTokenizer()
    first = encode(ds, vocab, tokenizer=tok, cache_dir=tmp_path / "cache")
    n = CountingTokenizer.calls
    assert n == 4 and len(list((tmp_path / "cache").glob("encoded-*.arrow"))) == 1
    second = encode(ds, vocab, tokenizer=tok, cache_dir=tmp_path / "cache")
    assert CountingTokenizer.calls == n  # loaded from the cache, not recomputed
    assert second["text_ids"] == first["text_ids"]
    encode(ds, vocab, tokenizer=tok, cache_dir=tmp_path / "cache", max_len=2)
    assert CountingTokenizer.calls == 2 * n  # other options: a new cache file
    with pytest.raises(ValueError, match="encode"):
        PaddedSplit.from_dataset(ds)


def test_gather_cost_does_not_grow_with_the_split():
    """A batch costs the same from a 2k and a 400k split (pre-padded tensors, then index)."""

    def median_gather_s(n: int) -> float:
        split = PaddedSplit(
            {
                "text_ids": torch.zeros(n, 16, dtype=torch.int64),
                "text_len": torch.ones(n, dtype=torch.int64),
                "label": torch.zeros(n, dtype=torch.int64),
                "index": torch.arange(n),
            }
        )
        g = torch.Generator().manual_seed(0)
        times = []
        for _ in range(60):
            idx = torch.randint(n, (256,), generator=g)
            t = time.perf_counter()
            split.gather(idx)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    small, large = median_gather_s(2_000), median_gather_s(400_000)
    assert large < 5 * small + 1e-4, (small, large)


# -------------------------------------------------------------------------------------- GloVe


def test_glove(tmp_path):
    lines = [
        "the 0.1 0.2 0.3",
        "cat 1 2 3",
        "Dog 4 5 6",
        ". . . 7 8 9",  # a word with spaces (glove.840B has a few)
        "dog -1 -2 -3",
    ]
    path = write(tmp_path / "glove.txt", "\n".join(lines) + "\n")
    vocab = Vocab(["<pad>", "<unk>", "the", "cat", "dog", "unseen", "."])
    emb, coverage = glove_embeddings(vocab, path, seed=3)
    assert emb.shape == (7, 3) and coverage == pytest.approx(3 / 5)
    assert emb[0].tolist() == [0, 0, 0]  # <pad>
    assert emb[3].tolist() == [1, 2, 3] and emb[4].tolist() == [-1, -2, -3]
    assert emb[6].tolist() != [7, 8, 9]  # ". . ." is not "."
    again, _ = glove_embeddings(vocab, path, seed=3)
    assert torch.equal(emb, again)
    assert not torch.equal(emb, glove_embeddings(vocab, path, seed=4).weight)
    # lowercase: the FIRST occurrence wins (frequency order), so "Dog" gives dog its vector
    assert glove_embeddings(vocab, path, lowercase=True).weight[4].tolist() == [4, 5, 6]
    assert read_glove(path)[". . ."].tolist() == [7, 8, 9]
    # the OOV rows are N(0, σ²) with σ the std of the found entries
    many = Vocab(["<pad>", "<unk>", "cat", "dog", *(f"w{i}" for i in range(3000))])
    weight, _ = glove_embeddings(many, path)
    sigma = torch.tensor([[1.0, 2, 3], [-1, -2, -3]]).std(unbiased=False)
    assert weight[4:].std().item() == pytest.approx(sigma.item(), rel=0.05)

    bad = write(tmp_path / "bad.txt", "the 0.1 0.2 0.3\ncat 1 2\n")
    with raises_at("bad.txt.gz", 2):
        glove_embeddings(vocab, bad)
    bad = write(tmp_path / "bad2.txt", "the 0.1 0.2 0.3\ncat 1 x 3\n")
    with raises_at("bad2.txt.gz", 2):
        glove_embeddings(vocab, bad)
    with pytest.raises(DataError, match="no vocabulary token"):
        glove_embeddings(Vocab(["<pad>", "<unk>", "zebra"]), path)


# ------------------------------------------------------------------ label noise and splits


def test_corrupt_labels():
    labels = torch.arange(1000) % 3
    noisy, corrupted = corrupt_labels(labels, 0.3, 3, seed=0)
    assert int(corrupted.sum()) == 300
    assert torch.all(noisy[corrupted] != labels[corrupted])
    assert torch.equal(noisy[~corrupted], labels[~corrupted])
    assert noisy.min() >= 0 and noisy.max() <= 2
    again, _ = corrupt_labels(labels, 0.3, 3, seed=0)
    assert torch.equal(noisy, again)
    assert not torch.equal(noisy, corrupt_labels(labels, 0.3, 3, seed=1)[0])
    assert int(corrupt_labels(labels[:7], 0.5, 3, seed=0)[1].sum()) == round(3.5)
    binary, mask = corrupt_labels([0, 1, 1, 0], 1.0, 2, seed=0)
    assert binary.tolist() == [1, 0, 0, 1] and mask.all()
    assert not corrupt_labels(labels, 0.0, 3, seed=0)[1].any()
    with pytest.raises(ValueError):
        corrupt_labels(labels, 1.5, 3, seed=0)
    with pytest.raises(ValueError):
        corrupt_labels(labels, 0.1, 2, seed=0)  # label 2 with 2 classes


def test_per_access_noise_redraws():
    labels = torch.arange(20_000) % 3
    noise = PerAccessNoise(0.2, 3)
    g = torch.Generator().manual_seed(0)
    first, second = noise(labels, g), noise(labels, g)
    assert not torch.equal(first, second)  # redrawn at every access (quirk Q5/Q28)
    flipped = first != labels
    assert abs(flipped.double().mean().item() - 0.2) < 0.015
    assert torch.equal(PerAccessNoise(0.0, 3)(labels, g), labels)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(noise(labels, g1), noise(labels, g2))


def test_train_val_split_and_hypercleaning():
    train, val = split_train_val(100, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    assert torch.equal(val, split_train_val(100, 20, seed=0)[1])
    with pytest.raises(ValueError):
        split_train_val(10, 0, seed=0)
    labels = torch.arange(1000) % 3
    s = hypercleaning_split(labels, 3, 0.4, 0.1, seed=0)
    assert len(s.val_idx) == 100 and len(s.train_idx) == 900
    assert int(s.is_corrupted.sum()) == 360
    assert torch.all(s.train_labels[s.is_corrupted] != labels[s.train_idx][s.is_corrupted])
    assert not set(s.val_idx.tolist()) & set(s.train_idx.tolist())


def test_imbalance_and_positive_ratio():
    labels = torch.tensor([1] * 600 + [0] * 400)
    idx = imbalance(labels, 0.8, seed=0)
    assert positive_ratio(labels[idx]) == 0.8 and len(idx) == 750  # all 600 positives
    idx = imbalance(labels, 0.1, seed=0)
    assert (
        positive_ratio(labels[idx]) == pytest.approx(0.1, abs=0) and len(idx) == 440
    )  # 44 positives, 396 negatives
    assert len(set(idx.tolist())) == len(idx)
    ref = imbalance(labels, 0.8, seed=0, n_negatives=100)
    assert (labels[ref] == 0).sum() == 100 and (labels[ref] == 1).sum() == 400
    assert torch.equal(ref, imbalance(labels, 0.8, seed=0, n_negatives=100))
    assert not torch.equal(ref, imbalance(labels, 0.8, seed=1, n_negatives=100))
    with pytest.raises(ValueError):
        imbalance(labels, 0.8, seed=0, n_negatives=1000)  # too few negatives
    assert positive_ratio(labels) == 0.6


# ------------------------------------------------------------------------------- episodes


def check_episode(ep, labels, n_way, k, q):
    assert ep.support.shape == (n_way * k,) and ep.query.shape == (n_way * q,)
    assert not set(ep.support.tolist()) & set(ep.query.tolist())
    assert len(set(ep.support.tolist())) == n_way * k
    assert ep.classes.unique().numel() == n_way
    for rel, c in enumerate(ep.classes.tolist()):
        assert torch.all(labels[ep.support[ep.support_labels == rel]] == c)
        assert torch.all(labels[ep.query[ep.query_labels == rel]] == c)
        assert int((ep.support_labels == rel).sum()) == k
        assert int((ep.query_labels == rel).sum()) == q


def test_episode_sampler(caplog):
    labels = torch.tensor([0] * 12 + [1] * 10 + [2] * 4 + [3] * 15)
    with caplog.at_level(logging.INFO, logger="bilevel.data.episodes"):
        sampler = EpisodeSampler(labels, n_way=2, k_shot=5, q_query=5, seed=0)
    assert "class 2 (4 examples)" in caplog.text
    assert sampler.eligible_classes == [0, 1, 3]
    for ep in sampler.fixed_tasks(30):
        check_episode(ep, labels, 2, 5, 5)
        assert 2 not in ep.classes.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = EpisodeSampler(labels, 2, 5, 5, seed=7).fixed_tasks(5)
        b = EpisodeSampler(labels, 2, 5, 5, seed=7).fixed_tasks(5)
        c = EpisodeSampler(labels, 2, 5, 5, seed=8).fixed_tasks(5)
    assert all(
        torch.equal(x.support, y.support) and torch.equal(x.query, y.query) for x, y in zip(a, b)
    )
    assert any(not torch.equal(x.support, y.support) for x, y in zip(a, c))
    stacked = stack_episodes(a)
    assert stacked.support.shape == (5, 10) and stacked.classes.shape == (5, 2)
    with pytest.raises(ValueError, match="fewer than n_way"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EpisodeSampler(labels, n_way=2, k_shot=10, q_query=5)
    # index: the pool's dataset positions are what is returned
    pool = torch.tensor([100, 101, 102, 103])
    ep = EpisodeSampler([0, 0, 1, 1], 2, 1, 1, index=pool).sample()
    assert set(ep.support.tolist()) | set(ep.query.tolist()) == {100, 101, 102, 103}


def test_episode_sampler_groups(caplog):
    labels = torch.tensor([0, 1] * 30 + [0] * 20 + [0, 1] * 3)
    groups = torch.tensor([0] * 60 + [1] * 20 + [2] * 6)
    with caplog.at_level(logging.INFO, logger="bilevel.data.episodes"):
        sampler = EpisodeSampler(labels, 2, 4, 4, seed=0, groups=groups)
    assert "group 2 class 0 (3)" in caplog.text and "groups [1, 2]" in caplog.text
    for ep in sampler.fixed_tasks(10):
        assert int(ep.group) == 0 and torch.all(groups[ep.support] == 0)
        check_episode(ep, labels, 2, 4, 4)
    two = torch.tensor([0] * 60 + [1] * 20 + [2] * 6)
    labels2 = torch.tensor([0, 1] * 30 + [0, 1] * 10 + [0, 1] * 3)
    sampler = EpisodeSampler(labels2, 2, 1, 1, seed=0, groups=two, group_weighting="uniform")
    seen = Counter(int(sampler.sample().group) for _ in range(300))
    assert set(seen) == {0, 1, 2} and min(seen.values()) > 60


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real():
    return {
        "snli": {s: load_snli(s, REAL) for s in ("train", "dev", "test")},
        "trec": {s: load_trec(s, REAL) for s in ("train", "test")},
        "s140": {s: load_sentiment140(s, REAL) for s in ("train", "train_blocks", "test")},
    }


@needs_real
def test_real_row_counts_and_labels(real):
    counts = {
        name: {s: Counter(column_tensor(d).tolist()) for s, d in v.items()}
        for name, v in real.items()
    }
    assert counts["snli"]["dev"] == {0: 3329, 1: 3235, 2: 3278}  # README §1a
    assert counts["snli"]["test"] == {0: 3368, 1: 3219, 2: 3237}
    assert counts["snli"]["train"] == {0: 6667, 1: 6562, 2: 6771}  # README §1b
    assert sum(counts["snli"]["dev"].values()) == 9842
    assert sum(counts["snli"]["test"].values()) == 9824
    assert counts["trec"]["train"] == {0: 86, 1: 1250, 2: 1162, 3: 1223, 4: 835, 5: 896}
    assert counts["trec"]["test"] == {0: 9, 1: 94, 2: 138, 3: 65, 4: 81, 5: 113}
    assert len(set(real["trec"]["train"]["fine_label"])) == 50
    assert len(set(real["trec"]["test"]["fine_label"])) == 42
    assert counts["s140"]["train"] == {0: 14880, 1: 12809}  # README §3
    assert counts["s140"]["train_blocks"] == {0: 9838, 1: 19687}
    assert counts["s140"]["test"] == {0: 177, 1: 182}  # 498 minus 139 neutral


@needs_real
def test_real_amazon():
    ds = load_amazon(data_dir=REAL)
    assert len(ds) == 32101 and Counter(ds["label"]) == {0: 26346, 1: 5755}
    assert len(set(ds["domain"])) == 22
    low = load_amazon(data_dir=REAL, domains=["office_products"])
    assert Counter(low["label"]) == {0: 121, 1: 22}
    t4_train = load_amazon("arsc_all.json.gz", data_dir=REAL, task="t4", split="train")
    assert len(t4_train) == 18669 and set(t4_train["task"]) == {"t4"}


@needs_real
def test_real_snli_pipeline_and_glove(real, tmp_path):
    fields = ("premise", "hypothesis")
    t = time.perf_counter()
    vocab = build_vocab(real["snli"]["train"], fields)
    encoded = encode(real["snli"]["train"], vocab, fields, cache_dir=tmp_path)
    split = PaddedSplit.from_dataset(encoded, fields)
    elapsed = time.perf_counter() - t
    assert elapsed < 10, elapsed  # measured ≈ 1.0 s
    assert len(split) == 20000 and len(vocab) == 10771
    emb, coverage = glove_embeddings(vocab, REAL / "glove" / "glove.6B.50d.subset.txt.gz")
    assert emb.shape == (len(vocab), 50)
    assert coverage >= 0.95, coverage  # measured 0.963 of the non-special types
    glove_words = read_glove(REAL / "glove" / "glove.6B.50d.subset.txt.gz", set(vocab.itos))
    found_ids = torch.tensor(sorted(vocab.stoi[w] for w in glove_words))
    ids = torch.cat(
        [split.tensors["premise_ids"].flatten(), split.tensors["hypothesis_ids"].flatten()]
    )
    tokens = ids[ids != vocab.pad_id]
    token_coverage = torch.isin(tokens, found_ids).double().mean().item()
    assert token_coverage >= 0.99, token_coverage  # measured 0.999
    dev = PaddedSplit.from_dataset(encode(real["snli"]["dev"], vocab, fields), fields)
    assert len(dev) == 9842 and dev.tensors["hypothesis_len"].min() >= 1


@needs_real
def test_real_noise_imbalance_episodes(real, caplog):
    snli = column_tensor(real["snli"]["train"])
    noisy, corrupted = corrupt_labels(snli, 0.2, 3, seed=0)
    assert int(corrupted.sum()) == round(0.2 * 20000) == 4000
    assert torch.all(noisy[corrupted] != snli[corrupted])

    s140 = column_tensor(real["s140"]["train"])
    idx = imbalance(s140, 0.8, seed=2)
    assert positive_ratio(s140[idx]) == 0.8 and len(idx) == 16010  # 12808 of 12809 pos + 3202 neg
    ref = imbalance(s140, 0.8, seed=2, n_negatives=1000)  # the reference's 1000 + 4000
    assert len(ref) == 5000 and positive_ratio(s140[ref]) == 0.8

    trec_test = column_tensor(real["trec"]["test"])
    with caplog.at_level(logging.INFO, logger="bilevel.data.episodes"):
        sampler = EpisodeSampler(trec_test, n_way=2, k_shot=5, q_query=5, seed=0)
    assert "class 0 (9 examples)" in caplog.text  # ABBR, quirk Q37
    tasks = sampler.fixed_tasks(50)
    for ep in tasks:
        check_episode(ep, trec_test, 2, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = EpisodeSampler(trec_test, 2, 5, 5, seed=0).fixed_tasks(50)
    assert all(torch.equal(a.support, b.support) for a, b in zip(tasks, again))
