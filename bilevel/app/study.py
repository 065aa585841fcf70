"""Studies: registry entries that are evaluated in-process instead of trained.

A registry entry with a ``study:`` key is an ordinary entry (experiment, panels × curves × seeds,
plot, summary, claims) whose runs are not trained. For each planned run, and for each value of
its one sweep override (Hydra's syntax ``key=v1,v2,...`` or ``key=range(a,b)``: a budget grid,
in order), the run's config is composed, its task and algorithm are built, and the study's
function is called with them in place of the trainer. Each call returns one row of metrics;
``bilevel-figure`` adds ``panel, curve, seed``, ``step`` (the index in the grid: the summary's
"final" is the last grid value, and plots match seeds by it), ``budget_key`` and ``budget`` (the
swept key and value), then summarizes, checks claims and draws as for trained runs. Nothing is
stored per run and nothing is reused: a study is meant to take seconds to a minute on one CPU
core. ::

    study:
      function: bilevel.diagnostics.hypergrad_error:evaluate    # module:function
      point_seed: 0                                              # other keys: keyword arguments

The function's contract: ``fn(task, algorithm, *, seed, steps, **kwargs) -> dict`` with
``steps`` = ``trainer.max_steps`` of the config (else epochs × steps per epoch); it runs on the
CPU. A row without a ``status`` is ``completed``.
"""

from __future__ import annotations

import copy
import importlib
import math
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bilevel.app.config import ConfigError, check_config, compose


def study_function(spec: dict[str, Any]) -> tuple[Callable[..., dict[str, Any]], dict[str, Any]]:
    """The entry's ``study`` mapping -> (function, its keyword arguments)."""
    if not isinstance(spec, dict) or "function" not in spec:
        raise ConfigError("study: expected a mapping with 'function: module:function'")
    module, _, name = str(spec["function"]).partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        where = f"study.function {spec['function']!r}"
        raise ConfigError(f"{where} cannot be imported ({err})") from None
    return fn, {k: v for k, v in spec.items() if k != "function"}


def split_sweep(overrides: list[str]) -> tuple[list[str], str | None, list[Any], int | None]:
    """(overrides without the sweep and without ``seed``, the swept key or None, its values in
    order, the last ``seed`` given or None). One sweep at most, over a value key (not a group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    rest, key, values, seed = [], None, [None], None
    for text, o in zip(overrides, parsed, strict=True):
        if o.is_sweep_override():
            if key is not None or "/" in o.key_or_group:
                raise ConfigError(
                    f"{text}: a study sweeps one value key (a budget grid); "
                    f"{'a second sweep' if key is not None else 'not a config group'}"
                )
            key, values = o.key_or_group, list(o.sweep_iterator())
        elif o.key_or_group == "seed":
            seed = int(o.value())
        else:
            rest.append(text)
    return rest, key, values, seed


def run_study(spec: dict[str, Any], runs: list[Any]):
    """The study's tidy table: one row per planned run and grid value (module docstring).

    Runs that differ only in their seed share one composed config, and one task and algorithm
    per grid value (built once, handed to each seed: a study function must not change them);
    composing costs ~0.2 s, a point of the quadratic study milliseconds."""
    import pandas as pd
    from hydra.utils import instantiate

    fn, kwargs = study_function(spec)
    groups: dict[tuple[str, ...], list[tuple[int, Any, int | None]]] = {}
    sweeps: dict[tuple[str, ...], tuple[str | None, list[Any]]] = {}
    for order, run in enumerate(runs):
        base, key, values, seed = split_sweep(run.overrides)
        groups.setdefault(tuple(base), []).append((order, run, seed))
        sweeps[tuple(base)] = (key, values)
    rows = []
    start = time.perf_counter()
    for base, members in groups.items():
        composed = compose(list(base))
        key, values = sweeps[base]
        for step, value in enumerate(values):
            cfg = copy.deepcopy(composed)
            if key is not None:
                node = OmegaConf.select(cfg, key, default="<none>")
                if node == "<none>" or isinstance(node, DictConfig):
                    what = "no such key" if node == "<none>" else "a config node, not a value"
                    raise ConfigError(f"{key}: {what} in the config of {members[0][1].run_id}")
                OmegaConf.update(cfg, key, value)
            check_config(cfg)
            task, algorithm = instantiate(cfg.task), instantiate(cfg.algorithm)
            tr = cfg.trainer
            steps = int(tr.max_steps or math.ceil(tr.epochs * task.steps_per_epoch))
            for order, run, seed in members:
                seed = int(cfg.seed) if seed is None else seed
                row = fn(task, algorithm, seed=seed, steps=steps, **kwargs)
                rows.append(
                    {
                        "order": order,
                        "panel": run.panel,
                        "curve": run.curve,
                        "seed": run.seed,
                        "step": step,
                        "budget_key": key or "",
                        "budget": value,
                        "status": "completed",
                        **row,
                    }
                )
    print(f"study: {len(rows)} points of {len(runs)} runs in {time.perf_counter() - start:.1f} s")
    table = pd.DataFrame(rows).sort_values(["order", "step"], kind="stable")
    return table.drop(columns="order").reset_index(drop=True)
