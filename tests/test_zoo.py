"""Every algorithm of the zoo, built from its config, on the quadratic test bed.

Settings are the configs' with step sizes for this small instance (dims 5×8, cond 3): the
papers' step sizes are for their networks. Thresholds are the factor by which the true
‖∇Φ(x)‖ falls (initial / mean of the last 50 iterations), set below what was measured:
normalized and randomized-truncation methods stop at a floor set by the step size or by the
estimator's variance, so their factors are lower.
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from bilevel import tree
from bilevel.app.config import compose
from bilevel.problem import Problem
from bilevel.trainer import Trainer

# ~settings: these tests pin their own step sizes on a smaller quadratic (not the tuned pair)
SMALL = ["task.dim_x=5", "task.dim_y=8", "task.cond=3", "task.mu_x=1.0", "~settings"]
NOISY = ["task.noise_std=0.5", "task.batch_size=4"]
LR = ["algorithm.lower.lr=0.3"]

# name: (overrides, steps, factor deterministic, factor noisy)   measured (det / noisy)
SETTINGS = {
    "ttsa": (  # T0 = 1: α = 0.3·T^{-3/5}, β = 0.3·T^{-2/5} (constant steps over T = 2000)
        LR
        + ["algorithm.upper.lr=0.3", "algorithm.estimator.lr=0.3", "algorithm.estimator.q=10"]
        + ["algorithm.decay_time=1"],
        2000,
        50,
        20,
    ),  # 100 / 45 (the per-iteration decay (t+1)^{-a} from 0.3: 99 / 45)
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
    problem = Problem(task, torch.Generator().manual_seed(seed), horizon=steps)
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


def ttsa_steps(horizon: int, ts: list[int], *overrides: str) -> list[tuple[float, float]]:
    """(α_t, β_t) of TTSA (configs/algorithm/ttsa.yaml, its tuned α0 = 1e-3, β0 = 2e-2) at the
    iterations ``ts`` of a run of ``horizon`` iterations, from its schedule."""
    cfg = compose(["algorithm=ttsa", "task=quadratic", *SMALL, *overrides])
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(0))
    problem = Problem(task, torch.Generator().manual_seed(0), horizon=horizon)
    state = algo.init(problem, x, y)
    beta0 = cfg.algorithm.lower.lr
    out = []
    for t in ts:
        state.t = t
        algo.schedule(problem, state)
        out.append((state.upper.param_groups[0]["lr"], beta0 * state.lower["lr_scale"]))
    return out


def test_ttsa_steps_do_not_collapse_over_a_long_run():
    """TTSA's paper steps for a run of T iterations (non-convex upper level): constant
    α = α0·(T/T0)^{-3/5}, β = β0·(T/T0)^{-2/5} (T0 = decay_time = 1000). Over T = 10⁴ steps the
    upper step stays at α0·10^{-3/5} ≈ 2.5e-4 (floor: α0/5 = 2e-4); the former per-iteration
    α0·(t+1)^{-3/5} fell to 4e-6 by the last step, 1e-6 over a paper-length 10⁵."""
    alpha0, beta0, horizon = 1e-3, 2e-2, 10_000
    ts = [0, 1, 10, 100, 1000, 5000, horizon - 1]
    steps = ttsa_steps(horizon, ts)
    for alpha, beta in steps:
        assert alpha >= alpha0 / 5
        assert alpha == pytest.approx(alpha0 * 10**-0.6)
        assert beta == pytest.approx(beta0 * 10**-0.4)
    # the two time scales: α ∝ T^{-3/5}, β ∝ T^{-2/5}, so α/β ∝ T^{-1/5}
    (a4, b4), (a5, b5) = ttsa_steps(10**4, [0])[0], ttsa_steps(10**5, [0])[0]
    assert math.log10(a5 / a4) == pytest.approx(-3 / 5)
    assert math.log10(b5 / b4) == pytest.approx(-2 / 5)
    # runs no longer than T0 keep the tuned rates (the cap)
    assert ttsa_steps(500, [0, 499]) == [pytest.approx((alpha0, beta0))] * 2


def test_ttsa_per_iteration_decay_option():
    """decay_clock=iteration: α_t = α0(1 + t/T0)^{-3/5}, β_t = β0(1 + t/T0)^{-2/5}."""
    (a, b), (a9, b9) = ttsa_steps(10, [0, 9], "algorithm.decay_clock=iteration")
    assert (a, b) == pytest.approx((1e-3, 2e-2))  # T0 = 1000
    assert a9 == pytest.approx(1e-3 * (1 + 9 / 1000) ** -0.6)
    assert b9 == pytest.approx(2e-2 * (1 + 9 / 1000) ** -0.4)
    old = ttsa_steps(10, [9], "algorithm.decay_clock=iteration", "algorithm.decay_time=1")
    assert old[0] == pytest.approx((1e-3 / 10**0.6, 2e-2 / 10**0.4))  # lr0/(t+1)^a


def test_ttsa_horizon_needs_the_run_length_and_the_trainer_gives_it(tmp_path):
    cfg = compose(["algorithm=ttsa", "task=quadratic", *SMALL, "algorithm.decay_time=5"])
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(0))
    problem = Problem(task, torch.Generator().manual_seed(0))  # no horizon
    state = algo.init(problem, x, y)
    with pytest.raises(ValueError, match="horizon"):
        algo.step(problem, state)
    result = Trainer(task, algo, tmp_path, max_steps=20, progress=False, warmup=False).fit()
    final = result.info["state"]
    assert final.upper.param_groups[0]["lr"] == pytest.approx(1e-3 * (20 / 5) ** -0.6)
    assert final.lower["lr_scale"] == pytest.approx((20 / 5) ** -0.4)


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


@pytest.mark.parametrize("name", ["accbo", "vr_adambo"])
def test_accbo_warm_start_is_T0_snag_steps(name):
    """AccBO Alg. 1: y_0 = SNAG on g(x_0, ·) for T0 = 3 steps (configs/algorithm/tuned/<name>/
    lower/snag.yaml: γ 0.1, θ 0.1), from y_{−1} = y_init; then y_{−1} = ŷ_0 = y_0. Replayed
    by hand on the deterministic quadratic, and unlike 3 plain SGD steps (the former config)."""
    cfg = compose([f"algorithm={name}", "task=quadratic", *SMALL])
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    y_init = tree.clone(y)
    state = algo.init(Problem(task, torch.Generator().manual_seed(0)), x, y)
    low = cfg.algorithm.lower
    lr, theta, t0 = low.lr, low.momentum, low.warm_start_with.steps
    assert (t0, low.warm_start_with.lr, low.warm_start_with.momentum) == (3, lr, theta)
    oracles = Problem(task, torch.Generator()).oracles  # noise-free: any batch is the mean

    def grad(w):
        return oracles.grad_y_g(x, w, task.sample_lower(torch.Generator()))

    snag, prev = tree.clone(y_init), tree.clone(y_init)
    sgd = tree.clone(y_init)
    for _ in range(t0):
        w = tree.add(snag, tree.sub(snag, prev), alpha=theta)  # w = y + θ(y − y_prev)
        prev, snag = snag, tree.add(w, grad(w), alpha=-lr)
        sgd = tree.add(sgd, grad(sgd), alpha=-lr)
    for k in y:
        torch.testing.assert_close(state.y[k], snag[k])
        torch.testing.assert_close(state.lower["y_prev"][k], snag[k])  # y_{−1} = y_0
        torch.testing.assert_close(state.lower["y_avg"][k], snag[k])  # ŷ_0 = y_0
    assert float(tree.norm(tree.sub(snag, sgd))) > 1e-3  # SNAG steps, not SGD steps
