"""``bilevel-run``: the Hydra app. One job = one (algorithm, task, seed) run into its own
directory: config.yaml, metrics.csv, run.json (see bilevel.trainer). A directory that already
holds a run is refused unless ``resume=true`` or ``force=true`` (bilevel.app.rundir)."""

from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bilevel.app.config import (
    ConfigError,
    check_config,
    compose,
    config_dir,
    drop_unused_settings,
    settings_notice,
)
from bilevel.app.rundir import error_line, prepare, record_failure
from bilevel.app.schema import register

register()


def build_and_run(
    cfg: DictConfig,
    run_dir: Path,
    progress: bool | None = None,
    *,
    force: bool | None = None,
    resume: bool | None = None,
):
    """Instantiate the task, algorithm and loggers of ``cfg`` and train into ``run_dir``.

    ``force``/``resume`` (None: ``cfg.force``/``cfg.resume``) select the run-directory policy
    of :func:`bilevel.app.rundir.prepare`, decided before anything is built or written (a
    refusal raises RunDirError). Nothing is written, and a replaced run's files are not
    deleted, until the task, algorithm, loggers and trainer have been built: a run that fails
    to build leaves the directory as it was."""
    from hydra.utils import instantiate

    from bilevel.trainer import Trainer

    check_config(cfg)
    run_dir = Path(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    plan = prepare(
        run_dir,
        resolved,
        resume=bool(cfg.get("resume", False) if resume is None else resume),
        force=bool(cfg.get("force", False) if force is None else force),
    )
    try:
        task = instantiate(cfg.task)
        algorithm = instantiate(cfg.algorithm)
        loggers = []
        if cfg.logger is not None and cfg.logger.get("_target_"):
            loggers.append(instantiate(cfg.logger))
        tr = cfg.trainer
        max_steps = tr.max_steps or math.ceil(tr.epochs * task.steps_per_epoch)
        every_epoch = task.steps_per_epoch
        checkpoint_every = every_epoch if tr.checkpoint_every is None else tr.checkpoint_every
        trainer = Trainer(
            task,
            algorithm,
            run_dir,
            max_steps=max_steps,
            eval_every=tr.eval_every or every_epoch,
            checkpoint_every=checkpoint_every or None,
            seed=cfg.seed,
            device=tr.device,
            loggers=loggers,
            config=resolved,
            resume=plan.resume,
            progress=tr.progress if progress is None else progress,
            diverge_above=tr.get("diverge_above"),
            log_every=tr.get("log_every"),
            probes=[instantiate(cfg.probe)] if cfg.get("probe") else [],
        )
    except Exception as err:
        if plan.action == "new":  # a fresh directory records why nothing ran
            record_failure(run_dir, resolved, error_line(err))
        raise
    if tr.get("num_threads"):
        import torch

        torch.set_num_threads(int(tr.num_threads))
    plan.start()  # from here on the directory is this run's (force: the old files go now)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return trainer.fit()


# Exit codes of ``bilevel-run`` (README "Exit codes"): one per run status, and for a multirun
# the most severe status among its runs, in this order. Every run of a sweep is attempted.
EXIT_CODES: dict[str, int] = {
    "bad_input": 2,  # a config or data error: one line naming the key or file
    "failed": 1,  # an exception during the run: run.json says failed, traceback.txt has it
    "interrupted": 4,  # SIGINT/SIGTERM: stopped with a checkpoint; resume=true continues
    "diverged": 3,  # non-finite values or trainer.diverge_above exceeded
    "completed": 0,
}


def exit_code(statuses: list[str]) -> int:
    """The exit code summarising the statuses of a command's runs (the most severe)."""
    return next((code for status, code in EXIT_CODES.items() if status in statuses), 0)


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _main(cfg: DictConfig) -> tuple[str, float | None]:
    """One job: build, train, print its one-line result; return (status, sweep objective)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    print(settings_notice(hydra_cfg.runtime.choices), flush=True)
    for line in drop_unused_settings(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task):
        print(line, flush=True)
    result = build_and_run(cfg, run_dir)
    last: dict[str, Any] = result.rows[-1] if result.rows else {}
    summary = ", ".join(
        f"{k}={last[k]:.4g}"
        for k in ("true_hypergrad_norm", "upper_loss")
        if isinstance(last.get(k), float)
    )
    print(
        f"[{result.status}] {run_dir} steps={last.get('step')} "
        f"train_s={result.train_seconds:.2f} {summary}"
    )
    value = last.get("true_hypergrad_norm", last.get("upper_loss"))
    return result.status, float(value) if isinstance(value, (int, float)) else None


def _overrides_of(argv: list[str]) -> tuple[list[str], bool] | None:
    """The config overrides of a command line and whether it is a multirun; None if the
    command is informational (--help, --cfg, ...) and needs no validation."""
    overrides, multirun = [], False
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-c", "--cfg", "--info", "-i", "--shell-completion", "-sc") and (
            "-m" in argv or "--multirun" in argv
        ):
            raise ConfigError(
                f"{arg} prints one job's config and cannot be combined with -m/--multirun: drop "
                "-m (and give one value per key) to see a job's config"
            )
        elif arg in (
            "-h",
            "--help",
            "--hydra-help",
            "--info",
            "-i",
            "--version",
            "-c",
            "--cfg",
            "--shell-completion",
            "-sc",
            "--resolve",
        ):
            return None
        elif arg in (
            "-cn",
            "--config-name",
            "-cp",
            "--config-path",
            "-cd",
            "--config-dir",
            "--experimental-rerun",
            "-p",
            "--package",
        ):
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun


def validate_command_line(argv: list[str]) -> None:
    """Compose every job of the command line before Hydra runs any; raise ConfigError."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = _overrides_of(argv)
    if parsed is None:
        return
    overrides, multirun = parsed
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        parsed_ovr = OverridesParser.create().parse_overrides(user)
    except Exception as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    if multirun:
        jobs = [job for batch in BasicSweeper.split_arguments(parsed_ovr, None) for job in batch]
    else:
        if any(o.is_sweep_override() for o in parsed_ovr):
            raise ConfigError("a sweep (a,b or range(...)) needs -m/--multirun")
        jobs = [user]
    for job in jobs:
        check_config(compose(list(job)))


HIDDEN_GROUPS = ("algorithm/tuned", "settings", "hydra")  # chosen for the user, or listed below


def help_text() -> str:
    """``bilevel-run --help``: the groups a user chooses from (not the internal
    ``algorithm/tuned/*`` and ``settings/*`` ones), the top-level keys, and where to read more."""
    root = config_dir()
    groups: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        group = str(path.parent.relative_to(root))
        if group == "." or group.startswith(HIDDEN_GROUPS):
            continue
        groups.setdefault(group, []).append(path.stem)
    lines = [
        "bilevel-run [KEY=VALUE ...] [-m]: one run (or, with -m, a sweep) of an algorithm on a "
        "task.",
        "",
        "Groups (group=option):",
        *(f"  {g}: {', '.join(opts)}" for g, opts in groups.items()),
        "  hydra/launcher (with -m): basic, joblib, submitit_local, submitit_slurm, slurm_gpu "
        "(project preset)",
        "",
        "Chosen for you: settings/<task>/<algorithm> and settings/data/<task>/<dataset>-<model>/"
        "<algorithm> (the pair's step sizes, docs/settings.md); ~settings drops them.",
        "Keys: seed, resume, force, name, trainer.{max_steps,epochs,eval_every,checkpoint_every,"
        "device,progress}, paths.{data_dir,output_root}, any algorithm.* / task.* / model.* "
        "argument.",
        "",
        "  bilevel-run algorithm=soba task=quadratic seed=3 trainer.max_steps=500",
        "  bilevel-run -m algorithm=stocbio,soba task=quadratic seed=0,1,2",
        "  bilevel-run algorithm=soba --cfg job    # print the composed config",
        "",
        "README.md (options table), docs/settings.md; Hydra's own flags: --hydra-help.",
    ]
    return "\n".join(lines)


def cli() -> None:
    """Entry point of ``bilevel-run``."""
    import hydra
    from hydra.errors import InstantiationException

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        return

    try:
        validate_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"bilevel-run: error: {err}", file=sys.stderr)
        sys.exit(2)

    statuses: list[str] = []

    def task(cfg: DictConfig) -> float | None:
        """One job; its failure is reported in one line and recorded, never raised, so a
        sweep goes on to its next job and the exit code summarises (EXIT_CODES)."""
        try:
            status, value = _main(cfg)
            statuses.append(status)
            return value
        except (ConfigError, InstantiationException) as err:  # a refused run dir, bad data
            statuses.append("bad_input")
            message = str(err) if isinstance(err, ConfigError) else error_line(err)
            print(f"bilevel-run: error: {message}", file=sys.stderr, flush=True)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            statuses.append("failed")
            where = _run_dir() / "traceback.txt"
            if where.parent.is_dir():  # run.json already says failed, with this line
                where.write_text(traceback.format_exc())
            print(f"bilevel-run: failed: {error_line(err)} ({where})", file=sys.stderr, flush=True)
        return None

    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(task)
    main()
    if len(statuses) > 1:
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in EXIT_CODES if s in statuses)
        print(f"bilevel-run: {len(statuses)} runs: {counts}", file=sys.stderr, flush=True)
    code = exit_code(statuses)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    cli()
