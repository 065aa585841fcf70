"""The lower-level regularisers against their formulas and derivatives."""

from __future__ import annotations

import pytest
import torch

from bilevel.tasks.regularizers import regularizer

D = torch.float64


def params():
    return {"a": torch.tensor([3.0, 0.0], dtype=D), "b": torch.tensor([[4.0]], dtype=D)}


def test_values():
    assert float(regularizer(params(), 0.2, "l2")) == pytest.approx(0.1 * 25)
    assert float(regularizer(params(), 0.2, "l2_norm")) == pytest.approx(0.2 * 5)
    assert float(regularizer(params(), 0.2, "p_norm", p=4)) == pytest.approx(0.2 * (81 + 256) / 4)
    assert float(regularizer(params(), 0.0, "l2_norm")) == 0.0


def test_l2_hessian_is_coef_identity_and_l2_norm_is_not():
    a = torch.tensor([3.0, 4.0], dtype=D, requires_grad=True)
    h_sq = torch.autograd.functional.hessian(lambda v: regularizer({"a": v}, 0.5, "l2"), a)
    torch.testing.assert_close(h_sq, 0.5 * torch.eye(2, dtype=D))
    h_norm = torch.autograd.functional.hessian(lambda v: regularizer({"a": v}, 0.5, "l2_norm"), a)
    # coef (I/‖a‖ − aaᵀ/‖a‖³): singular along a, so the norm adds no strong convexity there
    expected = 0.5 * (torch.eye(2, dtype=D) / 5 - torch.outer(a, a).detach() / 125)
    torch.testing.assert_close(h_norm, expected)


def test_unknown_kind():
    with pytest.raises(ValueError, match="l2_norm"):
        regularizer(params(), 1.0, "l1")
