"""Every algorithm drives the true ‖∇Φ‖ down on the quadratic task (DESIGN §7), and takes the
oracle calls per iteration that its paper's pseudocode says.

Instance: dims 5 × 8, A with spectrum [1, 3] (cond 3), μₓ = 1, so Φ is well conditioned and the
lower-level/Neumann step 1/2 = 2/(μ + L) contracts by 1/2 per step. Methods with normalized
upper steps (BO-REP, UniBiO) move a fixed distance per step and end on a limit cycle whose size is
proportional to the step, so for them the reduction is measured on the mean of ‖∇Φ‖ over the
last 50 iterations.
"""

from __future__ import annotations

import functools

import torch
from oracle_counts import calls_per_step

from bilevel import hypergrad, lower, tree, upper
from bilevel.algorithms import BOREP, REGISTRY, SOBA, StocBiO, UniBiO
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic

ETA = 0.5  # 2 / (μ + L) for the spectrum [1, 3] of A


def quadratic(**kw):
    args = dict(dim_x=5, dim_y=8, mu=1.0, cond=3.0, mu_x=1.0)
    args.update(kw)
    return Quadratic(**args)


def run(alg, task, steps, last=1, seed=0):
    """(‖∇Φ(x_0)‖, mean of ‖∇Φ(x_t)‖ over the last ``last`` iterations, problem, state)."""
    problem = Problem(task, torch.Generator().manual_seed(seed))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    g0 = float(tree.norm(task.hypergrad_true(x)))
    state = alg.init(problem, x, y)
    tail = []
    for t in range(steps):
        alg.step(problem, state)
        if t >= steps - last:
            tail.append(float(tree.norm(task.hypergrad_true(state.x))))
    assert state.t == steps
    return g0, sum(tail) / len(tail), problem, state


def stocbio(steps=3, q=8, lr=0.5):
    return StocBiO(
        lower=lower.SGD(lr=ETA, steps=steps),
        estimator=hypergrad.Neumann(q=q, lr=ETA, hessian_batches="independent"),
        upper=functools.partial(torch.optim.SGD, lr=lr),
    )


def soba(lr=0.1, inner_lr=ETA):
    return SOBA(
        lower=lower.SGD(lr=inner_lr, steps=1),
        estimator=hypergrad.ZSGD(lr=inner_lr),
        upper=functools.partial(torch.optim.SGD, lr=lr),
    )


def borep(lr=0.002, steps=3, interval=2):
    return BOREP(
        lower=lower.SGD(
            lr=ETA,
            steps=steps,
            interval=interval,
            warm_start_with=lower.EpochSGD(gamma1=ETA, D1=5.0, p=2),
        ),
        estimator=hypergrad.ZSGD(lr=ETA),
        upper=functools.partial(upper.NormalizedSGD, lr=lr, momentum=0.9),
    )


def unibio(lr=0.003, q=6, interval=2):
    return UniBiO(
        lower=lower.EpochSGD(
            gamma1=ETA,
            T1=2,
            D1=1.0,
            budget=6,
            p=2,
            interval=interval,
            warm_start_with=lower.EpochSGD(gamma1=ETA, D1=5.0, p=2),
        ),
        estimator=hypergrad.Neumann(q=q, lr=ETA),
        upper=functools.partial(upper.NormalizedSGD, lr=lr, momentum=0.9),
    )


def test_registry():
    for name, cls in {"bo_rep": BOREP, "soba": SOBA, "stocbio": StocBiO, "unibio": UniBiO}.items():
        assert REGISTRY[name] is cls


# -- deterministic convergence -----------------------------------------------------------------
def test_stocbio_converges():
    g0, g, _, state = run(stocbio(), quadratic(), 60)
    assert g < g0 / 100
    # and the lower iterate tracks y*(x)
    y_err = tree.norm(tree.sub(state.y, quadratic().y_star(state.x)))
    assert float(y_err) < 1e-3


def test_soba_converges():
    task = quadratic()
    g0, g, _, state = run(soba(), task, 200)
    assert g < g0 / 100
    # z converged to [∇²ᵧᵧg]⁻¹∇ᵧf at the final point
    b = task.C @ (state.y["y"] - task.c)
    z_star = torch.linalg.solve(task.A, b)
    assert float((state.estimator["z"]["y"] - z_star).norm()) < 1e-3 * float(z_star.norm())


def test_borep_converges():
    g0, g, _, _ = run(borep(), quadratic(), 1500, last=50)
    assert g < g0 / 100


def test_unibio_converges_on_quadratic():
    g0, g, _, _ = run(unibio(), quadratic(), 1000, last=50)
    assert g < g0 / 100


def test_warm_start_refines_y0():
    """BO-REP/UniBiO's initialization refinement brings y_0 to y*(x_0) before iteration 0."""
    task = quadratic()
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    err0 = float(tree.norm(tree.sub(y, task.y_star(x))))
    state = borep().init(problem, x, y)
    assert state.y is y  # refined in place
    err = float(tree.norm(tree.sub(state.y, task.y_star(x))))
    assert err < 1e-2 * err0
    assert problem.oracles.counter.calls["grad_g"] == sum(lower.EpochSGD(p=2).epoch_lengths())


# -- with gradient and Hessian noise -----------------------------------------------------------
NOISY = dict(noise_std=0.5, hessian_noise_std=0.5, batch_size=64)


def test_stocbio_converges_with_noise():
    g0, g, _, _ = run(stocbio(lr=0.2), quadratic(**NOISY), 120, last=20)
    assert g < g0 / 10


def test_soba_converges_with_noise():
    g0, g, _, _ = run(soba(lr=0.05, inner_lr=0.3), quadratic(**NOISY), 300, last=20)
    assert g < g0 / 10


# -- oracle calls per iteration ----------------------------------------------------------------
def per_iteration(alg, steps=4, batch_size=4):
    """counter.columns() differences across each of ``steps`` iterations (after init)."""
    task = quadratic(noise_std=0.1, batch_size=batch_size)
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    state = alg.init(problem, x, y)
    return calls_per_step(alg, problem, state, steps, batch_size)


def calls(grad_f, grad_g, hvp, cross):
    return {"grad_f": grad_f, "grad_g": grad_g, "hvp": hvp, "cross": cross}


def test_stocbio_oracle_counts():
    # D = 3 lower steps; Q = 3 textbook terms on independent batches: 2 HVPs, 1 cross
    assert per_iteration(stocbio(steps=3, q=3)) == [calls(1, 3, 2, 1)] * 4


def test_soba_oracle_counts(monkeypatch):
    # one lower batch: ∇ᵧg and both products from one graph
    assert per_iteration(soba()) == [calls(1, 1, 1, 1)] * 4
    # ... and one forward pass of g and of f per iteration
    task = quadratic(noise_std=0.1)
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    alg = soba()
    state = alg.init(problem, x, y)
    forwards = {"lower": 0, "upper": 0}

    def counting(level, fn):
        def wrapped(*a):
            forwards[level] += 1
            return fn(*a)

        return wrapped

    for level in forwards:
        name = f"{level}_loss"
        monkeypatch.setattr(task, name, counting(level, getattr(task, name)))
    for _ in range(3):
        alg.step(problem, state)
    assert forwards == {"lower": 3, "upper": 3}


def test_borep_oracle_counts():
    # N = 3 SGD steps every I = 2 iterations; z-SGD: one HVP + one cross from one pass
    assert per_iteration(borep(steps=3, interval=2)) == [calls(1, 3, 1, 1), calls(1, 0, 1, 1)] * 2


def test_unibio_oracle_counts():
    # Epoch-SGD (T1 = 2, K = 6: epochs of 2 and 4 steps) every 2 iterations; Q = 4: 3 HVPs
    assert lower.EpochSGD(T1=2, budget=6, p=2).epoch_lengths() == [2, 4]
    assert per_iteration(unibio(q=4, interval=2)) == [calls(1, 6, 3, 1), calls(1, 0, 3, 1)] * 2


def test_periodic_lower_update_leaves_y_alone():
    task = quadratic()
    problem = Problem(task, torch.Generator().manual_seed(0))
    x, y = task.init_params(torch.Generator().manual_seed(1))
    alg = borep(interval=3)
    state = alg.init(problem, x, y)
    for t in range(6):
        y_before, x_before = tree.clone(state.y), tree.clone(state.x)
        alg.step(problem, state)
        y_moved = float(tree.norm(tree.sub(state.y, y_before))) > 0
        assert y_moved == (t % 3 == 0)
        assert float(tree.norm(tree.sub(state.x, x_before))) > 0
