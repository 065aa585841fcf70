"""SUSTAIN, VRBO and F2SA on the quadratic task: convergence of the true ‖∇Φ‖ (deterministic and
noisy, stated factor within a stated step budget), the same-sample property of the STORM and
SPIDER recursions, VRBO's checkpoint cadence, oracle calls per iteration, step-size and λ
schedules, determinism and checkpoint round trips.

Instance (as tests/test_algorithms.py): dims 5 × 8, A with spectrum [1, 3], μₓ = 1; a lower or
Neumann step of 1/2 = 2/(μ + L) contracts by 1/2. On this task h(x, y; S) is affine in (x, y),
and the noise of ∇ᵧg and ∇f is additive, so on one sample it cancels exactly in a difference
h(x, y; S) − h(x', y'; S): that is what makes the same-sample property checkable.
"""

from __future__ import annotations

import functools
import io

import pytest
import torch
from oracle_counts import calls_per_step

from bilevel import hypergrad, lower, tree
from bilevel.algorithms import F2SA, SUSTAIN, VRBO
from bilevel.algorithms.base import load_state_dict, state_dict
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic

ETA = 0.5  # 2 / (μ + L) for the spectrum [1, 3] of A
NOISY = dict(noise_std=0.5, hessian_noise_std=0.5, batch_size=64)
ADDITIVE = dict(noise_std=0.5, batch_size=4)  # gradient noise only: it cancels in a difference


def quadratic(**kw):
    args = dict(dim_x=5, dim_y=8, mu=1.0, cond=3.0, mu_x=1.0)
    args.update(kw)
    return Quadratic(**args)


def sgd(lr):
    return functools.partial(torch.optim.SGD, lr=lr)


def setup(alg, task, seed=0):
    problem = Problem(task, torch.Generator().manual_seed(seed))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    return problem, alg.init(problem, x, y)


def true_norm(task, x) -> float:
    return float(tree.norm(task.hypergrad_true(x)))


def run(alg, task, steps, last=20, seed=0):
    """(‖∇Φ(x_0)‖, mean ‖∇Φ(x_t)‖ over the last ``last`` iterations, problem, state)."""
    problem, state = setup(alg, task, seed)
    g0, tail = true_norm(task, state.x), []
    for t in range(steps):
        alg.step(problem, state)
        if t >= steps - last:
            tail.append(true_norm(task, state.x))
    assert state.t == steps
    return g0, sum(tail) / len(tail), problem, state


def neumann(variant="textbook", q=8, lr=ETA, **kw):
    return hypergrad.Neumann(q=q, lr=lr, variant=variant, **kw)


INDEPENDENT = dict(hessian_batches="independent", cross_batch="fresh")


def sustain(estimator=None, lr=0.3, y_lr=ETA, eta=0.5, **kw):
    return SUSTAIN(estimator or neumann(), sgd(lr), y_lr=y_lr, eta=eta, **kw)


def sustain_randomized():
    """The default estimator (random truncation) with the paper's decaying steps and η_t."""
    est = neumann("randomized", q=6, lr=0.3, **INDEPENDENT)
    return sustain(est, lr=0.1, y_lr=0.3, eta=0.5, schedule="iteration", eta_decay=True)


def vrbo(estimator=None, lr=0.1, y_lr=ETA, period=3, inner_steps=2, checkpoint_batches=4):
    return VRBO(
        estimator or neumann(**INDEPENDENT),
        sgd(lr),
        y_lr=y_lr,
        period=period,
        inner_steps=inner_steps,
        checkpoint_batches=checkpoint_batches,
    )


def f2sa(lam_max=5.0, x_lr=0.01, **kw):
    """y step α = 1/(L_f + λ_max L_g) = 1/(2 + 3λ_max): α(L_f + λL_g) ≤ 1 for every λ ≤ λ_max."""
    args = dict(y_lr=1.0 / (2 + 3 * lam_max), lam0=1.0, lam_step=0.1, lam_max=lam_max)
    args.update(kw)
    return F2SA(lower.SGD(lr=ETA), sgd(x_lr), **args)


# -- convergence ------------------------------------------------------------------------------
def test_sustain_converges_deterministic():
    g0, g, _, state = run(sustain(), quadratic(), 100)
    assert g < g0 / 100
    assert float(tree.norm(tree.sub(state.y, quadratic().y_star(state.x)))) < 1e-3


def test_sustain_converges_with_noise():
    alg = sustain(neumann(**INDEPENDENT), lr=0.2, y_lr=0.3, eta=0.1)
    g0, g, _, _ = run(alg, quadratic(**NOISY), 200)
    assert g < g0 / 20


@pytest.mark.parametrize("task_kw", [{}, NOISY], ids=["deterministic", "noisy"])
def test_sustain_randomized_truncation_with_decaying_steps(task_kw):
    # the random truncation index is noise even on a noise-free problem; with the paper's
    # α_t ∝ (t+1)^{-1/3}, η_t ∝ α_t² STORM averages it out (constant steps stall near 4-6×)
    g0, g, _, _ = run(sustain_randomized(), quadratic(**task_kw), 400)
    assert g < g0 / 10


def test_vrbo_converges_deterministic():
    g0, g, _, state = run(vrbo(), quadratic(), 100)
    assert g < g0 / 100
    assert float(tree.norm(tree.sub(state.y, quadratic().y_star(state.x)))) < 1e-3


def test_vrbo_converges_with_noise():
    g0, g, _, _ = run(vrbo(), quadratic(**NOISY), 100)
    assert g < g0 / 20


def penalty_gradient(task, x, lam):
    """∇L_λ(x) for L_λ(x) = min_y [f + λg] − λ min_z g on the quadratic: μₓx − λBᵀ(y_λ − y*)."""
    rhs = task.C @ task.c + lam * (task.B @ x["x"] + task.b)
    y_lam = torch.linalg.solve(task.C + lam * task.A, rhs)
    return task.mu_x * x["x"] - lam * task.B.T @ (y_lam - task.y_star(x)["y"])


def test_f2sa_converges_to_an_order_one_over_lambda_neighbourhood():
    """Deterministic: x converges to the stationary point of the penalty function L_λmax, whose
    true hypergradient is O(1/λ): below 0.5 for λ = 5 and below 0.06 for λ = 50 (‖∇Φ(x_0)‖ = 5.3),
    ten times λ giving about nine times less."""
    task = quadratic()
    residual = {}
    for lam_max, bound in ((5.0, 0.5), (50.0, 0.06)):
        g0, g, _, state = run(f2sa(lam_max=lam_max), task, 1000)
        assert state.extra["lam"] == lam_max
        assert float(penalty_gradient(task, state.x, lam_max).norm()) < 1e-4
        assert g < bound
        # z solves the lower level; y is the penalised y_λ, O(1/λ) away from y*
        y_star = task.y_star(state.x)
        assert float(tree.norm(tree.sub(state.extra["z"], y_star))) < 1e-6
        assert float(tree.norm(tree.sub(state.y, y_star))) < 10 / lam_max
        residual[lam_max] = g
    assert g0 > 5.0
    assert residual[50.0] < residual[5.0] / 5


def test_f2sa_converges_with_noise():
    g0, g, _, _ = run(f2sa(lam_max=5.0), quadratic(**NOISY), 1000)
    assert g < g0 / 5


# -- same-sample recursions -----------------------------------------------------------------
def test_sustain_direction_is_h_on_a_deterministic_problem():
    """Deterministic task and estimator: d_t = h_t + (1−η)(d_{t−1} − h(x_{t−1})) = h_t exactly
    when h' is taken at the previous point (a two-step lag, Q19, or a wrong point breaks it)."""
    task = quadratic()
    alg = sustain(eta=0.2)
    problem, state = setup(alg, task)
    for _ in range(6):
        x, y = tree.clone(state.x), tree.clone(state.y)
        alg.step(problem, state)
        h = alg.estimator(problem, x, y, {})
        torch.testing.assert_close(state.hypergrad.value, h.value, rtol=1e-12, atol=1e-12)
        gy = problem.oracles.grad_y_g(x, y, task.exact_batch("lower"))
        torch.testing.assert_close(state.extra["d_y"], gy, rtol=1e-12, atol=1e-12)


def test_sustain_corrections_use_the_same_sample():
    """Additive noise, η = 0 (pure recursion): d_t − h(x_t) stays equal to the noise of d_0
    exactly, because each correction h(x_t; S_t) − h(x_{t−1}; S_t) cancels the noise of S_t."""
    task = quadratic(**ADDITIVE)
    alg = sustain(eta=0.0, lr=0.05, y_lr=0.1)
    problem, state = setup(alg, task)
    exact = Problem(task, torch.Generator())

    def errors():  # d_t against the noise-free estimates at the point it was taken, (x_t, y_t)
        x, y = state.extra["x_prev"], state.extra["y_prev"]
        h = alg.estimator.estimate(exact, x, y, {}, _exact_sample(task))
        gy = exact.oracles.grad_y_g(x, y, task.exact_batch("lower"))
        return tree.sub(state.extra["d_x"], h.value), tree.sub(state.extra["d_y"], gy)

    alg.step(problem, state)
    e_x0, e_y0 = errors()
    assert float(tree.norm(e_x0)) > 1e-2  # there is noise to cancel
    for _ in range(8):
        alg.step(problem, state)
        e_x, e_y = errors()
        torch.testing.assert_close(e_x, e_x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(e_y, e_y0, rtol=1e-10, atol=1e-10)


def _exact_sample(task):
    return hypergrad.Sample(task.exact_batch("upper"), [task.exact_batch("lower")])


@pytest.mark.parametrize("truncation_index", ["shared", "independent"])
def test_sustain_shares_the_truncation_index(truncation_index):
    """Random truncation on a noise-free task: replaying the generator gives the sample the
    step draws; d_t = h(x_t; S) + (1−η)(d_{t−1} − h(x_{t−1}; S)) holds with the SAME k at both
    points. The released code's independent k (Q18) violates it."""
    task = quadratic()
    alg = sustain(neumann("randomized", q=6, lr=0.3), eta=0.3, truncation_index=truncation_index)
    problem, state = setup(alg, task)
    alg.step(problem, state)
    mismatches = 0
    for _ in range(12):
        replay = Problem(task, torch.Generator())
        replay.generator.set_state(problem.generator.get_state())
        sample = alg.estimator.draw(replay)
        x, y, d_prev = tree.clone(state.x), tree.clone(state.y), state.extra["d_x"]
        x_prev, y_prev = state.extra["x_prev"], state.extra["y_prev"]
        alg.step(problem, state)
        h = alg.estimator.estimate(replay, x, y, {}, sample).value
        h_prev = alg.estimator.estimate(replay, x_prev, y_prev, {}, sample).value
        expected = tree.add(h, tree.sub(d_prev, h_prev), alpha=1 - alg.eta)
        err = float(tree.norm(tree.sub(state.extra["d_x"], expected)))
        mismatches += err > 1e-10
    assert (mismatches == 0) == (truncation_index == "shared"), mismatches


def _hypergrad_and_grad(alg, task, x, y):
    exact = Problem(task, torch.Generator())
    h = alg.estimator.estimate(exact, x, y, {}, _exact_sample(task))
    return h.value, exact.oracles.grad_y_g(x, y, task.exact_batch("lower"))


def test_vrbo_tracks_the_estimator_at_the_current_point():
    """Deterministic: after every iteration, checkpoint or not, v = ∇̂Φ(x_{t+1}, y_{t+1}) and
    u = ∇ᵧg(x_{t+1}, y_{t+1}) exactly: the first SPIDER difference includes the x step (Q20
    drops it) and the recursion is one-step (Q21 lags two)."""
    task = quadratic()
    alg = vrbo(neumann(), period=5, inner_steps=3, checkpoint_batches=1)
    problem, state = setup(alg, task)
    for _ in range(7):
        alg.step(problem, state)
        h, gy = _hypergrad_and_grad(alg, task, state.x, state.y)
        torch.testing.assert_close(state.extra["v"], h, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.extra["u"], gy, rtol=1e-10, atol=1e-12)


def test_vrbo_differences_use_the_same_sample():
    """Additive noise: between two checkpoints, v − ∇̂Φ(x, y) and u − ∇ᵧg(x, y) stay equal to
    the checkpoint's noise exactly (each SPIDER difference is on one sample); a checkpoint
    replaces them by fresh noise."""
    task = quadratic(**ADDITIVE)
    alg = vrbo(neumann(), lr=0.05, y_lr=0.1, period=4, inner_steps=2, checkpoint_batches=2)
    problem, state = setup(alg, task)
    errors = []
    for _ in range(8):
        alg.step(problem, state)
        h, gy = _hypergrad_and_grad(alg, task, state.x, state.y)
        errors.append((tree.sub(state.extra["v"], h), tree.sub(state.extra["u"], gy)))
    for period in (errors[:4], errors[4:]):
        for e_v, e_u in period[1:]:
            torch.testing.assert_close(e_v, period[0][0], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(e_u, period[0][1], rtol=1e-10, atol=1e-10)
    assert float(tree.norm(tree.sub(errors[4][0], errors[0][0]))) > 1e-3


# -- oracle calls -----------------------------------------------------------------------------
def per_iteration(alg, steps, batch_size=4):
    """Oracle calls by kind of each of ``steps`` iterations (after init)."""
    task = quadratic(noise_std=0.1, batch_size=batch_size)
    problem, state = setup(alg, task)
    return calls_per_step(alg, problem, state, steps, batch_size)


def calls(grad_f, grad_g, hvp, cross, times=1):
    return {
        "grad_f": grad_f * times,
        "grad_g": grad_g * times,
        "hvp": hvp * times,
        "cross": cross * times,
    }


def test_sustain_oracle_counts():
    # Q = 3 textbook terms on one Hessian batch: 2 HVPs + 1 cross per estimate; one ∇ᵧg.
    # Iteration 0 has no previous point; afterwards both are taken at two points.
    counts = per_iteration(sustain(neumann(q=3)), 4)
    assert counts == [calls(1, 1, 2, 1)] + [calls(2, 2, 4, 2)] * 3


def test_sustain_randomized_oracle_counts():
    # randomized truncation: k HVPs at each of the two points, k shared
    alg = sustain(neumann("randomized", q=4))
    task = quadratic(noise_std=0.1)
    problem, state = setup(alg, task)
    alg.step(problem, state)
    for _ in range(6):
        replay = Problem(task, torch.Generator())
        replay.generator.set_state(problem.generator.get_state())
        k = alg.estimator.draw(replay).k
        before = dict(problem.oracles.counter.calls)
        alg.step(problem, state)
        hvps = problem.oracles.counter.calls["hvp"] - before.get("hvp", 0)
        assert hvps == 2 * k


def test_vrbo_checkpoint_cadence_and_oracle_counts():
    # one estimate (textbook Q = 3, one Hessian batch) + its ∇ᵧg from the same graph:
    # E = 1 grad_f, 1 grad_g, 2 HVPs, 1 cross. Checkpoint (t mod q = 0): n estimates; each of
    # the m SPIDER steps: 2 (one sample at two points).
    q, m, n = 3, 2, 4
    counts = per_iteration(vrbo(neumann(q=3), period=q, inner_steps=m, checkpoint_batches=n), 7)
    checkpoint, inner = calls(1, 1, 2, 1, n + 2 * m), calls(1, 1, 2, 1, 2 * m)
    assert counts == [checkpoint, inner, inner] * 2 + [checkpoint]


def test_vrbo_without_inner_steps_is_periodic_large_batch_sgd():
    counts = per_iteration(vrbo(neumann(q=3), period=2, inner_steps=0, checkpoint_batches=3), 4)
    assert counts == [calls(1, 1, 2, 1, 3), calls(0, 0, 0, 0)] * 2


def test_f2sa_oracle_counts():
    # first order only: z step (∇ᵧg), y step (∇ᵧf, ∇ᵧg), x step (∇ₓf, ∇ₓg at y and at z)
    assert per_iteration(f2sa(), 3) == [calls(2, 4, 0, 0)] * 3


# -- schedules --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("constant", lambda t: 1.0),
        ("iteration", lambda t: (1 / (t + 1)) ** (1 / 3)),
        ("epoch", lambda t: (t // 3 + 1) ** (-1 / 3)),  # steps_per_epoch = 3
    ],
)
def test_sustain_step_size_schedules(schedule, expected):
    task = quadratic(steps_per_epoch=3)
    alg = sustain(lr=0.3, y_lr=0.2, schedule=schedule)
    problem, state = setup(alg, task)
    for t in range(8):
        y = tree.clone(state.y)
        alg.step(problem, state)
        d_y = state.extra["d_y"]
        assert state.upper.param_groups[0]["lr"] == pytest.approx(0.3 * expected(t))
        moved = tree.sub(y, state.y)
        torch.testing.assert_close(moved, tree.scale(d_y, 0.2 * expected(t)))


def test_f2sa_lambda_schedules():
    task = quadratic(steps_per_epoch=4)
    alg = f2sa(lam_max=1.35, lam0=1.0, lam_step=0.1, lam_schedule="iteration")
    problem, state = setup(alg, task)
    seen = []
    for _ in range(6):
        alg.step(problem, state)
        seen.append(state.extra["lam"])
    assert seen == pytest.approx([1.1, 1.2, 1.3, 1.35, 1.35, 1.35])
    alg = f2sa(lam0=0.5, lam_step=0.1, lam_schedule="epoch")
    problem, state = setup(alg, task)
    seen = []
    for _ in range(9):
        alg.step(problem, state)
        seen.append(state.extra["lam"])
    assert seen == pytest.approx([0.5] * 3 + [0.6] * 4 + [0.7] * 2)


def test_f2sa_step_decay_scales_x_and_y_together_and_z_on_its_own():
    """upper_decay: the x step ξα_t (optimizer lr) and the y step α_t share one sequence;
    lower_decay: the z step γ_t. Two runs from the same state and batches agree on step 1 (t = 0,
    scale 1); on step 2 the decaying run moves y and z by exactly s(1) times as far."""
    task, a, c = quadratic(**ADDITIVE), 0.5, 1.0
    steady = f2sa(lam_schedule="iteration")
    decaying = f2sa(lam_schedule="iteration", upper_decay=a, lower_decay=c, decay_time=2.0)
    runs = []
    for alg in (steady, decaying):
        problem, state = setup(alg, task)
        alg.step(problem, state)
        before = tree.clone(state.y), tree.clone(state.extra["z"])
        alg.step(problem, state)
        moved = tree.sub(state.y, before[0]), tree.sub(state.extra["z"], before[1])
        runs.append((state, moved))
    (s_state, (s_dy, s_dz)), (d_state, (d_dy, d_dz)) = runs
    upper_scale, lower_scale = (1 + 1 / 2.0) ** -a, (1 + 1 / 2.0) ** -c
    torch.testing.assert_close(d_dy, tree.scale(s_dy, upper_scale))
    torch.testing.assert_close(d_dz, tree.scale(s_dz, lower_scale))
    assert d_state.upper.param_groups[0]["lr"] == pytest.approx(0.01 * upper_scale)
    assert s_state.upper.param_groups[0]["lr"] == 0.01


# -- reported hypergradient, determinism, checkpoints ------------------------------------------
ALGORITHMS = {
    "sustain": lambda: sustain(neumann("randomized", q=4, **INDEPENDENT), schedule="iteration"),
    "vrbo": lambda: vrbo(period=2),
    "f2sa": lambda: f2sa(lam_schedule="iteration"),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_reported_hypergradient_is_consistent(name):
    alg = ALGORITHMS[name]()
    problem, state = setup(alg, quadratic(**NOISY))
    for _ in range(3):
        x = tree.clone(state.x)
        alg.step(problem, state)
        hg = state.hypergrad
        torch.testing.assert_close(hg.value, tree.sub(hg.grad_x_f, hg.second_order))
        # the x step is SGD on the reported direction
        lr = state.upper.param_groups[0]["lr"]
        torch.testing.assert_close(tree.sub(x, state.x), tree.scale(hg.value, lr))


def _trajectory(name, steps, seed):
    alg = ALGORITHMS[name]()
    problem, state = setup(alg, quadratic(**NOISY), seed=seed)
    for _ in range(steps):
        alg.step(problem, state)
    return state


@pytest.mark.parametrize("name", ALGORITHMS)
def test_deterministic_given_the_seed(name):
    a, b, c = (_trajectory(name, 10, seed) for seed in (3, 3, 4))
    for key in ("x", "y"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=0, atol=0)
    torch.testing.assert_close(state_dict(a.extra), state_dict(b.extra), rtol=0, atol=0)
    assert float(tree.norm(tree.sub(a.x, c.x))) > 0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_checkpoint_round_trip(name):
    """state_dict → torch.save → load into a fresh State continues exactly as without the
    interruption (STORM/SPIDER buffers, previous point, λ, decayed step sizes)."""
    task = quadratic(**NOISY)
    alg = ALGORITHMS[name]()
    problem, state = setup(alg, task)
    for _ in range(5):
        alg.step(problem, state)
    buf = io.BytesIO()
    torch.save({"state": state_dict(state), "gen": problem.generator.get_state()}, buf)
    for _ in range(5):
        alg.step(problem, state)

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    alg2 = ALGORITHMS[name]()
    problem2, state2 = setup(alg2, task, seed=99)
    state2 = load_state_dict(state2, saved["state"])
    problem2.generator.set_state(saved["gen"])
    assert state2.t == 5
    for _ in range(5):
        alg2.step(problem2, state2)
    for key in ("x", "y"):
        torch.testing.assert_close(getattr(state2, key), getattr(state, key), rtol=0, atol=0)
    torch.testing.assert_close(state_dict(state2.extra), state_dict(state.extra), rtol=0, atol=0)


# -- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sustain", "vrbo", "f2sa"])
def test_config_runs_and_resumes(tiny_cfg, run_cfg, metrics, tmp_path, name):
    """The default config trains on the quadratic; a resumed run equals an uninterrupted one."""
    common = [f"algorithm={name}", "trainer.eval_every=5", "trainer.checkpoint_every=5"]
    common += ["task.noise_std=0.5", "trainer.device=cpu"]
    full = run_cfg(tiny_cfg(*common), tmp_path / "full")
    assert full.status == "completed"
    # interrupted at step 10 (a checkpoint of the same config: resume refuses any other)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bilevel.trainer import Trainer

    def stop_at_10(trainer, state):
        if state.t == 10:
            trainer.request_stop()

    cfg = tiny_cfg(*common)
    half = Trainer(
        instantiate(cfg.task), instantiate(cfg.algorithm), tmp_path / "resumed", max_steps=20,
        eval_every=5, checkpoint_every=5, seed=cfg.seed, device="cpu", progress=False,
        config=OmegaConf.to_container(cfg, resolve=True), callbacks=[stop_at_10],
    ).fit()  # fmt: skip
    assert half.status == "interrupted"
    resumed = run_cfg(tiny_cfg(*common, "resume=true"), tmp_path / "resumed")
    assert resumed.status == "completed"
    a, b = metrics(tmp_path / "full"), metrics(tmp_path / "resumed")
    cols = [c for c in a.columns if c != "wall_s"]
    assert a["step"].tolist() == [0, 5, 10, 15, 20]
    assert a[cols].equals(b[cols])
    assert a["true_hypergrad_norm"].iloc[-1] < a["true_hypergrad_norm"].iloc[0]
