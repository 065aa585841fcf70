"""Structured-config schemas of the fixed sections, registered in Hydra's ConfigStore.

``configs/config.yaml`` lists ``run_schema`` first in its defaults, so a wrong type or an
unknown key in these sections fails at compose time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class TrainerConfig:
    max_steps: int | None = None  # None: epochs × task.steps_per_epoch
    epochs: float = 10.0
    eval_every: int | None = None  # None: once per epoch
    checkpoint_every: int | None = None  # None: once per epoch; 0: never
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    num_threads: int | None = None  # torch CPU threads; None: torch's default (all cores)
    diverge_above: float | None = 1.0e12  # |loss| or hypergradient norm above it: diverged
    log_every: int | None = None  # steps.csv: hypergradient norms every k steps (None: off)


@dataclass
class PathsConfig:
    data_dir: str = "../shared/data"
    output_root: str = "outputs"


@dataclass
class TransformerScale:
    """The transformer's sizes (model=transformer reads them)."""

    hidden: int = 768
    layers: int = 8
    heads: int = 8
    ffn: int = 2048


@dataclass
class ScaleConfig:
    name: str = "small"
    hidden_size: int = 128
    max_train: int | None = 4000  # training samples of the real tasks (None: all)
    transformer: TransformerScale = field(default_factory=lambda: TransformerScale())


@dataclass
class RunConfig:
    seed: int = 0
    resume: bool = False
    force: bool = False  # replace a previous run in the run directory
    name: str = ""  # free label (W&B run name, figure curves)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    algorithm: Any = None
    task: Any = None
    dataset: Any = None
    model: Any = None
    logger: Any = None
    probe: Any = None  # a trainer probe (configs/probe/), e.g. the smoothness diagnostic


def by_scale(values: Any, *, _root_: Any) -> Any:
    """``${by_scale:{paper: 5e-2, small: 0.5}}``: the value for the selected scale, so one
    settings file holds a pair's paper value and its small-scale delta side by side."""
    name = _root_.scale.name
    if name not in values:
        raise ValueError(f"by_scale: no value for scale {name!r} (given: {', '.join(values)})")
    return values[name]


def register() -> None:
    """Register the run schema and the ``by_scale`` resolver (idempotent)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("by_scale"):
        OmegaConf.register_new_resolver("by_scale", by_scale)
