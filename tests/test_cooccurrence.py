"""Co-occurrence graphs built in chunks (DualGNN's user graph, SIGER's item graph) and
DualGNN's per-epoch neighbour resampling."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import ShapeRecorder, toy_graph

from pyg_dhmrec.data.cooccurrence import cooccurrence_edges, resample_to_k_neighbours
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.transforms import (
    AddItemCooccurrenceGraph,
    AddUserCooccurrenceGraph,
    add_derived_graphs,
    co_interaction_edge_type,
    user_cooccurrence_edge_type,
)


def _dense_top_k(
    edge_index: torch.Tensor, num_users: int, num_items: int, k: int, min_count: int = 1
):
    """The reference: dense R R^T, zero diagonal, each row's k largest entries of at least
    ``min_count``, ties to the lower id (a stable descending sort)."""
    r = torch.zeros(num_users, num_items)
    r[edge_index[0], edge_index[1]] = 1.0
    c = r @ r.t()
    c.fill_diagonal_(0.0)
    expected = {}
    for u in range(num_users):
        values, order = torch.sort(c[u], descending=True, stable=True)
        kept = zip(order[:k], values[:k])
        expected[u] = [(int(v), float(x)) for v, x in kept if x > 0 and x >= min_count]
    return expected


def test_hand_computed_user_graph() -> None:
    # Users 0 and 1 share items 0 and 1, users 1 and 2 share item 2, user 3 shares nothing.
    edges = torch.tensor([[0, 0, 1, 1, 1, 2, 3], [0, 1, 0, 1, 2, 2, 3]])
    index, count = cooccurrence_edges(edges, 4, 4, k=5, chunk_size=2)
    got = {(int(a), int(b)): float(c) for a, b, c in zip(index[0], index[1], count)}
    assert got == {(0, 1): 2.0, (1, 0): 2.0, (1, 2): 1.0, (2, 1): 1.0}
    assert index[:, :3].tolist() == [[0, 1, 1], [1, 0, 2]]  # decreasing count per user


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_user_graph_equals_dense_top_k(chunk_size: int) -> None:
    data = toy_graph(40, 30, 220, seed=3)
    edge_index = data[RATES].edge_index
    # A repeated interaction counts once (binary R).
    with_repeat = torch.cat([edge_index, edge_index[:, :5]], dim=1)
    for k, min_count in ((1, 1), (4, 1), (50, 1), (4, 2), (50, 3)):
        index, count = cooccurrence_edges(
            with_repeat, 40, 30, k=k, chunk_size=chunk_size, min_count=min_count
        )
        expected = _dense_top_k(edge_index, 40, 30, k, min_count)
        got = {u: [] for u in range(40)}
        for a, b, c in zip(index[0].tolist(), index[1].tolist(), count.tolist()):
            got[a].append((b, c))
        assert got == expected, (k, min_count, chunk_size)


def test_user_graph_never_builds_a_users_by_users_matrix() -> None:
    num_users, num_items, chunk = 60, 9, 8
    data = toy_graph(num_users, num_items, 150, seed=1)
    recorder = ShapeRecorder()
    with recorder:
        index, _ = cooccurrence_edges(data[RATES].edge_index, num_users, num_items, 3, chunk)
    matrices = [s for s in recorder.shapes if len(s) == 2]
    assert (chunk, num_users) in matrices  # the chunk's rows of R R^T (a sparse block)
    # The largest blocks: the chunk's rows of R R^T and the (sparse) incidence R itself;
    # [2, nnz] index lists hold at most one pair per entry of such a block.
    bound = max(chunk * num_users, num_users * num_items)
    sizes = [s[1] if s[0] == 2 else s[0] * s[1] for s in matrices]
    assert all(size <= bound < num_users * num_users for size in sizes), max(sizes)
    assert index.size(1) > 0


def test_transform_writes_and_caches_the_edge_type(tmp_path) -> None:
    data = toy_graph(30, 20, 150, seed=2)
    transform = AddUserCooccurrenceGraph(k=3, chunk_size=4)
    add_derived_graphs(data, [transform], cache_dir=tmp_path)
    store = data[user_cooccurrence_edge_type()]
    index, count = cooccurrence_edges(data[RATES].edge_index, 30, 20, 3)
    torch.testing.assert_close(store.edge_index, index)
    torch.testing.assert_close(store.edge_weight, count)
    assert store.settings == {"k": 3}
    again = toy_graph(30, 20, 150, seed=2)
    add_derived_graphs(again, [AddUserCooccurrenceGraph(k=3)], cache_dir=tmp_path)
    torch.testing.assert_close(again[user_cooccurrence_edge_type()].edge_index, index)
    assert len(list(tmp_path.glob("AddUserCooccurrenceGraph-*.pt"))) == 1


@pytest.mark.parametrize("chunk_size", [1, 6, 64])
def test_binary_behaviour_graph_with_self_loops_equals_the_dense_formula(chunk_size: int) -> None:
    # DA-MRS's item-item behaviour graph: top-k co-interacted items with >= min_count common
    # users, binary, a self-loop per item, D^-1/2 S D^-1/2 with row degrees.
    data = toy_graph(40, 25, 120, seed=5)  # some items share >= 2 users with fewer than k
    num_items, k, min_count = 25, 2, 2
    transform = AddItemCooccurrenceGraph(
        k=k, chunk_size=chunk_size, min_count=min_count, weighting="binary", self_loops=True
    )
    store = transform(data)[co_interaction_edge_type()]
    r = torch.zeros(40, num_items)
    r[data[RATES].edge_index[0], data[RATES].edge_index[1]] = 1.0
    c = r.t() @ r
    c.fill_diagonal_(0.0)
    s = torch.eye(num_items)
    for i in range(num_items):
        values, order = torch.sort(c[i], descending=True, stable=True)
        s[i, order[:k][values[:k] >= min_count]] = 1.0
    d = s.sum(1)
    expected = s / torch.sqrt(d.unsqueeze(1) * d.unsqueeze(0))
    got = torch.zeros(num_items, num_items)
    got[store.edge_index[0], store.edge_index[1]] = store.edge_weight
    torch.testing.assert_close(got, expected)
    assert 0 < int((s - torch.eye(num_items)).sum()) < k * num_items  # some rows keep fewer
    assert store.settings == {"k": 2, "min_count": 2, "weighting": "binary", "self_loops": True}


def test_default_item_cooccurrence_settings_keep_their_cache_key() -> None:
    # SIGER's graph: the new options at their defaults change neither settings nor cache key.
    assert AddItemCooccurrenceGraph(k=3).settings() == {"k": 3}
    with pytest.raises(ValueError, match="weighting must be 'count' or 'binary'"):
        AddItemCooccurrenceGraph(weighting="cosine")
    with pytest.raises(ValueError, match="min_count must be a positive int"):
        AddItemCooccurrenceGraph(min_count=0)


def test_transform_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="user co-occurrence k"):
        AddUserCooccurrenceGraph(k=0)


def test_resampling_fills_k_slots_from_each_users_own_neighbours() -> None:
    # User 0 has 3 ranked neighbours, user 1 has 1, user 2 none, user 3 has 5 (> k).
    edge_index = torch.tensor([[0, 0, 0, 1, 3, 3, 3, 3, 3], [5, 6, 7, 4, 0, 1, 2, 4, 5]])
    g = torch.Generator().manual_seed(0)
    nodes, slots, slot_edge = resample_to_k_neighbours(edge_index, 4, k=4, generator=g)
    assert nodes.tolist() == [0, 1, 3]  # user 2 has no slots
    assert slots.shape == (3, 4)
    assert slots[0, :3].tolist() == [5, 6, 7] and slots[0, 3] in (5, 6, 7)
    assert slots[1].tolist() == [4, 4, 4, 4]
    assert slots[2].tolist() == [0, 1, 2, 4]  # the first k, in rank order
    torch.testing.assert_close(edge_index[1][slot_edge], slots)


def test_resampling_draws_padding_uniformly_over_earlier_slots() -> None:
    # One user with 2 neighbours, k = 3: the padding slot copies slot 0 or 1, each half the time.
    edge_index = torch.tensor([[0, 0], [1, 2]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [resample_to_k_neighbours(edge_index, 1, 3, g)[1][0, 2] for _ in range(2000)]
    )
    share = (draws == 1).float().mean().item()
    assert 0.45 < share < 0.55


def test_resampling_needs_edges_sorted_by_node() -> None:
    with pytest.raises(ValueError, match="sorted by node"):
        resample_to_k_neighbours(torch.tensor([[1, 0], [0, 1]]), 2, 2)
