"""Row-wise L2 normalisation with a fused backward, against F.normalize; linear maps of
normalised projected rows against the direct formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.nn import l2_normalize
from pyg_dhmrec.nn.normalize import normalized_projection_maps


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


@pytest.mark.parametrize(("width", "projected"), [(3, 7), (7, 3), (4, 4)])
@pytest.mark.parametrize("biases", [True, False])
def test_projection_maps_equal_the_direct_formula(width: int, projected: int, biases: bool) -> None:
    """Values and gradients of W_j normalize(P x + b) + c_j, re-associated where P widens
    (width < projected), including a zero row (its norm |b|, or clamped to eps without b)."""
    torch.manual_seed(0)
    projection = torch.nn.Linear(width, projected, bias=biases).double()
    maps = [
        torch.nn.Linear(projected, 5, bias=biases).double(),
        torch.nn.Linear(projected, 2).double(),
    ]
    x = torch.randn(6, width, dtype=torch.double)
    x[3] = 0.0
    upstream = [torch.randn(6, 5, dtype=torch.double), torch.randn(6, 2, dtype=torch.double)]
    params = [*projection.parameters(), *maps[0].parameters(), *maps[1].parameters()]

    def gradients(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        loss = sum((o * u).sum() for o, u in zip(outputs, upstream))
        return torch.autograd.grad(loss, params)

    got = normalized_projection_maps(x, projection, maps)
    y = F.normalize(projection(x), dim=-1)
    expected = [linear(y) for linear in maps]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    for a, b in zip(gradients(got), gradients(expected)):
        torch.testing.assert_close(a, b)
    if not biases:
        torch.testing.assert_close(got[0][3], torch.zeros(5, dtype=torch.double))
        torch.testing.assert_close(got[1][3], maps[1].bias)


def test_projection_maps_need_a_map() -> None:
    with pytest.raises(ValueError, match="at least one map"):
        normalized_projection_maps(torch.ones(2, 3), torch.nn.Linear(3, 4), [])
