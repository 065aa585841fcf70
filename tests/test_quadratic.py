"""The quadratic task's finite-sum mode (fixed per-sample noise, fixed minibatches)."""

from __future__ import annotations

import pytest
import torch

from bilevel.oracles import Batch
from bilevel.problem import Problem
from bilevel.tasks.quadratic import Quadratic


def test_finite_sum_average_is_the_noise_free_problem():
    task = Quadratic(
        dim_x=3, dim_y=4, noise_std=1.0, hessian_noise_std=0.3, batch_size=5, n_samples=50
    )
    gen = torch.Generator().manual_seed(0)
    x, y = task.init_params(gen)
    pb = Problem(task, gen)
    assert task.n_batches == 10
    batches = [Batch({k: task.batches[k][i] for k in ("xi", "delta")}, 5, i) for i in range(10)]
    mean = torch.stack([pb.oracles.grad_y_g(x, y, b)["y"] for b in batches]).mean(0)
    exact = pb.oracles.grad_y_g(x, y, task.exact_batch("lower"))["y"]
    torch.testing.assert_close(mean, exact)
    one = pb.oracles.grad_y_g(x, y, batches[0])["y"]
    assert (one - exact).norm() > 0.1  # each batch is noisy


def test_finite_sum_batches_are_fixed_and_indexed():
    task = Quadratic(dim_x=3, dim_y=4, noise_std=1.0, batch_size=5, n_samples=50)
    pb = Problem(task, torch.Generator().manual_seed(1))
    seen = {}
    for _ in range(200):
        b = pb.lower_batch()
        assert 0 <= b.index < 10
        if b.index in seen:
            torch.testing.assert_close(b.data["xi"], seen[b.index])
        seen[b.index] = b.data["xi"]
    assert len(seen) == 10


def test_finite_sum_needs_whole_batches():
    with pytest.raises(ValueError, match="multiple of"):
        Quadratic(batch_size=3, n_samples=10)
