"""Dataset loaders: local files in the layouts of ``shared/data`` (see its README) or a Hugging
Face hub id. Each returns a ``datasets.Dataset`` with the raw text column(s) and an integer
``label`` column. Label ids (fixed, the same for local files and the hub):

============  ==================================================  ==========================
dataset       columns                                             label ids
============  ==================================================  ==========================
SNLI          premise, hypothesis, label                          entailment 0, neutral 1,
                                                                  contradiction 2
Sentiment140  text, label                                         negative 0, positive 1
TREC          text, label (coarse), fine_label                    coarse: ABBR 0, ENTY 1,
                                                                  DESC 2, HUM 3, LOC 4, NUM 5
                                                                  fine: FINE_LABELS order
Amazon        domain, text, label (+ task, split in arsc_all)     positive 0, negative 1
============  ==================================================  ==========================

The SNLI order is the one of the InferSent/SNLI loaders of the reference code and of the hub
(``stanfordnlp/snli``). TREC's orders are those of the hub dataset ``CogComp/trec`` (the hub path
maps by class NAME, so it is correct whatever the hub's order). Amazon uses the BO-REP reference
mapping (spec §4.2: positive→0, negative→1). Rows without a gold label are dropped and counted:
SNLI label ``-`` (local) / ``-1`` (hub); Sentiment140 neutral rows (polarity 2, only in the test
file: 139 of 498) since the task is binary. Every other unexpected label is a :class:`DataError`
naming the file and line.

Local layouts (under the data directory, ``*.gz`` or plain):
  * ``snli/SNLI/{s1,s2,labels}.{train,dev,test}``: InferSent, line i of the three files is one
    pair (PTB-tokenised text). ``train`` falls back to ``snli/snli_1.0_train_subset20k.tsv``
    (header ``gold_label<TAB>sentence1<TAB>sentence2``, raw untokenised text) when there is no
    InferSent train file (the case in ``shared/data``).
  * ``sentiment140/*.csv``: six quoted columns ``polarity, tweet_id, date, query, user, text``,
    UTF-8, no header; polarity 0 / 2 / 4.
  * ``trec/{train_5500,TREC_10}.label``: ``COARSE:fine question …``, Latin-1.
  * ``amazon/*.json``: a JSON list of ``{"domain", "text", "label": "positive"|"negative"}``
    records (``arsc_all`` adds ``task`` and ``split``). The file standing in for BO-REP's
    ``dataset.json`` is ``dataset_arsc_t4.json.gz``: the same keys, but ARSC-preprocessed text
    (lower-cased, tokenised, stop words removed) and rating-threshold labels (README §5), so a
    BO-REP ``dataset.json`` loads with the same function (``file=<its path>``).

Hub ids (``hub_id=...``) go through ``datasets.load_dataset(hub_id, split=..., cache_dir=...)``;
they need the internet (or the hub cache) and are not exercised by the offline tests.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bilevel.data.paths import DataError, find_file, read_lines, resolve_data_dir

if TYPE_CHECKING:  # imported where used: a run whose prepared data is cached never loads it
    import datasets

log = logging.getLogger(__name__)

SNLI_LABELS = ("entailment", "neutral", "contradiction")
SENTIMENT140_LABELS = ("negative", "positive")
TREC_COARSE_LABELS = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
TREC_FINE_LABELS = (
    *("ABBR:abb", "ABBR:exp"),
    *("ENTY:animal", "ENTY:body", "ENTY:color", "ENTY:cremat", "ENTY:currency", "ENTY:dismed"),
    *("ENTY:event", "ENTY:food", "ENTY:instru", "ENTY:lang", "ENTY:letter", "ENTY:other"),
    *("ENTY:plant", "ENTY:product", "ENTY:religion", "ENTY:sport", "ENTY:substance"),
    *("ENTY:symbol", "ENTY:techmeth", "ENTY:termeq", "ENTY:veh", "ENTY:word"),
    *("DESC:def", "DESC:desc", "DESC:manner", "DESC:reason"),
    *("HUM:gr", "HUM:ind", "HUM:title", "HUM:desc"),
    *("LOC:city", "LOC:country", "LOC:mount", "LOC:other", "LOC:state"),
    *("NUM:code", "NUM:count", "NUM:date", "NUM:dist", "NUM:money", "NUM:ord", "NUM:other"),
    *("NUM:period", "NUM:perc", "NUM:speed", "NUM:temp", "NUM:volsize", "NUM:weight"),
)
AMAZON_LABELS = ("positive", "negative")

SNLI_HUB = "stanfordnlp/snli"
SENTIMENT140_HUB = "stanfordnlp/sentiment140"
TREC_HUB = "CogComp/trec"

SENTIMENT140_FILES = {
    "train": "train_random_subset.csv",
    "train_blocks": "train_contiguous_blocks.csv",
    "test": "testdata.manual.2009.06.14.csv",
}
TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}
AMAZON_FILE = "dataset_arsc_t4.json"


def _label_id(names: Sequence[str], value: str, path: Path, line: int) -> int:
    try:
        return names.index(value)
    except ValueError:
        expected = f"expected one of {list(names)}"
        raise DataError(f"unknown label {value!r} ({expected})", path, line) from None


def _check_split(split: str, splits: Sequence[str], what: str) -> None:
    if split not in splits:
        raise DataError(f"unknown {what} split {split!r} (expected one of {list(splits)})")


def _from_hub(hub_id: str, split: str, cache_dir: str | Path | None) -> datasets.Dataset:
    import datasets

    try:
        cache = None if cache_dir is None else str(cache_dir)
        return datasets.load_dataset(hub_id, split=split, cache_dir=cache)
    except Exception as e:  # network, missing dataset, script datasets ... one clear message
        raise DataError(
            f"could not load {hub_id!r} split {split!r} from the Hugging Face hub ({e}); "
            "without internet use the local files (data_dir / $BILEVEL_DATA_DIR)"
        ) from e


def _features(kinds: dict[str, str]) -> datasets.Features:
    """HF ``Features`` of columns given by value type names ("string", "int64")."""
    import datasets

    return datasets.Features({name: datasets.Value(kind) for name, kind in kinds.items()})


def _dataset(columns: dict[str, list], features: dict[str, str], path: Path) -> datasets.Dataset:
    """The samples read from ``path`` as a Dataset; a file without any is a DataError."""
    import datasets

    if not next(iter(columns.values())):
        raise DataError("no samples (the file is empty or has a header only)", path)
    return datasets.Dataset.from_dict(columns, features=_features(features))


_STR, _INT = "string", "int64"


# ---------------------------------------------------------------------------------------- SNLI


def load_snli(
    split: str,
    data_dir: str | Path | None = None,
    hub_id: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """SNLI ``split`` in {train, dev, test}: columns premise, hypothesis, label (0/1/2)."""
    _check_split(split, ("train", "dev", "test"), "SNLI")
    if hub_id is not None:
        ds = _from_hub(hub_id, "validation" if split == "dev" else split, cache_dir)
        n = len(ds)
        ds = ds.filter(lambda b: [y >= 0 for y in b["label"]], batched=True)
        log.info("SNLI %s (hub): dropped %d pairs without a gold label", split, n - len(ds))
        names = getattr(ds.features["label"], "names", None)
        if names is not None and tuple(names) != SNLI_LABELS:  # map by class name
            order = [SNLI_LABELS.index(name) for name in names]
            ds = ds.map(lambda b: {"y": [order[y] for y in b["label"]]}, batched=True)
            ds = ds.remove_columns("label").rename_column("y", "label")
        ds = ds.select_columns(["premise", "hypothesis", "label"])
        return ds.cast(_features({"premise": _STR, "hypothesis": _STR, "label": _INT}))
    root = resolve_data_dir(data_dir) / "snli"
    infersent = [root / "SNLI" / f"{kind}.{split}" for kind in ("s1", "s2", "labels")]
    if split == "train" and not any(
        p.is_file() or p.with_name(p.name + ".gz").is_file() for p in infersent
    ):
        return _snli_tsv(find_file(root, "snli_1.0_train_subset20k.tsv"))
    return _snli_infersent(*(find_file(p.parent, p.name) for p in infersent))


def _snli_infersent(s1: Path, s2: Path, labels: Path) -> datasets.Dataset:
    cols: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
    dropped = 0
    readers = [read_lines(p) for p in (s1, s2, labels)]
    while True:
        rows = [next(r, None) for r in readers]
        if all(r is None for r in rows):
            break
        if any(r is None for r in rows):
            short = [p for p, r in zip((s1, s2, labels), rows) if r is None]
            line = next(r[0] for r in rows if r is not None)
            raise DataError(
                f"the InferSent files have different line counts: {', '.join(map(str, short))} "
                f"ended before line {line}",
                labels,
                line,
            )
        (line, premise), (_, hypothesis), (_, label) = rows
        label = label.strip()
        if label == "-":
            dropped += 1
            continue
        cols["label"].append(_label_id(SNLI_LABELS, label, labels, line))
        cols["premise"].append(premise)
        cols["hypothesis"].append(hypothesis)
    if dropped:
        log.info("%s: dropped %d pairs without a gold label", labels, dropped)
    return _dataset(cols, {"premise": _STR, "hypothesis": _STR, "label": _INT}, labels)


def _snli_tsv(path: Path) -> datasets.Dataset:
    cols: dict[str, list] = {"premise": [], "hypothesis": [], "label": []}
    header = ["gold_label", "sentence1", "sentence2"]
    dropped = 0
    for line, text in read_lines(path):
        fields = text.split("\t")
        if line == 1:
            if fields != header:
                raise DataError(f"expected the header {'<TAB>'.join(header)!r}", path, 1)
            continue
        if not text.strip():
            continue
        if len(fields) != 3:
            raise DataError(f"expected 3 TAB-separated fields, found {len(fields)}", path, line)
        if fields[0] == "-":
            dropped += 1
            continue
        cols["label"].append(_label_id(SNLI_LABELS, fields[0], path, line))
        cols["premise"].append(fields[1])
        cols["hypothesis"].append(fields[2])
    if dropped:
        log.info("%s: dropped %d pairs without a gold label", path, dropped)
    return _dataset(cols, {"premise": _STR, "hypothesis": _STR, "label": _INT}, path)


# -------------------------------------------------------------------------------- Sentiment140


def load_sentiment140(
    split: str,
    data_dir: str | Path | None = None,
    hub_id: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Sentiment140 ``split``: ``train`` (the README's random subset, 27,689 tweets),
    ``train_blocks`` (the contiguous-block file; label and date are confounded there) or
    ``test`` (498 tweets, 359 after dropping the neutral ones). Columns text, label (0 negative,
    1 positive). The hub path (``stanfordnlp/sentiment140``: text, sentiment ∈ {0, 2, 4}) knows
    only train (1.6M) and test."""
    _check_split(split, tuple(SENTIMENT140_FILES), "Sentiment140")
    if hub_id is not None:
        if split == "train_blocks":
            raise DataError("the hub has no 'train_blocks' split (a local file of shared/data)")
        ds = _from_hub(hub_id, split, cache_dir)
        ds = ds.filter(lambda b: [s != 2 for s in b["sentiment"]], batched=True)
        ds = ds.map(
            lambda b: {"label": [_polarity_hub(s) for s in b["sentiment"]]},
            batched=True,
            remove_columns=[c for c in ds.column_names if c != "text"],
        )
        return ds.cast(_features({"text": _STR, "label": _INT}))
    path = find_file(resolve_data_dir(data_dir) / "sentiment140", SENTIMENT140_FILES[split])
    return _sentiment140_csv(path)


def _polarity_hub(s: int) -> int:
    if s not in (0, 4):
        raise DataError(f"unknown Sentiment140 polarity {s!r} on the hub (expected 0, 2 or 4)")
    return s // 4


def _sentiment140_csv(path: Path) -> datasets.Dataset:
    cols: dict[str, list] = {"text": [], "label": []}
    neutral = 0
    # csv.reader's line_num counts the lines it has consumed: a record starts one line after
    # the previous record ended (records may span lines inside quotes).
    reader = csv.reader(text for _, text in read_lines(path, keep_ends=True))
    record_start = 1
    try:
        for row in reader:
            line = record_start
            record_start = reader.line_num + 1
            if len(row) != 6:
                raise DataError(
                    f"expected 6 CSV fields (polarity, id, date, query, user, text), "
                    f"found {len(row)}",
                    path,
                    line,
                )
            polarity = row[0].strip()
            if polarity == "2":
                neutral += 1
                continue
            if polarity not in ("0", "4"):
                raise DataError(f"unknown polarity {row[0]!r} (expected 0, 2 or 4)", path, line)
            cols["label"].append(int(polarity) // 4)
            cols["text"].append(row[5])
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path, reader.line_num) from e
    if neutral:
        log.info("%s: dropped %d neutral tweets (polarity 2)", path, neutral)
    return _dataset(cols, {"text": _STR, "label": _INT}, path)


# ---------------------------------------------------------------------------------------- TREC


def load_trec(
    split: str,
    data_dir: str | Path | None = None,
    hub_id: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """TREC ``split`` in {train, test}: columns text, label (coarse, 6), fine_label (50)."""
    _check_split(split, tuple(TREC_FILES), "TREC")
    if hub_id is not None:
        ds = _from_hub(hub_id, split, cache_dir)
        coarse = ds.features["coarse_label"].names
        fine = ds.features["fine_label"].names

        def convert(b):
            return {
                "label": [TREC_COARSE_LABELS.index(coarse[i]) for i in b["coarse_label"]],
                "fine": [TREC_FINE_LABELS.index(fine[i]) for i in b["fine_label"]],
            }

        drop = [c for c in ds.column_names if c != "text"]
        ds = ds.map(convert, batched=True, remove_columns=drop).rename_column("fine", "fine_label")
        return ds.cast(_features({"text": _STR, "label": _INT, "fine_label": _INT}))
    path = find_file(resolve_data_dir(data_dir) / "trec", TREC_FILES[split])
    return _trec_file(path)


def _trec_file(path: Path) -> datasets.Dataset:
    cols: dict[str, list] = {"text": [], "label": [], "fine_label": []}
    for line, text in read_lines(path, encoding="latin-1"):
        if not text.strip():
            continue  # a blank line (e.g. at the end of a hand-made file)
        label, sep, question = text.partition(" ")
        if not sep or ":" not in label:
            raise DataError(f"expected 'COARSE:fine question', found {text[:40]!r}", path, line)
        coarse = label.split(":", 1)[0]
        cols["label"].append(_label_id(TREC_COARSE_LABELS, coarse, path, line))
        cols["fine_label"].append(_label_id(TREC_FINE_LABELS, label, path, line))
        cols["text"].append(question)
    return _dataset(cols, {"text": _STR, "label": _INT, "fine_label": _INT}, path)


# -------------------------------------------------------------------------------------- Amazon


def load_amazon(
    file: str | Path = AMAZON_FILE,
    data_dir: str | Path | None = None,
    task: str | None = None,
    split: str | None = None,
    domains: Sequence[str] | None = None,
    hub_id: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Amazon reviews from a JSON record list: columns domain, text, label (positive 0,
    negative 1), plus task and split when the records have them (``arsc_all.json.gz``).

    ``file``: a name under ``<data_dir>/amazon`` (``dataset_arsc_t4.json`` by default, ``.gz``
    optional) or a path (e.g. BO-REP's ``dataset.json``). ``task``/``split``/``domains`` keep
    only matching records. A file mixing ARSC tasks without ``task=`` warns: the same text can
    carry different labels in t2, t4 and t5. ``hub_id``: a hub dataset with the same columns.
    """
    if hub_id is not None:
        ds = _from_hub(hub_id, split or "train", cache_dir)
        records = ds.to_list()
        source: Path | str = hub_id
        lines = [None] * len(records)
    else:
        path = Path(file)
        if not path.is_absolute() and not path.is_file():
            name = path.name.removesuffix(".gz")
            path = find_file(resolve_data_dir(data_dir) / "amazon", name)
        records, lines = _json_records(path)
        source = path
    cols: dict[str, list] = {"domain": [], "text": [], "label": []}
    extra = [k for k in ("task", "split") if records and k in records[0]]
    for k in extra:
        cols[k] = []
    keep_domains = None if domains is None else set(domains)
    for record, line in zip(records, lines):
        if not isinstance(record, dict) or not {"domain", "text", "label", *extra} <= set(record):
            raise DataError(
                f"expected a record with keys domain, text, label{''.join(', ' + k for k in extra)}"
                f", found {str(record)[:80]!r}",
                source,
                line,
            )
        if task is not None and record.get("task") != task:
            continue
        if hub_id is None and split is not None and record.get("split") != split:
            continue
        if keep_domains is not None and record["domain"] not in keep_domains:
            continue
        cols["label"].append(_label_id(AMAZON_LABELS, record["label"], source, line))
        cols["domain"].append(record["domain"])
        cols["text"].append(record["text"])
        for k in extra:
            cols[k].append(record[k])
    if "task" in cols and task is None and len(set(cols["task"])) > 1:
        warnings.warn(
            f"{source}: records of several ARSC tasks {sorted(set(cols['task']))} pooled into one "
            "label set (a text can be positive in t2 and negative in t4); pass task=...",
            stacklevel=2,
        )
    features = {"domain": _STR, "text": _STR, "label": _INT, **{k: _STR for k in extra}}
    return _dataset(cols, features, source)


def _json_records(path: Path) -> tuple[list, list[int | None]]:
    """The records of a JSON list and the line of each. The one-record-per-line layout of
    ``shared/data`` (``[`` and ``]`` on lines of their own) is parsed line by line, so an error
    names its line; any other JSON list is parsed whole (its records have no line numbers)."""
    lines = list(read_lines(path))
    body = [(n, t) for n, t in lines if t.strip()]
    if len(body) >= 2 and body[0][1].strip() == "[" and body[-1][1].strip() == "]":
        records, where = [], []
        for n, text in body[1:-1]:
            chunk = text.strip().removesuffix(",")
            try:
                records.append(json.loads(chunk))
            except json.JSONDecodeError as e:
                msg = f"malformed JSON record ({e.msg}, column {e.colno})"
                raise DataError(msg, path, n) from e
            where.append(n)
        return records, where
    try:
        records = json.loads("\n".join(t for _, t in lines))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg}, column {e.colno})", path, e.lineno) from e
    if not isinstance(records, list):
        raise DataError("expected a JSON list of records", path, 1)
    return records, [None] * len(records)
