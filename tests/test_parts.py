"""Upper rules and lower strategies against their defining formulas."""

from __future__ import annotations

import functools

import pytest
import torch

from bilevel import lower, tree
from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic
from bilevel.upper import NormalizedSGD, apply, storm

D = torch.float64


def _params():
    return {"a": torch.tensor([3.0, 4.0], dtype=D), "b": torch.tensor([[1.0]], dtype=D)}


def test_normalized_sgd_global_norm_and_momentum():
    x = _params()
    opt = NormalizedSGD(list(x.values()), lr=0.5, momentum=0.9)
    h = {"a": torch.tensor([1.0, 0.0], dtype=D), "b": torch.tensor([[2.0]], dtype=D)}
    before = tree.clone(x)
    apply(opt, x, h)
    m = tree.scale(h, 0.1)  # (1 − β) h from a zero buffer
    expected = tree.add(before, m, alpha=-0.5 / float(tree.norm(m)))
    for k in x:
        torch.testing.assert_close(x[k], expected[k])
    step = tree.norm(tree.sub(x, before))
    assert float(step) == pytest.approx(0.5)  # a normalized step has length lr


def test_normalized_sgd_per_tensor_steps_each_tensor_by_lr():
    x = _params()
    opt = NormalizedSGD(list(x.values()), lr=0.3, momentum=0.0, per_tensor=True)
    before = tree.clone(x)
    apply(opt, x, {"a": torch.tensor([10.0, 0.0], dtype=D), "b": torch.tensor([[-0.01]], dtype=D)})
    assert float((x["a"] - before["a"]).norm()) == pytest.approx(0.3)
    assert float((x["b"] - before["b"]).norm()) == pytest.approx(0.3)


def test_moving_average_is_sgd_with_dampening():
    """MA-SOBA's u ← βu + (1−β)h, x ← x − α u is torch SGD(momentum=β, dampening=β)."""
    x = {"w": torch.zeros(3, dtype=D)}
    opt = torch.optim.SGD([x["w"]], lr=0.1, momentum=0.8, dampening=0.8)
    hs = [torch.randn(3, dtype=D, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    u = torch.zeros(3, dtype=D)
    w = torch.zeros(3, dtype=D)
    for i, h in enumerate(hs):
        apply(opt, x, {"w": h})
        u = h.clone() if i == 0 else 0.8 * u + 0.2 * h  # torch initialises the buffer with h
        w = w - 0.1 * u
    torch.testing.assert_close(x["w"], w)


def test_storm_recursion_same_sample_correction():
    d0 = {"v": torch.tensor([1.0, 1.0], dtype=D)}
    h = {"v": torch.tensor([2.0, 0.0], dtype=D)}
    h_prev_point = {"v": torch.tensor([1.5, 0.5], dtype=D)}
    d1 = storm(d0, h, h_prev_point, beta=0.9)
    # β d + (1 − β) h + β (h − h') with the SAME sample at both points
    expected = 0.9 * d0["v"] + 0.1 * h["v"] + 0.9 * (h["v"] - h_prev_point["v"])
    torch.testing.assert_close(d1["v"], expected)
    torch.testing.assert_close(storm(None, h, None, 0.9)["v"], h["v"])  # d_0 = h_0


class _Quad1D:
    """g(x, y) = ½ a y² − x y: ∇ᵧg = a y − x, y* = x / a (deterministic)."""

    def __init__(self, a: float = 2.0):
        self.a = a
        self.calls = 0

    def lower_loss(self, x, y, batch):
        return 0.5 * self.a * (y["y"] ** 2).sum() - (x["x"] * y["y"]).sum()

    def upper_loss(self, x, y, batch):
        return (y["y"] ** 2).sum()

    def sample_lower(self, gen):
        return Batch(None, 1)

    sample_upper = sample_lower


def _problem(task):
    return Problem(task, torch.Generator().manual_seed(0))


def test_sgd_interval_updates_only_every_I_iterations_and_counts():
    task = _Quad1D()
    pb = _problem(task)
    x, y = {"x": torch.tensor([1.0], dtype=D)}, {"y": torch.tensor([0.0], dtype=D)}
    strat = lower.SGD(lr=0.1, steps=3, interval=2)
    updated = [strat.update(pb, x, y, {}, t) for t in range(4)]
    assert updated == [True, False, True, False]
    assert pb.oracles.counter.calls["grad_g"] == 6
    y_ref = 0.0
    for _ in range(6):
        y_ref -= 0.1 * (2.0 * y_ref - 1.0)
    assert float(y["y"]) == pytest.approx(y_ref)


def test_sgd_first_step_uses_given_gradient():
    pb = _problem(_Quad1D())
    x, y = {"x": torch.tensor([1.0], dtype=D)}, {"y": torch.tensor([0.0], dtype=D)}
    lower.SGD(lr=0.1, steps=1).update(pb, x, y, {}, 0, grad={"y": torch.tensor([5.0], dtype=D)})
    assert float(y["y"]) == pytest.approx(-0.5)
    assert pb.oracles.counter.calls["grad_g"] == 0


def test_epoch_sgd_stays_in_first_ball_and_converges():
    task = Quadratic(dim_x=3, dim_y=4, cond=4)
    pb = _problem(task)
    x, y = task.init_params(torch.Generator().manual_seed(1))
    start = tree.clone(y)
    strat = lower.EpochSGD(gamma1=0.2, T1=5, D1=0.5, budget=100, p=2)
    strat.update(pb, x, y, {}, 0)
    # epoch k stays in the ball of radius D_k = D1 / 2^((k-1)/p) around its own start
    radii = [0.5 / 2 ** (k / 2) for k in range(len(strat.epoch_lengths()))]
    assert float(tree.norm(tree.sub(y, start))) <= sum(radii) + 1e-12
    far = Quadratic(dim_x=3, dim_y=4, cond=4)
    y2 = tree.clone(start)
    lower.EpochSGD(gamma1=0.2, T1=5, D1=50.0, budget=400, p=2).update(pb, x, y2, {}, 0)
    err = float(tree.norm(tree.sub(y2, far.y_star(x))))
    assert err < 0.05 * float(tree.norm(tree.sub(start, far.y_star(x))))  # measured: 57x
    assert pb.oracles.counter.calls["grad_g"] == sum(strat.epoch_lengths()) + sum(
        lower.EpochSGD(T1=5, budget=400, p=2).epoch_lengths()
    )


def test_snag_extrapolates_and_averages():
    task = _Quad1D(a=1.0)
    pb = _problem(task)
    x, y = {"x": torch.tensor([0.0], dtype=D)}, {"y": torch.tensor([1.0], dtype=D)}
    strat = lower.SNAG(lr=0.5, momentum=0.5, averaging=0.5)
    st = strat.init_state(y)
    st["y_prev"] = {"y": torch.tensor([2.0], dtype=D)}
    strat.update(pb, x, y, st, 0)
    w = 1.0 + 0.5 * (1.0 - 2.0)  # extrapolated point 0.5
    y1 = w - 0.5 * (1.0 * w - 0.0)  # gradient step at w
    assert float(y["y"]) == pytest.approx(y1)
    assert float(st["y_avg"]["y"]) == pytest.approx(0.5 * 1.0 + 0.5 * y1)
    assert float(st["y_prev"]["y"]) == pytest.approx(1.0)
    assert strat.point(y, st) is st["y_avg"]
    # a decaying schedule (lower_decay sets lr_scale) scales SNAG's step as it does SGD's
    y = {"y": torch.tensor([1.0], dtype=D)}
    st = strat.init_state(tree.clone(y))
    st["y_prev"], st["lr_scale"] = {"y": torch.tensor([2.0], dtype=D)}, 0.5
    strat.update(pb, x, y, st, 0)
    assert float(y["y"]) == pytest.approx(w - 0.25 * (1.0 * w - 0.0))


def test_adam_lower_matches_torch_adam_on_the_gradient():
    task = _Quad1D()
    pb = _problem(task)
    x, y = {"x": torch.tensor([1.0], dtype=D)}, {"y": torch.tensor([0.0], dtype=D)}
    strat = lower.Adam(lr=0.1, steps=2)
    st = strat.init_state(y)
    strat.update(pb, x, y, st, 0)
    ref = torch.zeros(1, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (0.5 * 2.0 * ref**2 - 1.0 * ref).sum().backward()
        opt.step()
    torch.testing.assert_close(y["y"], ref.detach())


def test_warm_start_runs_the_given_strategy_once():
    task = _Quad1D()
    pb = _problem(task)
    x, y = {"x": torch.tensor([1.0], dtype=D)}, {"y": torch.tensor([0.0], dtype=D)}
    strat = lower.SGD(lr=0.1, steps=1, warm_start_with=lower.SGD(lr=0.1, steps=7))
    strat.warm_start(pb, x, y, strat.init_state(y))
    assert pb.oracles.counter.calls["grad_g"] == 7


def test_upper_factory_partial_builds_optimizer():
    x = _params()
    factory = functools.partial(NormalizedSGD, lr=0.1)
    assert isinstance(factory(list(x.values())), torch.optim.Optimizer)


def test_sq_norm_has_a_finite_hessian_at_zero():
    y = {"w": torch.zeros(3, dtype=D, requires_grad=True), "b": torch.ones(2, dtype=D)}
    (g,) = torch.autograd.grad(tree.sq_norm(y), [y["w"]], create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), [y["w"]])
    torch.testing.assert_close(h, torch.full((3,), 2.0, dtype=D))


def test_a_warm_start_without_a_strategy_is_refused_naming_it():
    """A settings file that gives ``warm_start_with`` only some keys (no _target_) used to fail
    at the first iteration with 'Missing key run'; it is refused when the strategy is built."""
    from bilevel.lower import SGD

    with pytest.raises(TypeError, match=r"warm_start_with must be a lower strategy.*\{steps\}"):
        SGD(lr=0.1, warm_start_with={"steps": 3})
    assert SGD(lr=0.1, warm_start_with=SGD(lr=0.1, steps=3)).warm_start_with.steps == 3
