"""diagnostics/smoothness (issue #12): the probe's high-accuracy ∇Φ against the quadratic task's
closed form, its secant against the exact Hessian of Φ, its place outside the run (clock, oracle
counts, RNG), its checkpoint, the (L0, L1) fit on data with known values, the scatter plot, and
the committed summary."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from bilevel import tree
from bilevel.app.claims import NOT_REPRODUCED, REPRODUCED
from bilevel.app.config import PACKAGE_ROOT, compose
from bilevel.app.figure import load_entry, summarize
from bilevel.app.run import build_and_run
from bilevel.diagnostics.smoothness import SmoothnessProbe, accurate_hypergrad
from bilevel.plots import affine_fit, plot_panels
from bilevel.tasks.quadratic import Quadratic
from bilevel.trainer import Trainer

NAME = "diagnostics/smoothness"
RESULTS = PACKAGE_ROOT / "results" / "diagnostics"
# StocBiO on the quadratic task (closed forms) with the probe every 2 steps
RUN = ["algorithm=stocbio", "task=quadratic", "~settings", "probe=smoothness",
       "trainer.max_steps=12", "trainer.eval_every=4", "trainer.checkpoint_every=0",
       "trainer.device=cpu", "trainer.progress=false"]  # fmt: skip


def hessian_of_phi(task: Quadratic) -> torch.Tensor:
    """∇²Φ = μₓI + BᵀA⁻¹CA⁻¹B: ∇Φ(x) = μₓx + BᵀA⁻¹C(y*(x) − c) with y*(x) = A⁻¹(Bx + b)."""
    a_inv_b = torch.linalg.solve(task.A, task.B)
    return task.mu_x * torch.eye(task.dim_x, dtype=task.dtype) + a_inv_b.T @ task.C @ a_inv_b


def test_accurate_hypergrad_is_the_closed_form_on_the_quadratic():
    """Newton-CG from a far warm start, then CG: ∇Φ and y* to float64 precision (the noise-free
    batch is the population problem), in one Newton step (g is quadratic in y)."""
    task = Quadratic(cond=100.0)
    x, y = task.init_params(torch.Generator().manual_seed(3))
    y_far = {"y": y["y"] + 10.0}
    upper, lower = task.exact_batch("upper"), task.exact_batch("lower")
    acc = accurate_hypergrad(task, x, y_far, upper, lower, lower_tol=1e-10, cg_tol=1e-12)
    true = task.hypergrad_true(x)["x"]
    assert torch.linalg.norm(acc.hypergrad["x"] - true) <= 1e-9 * torch.linalg.norm(true)
    assert torch.linalg.norm(acc.y["y"] - task.y_star(x)["y"]) <= 1e-9
    assert acc.newton_steps <= 2 and acc.lower_residual <= 1e-10 and acc.cg_residual <= 1e-12
    assert acc.lower_gap <= 1e-9 and acc.phi == pytest.approx(float(task.phi(x)))
    # a truncated solve is visibly worse: the test can fail
    rough = accurate_hypergrad(task, x, y_far, upper, lower, newton_steps=0, cg_iters=2)
    assert torch.linalg.norm(rough.hypergrad["x"] - true) > 1e-2 * torch.linalg.norm(true)


def test_the_secant_is_the_hessian_of_phi_along_the_segment():
    """Φ is quadratic: ∇Φ(x') − ∇Φ(x) = ∇²Φ·(x' − x), so the probe's ratio is ‖∇²Φ d‖/‖d‖, and
    its first row (no previous point) has none."""
    task = Quadratic()
    hessian = hessian_of_phi(task)
    probe = SmoothnessProbe(every=1, lower_tol=1e-10, cg_tol=1e-12)
    probe._batches = task.exact_batch("upper"), task.exact_batch("lower")
    x, y = task.init_params(torch.Generator().manual_seed(0))
    first = probe.measure(task, x, y, 0)
    assert math.isnan(first["smoothness"]) and math.isnan(first["grad_norm_start"])
    assert first["grad_norm"] == pytest.approx(float(tree.norm(task.hypergrad_true(x))))
    d = torch.randn(task.dim_x, generator=torch.Generator().manual_seed(1), dtype=task.dtype)
    second = probe.measure(task, {"x": x["x"] + 0.3 * d}, y, 1)
    expected = float(torch.linalg.norm(hessian @ d) / torch.linalg.norm(d))
    assert second["smoothness"] == pytest.approx(expected, rel=1e-8)
    assert second["grad_norm_start"] == first["grad_norm"]
    assert second["displacement"] == pytest.approx(0.3 * float(torch.linalg.norm(d)))


def test_the_probe_is_outside_the_run(tmp_path):
    """A run with the probe is the run without it (metrics, oracle counts: the probe's calls go to
    its own counter, its batches to its own generator, the global RNG restored), the probe rows
    sit at steps 0, 2, 4, ... with the closed-form ‖∇Φ‖ of the noise-free batch, and a slow
    probe is not charged to the clock."""
    noisy = [*RUN, "task.noise_std=0.5", "task.hessian_noise_std=0.5"]
    without = [o for o in noisy if o != "probe=smoothness"]
    build_and_run(compose(without), tmp_path / "plain", progress=False)
    build_and_run(compose(noisy), tmp_path / "probed", progress=False)
    plain, probed = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("plain", "probed"))
    pd.testing.assert_frame_equal(plain.drop(columns="wall_s"), probed.drop(columns="wall_s"))
    calls = [json.loads((tmp_path / d / "run.json").read_text())["oracle_calls"]
             for d in ("plain", "probed")]  # fmt: skip
    assert calls[0] == calls[1]
    rows = pd.read_csv(tmp_path / "probed" / "smoothness.csv")
    assert rows.step.tolist() == list(range(0, 13, 2))
    assert rows.smoothness.iloc[1:].gt(0).all() and (rows.cg_residual <= 1e-6).all()

    cfg = compose(RUN)  # noise-free: the probe's batch is the population problem
    task, algorithm = instantiate(cfg.task), instantiate(cfg.algorithm)
    pause = 0.05
    probe = SmoothnessProbe(every=1)
    measure = probe.measure

    def slow(*args, **kwargs):
        time.sleep(pause)
        return measure(*args, **kwargs)

    probe.measure = slow  # type: ignore[method-assign]
    trainer = Trainer(task, algorithm, tmp_path / "slow", max_steps=12, eval_every=4,
                      device="cpu", progress=False, probes=[probe])  # fmt: skip
    result = trainer.fit()
    metrics = pd.read_csv(tmp_path / "slow" / "metrics.csv")
    rows = pd.read_csv(tmp_path / "slow" / "smoothness.csv").set_index("step")
    assert len(rows) == 13 and result.train_seconds < 13 * pause / 2
    for step, norm in metrics.set_index("step").true_hypergrad_norm.items():
        assert rows.loc[step, "grad_norm"] == pytest.approx(norm, rel=1e-6)


def test_a_resumed_run_continues_the_probe(tmp_path):
    """The probe's rows and its last point are checkpointed: interrupted at step 5 and resumed,
    the run writes the same smoothness.csv as an uninterrupted one (noisy batches, every 2)."""
    cfg = compose([*RUN, "task.noise_std=0.5"])

    def trainer(run_dir, **kwargs) -> Trainer:
        probe = instantiate(cfg.probe)
        return Trainer(instantiate(cfg.task), instantiate(cfg.algorithm), run_dir, max_steps=12,
                       eval_every=4, seed=0, device="cpu", progress=False, probes=[probe],
                       **kwargs)  # fmt: skip

    trainer(tmp_path / "whole").fit()

    def stop_at_5(t: Trainer, state) -> None:
        if state.t == 5:
            t.request_stop()

    assert trainer(tmp_path / "cut", callbacks=[stop_at_5]).fit().status == "interrupted"
    assert trainer(tmp_path / "cut", resume=True).fit().status == "completed"
    whole, cut = (pd.read_csv(tmp_path / d / "smoothness.csv") for d in ("whole", "cut"))
    keep = [c for c in whole.columns if c != "probe_s"]
    pd.testing.assert_frame_equal(whole[keep], cut[keep])
    assert cut.smoothness.iloc[1:].notna().all()  # step 6's secant starts at step 4's point


def test_the_affine_fit_recovers_known_l0_l1_and_reports_its_residual():
    """Least squares with L0, L1 ≥ 0: exact data give (L0, L1) back with residual 0; noise of
    known size gives a residual of that size; a negative intercept is clipped to the line through
    the origin; constant data give L1 = 0 (R² undefined)."""
    x = np.linspace(0.1, 5.0, 40)
    exact = affine_fit(x, 0.7 + 2.5 * x)
    assert (exact.l0, exact.l1) == (pytest.approx(0.7), pytest.approx(2.5))
    assert exact.residual == pytest.approx(0.0, abs=1e-12) and exact.r2 == pytest.approx(1.0)
    noise = 0.1 * np.where(np.arange(40) % 2, 1.0, -1.0)  # ±0.1, orthogonal to (1, x) nearly
    noisy = affine_fit(x, 0.7 + 2.5 * x + noise)
    assert noisy.l0 == pytest.approx(0.7, abs=0.02) and noisy.l1 == pytest.approx(2.5, abs=0.01)
    assert noisy.residual == pytest.approx(0.1, rel=0.05) and 0.99 < noisy.r2 < 1.0
    through_origin = affine_fit(x, 3.0 * x - 1.0)
    assert through_origin.l0 == 0.0 and through_origin.l1 > 0
    flat = affine_fit(x, np.full_like(x, 2.0))
    assert (flat.l0, flat.l1) == (pytest.approx(2.0), pytest.approx(0.0, abs=1e-12))
    assert math.isnan(flat.r2) and math.isnan(affine_fit([1.0, 1.0], [1.0, 2.0]).l1)


def test_summary_affine_pools_seeds_and_reports_each_seeds_slope():
    """``summary.affine``: one pooled fit per panel and curve, L1 of each seed alone beside it."""
    rng = np.random.default_rng(0)
    rows = []
    for panel, (l0, l1) in {"rnn": (0.5, 2.0), "transformer": (0.2, 0.6)}.items():
        for seed in range(3):
            g = rng.uniform(0.1, 5.0, 30)
            rows += [{"panel": panel, "curve": "AdamBO", "seed": seed, "step": 2 * i, "g": v,
                      "L": l0 + l1 * v + 0.01 * rng.standard_normal(), "status": "completed"}
                     for i, v in enumerate(g)]  # fmt: skip
    entry = {"plot": {"x": "g", "y": "L"}, "summary": {"affine": {"L": "g"}}}
    summary = summarize(pd.DataFrame(rows), entry).set_index("panel")
    assert summary.loc["rnn", "L_L0"] == pytest.approx(0.5, abs=0.01)
    assert summary.loc["rnn", "L_L1"] == pytest.approx(2.0, abs=0.01)
    assert summary.loc["transformer", "L_L1"] == pytest.approx(0.6, abs=0.01)
    assert (summary.L_points == 90).all() and (summary.L_residual < 0.02).all()
    assert (summary.L_L1_seed_min <= summary.L_L1).all() and (
        summary.L_L1 <= summary.L_L1_seed_max
    ).all()
    spec = {"kind": "scatter", "x": "g", "y": "L", "fit": {"affine": {"L": "g"}}}
    fig = plot_panels(pd.DataFrame(rows), spec, ["rnn", "transformer"], ["AdamBO"])
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 90
    assert any("$L_1$ 2" in t.get_text() for t in ax.texts)
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 1


def test_committed_summary_has_l0_l1_and_residual_per_task():
    """results/diagnostics/smoothness*: one summary row per task with L0, L1, the residual and
    R², which are the entry's fit of the committed table; every claim has a status."""
    entry = load_entry(NAME)
    table = pd.read_csv(RESULTS / "smoothness.csv")
    summary = pd.read_csv(RESULTS / "smoothness_summary.csv")
    columns = ["smoothness_L0", "smoothness_L1", "smoothness_residual", "smoothness_r2"]
    assert set(columns) <= set(summary.columns)
    assert len(summary) == len(entry["panels"]) * len(entry["curves"])
    assert np.isfinite(summary[columns].to_numpy()).all()
    assert (summary.seeds >= 3).all() and (summary.smoothness_points >= 3 * 20).all()
    again = summarize(table, entry)
    np.testing.assert_allclose(again[columns], summary[columns], rtol=1e-3, atol=1e-6)
    claims = pd.read_csv(RESULTS / "smoothness_claims.csv")
    assert set(claims.claim) == {c["text"] for c in entry["claims"]}
    assert claims.status.isin([REPRODUCED, NOT_REPRODUCED]).all()
