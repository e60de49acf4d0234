"""l2_normalize: F.normalize's value and gradient, with a fused backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.nn import l2_normalize


@pytest.mark.parametrize("eps", [1e-12, 0.5])
def test_value_and_gradient_equal_f_normalize(eps: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x[1] = 0.0  # a zero row: clamped
    x[2] *= 1e-3  # a short row: clamped by eps = 0.5 only
    upstream = torch.randn(6, 4, generator=g, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = F.normalize(x1, dim=-1, eps=eps), l2_normalize(x2, eps=eps)
    torch.testing.assert_close(got, expected)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_hand_computed_value_and_gradient() -> None:
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    y = l2_normalize(x)
    torch.testing.assert_close(y, torch.tensor([[0.6, 0.8]]))
    y[0, 0].backward()  # d(x0/|x|)/dx = (1 - y0^2, -y0 y1) / |x|
    torch.testing.assert_close(x.grad, torch.tensor([[0.64, -0.48]]) / 5.0)


def test_scalar_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one dimension"):
        l2_normalize(torch.tensor(1.0))
