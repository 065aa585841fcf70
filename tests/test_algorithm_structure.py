"""What defines SLIP, AdamBO, TTSA and MA-SOBA, checked iterate by iterate on the noise-free
quadratic task against a hand computation from its matrices (spec BOREP-SLIP-ADAMBO §2.2, §2.3,
§2.5, §2.7; ACCBO-UNIBIO §3.4, §3.7). Each algorithm is built from its config (so the tests also
see what the configs select), with every step size explicit.

Closed forms (bilevel.tasks.quadratic, no noise): ∇ᵧg = Ay − (Bx + b), ∇²ᵧᵧg = A,
∇²ₓᵧg·v = −Bᵀv, ∇ᵧf = C(y − c), ∇ₓf = μₓx; so an estimate s of [∇²ᵧᵧg]⁻¹∇ᵧf gives the
hypergradient h = μₓx + Bᵀs (with s = A⁻¹C(y* − c), the true ∇Φ: checked below).

Each test fails when a defining part is removed: MA-SOBA's moving average (dampening) or its
directions at (x_t, y_t, z_t); SLIP's warm start, normalization, momentum, or the old z in the
cross term; AdamBO's warm start, Adam (both moments, bias correction) or the point y_{t+1} of
its hypergradient; TTSA's single lower step, the factor Q of the randomized truncation, or the
point y_{t+1}. TTSA's step-size schedule is tested elsewhere (here both decays are 0).
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from bilevel.app.config import compose
from bilevel.problem import Problem

# ~settings: hand-replayed iterates use the algorithm defaults, not the tuned pair settings
SMALL = [
    "task=quadratic",
    "task.dim_x=5",
    "task.dim_y=8",
    "task.cond=3",
    "task.mu_x=1.0",
    "~settings",
]
EXACT = dict(rtol=1e-10, atol=1e-12)


def build(name: str, *overrides: str):
    """(task, algorithm, problem, state, x₀, y before init) of a noise-free quadratic run."""
    cfg = compose([f"algorithm={name}", *SMALL, "task.noise_std=0", *overrides])
    task, algo = instantiate(cfg.task), instantiate(cfg.algorithm)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    x0, y_init = x["x"].clone(), y["y"].clone()
    problem = Problem(task, torch.Generator().manual_seed(0))
    return task, algo, problem, algo.init(problem, x, y), x0, y_init


def grad_y_g(task, x, y):
    return task.A @ y - task.B @ x - task.b


def grad_y_f(task, y):
    return task.C @ (y - task.c)


def hypergrad(task, x, s):
    """∇ₓf − ∇²ₓᵧg·s = μₓx + Bᵀs."""
    return task.mu_x * x + task.B.T @ s


def neumann_power(task, v, lr, k):
    """(I − lr·A)^k v."""
    for _ in range(k):
        v = v - lr * task.A @ v
    return v


def sgd_steps(task, x, y, lr, steps):
    for _ in range(steps):
        y = y - lr * grad_y_g(task, x, y)
    return y


def test_closed_forms_give_the_true_hypergradient():
    task, _, _, _, x0, _ = build("soba")
    y_star = task.y_star({"x": x0})["y"]
    torch.testing.assert_close(grad_y_g(task, x0, y_star), torch.zeros_like(y_star), **EXACT)
    s = torch.linalg.solve(task.A, grad_y_f(task, y_star))
    torch.testing.assert_close(hypergrad(task, x0, s), task.hypergrad_true({"x": x0})["x"])


def close(got, want, what: str) -> None:
    torch.testing.assert_close(got, want, **EXACT, msg=lambda m: f"{what}: {m}")


def assert_step(state, x, y, h, t: int) -> None:
    """The algorithm's h_t, x_{t+1}, y_{t+1} after iteration t against the hand computation."""
    close(state.hypergrad.value["x"], h, f"iteration {t}: h_t")
    close(state.x["x"], x, f"iteration {t}: x_(t+1)")
    close(state.y["y"], y, f"iteration {t}: y_(t+1)")


# -- MA-SOBA -----------------------------------------------------------------------------------
def test_ma_soba_steps_along_the_moving_average_of_soba_directions():
    """u_{t+1} = βu_t + (1−β)h_t, x_{t+1} = x_t − αu_{t+1}, with h_t = ∇ₓF − ∇²ₓᵧG·z_t and
    the y, z steps all at (x_t, y_t, z_t). The buffer starts at u_1 = h_0 (torch SGD with
    dampening: no bias toward 0, tests/test_parts.py); from t = 1 on the average differs from
    h_t by ≥ 4% of its norm here, so a plain SGD step on h_t fails."""
    alpha, beta, nu, gamma = 0.05, 0.8, 0.3, 0.2
    task, algo, problem, state, x, y = build(
        "ma_soba",
        f"algorithm.upper.lr={alpha}",
        f"algorithm.upper.momentum={beta}",
        f"algorithm.estimator.lr={nu}",
        f"algorithm.lower.lr={gamma}",
        "algorithm.lower.steps=1",
    )
    z = state.estimator["z"]["y"].clone()
    u = None
    for t in range(5):
        h = hypergrad(task, x, z)  # at (x_t, y_t, z_t): the old z
        u = h if u is None else beta * u + (1 - beta) * h
        if t > 0:
            assert float((u - h).norm()) > 0.04 * float(h.norm())
        x, y, z = soba_directions_step(
            algo, problem, state, task, x, x - alpha * u, y, z, h, t, gamma, nu
        )


def soba_directions_step(algo, problem, state, task, x, x_new, y, z, h, t, gamma, nu):
    """The hand-run SOBA-family iteration shared by MA-SOBA and SLIP: y and z step at
    (x_t, y_t, z_t) simultaneously with x → x_new; one algorithm step; compare everything."""
    y, z = y - gamma * grad_y_g(task, x, y), z - nu * (task.A @ z - grad_y_f(task, y))
    algo.step(problem, state)
    assert_step(state, x_new, y, h, t)
    close(state.estimator["z"]["y"], z, f"iteration {t}: z_(t+1)")
    return x_new, y, z


# -- SLIP --------------------------------------------------------------------------------------
def test_slip_warm_start_then_normalized_momentum_on_soba_directions():
    """y₀ = T0 = 3 SGD steps on g(x₀, ·) (the warm start), then simultaneous y, z steps at
    (x_t, y_t, z_t), h_t with the old z_t, m_t = βm_{t−1} + (1−β)h_t from m = 0 and a step of
    length η along m_t/‖m_t‖."""
    eta, beta, nu, gamma, gamma0 = 0.1, 0.7, 0.3, 0.2, 0.35
    task, algo, problem, state, x, y = build(
        "slip",
        f"algorithm.upper.lr={eta}",
        f"algorithm.upper.momentum={beta}",
        "algorithm.upper.per_tensor=false",
        f"algorithm.estimator.lr={nu}",
        f"algorithm.lower.lr={gamma}",
        "algorithm.lower.steps=1",
        f"algorithm.lower.warm_start_with.lr={gamma0}",
        "algorithm.lower.warm_start_with.steps=3",
    )
    y = sgd_steps(task, x, y, gamma0, 3)
    close(state.y["y"], y, "y_0 after the warm start")
    z = state.estimator["z"]["y"].clone()
    m = torch.zeros_like(x)
    eps = state.upper.param_groups[0]["eps"]
    for t in range(5):
        h = hypergrad(task, x, z)
        m = beta * m + (1 - beta) * h
        x_new = x - eta * m / (m.norm() + eps)
        assert float((x_new - x).norm()) == pytest.approx(eta)  # normalized: length η
        x, y, z = soba_directions_step(algo, problem, state, task, x, x_new, y, z, h, t, gamma, nu)


# -- AdamBO ------------------------------------------------------------------------------------
def test_adambo_warm_start_neumann_at_the_new_y_and_adam_on_x():
    """y₀ = 3 SGD steps on g(x₀, ·); per iteration one SGD step y_{t+1} = y_t − γ∇ᵧg(x_t, y_t),
    h_t = ∇ₓf − ∇²ₓᵧg·η_N Σ_{q<Q}(I − η_N A)^q ∇ᵧf at (x_t, y_{t+1}), and x by Adam fed h_t,
    run here by hand (Kingma–Ba with bias correction; β₁ = 0.9, β₂ = 0.999, λ = 1e-8, no
    weight decay: the paper)."""
    eta, gamma, gamma0, q, eta_n = 0.05, 0.2, 0.35, 4, 0.3
    task, algo, problem, state, x, y = build(
        "adambo",
        f"algorithm.upper.lr={eta}",
        f"algorithm.lower.lr={gamma}",
        "algorithm.lower.steps=1",
        f"algorithm.lower.warm_start_with.lr={gamma0}",
        "algorithm.lower.warm_start_with.steps=3",
        f"algorithm.estimator.q={q}",
        f"algorithm.estimator.lr={eta_n}",
    )
    group = state.upper.param_groups[0]
    assert group["weight_decay"] == 0 and not group.get("amsgrad", False)
    b1, b2, eps = 0.9, 0.999, 1e-8
    assert tuple(group["betas"]) == (b1, b2) and group["eps"] == eps
    y = sgd_steps(task, x, y, gamma0, 3)
    close(state.y["y"], y, "y_0 after the warm start")
    m = v = torch.zeros_like(x)
    for t in range(1, 7):
        y = y - gamma * grad_y_g(task, x, y)  # y_{t+1}: the hypergradient's point
        s = eta_n * sum(neumann_power(task, grad_y_f(task, y), eta_n, k) for k in range(q))
        h = hypergrad(task, x, s)
        m, v = b1 * m + (1 - b1) * h, b2 * v + (1 - b2) * h * h
        x = x - eta * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        algo.step(problem, state)
        assert_step(state, x, y, h, t - 1)


# -- TTSA --------------------------------------------------------------------------------------
def test_ttsa_one_lower_step_and_randomized_neumann_with_the_factor_q():
    """y_{t+1} = y_t − β∇ᵧg(x_t, y_t) (one step), h_t = ∇ₓf − ∇²ₓᵧg·Qη Π_{j≤k}(I − ηA)∇ᵧf at
    (x_t, y_{t+1}) with k ~ U{0..Q−1} (GW18: E over k = the textbook series), x_{t+1} =
    x_t − αh_t. The drawn k is read by replaying the run's generator; 12 steps see k = 0 (no
    product: s = Qη∇ᵧf) and Q − 1. Constant step sizes (both decays 0: the schedule is not
    tested here)."""
    alpha, beta, q, eta_n = 0.05, 0.2, 4, 0.3
    task, algo, problem, state, x, y = build(
        "ttsa",
        "algorithm.upper_decay=0",
        "algorithm.lower_decay=0",
        f"algorithm.upper.lr={alpha}",
        f"algorithm.lower.lr={beta}",
        "algorithm.lower.steps=1",
        f"algorithm.estimator.q={q}",
        f"algorithm.estimator.lr={eta_n}",
    )
    close(state.y["y"], y, "y_0 (no warm start)")
    seen = set()
    for t in range(12):
        replay = Problem(task, torch.Generator())
        replay.generator.set_state(problem.generator.get_state())
        replay.lower_batch()  # the lower step's batch, then the estimator's draws
        k = algo.estimator.draw(replay).k
        assert k is not None, "no random truncation index drawn"
        seen.add(k)
        y = y - beta * grad_y_g(task, x, y)
        s = q * eta_n * neumann_power(task, grad_y_f(task, y), eta_n, k)
        h = hypergrad(task, x, s)
        x = x - alpha * h
        algo.step(problem, state)
        assert_step(state, x, y, h, t)
    assert {0, q - 1} <= seen and seen <= set(range(q))
