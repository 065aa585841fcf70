"""The config tree: every option composes, validates and instantiates; mistakes fail at compose
or validation time with a one-line ConfigError naming the key. Options are discovered by
globbing configs/, so a new yaml file is covered without editing this file."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel.algorithms import Algorithm
from bilevel.app.config import ConfigError, check_config, config_dir
from bilevel.logging import WandbLogger

CONFIGS = config_dir()
NESTED = ("estimator", "lower", "upper")  # the groups under configs/algorithm/


def options(group: str) -> list[str]:
    """The options of a config group (``experiment/unibio/fig1`` style names for nested dirs)."""
    root = CONFIGS / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


ALGORITHMS = sorted(p.stem for p in (CONFIGS / "algorithm").glob("*.yaml"))
TASKS = options("task")


def test_the_tree_is_discovered():
    # guards against a glob that silently matches nothing (every parametrized test would vanish)
    assert {"stocbio", "soba", "bo_rep", "unibio"} <= set(ALGORITHMS)
    assert {"quadratic", "unibio_synthetic"} <= set(TASKS)
    for group in NESTED:
        assert len(options(f"algorithm/{group}")) >= 3, group
    assert "unibio/fig1" in options("experiment")


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


# -- everything composes ---------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithm_x_task_composes_and_instantiates(compose_cfg, algorithm, task):
    cfg = compose_cfg(f"algorithm={algorithm}", f"task={task}")
    check_config(cfg)
    assert cfg.algorithm._target_ and cfg.task._target_
    built_task = instantiate(cfg.task)
    built_alg = instantiate(cfg.algorithm)
    assert isinstance(built_alg, Algorithm)
    assert isinstance(built_alg, get_class(cfg.algorithm._target_))
    assert isinstance(built_task, get_class(cfg.task._target_))
    if "steps_per_epoch" in cfg.task:  # the real tasks derive it from their data
        assert built_task.steps_per_epoch == cfg.task.steps_per_epoch
    assert built_task.steps_per_epoch >= 1


def _accepted(target: str) -> set[str] | None:
    """Argument names of the callable ``target`` names; None if it takes ``**kwargs``."""
    try:
        obj = get_class(target)
    except Exception:
        obj = get_method(target)
    params = inspect.signature(obj).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def parts(algorithm: str) -> set[str]:
    """The part groups (``lower``, ``estimator``, ``upper``) an algorithm's defaults list names."""
    defaults = OmegaConf.load(CONFIGS / "algorithm" / f"{algorithm}.yaml").get("defaults", [])
    return {str(k) for d in defaults if isinstance(d, DictConfig) for k in d if k in NESTED}


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in NESTED for o in options(f"algorithm/{g}")],
)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nested_option_composes_into_algorithm(compose_cfg, algorithm, group, option):
    """``algorithm/<group>=<option>`` swaps one part of an algorithm cleanly: the algorithm's
    tuned settings live in configs/algorithm/tuned/<alg>/<group>/<option>.yaml and apply only
    while that option is selected, so no argument of the old part is left behind. An algorithm
    without such a part (SUSTAIN's and VRBO's y recursions, F2SA's missing estimator) rejects it
    with a one-line error naming the group."""
    if group not in parts(algorithm):
        with pytest.raises(ConfigError) as excinfo:
            compose_cfg(f"algorithm={algorithm}", f"algorithm/{group}={option}", "task=quadratic")
        assert f"algorithm/{group}" in _one_line_error(excinfo)
        return
    cfg = compose_cfg(f"algorithm={algorithm}", f"algorithm/{group}={option}", "task=quadratic")
    own = OmegaConf.load(CONFIGS / "algorithm" / group / f"{option}.yaml")
    part = cfg.algorithm[group]
    assert part._target_ == own._target_
    assert set(own) <= set(part)  # every key of the option file is there
    accepted = _accepted(part._target_)
    if accepted is not None:
        stale = {str(k) for k in part if not str(k).startswith("_") and k not in accepted}
        assert not stale, f"keys {stale} of {algorithm} are not arguments of {part._target_}"
    check_config(cfg)
    built = instantiate(cfg.algorithm)
    assert isinstance(built, Algorithm)
    # the swapped-in part is what the algorithm holds
    held = getattr(built, group, None)
    if held is not None:
        if group == "upper":  # a partial optimizer, given the parameters by the algorithm
            held = held([torch.zeros(2, requires_grad=True)])
        assert type(held) is get_class(part._target_)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg(f"experiment={experiment}")
    check_config(cfg)
    instantiate(cfg.task)
    instantiate(cfg.algorithm)


def test_unibio_fig1_sets_its_deltas(compose_cfg):
    cfg = compose_cfg("experiment=unibio/fig1")
    assert cfg.algorithm._target_ == "bilevel.algorithms.UniBiO"
    assert cfg.task._target_.endswith("UniBiOSynthetic")
    assert cfg.trainer.max_steps == 500
    assert cfg.trainer.eval_every == 1
    # a command-line override still wins over the experiment
    assert compose_cfg("experiment=unibio/fig1", "trainer.max_steps=7").trainer.max_steps == 7


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("logger", "scale", "probe") for o in options(g)],
)
def test_other_groups_compose(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    check_config(cfg)
    if isinstance(cfg[group], DictConfig) and cfg[group].get("_target_"):
        instantiate(cfg[group])


TEXT_TASKS = ["hypercleaning", "hyperrep", "hyperrep_amazon", "hyperrep_trec", "auc", "hpo"]
REFUSED = {  # (task, dataset, model) -> what the one line names
    ("*", "synthetic", "*"): "reads text",
    ("*", "*", "none"): "reads text",
    ("*", "sentiment140", "nli_rnn"): "needs sentence pairs",
    ("*", "amazon", "nli_rnn"): "needs sentence pairs",
    ("*", "trec", "nli_rnn"): "needs sentence pairs",
    ("auc", "snli", "*"): "binary",
    ("auc", "trec", "*"): "binary",
    ("hyperrep_amazon", "snli", "*"): "review domains",
    ("hyperrep_amazon", "sentiment140", "*"): "review domains",
    ("hyperrep_amazon", "trec", "*"): "review domains",
}


def expected_refusal(task: str, dataset: str, model: str) -> str | None:
    for (t, d, m), words in REFUSED.items():
        if t in ("*", task) and d in ("*", dataset) and m in ("*", model):
            return words
    return None


@pytest.mark.parametrize("task", TEXT_TASKS + ["quadratic"])
def test_every_task_dataset_model_choice_composes_or_is_refused_in_one_line(compose_cfg, task):
    """Issue #14: an incompatible (task, dataset, model) is refused at compose time, before any
    data is read, with one line naming the choices; every other combination passes the checks
    (tests/test_zoo.py runs one step of each text task with each model)."""
    for dataset in options("dataset"):
        for model in options("model"):
            cfg = compose_cfg(f"task={task}", f"dataset={dataset}", f"model={model}")
            words = expected_refusal(task, dataset, model)
            if task == "quadratic":
                words = None if (dataset, model) == ("synthetic", "none") else "is synthetic"
            if words is None:
                check_config(cfg)
                continue
            with pytest.raises(ConfigError, match=words) as err:
                check_config(cfg)
            assert len(str(err.value).splitlines()) == 1


def test_loggers_and_scales(compose_cfg):
    assert compose_cfg("logger=local").logger.get("_target_") is None
    wandb_cfg = compose_cfg("logger=wandb", "logger.mode=disabled")
    logger = instantiate(wandb_cfg.logger)
    assert isinstance(logger, WandbLogger)
    assert logger.kwargs["mode"] == "disabled"
    small, paper = compose_cfg("scale=small").scale, compose_cfg("scale=paper").scale
    assert (small.name, paper.name) == ("small", "paper")
    assert small.hidden_size < paper.hidden_size
    assert small.max_train is not None and paper.max_train is None  # paper: every sample


@pytest.mark.parametrize(
    "launcher,target",
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        (
            "submitit_slurm",
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        ),
    ],
)
def test_launchers_compose(compose_cfg, launcher, target):
    cfg = compose_cfg(f"hydra/launcher={launcher}", return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
    check_config(compose_cfg(f"hydra/launcher={launcher}"))


# -- mistakes fail early, in one line naming the key -------------------------------------------
def test_unknown_group_option(compose_cfg):
    with pytest.raises(ConfigError) as excinfo:
        compose_cfg("algorithm=stocbo")
    msg = _one_line_error(excinfo)
    assert msg.startswith("algorithm=stocbo")
    for name in ALGORITHMS:
        assert name in msg


def test_unknown_nested_group_option(compose_cfg):
    with pytest.raises(ConfigError) as excinfo:
        compose_cfg("algorithm/estimator=cgg")
    msg = _one_line_error(excinfo)
    assert "cgg" in msg
    for name in options("algorithm/estimator"):
        assert name in msg


def test_unknown_key(compose_cfg):
    with pytest.raises(ConfigError) as excinfo:
        compose_cfg("trainer.max_stepz=5")
    msg = _one_line_error(excinfo)
    assert msg.startswith("trainer.max_stepz")
    for key in ("max_steps", "epochs", "eval_every", "checkpoint_every", "device", "progress"):
        assert key in msg


def test_unknown_top_level_key(compose_cfg):
    with pytest.raises(ConfigError) as excinfo:
        compose_cfg("sead=3")
    msg = _one_line_error(excinfo)
    assert "sead" in msg and "seed" in msg


def test_wrong_type(compose_cfg):
    with pytest.raises(ConfigError) as excinfo:
        compose_cfg("trainer.max_steps=abc")
    msg = _one_line_error(excinfo)
    assert "trainer.max_steps" in msg and "abc" in msg


def test_unknown_component_argument(compose_cfg):
    cfg = compose_cfg("algorithm=stocbio", "+algorithm.estimator.qq=3")
    with pytest.raises(ConfigError) as excinfo:
        check_config(cfg)
    msg = _one_line_error(excinfo)
    assert msg.startswith("algorithm.estimator.qq")
    assert "bilevel.hypergrad.Neumann" in msg
    for key in _accepted("bilevel.hypergrad.Neumann") - {"self"}:
        assert key in msg


def test_literal_out_of_range(compose_cfg):
    cfg = compose_cfg("algorithm=stocbio", "algorithm.estimator.variant=foo")
    with pytest.raises(ConfigError) as excinfo:
        check_config(cfg)
    msg = _one_line_error(excinfo)
    assert msg.startswith("algorithm.estimator.variant=foo")
    for variant in ("textbook", "randomized", "reference_sum", "reference_rand", "ns_a"):
        assert variant in msg


# -- the console script ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,names",
    [("algorithm=stocbo", "stocbio"), ("trainer.max_stepz=3", "trainer.max_stepz")],
)
def test_console_script_reports_one_line(cli, tmp_path, override, names):
    proc = cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    lines = proc.stderr.strip("\n").splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bilevel-run: error:"), proc.stderr
    assert names in lines[0]
    assert not (tmp_path / "run").exists()  # nothing ran


def test_tuned_settings_apply_to_the_default_part_only(compose_cfg):
    cfg = compose_cfg("algorithm=stocbio", "task=quadratic")
    assert cfg.algorithm.lower.steps == 3
    assert cfg.algorithm.estimator.hessian_batches == "independent"
    swapped = compose_cfg("algorithm=stocbio", "task=quadratic", "algorithm/estimator=cg")
    assert "hessian_batches" not in swapped.algorithm.estimator
    assert swapped.algorithm.lower.steps == 3  # the other parts keep their tuning
    user = compose_cfg("algorithm=stocbio", "task=quadratic", "algorithm.estimator.q=7")
    assert user.algorithm.estimator.q == 7  # command-line overrides win over tuning
