"""Row-wise L2 normalisation with a fused backward, against F.normalize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.nn import l2_normalize


def test_values_and_gradients_equal_f_normalize_including_zero_and_tiny_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.double, generator=g)
    x[2] = 0.0  # a zero row stays zero
    x[4] = 1e-14  # a row below eps: divided by eps, no projection term
    x.requires_grad_(True)
    upstream = torch.randn(7, 5, dtype=torch.double, generator=g)
    got = l2_normalize(x)
    expected = F.normalize(x, dim=-1)
    torch.testing.assert_close(got, expected)
    (a,) = torch.autograd.grad(got, x, upstream)
    (b,) = torch.autograd.grad(expected, x, upstream)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(got[0].norm(), torch.tensor(1.0, dtype=torch.double))


def test_gradcheck_and_hand_value() -> None:
    x = torch.randn(4, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
    torch.testing.assert_close(l2_normalize(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))


def test_rejects_a_scalar() -> None:
    with pytest.raises(ValueError, match="at least one dimension"):
        l2_normalize(torch.tensor(1.0))
