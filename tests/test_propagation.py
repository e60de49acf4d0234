"""Tests of the propagation shortcuts: FrozenSparse's transposed product, LightGCN from a given
first hop, and the item-seeded user-item propagation, each against the plain computation."""

from __future__ import annotations

import pytest
import torch

from pyg_dhmrec.data.graph import csr_row_positions, normalized_adjacency, user_item_matrix
from pyg_dhmrec.nn import (
    FrozenSparse,
    LightPropagation,
    item_seeded_propagation,
    sparse_rows_matmul,
)

NUM_USERS, NUM_ITEMS = 13, 9


@pytest.fixture(scope="module")
def edges() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pairs = torch.stack(
        [torch.randint(NUM_USERS, (60,), generator=g), torch.randint(NUM_ITEMS, (60,), generator=g)]
    )
    return torch.unique(pairs, dim=1)


def test_apply_transpose_is_the_transposed_product_and_its_gradient(edges) -> None:
    op = FrozenSparse(user_item_matrix(edges, NUM_USERS, NUM_ITEMS))
    dense = op.matrix.to_dense()
    x = torch.randn(NUM_USERS, 3, requires_grad=True)
    out = op.apply_transpose(x)
    torch.testing.assert_close(out, dense.t() @ x)
    g = torch.randn(NUM_ITEMS, 3)
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(grad, dense @ g)


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("with_users", [True, False])
def test_item_seeded_propagation_equals_lightgcn_from_aggregated_users(
    edges, num_layers: int, with_users: bool
) -> None:
    """The previous computation: LightGCN's layer mean over the full bipartite adjacency,
    users starting as R~ X (every layer, 2L + 1 half products)."""
    adj = normalized_adjacency(edges, NUM_USERS, NUM_ITEMS)
    r = FrozenSparse(user_item_matrix(edges, NUM_USERS, NUM_ITEMS))
    x = torch.randn(NUM_ITEMS, 4, dtype=torch.float64, requires_grad=True)
    reference = LightPropagation(num_layers, "mean", symmetric=True)(
        torch.cat([r.matrix.double() @ x, x]), adj.double()
    )
    r64 = FrozenSparse(r.matrix.double())
    users, items = item_seeded_propagation(x, r64, num_layers, with_users=with_users)
    torch.testing.assert_close(items, reference[NUM_USERS:])
    g = torch.randn_like(items)
    expected = torch.autograd.grad(reference[NUM_USERS:], x, g, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(items, x, g, retain_graph=True)[0], expected)
    if with_users:
        torch.testing.assert_close(users, reference[:NUM_USERS])
    else:
        assert users is None


def test_item_seeded_propagation_counts_half_products(edges) -> None:
    """L = 2: two half products for the items, three with the users (LightGCN over
    [R~X; X]: one for the users' start, then two full hops of two halves each)."""
    r = FrozenSparse(user_item_matrix(edges, NUM_USERS, NUM_ITEMS))
    calls = []
    forward, transposed = r.forward, r.apply_transpose
    r.forward = lambda x: calls.append("R") or forward(x)  # noqa: E731 - counts the products
    r.apply_transpose = lambda x: calls.append("Rt") or transposed(x)  # noqa: E731
    x = torch.randn(NUM_ITEMS, 2)
    item_seeded_propagation(x, r, 2, with_users=False)
    assert calls == ["R", "Rt"]
    calls.clear()
    item_seeded_propagation(x, r, 2, with_users=True)
    assert calls == ["R", "Rt", "R"]
    with pytest.raises(ValueError, match="num_layers must be an int >= 0"):
        item_seeded_propagation(x, r, -1)


@pytest.mark.parametrize("mode", ["mean", "last", "sum"])
def test_light_propagation_from_a_given_first_hop(edges, mode: str) -> None:
    adj = normalized_adjacency(edges, NUM_USERS, NUM_ITEMS)
    prop = LightPropagation(3, mode=mode, symmetric=True)
    x = torch.randn(NUM_USERS + NUM_ITEMS, 4)
    torch.testing.assert_close(prop(x, adj, first_hop=prop.hop(x, adj)), prop(x, adj))
    noise = [torch.randn_like(x) for _ in range(3)]

    def perturbed(noise_iter):
        return lambda h: h + next(noise_iter)

    with_hop = prop(x, adj, perturbed(iter(noise)), first_hop=prop.hop(x, adj))
    torch.testing.assert_close(with_hop, prop(x, adj, perturbed(iter(noise))))
    # The given hop is what the first layer uses, whatever the adjacency would give.
    marker = torch.full_like(x, 7.0)
    if mode != "last":
        shifted = prop(x, adj, first_hop=marker) - prop(x, adj)
        assert shifted.abs().sum() > 0


# --- sparse_rows_matmul ---


def _random_csr(n: int, m: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < density)
    dense[2] = 0  # a row without entries
    return dense.to_sparse_csr()


def test_sparse_rows_matmul_equals_the_rows_of_the_full_product() -> None:
    adj = _random_csr(9, 7, 0.4, seed=0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([4, 2, 0, 8])
    got = sparse_rows_matmul(adj.to(torch.float64), rows, x)
    want = (adj.to_dense().double() @ x)[rows]
    torch.testing.assert_close(got, want)
    assert got[1].abs().sum() == 0  # the empty row
    weight = torch.randn_like(got)
    (grad,) = torch.autograd.grad((got * weight).sum(), x)
    (want_grad,) = torch.autograd.grad((want * weight).sum(), x)
    torch.testing.assert_close(grad, want_grad)


def test_sparse_rows_matmul_of_no_rows_and_hand_values() -> None:
    adj = torch.tensor([[0.0, 2.0], [1.0, 3.0]]).to_sparse_csr()
    x = torch.tensor([[1.0, 10.0], [5.0, 50.0]])
    got = sparse_rows_matmul(adj, torch.tensor([1, 0, 1]), x)
    assert got.tolist() == [[16.0, 160.0], [10.0, 100.0], [16.0, 160.0]]
    assert sparse_rows_matmul(adj, torch.tensor([], dtype=torch.long), x).shape == (0, 2)


def test_sparse_rows_matmul_rejects_a_non_csr_matrix() -> None:
    with pytest.raises(ValueError, match="sparse CSR"):
        sparse_rows_matmul(torch.eye(2), torch.tensor([0]), torch.ones(2, 1))


def test_csr_row_positions_by_hand() -> None:
    """Rows 2, 0, 2 of a CSR with row pointer [0, 2, 2, 5]: row 0 holds entries 0-1, row 1 none,
    row 2 entries 2-4; repeats and empty rows allowed."""
    local, position = csr_row_positions(torch.tensor([0, 2, 2, 5]), torch.tensor([2, 0, 1, 2]))
    assert local.tolist() == [0, 0, 0, 1, 1, 3, 3, 3]
    assert position.tolist() == [2, 3, 4, 0, 1, 2, 3, 4]
