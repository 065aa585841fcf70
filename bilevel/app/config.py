"""Config tree location, composition, and validation with one-line errors.

Hydra's struct mode rejects unknown keys at compose time; the schemas registered in
:mod:`bilevel.app.schema` type-check the fixed sections (trainer, paths, scale, ...). Component
nodes (``_target_`` + arguments: algorithms, estimators, lower strategies, optimizers, tasks)
are checked against the signature of the class they name, which is their schema: an unknown
argument, a value outside a ``Literal`` or a non-number where the class takes a number fails
before anything runs, listing the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path
from types import UnionType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration mistake; its message is one line naming the key."""


def config_dir() -> Path:
    path = PACKAGE_ROOT / "configs"
    if not path.is_dir():
        raise ConfigError(
            f"config tree not found at {path}; install the project with "
            "'pip install -e .' from a checkout"
        )
    return path


def settings_files(choices: Any) -> list[Path]:
    """The settings files that apply to a run, from its Hydra group choices
    (``hydra.runtime.choices``): the (algorithm, task) pair's, then the pair's on the chosen
    dataset and model."""
    root = config_dir() / "settings"
    found = []
    for group, base in (("settings", root), ("settings/data", root / "data")):
        choice = choices.get(group)
        if choice and (base / f"{choice}.yaml").exists():
            found.append(base / f"{choice}.yaml")
    return found


def settings_notice(choices: Any) -> str:
    """One line saying which settings apply, or that the pair falls back to the algorithm's
    defaults."""
    files = settings_files(choices)
    if files:
        return "settings: " + ", ".join(str(f.relative_to(PACKAGE_ROOT)) for f in files)
    algorithm, task = choices.get("algorithm"), choices.get("task")
    return (
        f"settings: none for algorithm={algorithm} task={task}; the algorithm's defaults apply "
        f"(add configs/settings/{task}/{algorithm}.yaml, e.g. with bilevel-tune --write)"
    )


def _locate(target: str) -> Any:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"_target_ {target!r} cannot be imported ({err})") from None


def _signature_params(obj: Any) -> dict[str, inspect.Parameter] | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = dict(sig.parameters)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None  # accepts anything
    return {k: p for k, p in params.items() if p.kind != p.VAR_POSITIONAL}


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:
        return {}


_NUMERIC = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
_FITS = {  # bool is an int subclass: kept apart
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    bool: lambda v: isinstance(v, bool),
    type(None): lambda v: v is None,
}


def _numeric_mismatch(value: Any, hint: Any) -> str | None:
    """What a number-typed argument (``float``, ``int | None``, torch's ``float | Tensor``, ...)
    expects, when ``value`` is not one; None when it fits or the hint is not numeric."""
    members = (
        typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
    )
    import torch  # a Tensor member (torch.optim's lr) cannot come from a config: skipped

    members = tuple(m for m in members if m is not torch.Tensor)
    if not members or not all(m in _NUMERIC for m in members):
        return None
    if any(_FITS[m](value) for m in members):
        return None
    return " or ".join(_NUMERIC[m] for m in members)


def check_node(node: Any, path: str = "") -> None:
    """Recursively check every ``_target_`` node against its class signature."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            check_node(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_") if "_target_" in node else None
    if target is not None:
        obj = _locate(str(target))
        params = _signature_params(obj)
        hints = _hints(obj)
        if params is not None:
            for key in node:
                if str(key).startswith("_") and str(key).endswith("_"):
                    continue
                if key not in params:
                    valid = ", ".join(k for k in params if k != "self")
                    raise ConfigError(
                        f"{path}.{key}: unknown key for {target} (valid keys: {valid})"
                    )
        for key, hint in hints.items():
            if key in node and typing.get_origin(hint) is typing.Literal:
                value = OmegaConf.select(node, str(key))
                if value not in typing.get_args(hint):
                    choices = ", ".join(map(str, typing.get_args(hint)))
                    raise ConfigError(f"{path}.{key}={value}: not one of {choices}")
            elif key in node:
                value = OmegaConf.select(node, str(key))
                expected = _numeric_mismatch(value, hint)
                if expected is not None:
                    raise ConfigError(f"{path}.{key}={value!r}: expected {expected}")
    for key in node:
        if str(key).startswith("_"):
            continue
        check_node(node._get_node(key), f"{path}.{key}" if path else str(key))


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, node)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# (what the key's last part names, the test, what is allowed): checked on every leaf of the
# resolved config, so a value that would run silently and mean nothing fails first.
BOUNDS: list[tuple[Any, Any, str]] = [
    (lambda k: k in ("trainer.max_steps", "trainer.eval_every"), lambda v: v is None or v >= 1,
     "a positive integer or null"),
    (lambda k: k == "trainer.epochs", lambda v: v > 0, "a positive number"),
    (lambda k: k in ("trainer.num_threads", "trainer.log_every"), lambda v: v is None or v >= 1,
     "a positive integer or null"),
    (lambda k: k == "trainer.diverge_above", lambda v: v is None or v > 0,
     "a positive number or null"),
    (lambda k: k == "trainer.checkpoint_every", lambda v: v is None or v >= 0,
     "0 (never), a positive integer or null"),
    (lambda k: k.rsplit(".", 1)[-1] in ("batch_size", "val_batch_size", "eval_size", "n_train",
                                        "val_size", "n_test"),
     lambda v: v is None or v >= 1, "a positive integer or null"),
    (lambda k: k.rsplit(".", 1)[-1] == "lr" or k.endswith("_lr"),
     lambda v: v is None or v >= 0, "a step size >= 0"),
    (lambda k: k.rsplit(".", 1)[-1] in ("noise_std", "noise_lower", "noise_upper"),
     lambda v: v >= 0, "a standard deviation >= 0"),
    (lambda k: k.rsplit(".", 1)[-1] in ("noise_rate", "imratio"), lambda v: 0 <= v < 1,
     "a rate in [0, 1)"),
]  # fmt: skip
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_bounds(resolved: dict[str, Any]) -> None:
    """Values outside what a key means (non-positive steps, epochs or batch sizes, negative step
    sizes or noise, rates outside [0, 1), an unknown device); raise ConfigError naming the key."""
    for key, value in _leaves(resolved):
        if key == "trainer.device" and not DEVICE.fullmatch(str(value)):
            raise ConfigError(f"trainer.device={value!r}: expected auto, cpu, cuda, cuda:N or mps")
        if not (_number(value) or value is None):
            continue
        for applies, ok, allowed in BOUNDS:
            if applies(key) and not ok(value):
                raise ConfigError(f"{key}={value}: expected {allowed}")


def check_combination(resolved: dict[str, Any]) -> None:
    """(task, dataset, model) choices that cannot work together, refused at compose time (before
    any data is read or any run directory is written) with one line naming the choices."""
    task = resolved.get("task") or {}
    dataset = (resolved.get("dataset") or {}).get("name", "synthetic")
    model = resolved.get("model") or {}
    model_name = model.get("kind", model.get("name", "none"))
    task_name = str(task.get("_target_", "")).rsplit(".", 1)[-1]
    if "dataset" not in task:  # the synthetic tasks: plain tensors, no data, no network
        if dataset != "synthetic" or model_name != "none":
            raise ConfigError(
                f"task {task_name} is synthetic (x and y are tensors): dataset={dataset} "
                f"model={model_name} are not used; drop them (dataset=synthetic model=none)"
            )
        return
    if dataset == "synthetic" or model_name == "none":
        raise ConfigError(
            f"task {task_name} reads text: dataset={dataset} model={model_name} cannot run it; "
            "choose dataset=snli|sentiment140|amazon|trec and model=rnn|nli_rnn|transformer"
        )
    fields = (resolved.get("dataset") or {}).get("fields") or []
    if model_name == "nli_rnn" and len(fields) < 2:
        raise ConfigError(
            f"model=nli_rnn needs sentence pairs (dataset=snli); dataset={dataset} has one "
            "sentence per sample: use model=rnn or model=transformer"
        )
    if task.get("group_by") == "domain_id" and dataset != "amazon":
        raise ConfigError(
            f"task.group_by=domain_id draws meta-learning tasks from Amazon's review domains: "
            f"dataset={dataset} has none; use dataset=amazon (or task=hyperrep for episodes by "
            "class)"
        )
    classes = (resolved.get("dataset") or {}).get("n_classes")
    if task_name == "DeepAUC" and classes not in (None, 2):
        raise ConfigError(
            f"task=auc needs a binary dataset; dataset={dataset} has {classes} classes: use "
            "dataset=sentiment140"
        )


def check_config(cfg: DictConfig) -> None:
    """Resolve every interpolation, check value bounds and every component node; raise
    ConfigError."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as err:
        raise ConfigError(_one_line(err)) from None
    check_bounds(resolved)
    check_combination(resolved)
    for section in ("algorithm", "task"):
        if section in cfg:
            check_node(cfg[section], section)
    for section in ("logger", "probe"):
        if cfg.get(section) is not None:
            check_node(cfg[section], section)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else type(err).__name__
    full_key = next((ln.split(":", 1)[1].strip() for ln in text if "full_key:" in ln), None)
    return f"{full_key}: {msg}" if full_key and full_key not in msg else msg


def compose(
    overrides: list[str], config_name: str = "config", return_hydra_config: bool = False
) -> DictConfig:
    """Compose the config tree with ``overrides`` (compose API), raising ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bilevel.app.schema import register

    register()  # config.yaml's defaults name run_schema; compose must not depend on run.py
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
        except Exception as err:
            raise ConfigError(explain_compose_error(err, overrides)) from None
    drop_unused_settings(cfg, cfg.hydra.runtime.choices, overrides)
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


PARTS = ("lower", "estimator", "upper")


def drop_unused_settings(cfg: DictConfig, choices: Any, overrides: list[str]) -> list[str]:
    """Remove the keys that a settings file sets on a part the command line swapped for one
    that does not take them (``algorithm=bo_rep algorithm/lower=epoch_sgd``: the pair's
    ``algorithm.lower.lr`` is an SGD step size, and Epoch-SGD has none). Keys given on the
    command line are kept, so a real mistake still fails validation. Returns one notice line
    per removed key."""
    import yaml

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    notices = []
    for path in settings_files(choices):
        body = yaml.safe_load(path.read_text()) or {}
        for part in PARTS:
            values = (body.get("algorithm") or {}).get(part) or {}
            node = OmegaConf.select(cfg, f"algorithm.{part}")
            if not isinstance(node, DictConfig) or "_target_" not in node:
                continue
            params = _signature_params(_locate(str(node._target_)))
            for key in values:
                full = f"algorithm.{part}.{key}"
                if params is None or key in params or full in given or key not in node:
                    continue
                with open_dict(node):
                    del node[key]
                rel = path.relative_to(config_dir().parent)
                notices.append(
                    f"settings: {full} from {rel} skipped ({node._target_} takes no {key!r})"
                )
    return notices


def explain_compose_error(err: BaseException, overrides: list[str]) -> str:
    """Turn Hydra's multi-line composition errors into one line with the valid choices."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException):
        opts = getattr(err, "options", None)
        group = err.missing_cfg_file or ""
        text = str(err).splitlines()[0]
        if opts:
            name = group.rsplit("/", 1)
            return (
                f"{group}: no such option"
                if len(name) < 2
                else f"{name[0]}={name[1]}: no such option"
            ) + f"; choose from {', '.join(opts)}"
        return text
    text = str(err)
    if "Could not override" in text or "not in struct" in text:
        key = text.split("'")[1] if "'" in text else "?"
        return f"{key}: no such key{_valid_keys_hint(key, overrides)}"
    if text.startswith("Error merging override") and err.__cause__ is not None:
        override = text.removeprefix("Error merging override").strip()
        reason = str(err.__cause__).strip().splitlines()
        return f"{override}: {reason[0]}" if reason else text
    if "Could not find" in text and "Available options" in text:
        first = text.splitlines()[0]
        opts = [ln.strip() for ln in text.splitlines()[2:] if ln.strip()]
        return f"{first}; choose from {', '.join(opts)}"
    return _one_line(err)


def _valid_keys_hint(key: str, overrides: list[str]) -> str:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    rest = [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith(key)]
    try:
        base = compose(rest)
    except ConfigError:
        return ""
    node = OmegaConf.select(base, parent) if parent else base
    if isinstance(node, DictConfig):
        keys = ", ".join(str(k) for k in node if not str(k).startswith("_"))
        return f"; valid keys under '{parent or '<root>'}': {keys}"
    return ""
