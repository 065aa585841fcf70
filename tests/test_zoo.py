"""Every algorithm of the zoo, built from its config, on the quadratic test bed.

Settings are the configs' with step sizes for this small instance (dims 5×8, cond 3): the
papers' step sizes are for their networks. Thresholds are the factor by which the true
‖∇Φ(x)‖ falls (initial / mean of the last 50 iterations), set below what was measured:
normalized and randomized-truncation methods stop at a floor set by the step size or by the
estimator's variance, so their factors are lower.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from bilevel import tree
from bilevel.app.config import compose
from bilevel.problem import Problem

SMALL = ["task.dim_x=5", "task.dim_y=8", "task.cond=3", "task.mu_x=1.0"]
NOISY = ["task.noise_std=0.5", "task.batch_size=4"]
LR = ["algorithm.lower.lr=0.3"]

# name: (overrides, steps, factor deterministic, factor noisy)   measured (det / noisy)
SETTINGS = {
    "ttsa": (
        LR + ["algorithm.upper.lr=0.3", "algorithm.estimator.lr=0.3", "algorithm.estimator.q=10"],
        2000,
        50,
        20,
    ),  # 99 / 45
    "ma_soba": (
        ["algorithm.lower.lr=0.2", "algorithm.upper.lr=0.05", "algorithm.estimator.lr=0.2"],
        1500,
        1e4,
        10,
    ),  # 1.3e6 / 26
    "slip": (
        LR + ["algorithm.upper.lr=0.003", "algorithm.estimator.lr=0.2"],
        3000,
        100,
        40,
    ),  # 178 / 83
    "adambo": (
        LR + ["algorithm.upper.lr=0.01", "algorithm.estimator.lr=0.2", "algorithm.estimator.q=20"],
        1500,
        500,
        30,
    ),  # 1107 / 75
    "accbo": (
        LR + ["algorithm.upper.lr=0.003", "algorithm.estimator.lr=0.3", "algorithm.estimator.q=10"],
        2000,
        40,
        15,
    ),  # 80 / 32
    "vr_adambo": (
        LR + ["algorithm.upper.lr=0.003", "algorithm.estimator.lr=0.3", "algorithm.estimator.q=10"],
        2000,
        20,
        15,
    ),  # 44 / 35
}


def run(name: str, overrides: list[str], steps: int, seed: int = 0):
    cfg = compose([f"algorithm={name}", "task=quadratic", *SMALL, *overrides])
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(seed + 10_000))
    problem = Problem(task, torch.Generator().manual_seed(seed))
    state = algo.init(problem, x, y)
    start = float(tree.norm(task.hypergrad_true(x)))
    norms = []
    for _ in range(steps):
        state = algo.step(problem, state)
        norms.append(tree.norm(task.hypergrad_true(state.x)))
    return start, float(torch.stack(norms[-50:]).mean()), state


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_converges_deterministic(name):
    overrides, steps, factor, _ = SETTINGS[name]
    start, end, state = run(name, overrides, steps)
    assert start / end >= factor, f"{name}: {start:.3g} -> {end:.3g}"
    assert state.hypergrad is not None and state.t == steps


@pytest.mark.parametrize("name", sorted(k for k, v in SETTINGS.items() if v[3]))
def test_converges_with_gradient_noise(name):
    overrides, steps, _, factor = SETTINGS[name]
    start, end, _ = run(name, overrides + NOISY, steps)
    assert start / end >= factor, f"{name}: {start:.3g} -> {end:.3g}"


def test_ttsa_two_time_scales_decay_the_steps():
    _, _, state = run("ttsa", SETTINGS["ttsa"][0], 9)
    assert state.upper.param_groups[0]["lr"] == pytest.approx(0.3 / 9**0.6)
    assert state.lower["lr_scale"] == pytest.approx(1 / 9**0.4)


def test_accbo_storm_uses_the_same_sample_at_both_points():
    """d_t = h_t + β(d_{t−1} − h'_t) with h'_t = HG(x_{t−1}, ŷ_t) on the SAME sample as h_t:
    recompute h'_1 by replaying iteration 1's draws and compare (noisy task, so another sample
    would give another value)."""
    cfg = compose(
        ["algorithm=accbo", "task=quadratic", *SMALL, *NOISY, "algorithm/estimator=exact"]
    )
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    problem = Problem(task, torch.Generator().manual_seed(0))
    state = algo.init(problem, x, y)
    x_prev = tree.clone(state.x)  # x_0: the previous point of iteration t = 1
    state = algo.step(problem, state)
    d_prev = tree.clone(state.extra["d"])
    y_hat_prev = tree.clone(algo.lower_point(state))
    gen_state = problem.generator.get_state()
    state = algo.step(problem, state)
    # replay step 2's draws: the SNAG batch, then the estimator's sample
    problem.generator.set_state(gen_state)
    problem.lower_batch()
    sample = algo.estimator.draw(problem)
    h_prev = algo.estimator.estimate(problem, x_prev, y_hat_prev, {}, sample).value
    expected = tree.add(state.hypergrad.value, tree.sub(d_prev, h_prev), alpha=algo.beta)
    for k in expected:
        torch.testing.assert_close(state.extra["d"][k], expected[k])
