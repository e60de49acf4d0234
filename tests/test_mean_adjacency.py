"""The row-normalised user-item adjacency D^-1 A (MMGCN's mean aggregator)."""

from __future__ import annotations

import pytest
import torch

from pyg_dhmrec.data.mean_adjacency import row_normalized_adjacency


def test_hand_built_graph_rows_are_neighbour_means() -> None:
    # 2 users, 3 items: u0-i0, u0-i1, u1-i1 (given twice: counted once); item 2 isolated.
    edges = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    adj = row_normalized_adjacency(edges, 2, 3)
    assert adj.layout == torch.sparse_csr and adj.shape == (5, 5)
    expected = torch.zeros(5, 5)
    expected[0, 2] = expected[0, 3] = 0.5  # user 0: mean of items 0, 1 (nodes 2, 3)
    expected[1, 3] = 1.0
    expected[2, 0] = 1.0  # item 0 <- user 0
    expected[3, 0] = expected[3, 1] = 0.5  # item 1 <- users 0, 1
    torch.testing.assert_close(adj.to_dense(), expected)
    x = torch.arange(10.0).view(5, 2)
    torch.testing.assert_close(adj @ x, expected @ x)  # row v = mean of v's neighbours
    assert (adj @ x)[4].abs().sum() == 0  # isolated item: zero row


def test_rows_sum_to_one_and_matrix_is_not_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    edges = torch.stack(
        [torch.randint(7, (30,), generator=g), torch.randint(5, (30,), generator=g)]
    )
    dense = row_normalized_adjacency(edges, 7, 5).to_dense()
    sums = dense.sum(1)
    has_edges = sums > 0
    torch.testing.assert_close(sums[has_edges], torch.ones(int(has_edges.sum())))
    assert ((dense > 0) == (dense.t() > 0)).all()  # same pattern both ways
    assert not torch.allclose(dense, dense.t())  # but D^-1 A is not D^-1/2 A D^-1/2


def test_out_of_range_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="item id 3 out of range"):
        row_normalized_adjacency(torch.tensor([[0], [3]]), 2, 3)
