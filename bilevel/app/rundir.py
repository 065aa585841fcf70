"""Run directories that never lose or mix results.

A run directory holds one run of one config: ``config.yaml``, ``metrics.csv``, ``run.json``,
``checkpoint.pt`` (bilevel.trainer) and, with ``logger=wandb``, ``wandb/``. The config is
identified by its :func:`fingerprint`, stored in ``run.json`` and in the checkpoint.

:func:`prepare` is the policy, decided before anything is built or written:

- an empty directory (or one with only Hydra's ``.hydra/`` and log file) starts a new run;
- a directory that holds a previous run (``run.json``, ``metrics.csv`` or ``checkpoint.pt``) is
  refused, unless ``resume=true`` (continue it) or ``force=true`` (replace it);
- ``resume=true`` continues the checkpoint only if it was written by the same config (same
  fingerprint); without a checkpoint the run starts afresh, if the previous run (if any) had the
  same config; otherwise it is refused naming the keys that differ;
- ``force=true`` replaces the previous run: its files are deleted (not moved aside), but only
  when :meth:`RunDirPlan.start` is called, i.e. once the new run's task and algorithm have been
  built. ``resume=true force=true`` continues a matching checkpoint and replaces anything else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilevel.app.config import ConfigError

# Dotted config keys that cannot change a run's results (rows of metrics.csv, run.json's
# status), left out of the fingerprint: a run that differs only in them is the same run.
RESULT_NEUTRAL_KEYS: tuple[str, ...] = (
    "resume",  # how the run is started, not what it computes
    "force",
    "name",  # free label (W&B run name, figure curves)
    "logger",  # whole group: where rows are mirrored (W&B), never what they hold
    "paths",  # where data is read from and outputs go, not what they are
    "task.data_dir",  # = paths.data_dir, resolved into the task node (text tasks)
    "trainer.progress",  # progress bar
    "trainer.num_threads",  # CPU threads: speed, not results
    "trainer.checkpoint_every",  # resume is exact, so checkpoint cadence changes nothing
    # CPU length buckets: the same computation reordered (float rounding only, like threads)
    "model.length_buckets",
    "task.model.length_buckets",
)

CHECKPOINT = "checkpoint.pt"  # = bilevel.trainer.CHECKPOINT (not imported: no torch here)
# A previous run is there when one of these is (config.yaml alone is not: nothing ran).
PREVIOUS_RUN_FILES = ("run.json", "metrics.csv", CHECKPOINT)
# Everything a run writes into its directory; what force=true deletes. Hydra's .hydra/ and log
# file belong to the invocation, not to the run, and are left alone.
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "run.json",
    "run.json.tmp",
    CHECKPOINT,
    CHECKPOINT + ".tmp",
    "wandb",  # WandbLogger: wandb.init(dir=run_dir)
)
FINISHED = ("completed", "diverged")


class RunDirError(ConfigError):
    """A run directory refused by the policy; one line naming the directory and the way out."""


def _is_neutral(key: str) -> bool:
    return any(key == n or key.startswith(n + ".") for n in RESULT_NEUTRAL_KEYS)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _strip(node: Any, prefix: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if not _is_neutral(full):
            out[key] = _strip(value, full)
    return out


def fingerprint(resolved: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the canonical JSON of the resolved config, neutral keys
    excluded."""
    text = json.dumps(_strip(resolved), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two resolved configs (neutral keys
    ignored), sorted."""
    fa, fb = _flatten(_strip(a)), _flatten(_strip(b))
    missing = object()
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, missing) != fb.get(k, missing))


def _keys_text(a: dict[str, Any] | None, b: dict[str, Any], most: int = 6) -> str:
    keys = config_diff(a, b) if a is not None else []
    if not keys:
        return "fingerprints differ"
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more + (" differ" if len(keys) > 1 else " differs")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_config_yaml(run_dir: Path) -> dict[str, Any] | None:
    """A run's config.yaml (resolved when written) as plain data. Read with libyaml: the index
    of every stored run (``bilevel.app.jobs.finished_runs``) reads thousands of them."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    import yaml

    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: Path, resolved: dict[str, Any]) -> bool:
    """``run_dir`` holds a finished run (completed or diverged) of this config: reusable."""
    return finished_with(run_dir, fingerprint(resolved))


def stored_fingerprints(run_dir: Path, info: dict[str, Any] | None) -> set[str]:
    """The fingerprints a stored run answers to: the one its run.json recorded, and the one of
    its config.yaml under today's neutral keys (a run made before a key was declared neutral,
    e.g. with another data directory, is still the same run)."""
    found = {info["fingerprint"]} if info and info.get("fingerprint") else set()
    config = _read_config_yaml(Path(run_dir))
    if config is not None:
        found.add(fingerprint(config))
    return found


def finished_with(run_dir: Path, config_fingerprint: str) -> bool:
    """``run_dir`` holds a finished run whose config has ``config_fingerprint``."""
    run_dir = Path(run_dir)
    info = _read_json(run_dir / "run.json")
    return (
        info is not None
        and info.get("status") in FINISHED
        and (run_dir / "metrics.csv").exists()
        and (
            info.get("fingerprint") == config_fingerprint
            or config_fingerprint in stored_fingerprints(run_dir, info)
        )
    )


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in PREVIOUS_RUN_FILES)


def _status(run_dir: Path) -> str:
    if not (run_dir / "run.json").exists():
        return "unknown, no run.json"
    info = _read_json(run_dir / "run.json")
    return str(info.get("status", "unknown")) if info is not None else "unknown, bad run.json"


def load_checkpoint_header(path: Path) -> dict[str, Any]:
    """The checkpoint's stored config identity: ``{"fingerprint": ..., "config": ...}`` (None
    for checkpoints written before fingerprints). Tensors are memory-mapped, not read."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    return {"fingerprint": payload.get("fingerprint"), "config": payload.get("config")}


def mismatch_message(run_dir: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    return (
        f"resume=true: {CHECKPOINT} in {run_dir} was written by a different config: "
        f"{_keys_text(old, new)}; force=true replaces it"
    )


@dataclass
class RunDirPlan:
    """What :func:`prepare` decided: ``new`` (nothing there), ``resume`` (continue the
    checkpoint) or ``replace`` (delete the previous run's files, then start afresh)."""

    run_dir: Path
    action: str
    previous_status: str | None = None

    @property
    def resume(self) -> bool:
        return self.action == "resume"

    def start(self) -> None:
        """Make the directory ready for the run's first write; with ``replace``, delete the
        previous run's files. Call it once the run can start (task and algorithm built)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.action != "replace":
            return
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def prepare(run_dir: Path, resolved: dict[str, Any], *, resume: bool, force: bool) -> RunDirPlan:
    """Decide what a run of ``resolved`` does with ``run_dir`` (see the module docstring);
    writes nothing; raises :class:`RunDirError` with one line when the directory is refused."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return RunDirPlan(run_dir, "new")
    status = _status(run_dir)
    if not (resume or force):
        raise RunDirError(
            f"{run_dir} already holds a run (status: {status}); resume=true continues it, "
            "force=true replaces it (deletes its files)"
        )
    if not resume:
        return RunDirPlan(run_dir, "replace", status)

    new = fingerprint(resolved)
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        try:
            header = load_checkpoint_header(ckpt)
        except Exception as err:
            if force:
                return RunDirPlan(run_dir, "replace", status)
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise RunDirError(
                f"resume=true: cannot read {CHECKPOINT} in {run_dir} ({first}); "
                "force=true replaces it"
            ) from None
        old_fp, old_cfg = header["fingerprint"], header["config"]
        if old_fp is None:  # written before fingerprints: the directory's config.yaml
            old_cfg = _read_config_yaml(run_dir)
            old_fp = fingerprint(old_cfg) if old_cfg is not None else None
        if new == old_fp or (old_cfg is not None and fingerprint(old_cfg) == new):
            return RunDirPlan(run_dir, "resume", status)
        if force:
            return RunDirPlan(run_dir, "replace", status)
        if old_fp is None:
            raise RunDirError(
                f"resume=true: cannot tell which config wrote {CHECKPOINT} in {run_dir} "
                "(no fingerprint, no config.yaml); force=true replaces it"
            )
        raise RunDirError(mismatch_message(run_dir, old_cfg, resolved))

    # No checkpoint: the run starts afresh (as before), replacing a previous run of the same
    # config only; a different config's results are not silently overwritten.
    old_cfg = _read_config_yaml(run_dir)
    info = _read_json(run_dir / "run.json") or {}
    old_fp = info.get("fingerprint") or (fingerprint(old_cfg) if old_cfg is not None else None)
    if new in stored_fingerprints(run_dir, info) or force:
        return RunDirPlan(run_dir, "replace", status)
    what = f"a different config ({_keys_text(old_cfg, resolved)})" if old_fp else "unknown config"
    raise RunDirError(
        f"resume=true: {run_dir} holds a run (status: {status}) of {what} and no {CHECKPOINT} "
        "to continue; force=true replaces it"
    )


def error_line(err: BaseException) -> str:
    """One line for an error: the innermost cause (Hydra wraps a constructor's error in an
    instantiation block) as ``Type: first line``."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def record_failure(run_dir: Path, resolved: dict[str, Any], error: str) -> None:
    """A run that failed before its trainer started (building the task, the algorithm or the
    loggers) in a fresh directory: ``run.json`` says ``failed`` with the error's line, so every
    run directory that exists says what became of it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"status": "failed", "error": error, "steps": 0, "fingerprint": fingerprint(resolved)}
    from bilevel.trainer import atomic_write  # the trainer's own run.json write

    text = json.dumps(info, indent=2) + "\n"
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(text))
