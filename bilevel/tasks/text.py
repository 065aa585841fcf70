"""Shared preparation of the text tasks: a dataset's splits loaded, tokenized once with a
vocabulary built on the training split, padded once into tensors, and a model built on it.

Datasets are described by the ``dataset`` config group (name, hub id, fields, classes); models
by the ``model`` group (``bilevel.models.build_model`` keys). Tasks call :func:`prepare`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bilevel.data import (
    PaddedSplit,
    Vocab,
    build_vocab,
    encode,
    find_gz_or_plain,
    glove_embeddings,
    load_amazon,
    load_sentiment140,
    load_snli,
    load_trec,
    resolve_data_dir,
    stratified_subset,
)
from bilevel.models import build_model, functional
from bilevel.tasks.base import Task
from bilevel.tree import Params

# BO-REP's test domains (spec BOREP-SLIP-ADAMBO §4.2, §4.3). The Amazon file has no split field:
# a split is a set of domains. HPO: "test" = the eight HO domains, "train" = every other domain;
# hyper-representation: "test_lowres" = the three low-resource domains, "train_lowres" = the rest.
AMAZON_LOWRES_DOMAINS = ("office_products", "automotive", "computer_&_video_games")
AMAZON_TEST_DOMAINS = (
    *AMAZON_LOWRES_DOMAINS,
    *("outdoor_living", "software", "sports_&_outdoors", "toys_&_games", "video"),
)
AMAZON_SPLITS = {
    "train": (AMAZON_TEST_DOMAINS, False),
    "test": (AMAZON_TEST_DOMAINS, True),
    "train_lowres": (AMAZON_LOWRES_DOMAINS, False),
    "test_lowres": (AMAZON_LOWRES_DOMAINS, True),
}


def _load_amazon_split(split: str, data_dir=None, hub_id=None):
    """Amazon ``split`` (a key of AMAZON_SPLITS), with ``domain_id``: the domain's position in
    the sorted list of the file's domains (for episodes drawn within one domain)."""
    if split not in AMAZON_SPLITS:
        raise ValueError(f"unknown Amazon split {split!r}; choose from {', '.join(AMAZON_SPLITS)}")
    ds = load_amazon(data_dir=data_dir, hub_id=hub_id)
    domains, inside = AMAZON_SPLITS[split]
    names = ds.with_format("arrow")["domain"].to_pylist()
    code = {d: i for i, d in enumerate(sorted(set(names)))}
    keep = [i for i, d in enumerate(names) if (d in domains) == inside]
    return ds.add_column("domain_id", [code[d] for d in names]).select(keep)


T = TypeVar("T")
log = logging.getLogger(__name__)

LOADERS = {
    "snli": load_snli,
    "sentiment140": load_sentiment140,
    "trec": load_trec,
    "amazon": _load_amazon_split,
}


@dataclass
class TextData:
    """Padded splits of one dataset and its vocabulary; ``fields`` are the model's inputs."""

    splits: dict[str, PaddedSplit]
    vocab: Vocab
    fields: tuple[str, ...]
    n_classes: int
    embeddings: Tensor | None
    glove_coverage: float | None


def memoised(size: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Keep the results of the last ``size`` distinct calls (arguments compared as JSON)."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        kept: OrderedDict[str, T] = OrderedDict()

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> T:
            key = json.dumps([args, kwargs], sort_keys=True, default=str)
            if key not in kept:
                kept[key] = fn(*args, **kwargs)
                while len(kept) > size:
                    kept.popitem(last=False)
            kept.move_to_end(key)
            return kept[key]

        return call

    return wrap


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No ``Map:``/``Filter:`` progress bars from HF datasets while a task loads its data (they
    are turned back on after, if they were on): a run's output is its own progress line."""
    import datasets

    was_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


CACHE_ENV = "BILEVEL_CACHE_DIR"
CACHE_FORMAT = 1  # bump when TextData's layout changes
_CACHE_SOURCES = ("data/text.py", "data/loaders.py", "data/glove.py", "data/paths.py",
                  "tasks/text.py")  # fmt: skip


def prepared_cache_dir() -> Path | None:
    """Where prepared datasets are kept: ``$BILEVEL_CACHE_DIR`` (``off`` or empty: nowhere),
    else ``$XDG_CACHE_HOME/bilevel/prepared`` (``~/.cache/bilevel/prepared``)."""
    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in ("", "off", "0", "none") else Path(setting)
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory to be found: no cache, never a failed run
        return None
    return Path(base) / "bilevel" / "prepared"


def _cache_key(root: Path, arguments: dict[str, Any]) -> str:
    """A digest of everything a prepared dataset depends on: the arguments of :func:`prepare`,
    every file of the data directory (path, size, modification time) and the source of the
    code that reads, tokenizes and pads it (an edit invalidates every entry)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, arguments], sort_keys=True).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for source in _CACHE_SOURCES:
        digest.update((package / source).read_bytes())
    return digest.hexdigest()[:24]


def _to_payload(data: TextData) -> dict[str, Any]:
    return {
        "splits": {role: split.tensors for role, split in data.splits.items()},
        "itos": data.vocab.itos,
        "n_specials": data.vocab.n_specials,
        "fields": list(data.fields),
        "n_classes": data.n_classes,
        "embeddings": data.embeddings,
        "glove_coverage": data.glove_coverage,
    }


def _from_payload(payload: dict[str, Any]) -> TextData:
    fields = tuple(payload["fields"])
    return TextData(
        {role: PaddedSplit(tensors, fields) for role, tensors in payload["splits"].items()},
        Vocab(payload["itos"], payload["n_specials"]),
        fields,
        int(payload["n_classes"]),
        payload["embeddings"],
        payload["glove_coverage"],
    )


def disk_cached(fn: Callable[..., TextData]) -> Callable[..., TextData]:
    """Keep ``fn``'s TextData on disk (:func:`prepared_cache_dir`, keyed by :func:`_cache_key`
    over its arguments but the folders): a later process loads the tensors instead of reading,
    tokenizing and padding the files again (and never imports HF ``datasets``). Hub datasets
    are left to HF's own cache. An entry that cannot be read is rebuilt; one that cannot be
    written costs speed, never the run."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> TextData:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k not in ("data_dir", "cache_dir")}
        dataset, where = bound.arguments["dataset"], prepared_cache_dir()
        entry = None
        if where is not None and not dataset.get("hub_id"):
            key = _cache_key(resolve_data_dir(bound.arguments["data_dir"]), arguments)
            entry = where / f"{dataset['name']}-{key}.pt"
            if entry.is_file():
                try:
                    return _from_payload(torch.load(entry, weights_only=True))
                except Exception as err:  # a truncated or foreign file: rebuild it
                    log.warning("prepared-data cache %s unreadable (%s); rebuilding", entry, err)
        data = fn(*args, **kwargs)
        if entry is not None:
            try:
                entry.parent.mkdir(parents=True, exist_ok=True)
                tmp = entry.with_suffix(f".tmp{os.getpid()}")
                torch.save(_to_payload(data), tmp)
                tmp.replace(entry)  # atomic: a concurrent reader sees the old file or the new
            except OSError as err:
                log.warning("prepared-data cache %s not written (%s)", entry, err)
        return data

    return call


@memoised(8)
@disk_cached
@quiet_datasets()
def prepare(
    dataset: dict[str, Any],
    data_dir: str | None,
    max_len: int,
    splits: dict[str, str],
    limit: dict[str, int | None],
    seed: int,
    cache_dir: str | None = None,
    specials: tuple[str, ...] = (),
    extra_columns: tuple[str, ...] = (),
) -> TextData:
    """Load ``splits`` (role -> split name) of ``dataset``, keep at most ``limit[role]`` rows
    (a seeded random subset), build the vocabulary on the ``train`` role (with ``specials``
    after ``<pad>``, ``<unk>``), encode and pad (keeping the numeric ``extra_columns``).

    Memoised for the process: a sweep or a test that builds the same task again reuses the
    result (tasks never modify a TextData in place); kept on disk across processes
    (:func:`disk_cached`)."""
    name = dataset["name"]
    if name not in LOADERS:
        raise ValueError(
            f"dataset.name={name!r} is not a text dataset; choose from {', '.join(LOADERS)}"
        )
    root = resolve_data_dir(data_dir)
    fields = tuple(dataset["fields"])
    gen = torch.Generator().manual_seed(seed)
    raw = {}
    for role, split in splits.items():
        ds = LOADERS[name](split, data_dir=root, hub_id=dataset.get("hub_id"))
        n = limit.get(role)
        if n is not None and n < len(ds):
            ds = ds.select(torch.randperm(len(ds), generator=gen)[:n].sort().values.tolist())
        raw[role] = ds
    vocab = build_vocab(
        raw["train"],
        fields=fields,
        min_freq=dataset.get("min_freq", 1),
        max_size=dataset.get("vocab_size"),
        specials=specials,
    )
    padded = {}
    for role, ds in raw.items():
        enc = encode(ds, vocab, fields, max_len=max_len, cache_dir=cache_dir)
        padded[role] = PaddedSplit.from_dataset(
            enc, fields, max_len=max_len, extra_columns=extra_columns
        )
    embeddings, coverage = None, None
    if dataset.get("glove"):
        glove_file = find_gz_or_plain(Path(root) / dataset["glove"])  # kept gzipped or not
        glove = glove_embeddings(vocab, glove_file, seed=seed)
        embeddings, coverage = glove.weight, glove.coverage
    return TextData(padded, vocab, fields, int(dataset["n_classes"]), embeddings, coverage)


def make_model(model: dict[str, Any], data: TextData, generator: torch.Generator) -> nn.Module:
    """The ``model`` config built for ``data`` (vocabulary size, GloVe embeddings, classes)."""
    cfg = dict(model)
    kind = cfg.pop("kind")
    token = cfg.pop("cls_token", None)
    if token is not None:  # a transformer's [CLS]: a special of the vocabulary (model_specials)
        if token not in data.vocab:
            raise ValueError(f"model.cls_token={token!r} is not in the vocabulary")
        cfg["cls_id"] = data.vocab.stoi[token]
    if data.embeddings is not None and cfg.pop("glove", True):
        cfg["embeddings"] = data.embeddings.clone()  # TextData is shared (prepare's memo)
        cfg["embed_dim"] = data.embeddings.shape[1]
    else:
        cfg.pop("glove", None)
    return build_model(
        kind,
        n_classes=data.n_classes,
        vocab_size=len(data.vocab),
        generator=generator,
        pairs=len(data.fields) == 2,
        **cfg,
    )


def model_specials(model: dict[str, Any]) -> tuple[str, ...]:
    """Vocabulary specials a model needs (a transformer's ``cls_token``, prepended to inputs)."""
    token = model.get("cls_token")
    return (token,) if token else ()


def model_inputs(fields: tuple[str, ...], batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """The positional inputs of a model for ``batch``: (ids, lengths) per field, in order."""
    out: list[Tensor] = []
    for f in fields:
        out += [batch[f"{f}_ids"], batch[f"{f}_len"]]
    return tuple(out)


def forward(model: nn.Module):
    """``(params, fields, batch) -> logits`` through ``torch.func.functional_call``."""
    call = functional(model)

    def run(
        params: dict[str, Tensor], fields: tuple[str, ...], batch: dict[str, Tensor], **kw: Any
    ):
        return call(params, *model_inputs(fields, batch), **kw)

    return run


class TextTask(Task):
    """Plumbing shared by the text tasks (hyper-cleaning, hyper-representation, deep AUC, HPO):
    the dataset prepared once, the model, device moves of the splits, uniform batch draws.

    A subclass calls :meth:`load` in ``__init__``, sets ``self.train`` / ``self.test`` (and
    ``self.val`` when it has one), then :meth:`fix_eval_rows` (with ``self.eval_size`` set),
    and calls :meth:`build_model` in ``init_params``."""

    train: PaddedSplit
    test: PaddedSplit
    val: PaddedSplit | None = None
    module: nn.Module | None = None
    eval_size: int = 1000
    eval_index: dict[str, Tensor]

    def load(
        self,
        dataset: dict[str, Any],
        model: dict[str, Any],
        data_dir: str | None,
        max_len: int,
        limits: dict[str, int | None],
        seed: int,
        splits: dict[str, str] | None = None,
        extra_columns: tuple[str, ...] = (),
    ) -> TextData:
        """Prepare the dataset's train / test splits (or ``splits``: role -> split name), at
        most ``limits[role]`` rows each, for the ``model`` config."""
        self.model_cfg = dict(model)
        roles = splits or {"train": dataset["train_split"], "test": dataset["test_split"]}
        self.data = prepare(
            dataset,
            data_dir,
            max_len,
            roles,
            limits,
            seed,
            specials=model_specials(model),
            extra_columns=extra_columns,
        )
        return self.data

    def to(self, device):
        super().to(device)
        for name in ("train", "val", "test"):
            split = getattr(self, name, None)
            if split is not None:
                setattr(self, name, split.to(self.device))
        # eval_index stays on the host: gather moves it, and trims to the rows' longest sentence
        if self.module is not None:
            self.module.to(self.device)
        return self

    def build_model(self, generator: torch.Generator) -> Params:
        """Build the model on the device; detached copies of its trainable parameters."""
        self.module = make_model(self.model_cfg, self.data, generator).to(self.device)
        self._forward = forward(self.module)
        return {k: v.detach().clone() for k, v in self.module.named_parameters() if v.requires_grad}

    def draw(self, split: PaddedSplit, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``n`` rows of ``split`` uniformly with replacement (indices from the CPU generator)."""
        idx = torch.randint(len(split), (n,), generator=generator)  # on the host: see gather
        return split.gather(idx)

    def fix_eval_rows(self, seed: int, labels: dict[str, Tensor] | None = None) -> None:
        """Draw the evaluation rows of every split once: at most ``eval_size`` rows, with the
        seed ``seed`` (the instance seed), stratified by label
        (:func:`bilevel.data.stratified_subset`): every class is in every evaluated subset and
        its share is the split's, whatever the order of the file (Sentiment140's files are
        sorted by label, so the first rows held one class). ``labels``: per role, the labels to
        stratify by instead of the split's (hyper-cleaning: the clean ones)."""
        labels = labels or {}
        self.eval_index = {}
        for role in ("train", "val", "test"):
            split = getattr(self, role, None)
            if split is not None:
                by = labels.get(role, split.labels)
                self.eval_index[role] = stratified_subset(by.cpu(), self.eval_size, seed)

    def eval_rows(self, role: str) -> dict[str, Tensor]:
        """The fixed evaluation rows of the split ``role`` (train | val | test)."""
        return getattr(self, role).gather(self.eval_index[role])

    def scored_rows(self, y: Params, role: str) -> tuple[dict[str, Tensor], Tensor]:
        """The evaluation rows of split ``role`` and the model's logits there (no grad): one
        forward pass that every metric of those rows shares."""
        data = self.eval_rows(role)
        with torch.no_grad():
            return data, self._logits(y, data)

    @staticmethod
    def accuracy_and_loss(logits: Tensor, target: Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of ``logits`` against ``target``."""
        acc = (logits.argmax(-1) == target).float().mean()
        return float(acc), float(F.cross_entropy(logits, target))

    def split_metrics(self, y: Params, role: str) -> tuple[float, float]:
        """(accuracy, cross-entropy) on the evaluation rows of split ``role``."""
        data, logits = self.scored_rows(y, role)
        return self.accuracy_and_loss(logits, data["label"])
