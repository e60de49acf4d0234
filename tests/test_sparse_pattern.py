"""SparsePattern: products with a fixed-pattern sparse matrix and per-entry dot products,
against the dense formulas in value and gradient."""

from __future__ import annotations

import pytest
import torch

from pyg_dhmrec.nn import SparsePattern

ROWS, COLS, WIDTH = 7, 5, 3


def _pattern() -> SparsePattern:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(ROWS, COLS, generator=g) < 0.5
    mask[3] = False  # an empty row
    pairs = mask.nonzero().t()
    return SparsePattern(pairs[:, torch.randperm(pairs.size(1), generator=g)], ROWS, COLS)


def _dense(pattern: SparsePattern, values: torch.Tensor) -> torch.Tensor:
    matrix = torch.zeros(ROWS, COLS, dtype=values.dtype)
    return matrix.index_put((pattern.row, pattern.col), values)


def _inputs(pattern: SparsePattern) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shapes = [(pattern.num_entries,), (COLS, WIDTH), (ROWS, WIDTH)]
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def test_entries_are_sorted_by_row_then_column() -> None:
    pattern = SparsePattern(torch.tensor([[1, 0, 1, 0], [0, 2, 1, 0]]), 2, 3)
    assert pattern.edge_index.tolist() == [[0, 0, 1, 1], [0, 2, 0, 1]]
    assert pattern.crow.tolist() == [0, 2, 4]


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_equals_the_dense_product_in_value_and_gradient(transposed: bool) -> None:
    pattern = _pattern()
    values, x_cols, x_rows = _inputs(pattern)
    x = x_rows if transposed else x_cols
    v1, x1 = values.clone().requires_grad_(), x.clone().requires_grad_()
    v2, x2 = values.clone().requires_grad_(), x.clone().requires_grad_()
    dense = _dense(pattern, v1)
    expected = (dense.t() if transposed else dense) @ x1
    got = pattern.matmul(v2, x2, transposed=transposed)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(v2.grad, v1.grad)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_dot_equals_the_sampled_dense_product_in_value_and_gradient() -> None:
    pattern = _pattern()
    _, b, a = _inputs(pattern)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    expected = (a1 @ b1.t())[pattern.row, pattern.col]
    got = pattern.dot(a2, b2)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(b2.grad, b1.grad)


def test_gradcheck() -> None:
    pattern = _pattern()
    values, x_cols, x_rows = (t.requires_grad_() for t in _inputs(pattern))
    assert torch.autograd.gradcheck(pattern.matmul, (values, x_cols))
    assert torch.autograd.gradcheck(lambda v, x: pattern.matmul(v, x, True), (values, x_rows))
    assert torch.autograd.gradcheck(pattern.dot, (x_rows, x_cols))


def test_bad_inputs_name_what_was_expected() -> None:
    pattern = _pattern()
    with pytest.raises(ValueError, match="at most once"):
        SparsePattern(torch.tensor([[0, 0], [1, 1]]), 2, 2)
    with pytest.raises(ValueError, match="column"):
        SparsePattern(torch.tensor([[0], [5]]), 2, 2)
    with pytest.raises(ValueError, match=rf"values must have shape \[{pattern.num_entries}\]"):
        pattern.matmul(torch.ones(pattern.num_entries + 1), torch.ones(COLS, 2))
    with pytest.raises(ValueError, match=rf"x must have shape \[{COLS}, d\]"):
        pattern.matmul(torch.ones(pattern.num_entries), torch.ones(ROWS, 2))
    with pytest.raises(ValueError, match="one width"):
        pattern.dot(torch.ones(ROWS, 2), torch.ones(COLS, 3))
    with pytest.raises(ValueError, match=f"a must have {ROWS} rows"):
        pattern.dot(torch.ones(COLS, 2), torch.ones(COLS, 2))
