"""The UniBiO synthetic problem: closed forms, the LLUC estimator, Epoch-SGD's schedule and a
full UniBiO run (UniBiO ICLR'26 §6; spec ACCBO-UNIBIO §2.3, §3.2).

g = y^p/p − y sin x, f = sin(y^{p−1}) clipped to ±1 outside |y| ≤ c_p = (π/2)^{1/(p−1)};
y*(x) = (sin x)^{1/(p−1)}, Φ(x) = sin(sin x), ∇Φ(x) = cos x · cos(sin x).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bilevel import tree
from bilevel.algorithms import UniBiO
from bilevel.hypergrad import Exact, Neumann
from bilevel.lower import EpochSGD
from bilevel.oracles import Batch, Oracles
from bilevel.problem import Problem
from bilevel.tasks.unibio_synthetic import UniBiOSynthetic
from bilevel.upper import NormalizedSGD

DT = torch.float64
XS = [-2.5, -1.0, -0.3, 0.2, 1.0, 2.0]
PS = [2, 4, 6, 8]


def scalar(v):
    return torch.tensor([v], dtype=DT)


def lower_batch():
    return Batch({"xi": None}, 1)


def upper_batch():
    return Batch({"zeta": None}, 1)


def problem_for(task):
    return Problem(task, torch.Generator().manual_seed(0))


def test_rejects_odd_or_small_p():
    for p in (0, 3, 5):
        with pytest.raises(ValueError):
            UniBiOSynthetic(p=p)


@pytest.mark.parametrize("p", PS)
def test_y_star_is_the_lower_minimiser(p):
    task = UniBiOSynthetic(p=p)
    oracles = Oracles(task)
    for xv in XS:
        x = {"x": scalar(xv)}
        ys = task.y_star(x)
        assert abs(float(oracles.grad_y_g(x, ys, lower_batch())["y"])) < 1e-12
        # y*^{p-1} = sin x (the real odd root), and g is larger a little away from y*
        assert abs(float(ys["y"] ** (p - 1)) - math.sin(xv)) < 1e-12
        g_star = float(task.lower_loss(x, ys, lower_batch()))
        for dy in (-1e-2, 1e-2):
            g_near = float(task.lower_loss(x, {"y": ys["y"] + dy}, lower_batch()))
            assert g_near > g_star


@pytest.mark.parametrize("p", PS)
def test_phi_and_hypergradient_closed_forms(p):
    task = UniBiOSynthetic(p=p)
    for xv in XS:
        x = {"x": scalar(xv)}
        phi = float(task.phi(x))
        assert abs(phi - math.sin(math.sin(xv))) < 1e-14
        assert abs(float(task.upper_loss(x, task.y_star(x), upper_batch())) - phi) < 1e-12
        eps = 1e-6
        fd = (
            float(task.phi({"x": scalar(xv + eps)})) - float(task.phi({"x": scalar(xv - eps)}))
        ) / (2 * eps)
        assert abs(float(task.hypergrad_true(x)["x"]) - fd) < 1e-8
        # Φ through the lower solution, not only its closed form: f(x ± ε, y*(x ± ε))
        fd_through_y = (
            float(task.upper_loss({}, task.y_star({"x": scalar(xv + eps)}), upper_batch()))
            - float(task.upper_loss({}, task.y_star({"x": scalar(xv - eps)}), upper_batch()))
        ) / (2 * eps)
        assert abs(fd_through_y - fd) < 1e-7
    assert round(float(task.hypergrad_true({"x": scalar(1.0)})["x"]), 4) == 0.3600


@pytest.mark.parametrize("p", [2, 4])
def test_exact_estimator_at_y_star(p):
    task = UniBiOSynthetic(p=p)
    x = {"x": scalar(1.0)}
    est = Exact()(problem_for(task), x, task.y_star(x), {})
    torch.testing.assert_close(est.value["x"], task.hypergrad_true(x)["x"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("p", PS)
def test_lluc_neumann_at_y_star_is_exact(p):
    """At y*, D = (p−1)|y|^{p−2} equals ∇²ᵧᵧg, so D⁻¹H = 1 and η = 1 makes the preconditioned
    series exact after its first term."""
    task = UniBiOSynthetic(p=p)
    for xv in (1.0, -0.7, 2.0):
        x = {"x": scalar(xv)}
        est = Neumann(q=3, lr=1.0, lluc_p=p)(problem_for(task), x, task.y_star(x), {})
        torch.testing.assert_close(
            est.value["x"], task.hypergrad_true(x)["x"], rtol=1e-10, atol=1e-12
        )


def test_plain_neumann_with_unit_step_fails_for_p4():
    """Without the change of variable the same estimator is far off (H = 3y*² ≈ 2.7 at x = 1,
    so I − H has modulus > 1): the LLUC test above has power."""
    task = UniBiOSynthetic(p=4)
    x = {"x": scalar(1.0)}
    est = Neumann(q=3, lr=1.0)(problem_for(task), x, task.y_star(x), {})
    assert abs(float(est.value["x"] - task.hypergrad_true(x)["x"])) > 0.1


@pytest.mark.parametrize("p", PS)
def test_upper_loss_clipping(p):
    task = UniBiOSynthetic(p=p)
    oracles = Oracles(task)
    x = {"x": scalar(0.4)}
    c = task.c_p
    assert abs(c - (math.pi / 2) ** (1 / (p - 1))) < 1e-15
    for yv, value in ((c + 0.1, 1.0), (-c - 0.1, -1.0), (3.0, 1.0), (-3.0, -1.0)):
        fg = oracles.grad_f(x, {"y": scalar(yv)}, upper_batch())
        assert float(fg.loss) == value
        assert float(fg.y["y"]) == 0.0 and float(fg.x["x"]) == 0.0
    # inside the clip: f = sin(y^{p−1}), ∇ᵧf = cos(y^{p−1})(p−1)y^{p−2}; continuous at ±c_p
    for yv in (0.5 * c, -0.9 * c):
        fg = oracles.grad_f(x, {"y": scalar(yv)}, upper_batch())
        assert abs(float(fg.loss) - math.sin(yv ** (p - 1))) < 1e-14
        expected = math.cos(yv ** (p - 1)) * (p - 1) * yv ** (p - 2)
        assert abs(float(fg.y["y"]) - expected) < 1e-12
    edge = float(task.upper_loss(x, {"y": scalar(c * (1 - 1e-12))}, upper_batch()))
    assert abs(edge - 1.0) < 1e-9


def test_noise_enters_the_gradients():
    task = UniBiOSynthetic(p=4, noise_lower=1.0, noise_upper=0.5)
    gen = torch.Generator().manual_seed(0)
    lb, ub = task.sample_lower(gen), task.sample_upper(gen)
    oracles = Oracles(task)
    x = {"x": scalar(1.0)}
    ys = task.y_star(x)
    torch.testing.assert_close(oracles.grad_y_g(x, ys, lb)["y"], lb.data["xi"])
    torch.testing.assert_close(oracles.grad_f(x, ys, ub).x["x"], ub.data["zeta"])


@pytest.mark.parametrize(
    "p, lengths", [(2, [5, 10, 20, 40]), (4, [5, 14, 40]), (6, [5, 15, 50]), (8, [5, 16, 56])]
)
def test_epoch_sgd_schedule(p, lengths):
    """The realised epochs for T1 = 5, K = 100 (spec ACCBO-UNIBIO §3.2 table)."""
    sgd = EpochSGD(T1=5, budget=100, p=p)
    assert sgd.epoch_lengths() == lengths
    tau = 2 * (p - 1) / p
    assert lengths == [math.floor(5 * 2 ** (tau * k)) for k in range(len(lengths))]


def test_epoch_sgd_counts_and_converges():
    task = UniBiOSynthetic(p=4)
    problem = problem_for(task)
    x = {"x": scalar(1.0)}
    y = {"y": scalar(-0.5)}
    sgd = EpochSGD(gamma1=1.0, T1=5, D1=1.0, budget=100, p=4)
    sgd.run(problem, x, y, sgd.init_state(y))
    assert problem.oracles.counter.calls["grad_g"] == 59
    assert abs(float(y["y"] - task.y_star(x)["y"])) < 1e-2


def test_unibio_run_p4():
    """The paper's setting (config unibio.yaml): 500 iterations on p = 4, deterministic."""
    p = 4
    task = UniBiOSynthetic(p=p)
    problem = problem_for(task)

    def epoch_sgd(**kw):
        return EpochSGD(gamma1=1.0, T1=5, D1=1.0, budget=100, p=p, **kw)

    alg = UniBiO(
        lower=epoch_sgd(interval=2, warm_start_with=epoch_sgd()),
        estimator=Neumann(q=3, lr=1.0, lluc_p=p),
        upper=functools.partial(NormalizedSGD, lr=0.03, momentum=0.9),
    )
    x, y = task.init_params(torch.Generator().manual_seed(0))
    state = alg.init(problem, x, y)
    grads = []
    for _ in range(500):
        alg.step(problem, state)
        grads.append(abs(float(task.hypergrad_true(state.x)["x"])))
    assert abs(0.3600 - abs(float(task.hypergrad_true({"x": scalar(1.0)})["x"]))) < 1e-4
    assert sum(grads[-100:]) / 100 < 0.05
    # it went downhill to the minimiser x = −π/2 of Φ = sin(sin x)
    assert abs(float(state.x["x"]) + math.pi / 2) < 0.2
    assert float(tree.norm(tree.sub(state.y, task.y_star(state.x)))) < 0.1
