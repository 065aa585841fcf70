"""Structured-config schemas of the fixed sections, registered in Hydra's ConfigStore.

``configs/config.yaml`` lists ``run_schema`` first in its defaults, so a wrong type or an
unknown key in these sections fails at compose time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TrainerConfig:
    max_steps: int | None = None  # None: epochs × task.steps_per_epoch
    epochs: float = 10.0
    eval_every: int | None = None  # None: once per epoch
    checkpoint_every: int | None = None  # None: once per epoch; 0: never
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True


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
    name: str = ""  # free label (W&B run name, figure curves)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    algorithm: Any = None
    task: Any = None
    dataset: Any = None
    model: Any = None
    logger: Any = None


def register() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
