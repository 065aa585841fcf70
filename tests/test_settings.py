"""The per-(algorithm, task) settings layer and the tuning command (issue #8).

Every settings file applies to its pair and passes validation; the data layer wins over the
pair's file; the command line wins over both; a pair without a file falls back to the
algorithm's defaults with a one-line notice; ``by_scale`` picks the scale's value; and
``bilevel-tune`` runs a grid, selects by its stated rule and writes the pair's file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf, open_dict

import bilevel.app.config as app_config
from bilevel.app import tune
from bilevel.app.config import ConfigError, check_config, compose, settings_files, settings_notice

SETTINGS = app_config.config_dir() / "settings"


def _leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _pair_of(path: Path) -> list[str]:
    rel = path.relative_to(SETTINGS).with_suffix("").parts
    if rel[0] == "data":  # data/<task>/<dataset>-<model>/<algorithm>
        dataset, model = rel[2].split("-", 1)
        return [f"task={rel[1]}", f"dataset={dataset}", f"model={model}", f"algorithm={rel[3]}"]
    return [f"task={rel[0]}", f"algorithm={rel[1]}"]


FILES = sorted(SETTINGS.rglob("*.yaml"))


def test_settings_tree_is_discovered():
    assert len(FILES) >= 10
    assert (SETTINGS / "quadratic" / "soba.yaml").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SETTINGS)))
def test_each_settings_file_applies_to_its_pair_and_validates(path):
    text = path.read_text()
    assert text.startswith("# @package _global_\n"), path
    comments = [ln for ln in text.splitlines()[1:] if ln.startswith("#")]
    assert comments, f"{path}: no provenance comment"
    overrides = _pair_of(path)
    for scale in ("small", "paper") if "${by_scale:" in text else ("small",):
        cfg = compose([*overrides, f"scale={scale}"], return_hydra_config=True)
        assert path in settings_files(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        check_config(cfg)
        if "data" in path.relative_to(SETTINGS).parts[:1]:
            continue  # the data layer's own values are checked below, after its pair's file
        for key, value in _leaves(yaml.safe_load(text)):
            got = OmegaConf.select(cfg, key)
            if isinstance(value, str) and value.startswith("${by_scale:"):
                inner = yaml.safe_load(value.removeprefix("${by_scale:").removesuffix("}"))
                value = inner[scale]
            elif isinstance(value, str) and value.startswith("${"):
                continue
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (
                f"{path}: {key}={got}, file says {value}"
            )


# -- the mechanism, on a copy of the config tree ----------------------------------------------
@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A private copy of configs/ (settings files can be added and removed freely)."""
    root = tmp_path / "configs"
    shutil.copytree(app_config.config_dir(), root)
    shutil.rmtree(root / "settings")
    (root / "settings").mkdir()
    monkeypatch.setattr(app_config, "config_dir", lambda: root)
    monkeypatch.setattr(app_config, "PACKAGE_ROOT", tmp_path)
    return root


def _write(root: Path, rel: str, body: dict, comment: str = "# test") -> None:
    path = root / "settings" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package _global_\n{comment}\n" + yaml.safe_dump(body))


def test_pair_file_applies_only_to_its_pair_and_the_command_line_wins(tree):
    default = compose(["algorithm=soba", "task=quadratic"]).algorithm.upper.lr
    _write(tree, "quadratic/soba.yaml", {"algorithm": {"upper": {"lr": 0.777}}})
    assert compose(["algorithm=soba", "task=quadratic"]).algorithm.upper.lr == 0.777
    assert (
        compose(["algorithm=soba", "task=quadratic", "algorithm.upper.lr=0.5"]).algorithm.upper.lr
        == 0.5
    )
    other = compose(["algorithm=stocbio", "task=quadratic"]).algorithm.upper.lr
    assert other != 0.777 and default != 0.777


def test_data_layer_wins_over_the_pair_file(tree):
    _write(tree, "hypercleaning/soba.yaml", {"algorithm": {"upper": {"lr": 0.1}}})
    _write(
        tree, "data/hypercleaning/sentiment140-rnn/soba.yaml", {"algorithm": {"upper": {"lr": 0.2}}}
    )
    snli = compose(["algorithm=soba", "task=hypercleaning"])
    s140 = compose(["algorithm=soba", "task=hypercleaning", "dataset=sentiment140", "model=rnn"])
    assert snli.algorithm.upper.lr == 0.1 and s140.algorithm.upper.lr == 0.2


def test_missing_pair_falls_back_to_the_algorithm_defaults_with_a_notice(tree):
    cfg = compose(["algorithm=soba", "task=quadratic"], return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert settings_files(choices) == []
    notice = settings_notice(choices)
    assert "\n" not in notice and "none for algorithm=soba task=quadratic" in notice
    assert (
        cfg.algorithm.upper.lr
        == compose(["algorithm=soba", "task=hypercleaning"]).algorithm.upper.lr
    )
    _write(tree, "quadratic/soba.yaml", {"algorithm": {"upper": {"lr": 0.3}}})
    cfg = compose(["algorithm=soba", "task=quadratic"], return_hydra_config=True)
    assert (
        settings_notice(cfg.hydra.runtime.choices)
        == "settings: configs/settings/quadratic/soba.yaml"
    )


def test_by_scale_picks_the_scale_value_and_names_a_missing_one(tree):
    lr = "${by_scale:{paper: 0.05, small: 0.5}}"
    _write(tree, "quadratic/soba.yaml", {"algorithm": {"upper": {"lr": lr}}})
    assert compose(["algorithm=soba", "task=quadratic"]).algorithm.upper.lr == 0.5
    assert compose(["algorithm=soba", "task=quadratic", "scale=paper"]).algorithm.upper.lr == 0.05
    _write(tree, "quadratic/soba.yaml", {"algorithm": {"upper": {"lr": "${by_scale:{paper: 1}}"}}})
    with pytest.raises(ConfigError, match="no value for scale 'small'") as err:
        check_config(compose(["algorithm=soba", "task=quadratic"]))
    assert "\n" not in str(err.value)


# -- bilevel-tune -------------------------------------------------------------------------------
def test_plan_splits_grid_replicates_and_fixed_overrides():
    fixed, grid, reps = tune.plan(
        ["algorithm=soba", "algorithm.upper.lr=0.1,0.2", "seed=0,1", "task.noise_std=0,0.5"],
        ["task.noise_std"],
    )
    assert fixed == ["algorithm=soba"]
    assert grid == {"algorithm.upper.lr": ["0.1", "0.2"]}
    assert reps == {"seed": ["0", "1"], "task.noise_std": ["0", "0.5"]}
    assert len(tune.trials(fixed, grid, reps)) == 8
    with pytest.raises(ConfigError, match="no grid"):
        tune.plan(["algorithm=soba", "seed=0,1"], [])


def test_write_settings_keeps_the_header_and_wraps_scale_deltas(tmp_path):
    path = tmp_path / "s.yaml"
    tune.write_settings(path, {"algorithm.upper.lr": "0.05"}, ["Paper: X §1"], False, "T")
    tune.write_settings(path, {"algorithm.upper.lr": "1e-1"}, ["Tuned: Y"], True)
    tune.write_settings(path, {"algorithm.upper.lr": "0.2"}, ["Tuned: Z", "  how"], True)
    text = path.read_text()
    assert text.splitlines()[:5] == [
        "# @package _global_",
        "# T",
        "# Paper: X §1",
        "# Tuned: Z",
        "#   how",
    ]
    assert (
        yaml.safe_load(text)["algorithm"]["upper"]["lr"] == "${by_scale:{paper: 0.05, small: 0.2}}"
    )


def test_tune_runs_the_grid_selects_by_the_rule_and_writes_the_pair_file(tree, tmp_path, capsys):
    args = argparse.Namespace(
        replicate=["task.noise_std"],
        metric="true_hypergrad_norm",
        mode="min",
        last=2,
        log=True,
        aggregate="mean",
        require=[],
        jobs=1,
        runs_dir=tmp_path / "runs",
        out=tmp_path / "trials.csv",
        write=True,
        write_if_beats=None,
        data=False,
        scale_delta=False,
        argv=["..."],
    )
    overrides = [
        "algorithm=soba",
        "task=quadratic",
        "trainer.max_steps=30",
        "trainer.eval_every=10",
        "algorithm.lower.lr=0.15",
        "algorithm.estimator.lr=0.15",
        "algorithm.upper.lr=0.0,0.1",  # x frozen cannot win
        "task.noise_std=0,0.5",
        "seed=0",
    ]
    result = tune.tune(args, overrides)
    assert result["chosen"] == {
        "algorithm.lower.lr": "0.15",
        "algorithm.estimator.lr": "0.15",
        "algorithm.upper.lr": "0.1",
    }
    table = pd.read_csv(tmp_path / "trials.csv")
    assert len(table) == 4 and set(table.status) == {"completed"}
    best = table[table["algorithm.upper.lr"] == 0.1].score.mean()
    assert result["score"] == pytest.approx(best, rel=1e-5)
    written = tree / "settings" / "quadratic" / "soba.yaml"
    assert "command: bilevel-tune" in written.read_text()
    cfg = compose(["algorithm=soba", "task=quadratic"])
    assert cfg.algorithm.upper.lr == 0.1 and cfg.algorithm.estimator.lr == 0.15
    assert "max_steps" not in written.read_text()
    tune.tune(args, overrides)  # every trial reused
    assert "4 reused, 0 to run" in capsys.readouterr().out
    # a gate the chosen score does not beat (‖∇Φ‖ < 1e-12 after 30 steps): nothing written
    written.unlink()
    args.write_if_beats = 1e-12
    result = tune.tune(args, overrides)
    assert result["written"] is False and not written.exists()
    assert "not written: the chosen score" in capsys.readouterr().out
    args.write_if_beats = 1e3  # a gate it beats: written, and the rule says so
    assert tune.tune(args, overrides)["written"] is True
    assert "written because its score beats 1000.0" in written.read_text()


def test_tune_gate_without_write_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        tune.cli(["algorithm=soba", "task=quadratic", "--write-if-beats", "0.5"])
    assert exit_.value.code == 2
    assert "--write-if-beats gates --write" in capsys.readouterr().err


def test_docs_settings_table_is_current():
    from bilevel.app.config import PACKAGE_ROOT

    doc = PACKAGE_ROOT / "docs" / "settings.md"
    assert doc.read_text() == tune.settings_table(), "run: bilevel-tune --table"


def test_a_swapped_part_skips_the_settings_keys_it_does_not_take(tree):
    _write(tree, "quadratic/bo_rep.yaml", {"algorithm": {"lower": {"lr": 0.3, "steps": 2}}})
    overrides = ["algorithm=bo_rep", "task=quadratic", "algorithm/lower=epoch_sgd"]
    cfg = compose(overrides, return_hydra_config=True)
    assert "lr" not in cfg.algorithm.lower and "steps" not in cfg.algorithm.lower
    assert compose(["algorithm=bo_rep", "task=quadratic"]).algorithm.lower.lr == 0.3
    with open_dict(cfg):
        del cfg["hydra"]
    check_config(cfg)
    # a key given on the command line is never dropped: the mistake is reported
    with pytest.raises(ConfigError, match="algorithm.lower.lr: unknown key"):
        check_config(compose([*overrides, "algorithm.lower.lr=0.1"]))


def test_require_keeps_the_points_whose_named_replicates_reach_the_bound():
    table = pd.DataFrame(
        {
            "algorithm.upper.lr": ["0.1", "0.1", "0.3", "0.3"],
            "task.noise_std": ["0", "0.5", "0", "0.5"],
            "score": [-3.0, -0.2, -1.5, -0.8],  # log10 of the final norm
        }
    )
    args = argparse.Namespace(mode="min", log=True, require=["task.noise_std=0:0.01"])
    assert tune.meets_requirements(table, ["algorithm.upper.lr"], args) == [True, False]
    args.require.append("task.noise_std=0.5:0.1")  # 10^-0.2 > 0.1: the first point fails too
    assert tune.meets_requirements(table, ["algorithm.upper.lr"], args) == [False, False]
    with pytest.raises(ConfigError, match="KEY=VALUE:BOUND"):
        tune.meets_requirements(
            table,
            ["algorithm.upper.lr"],
            argparse.Namespace(mode="min", log=True, require=["nonsense"]),
        )


# The tuned quadratic settings do what they are for, with nothing on the command line but the
# pair (issue #8's acceptance; every algorithm: scripts/check_quadratic_defaults.py, whose table
# results/quadratic_defaults.csv is committed). The cheap ones run here: ~1 s each.
@pytest.mark.parametrize("noise, factor", [(0.0, 100.0), (0.5, 10.0)])
@pytest.mark.parametrize("algorithm", ["soba", "ma_soba", "slip", "bo_rep", "saba"])
def test_default_settings_cut_the_true_hypergradient_on_the_quadratic(
    algorithm, noise, factor, tmp_path
):
    from bilevel.app.run import build_and_run

    task = "quadratic_finite_sum" if algorithm == "saba" else "quadratic"
    cfg = compose(
        [f"algorithm={algorithm}", f"task={task}", f"task.noise_std={noise}",
         "trainer.checkpoint_every=0", "trainer.progress=false"]
    )  # fmt: skip
    rows = build_and_run(cfg, tmp_path, progress=False).rows
    first, last = rows[0]["true_hypergrad_norm"], rows[-1]["true_hypergrad_norm"]
    assert rows[-1]["step"] == 1000 and first / last >= factor, (first, last)
