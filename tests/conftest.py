"""Shared fixtures: compose the Hydra config tree (compose API, as lightning-hydra-template's
conftest) and run one composed config into a per-test ``tmp_path`` directory."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from bilevel.app.config import compose

# The prepared-text cache (bilevel.tasks.text.prepared_cache_dir) of this test session: a fresh
# folder, so tests neither read nor fill the user's ~/.cache/bilevel (subprocesses inherit it).
_CACHE = tempfile.mkdtemp(prefix="bilevel-test-cache-")
os.environ["BILEVEL_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Small, fast runs: the quadratic task with closed forms, a few steps, no progress bar.
TINY = ["task=quadratic", "trainer.max_steps=20", "trainer.progress=false"]


@pytest.fixture(autouse=True)
def _clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg("algorithm=soba", ...)``: the composed root config (ConfigError if wrong)."""

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        return compose(list(overrides), return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def tiny_cfg(compose_cfg) -> Callable[..., DictConfig]:
    """A composed tiny run (quadratic, 20 steps); extra overrides win."""

    def _tiny(*overrides: str) -> DictConfig:
        return compose_cfg(*TINY, *overrides)

    return _tiny


@pytest.fixture
def run_cfg():
    """``run_cfg(cfg, run_dir)``: train ``cfg`` into ``run_dir`` in-process (RunResult)."""
    from bilevel.app.run import build_and_run

    def _run(cfg: DictConfig, run_dir: Path):
        return build_and_run(cfg, Path(run_dir), progress=False)

    return _run


@pytest.fixture
def cli(tmp_path):
    """``cli(*args, env=...)``: run the ``bilevel-run`` console script (the one installed next
    to this Python) in ``tmp_path``; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("bilevel-run")

    def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
        cmd = [str(exe) if exe.exists() else "bilevel-run", *args]
        hermetic = ("HYDRA_FULL_ERROR", "WANDB_MODE", "WANDB_DIR")
        full_env = {k: v for k, v in os.environ.items() if k not in hermetic}
        full_env.update({"WANDB_SILENT": "true", **(env or {})})
        return subprocess.run(
            cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout
        )

    return _cli


@pytest.fixture
def metrics():
    """``metrics(run_dir)``: metrics.csv as a DataFrame."""
    return lambda run_dir: pd.read_csv(Path(run_dir) / "metrics.csv")
