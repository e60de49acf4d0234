"""TMLP: topological pruning (hand-computed mutual information, chunked = dense), the pruned
derived graph, the neighbour contrastive loss and the model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from toy_graphs import MODALITIES, first_batch, toy_graph

from pyg_dhmrec.data.graph import (
    knn_adjacency,
    resolve_modality_weights,
    submatrix_entries,
    to_csr,
)
from pyg_dhmrec.data.topological_pruning import (
    neighbourhood_mutual_information,
    self_looped_row_normalize,
    topological_pruning,
)
from pyg_dhmrec.data.transforms import (
    AddItemKNNGraphs,
    AddTopologicallyPrunedGraph,
    add_derived_graphs,
    topology_pruned_edge_type,
)
from pyg_dhmrec.models import TMLP
from pyg_dhmrec.nn import neighbour_contrastive_loss
from pyg_dhmrec.nn.chunked_contrastive import _NeighbourContrast

#: The hand-built toy: node -> its neighbourhood (itself included), N = 6.
TOY = {
    0: {0, 1, 2, 3},
    1: {0, 1, 2},
    2: {0, 1, 2, 3},
    3: {2, 3, 4, 5},
    4: {3, 4},
    5: {0, 1, 2, 4, 5},
}
ln = math.log


def _toy_edges(order: list[int] | None = None) -> torch.Tensor:
    pairs = [(i, j) for i, ns in TOY.items() for j in sorted(ns)]
    if order is not None:
        pairs = [pairs[p] for p in order]
    return torch.tensor(pairs).t()


def _information(edge_index: torch.Tensor, pairs: list[tuple[int, int]], **kw) -> list[float]:
    mi = neighbourhood_mutual_information(edge_index, 6, **kw)
    at = {tuple(e): v for e, v in zip(edge_index.t().tolist(), mi.tolist())}
    return [at[p] for p in pairs]


def test_mutual_information_of_the_toy_by_hand() -> None:
    # Cells (c, a - c, b - c, N - a - b + c) / N against marginals (a / N, b / N), N = 6.
    expected = {
        (0, 2): 2 / 3 * ln(3 / 2) + 1 / 3 * ln(3),  # identical 4-sets: c = 4
        (0, 1): 1 / 2 * ln(3 / 2) + 1 / 6 * ln(1 / 2) + 1 / 3 * ln(2),  # a=4, b=3, c=3
        (0, 3): 1 / 3 * ln(3 / 4) + 2 / 3 * ln(3 / 2),  # a=4, b=4, c=2
        (5, 4): 1 / 6 * ln(3 / 5) + 2 / 3 * ln(6 / 5) + 1 / 6 * ln(3),  # a=5, b=2, c=1
        (5, 1): 1 / 2 * ln(6 / 5) + 1 / 3 * ln(4 / 5) + 1 / 6 * ln(2),  # a=5, b=3, c=3
        (5, 0): 1 / 2 * ln(9 / 10) + 1 / 3 * ln(6 / 5) + 1 / 6 * ln(3 / 2),  # a=5, b=4, c=3
    }
    # The information is symmetric; any edge order and chunking gives the same values.
    order = torch.randperm(
        sum(len(n) for n in TOY.values()), generator=torch.Generator().manual_seed(0)
    )
    for edges in (_toy_edges(), _toy_edges(order.tolist())):
        for chunk_size in (1, 4, 1024):
            got = _information(edges, list(expected), chunk_size=chunk_size)
            assert got == pytest.approx(list(expected.values()), abs=1e-12)
    assert _information(_toy_edges(), [(2, 0)]) == pytest.approx([expected[(0, 2)]], abs=1e-12)


def test_pruning_keeps_the_top_k_by_mutual_information() -> None:
    edges = _toy_edges()

    def kept(k: int) -> dict[int, list[int]]:
        index, information = topological_pruning(edges, 6, k, chunk_size=2)
        assert bool(
            (information[1:] <= information[:-1])[edges[0, index][1:] == edges[0, index][:-1]].all()
        )
        out: dict[int, list[int]] = {i: [] for i in TOY}
        for i, j in edges[:, index].t().tolist():
            out[i].append(j)
        return out

    two = kept(2)
    assert two[0] == [2, 1]  # I: 0.637, 0.318 > 0.174 (item 3)
    assert two[2] == [0, 1]
    assert sorted(two[3]) == [2, 4]  # item 5 (I = 0.076) is pruned
    assert two[4] == [3]  # fewer candidates than k: all kept
    # Node 5 keeps node 4 first although they share one neighbour and 0, 1, 2 share three:
    # the ranking is the mutual information, not the common-neighbour count.
    assert two[5] == [4, 1]
    assert kept(3)[5] == [4, 1, 0]  # 0 and 2 tie (same d and c): the lower id wins
    assert kept(1)[1] == [0]  # 0 and 2 tie again
    assert all(i not in ns for i, ns in kept(10).items())  # a node is never its own neighbour


def _dense_information(adjacency: torch.Tensor) -> torch.Tensor:
    a = adjacency.double()
    n = float(a.size(0))
    d = a.sum(1)
    c = a @ a.t()
    di, dj = d.unsqueeze(1), d.unsqueeze(0)
    total = torch.zeros_like(c)
    for joint, mi_, mj in (
        (c, di, dj),
        (di - c, di, n - dj),
        (dj - c, n - di, dj),
        (n - di - dj + c, n - di, n - dj),
    ):
        term = joint / n * torch.log(n * joint / (mi_ * mj))
        total += torch.where(joint > 0, term, torch.zeros_like(term))
    return total


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_pruning_equals_the_dense_computation(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(3)
    n = 37
    adjacency = torch.rand(n, n, generator=g) < 0.2
    adjacency[5] = False  # a node without neighbours
    adjacency[:, 9] = False  # a node nobody lists
    edges = adjacency.nonzero().t()
    edges = edges[:, torch.randperm(edges.size(1), generator=g)]
    dense = _dense_information(adjacency)
    mi = neighbourhood_mutual_information(edges, n, chunk_size=chunk_size)
    torch.testing.assert_close(mi, dense[edges[0], edges[1]], atol=1e-12, rtol=0)

    k = 3
    index, information = topological_pruning(edges, n, k, chunk_size=chunk_size)
    expected = []
    for i in range(n):
        candidates = [j for j in adjacency[i].nonzero().squeeze(1).tolist() if j != i]
        ranked = sorted(candidates, key=lambda j: (-dense[i, j].item(), j))
        expected += [(i, j) for j in ranked[:k]]
    assert [tuple(e) for e in edges[:, index].t().tolist()] == expected
    torch.testing.assert_close(information, mi[index])


def test_pruning_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="repeated"):
        neighbourhood_mutual_information(torch.tensor([[0, 0], [1, 1]]), 3)
    with pytest.raises(ValueError, match="out of range"):
        neighbourhood_mutual_information(torch.tensor([[0], [3]]), 3)
    with pytest.raises(ValueError, match="k must be a positive int"):
        topological_pruning(_toy_edges(), 6, 0)
    with pytest.raises(ValueError, match="adds the self-loops"):
        self_looped_row_normalize(torch.tensor([[0], [0]]), torch.ones(1), 2)


def test_self_looped_row_normalize_by_hand() -> None:
    edges, weight = self_looped_row_normalize(
        torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([0.5, 1.5, 0.25]), 3
    )
    dense = torch.zeros(3, 3)
    dense[edges[0], edges[1]] = weight
    expected = torch.tensor([[1 / 3, 0.5 / 3, 1.5 / 3], [0, 1 / 1.25, 0.25 / 1.25], [0, 0, 1]])
    torch.testing.assert_close(dense, expected)


def test_submatrix_entries_with_repeated_ids() -> None:
    g = torch.Generator().manual_seed(1)
    dense = torch.rand(9, 9, generator=g) * (torch.rand(9, 9, generator=g) < 0.3)
    matrix = dense.to_sparse_csr()
    index = torch.tensor([4, 0, 4, 8, 2, 2, 2, 7])
    rows, cols, values = submatrix_entries(matrix, index)
    got = torch.zeros(len(index), len(index))
    got[rows, cols] = values
    torch.testing.assert_close(got, dense[index][:, index])
    assert len(set(zip(rows.tolist(), cols.tolist()))) == rows.numel()  # each pair once


# --- the derived graph ------------------------------------------------------------------------


def _dense_pruned_graph(data: HeteroData, knn_k: int, k: int, weights: dict) -> torch.Tensor:
    """TMLP's pruned graph from dense matrices (small graphs only)."""
    mixed = sum(w * knn_adjacency(data["item"][m], knn_k).to_dense() for m, w in weights.items())
    support = mixed != 0
    information = _dense_information(support)
    n = mixed.size(0)
    kept = torch.zeros(n, n)
    for i in range(n):
        candidates = [j for j in support[i].nonzero().squeeze(1).tolist() if j != i]
        for j in sorted(candidates, key=lambda j: (-information[i, j].item(), j))[:k]:
            kept[i, j] = mixed[i, j]
    with_loops = kept + torch.eye(n)
    return with_loops / with_loops.sum(1, keepdim=True)


def test_pruned_graph_transform_equals_the_dense_construction(tmp_path) -> None:
    data = toy_graph(modalities=MODALITIES)
    n = int(data["item"].num_nodes)
    transform = AddTopologicallyPrunedGraph(knn_k=5, k=3)
    add_derived_graphs(data, [transform], cache_dir=tmp_path)
    store = data[topology_pruned_edge_type()]
    assert store.settings == {"knn_k": 5, "k": 3, "modality_weights": None}
    got = to_csr(store.edge_index, store.edge_weight, n, n).to_dense()
    expected = _dense_pruned_graph(data, 5, 3, {"image": 0.1, "text": 0.9})
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(n))
    assert int((got > 0).sum(1).max()) <= 3 + 1  # k neighbours and the self-loop

    # Cached: a second dataset object loads it; kNN graphs already in data are reused.
    again = toy_graph(modalities=MODALITIES)
    add_derived_graphs(again, [AddItemKNNGraphs(k=5), transform], cache_dir=tmp_path / "other")
    torch.testing.assert_close(again[topology_pruned_edge_type()].edge_weight, store.edge_weight)
    assert list(tmp_path.glob("AddTopologicallyPrunedGraph-*.pt"))

    weights = {"image": 0.5, "text": 0.5}
    other = AddTopologicallyPrunedGraph(knn_k=5, k=3, modality_weights=weights)
    assert other.key() != transform.key()
    add_derived_graphs(data, [other])
    got = to_csr(
        data[topology_pruned_edge_type()].edge_index,
        data[topology_pruned_edge_type()].edge_weight,
        n,
        n,
    )
    torch.testing.assert_close(got.to_dense(), _dense_pruned_graph(data, 5, 3, weights))


def test_modality_weights_are_resolved_and_checked() -> None:
    assert resolve_modality_weights(["image", "text"], None, "X") == {"image": 0.1, "text": 0.9}
    assert resolve_modality_weights(["audio"], None, "X") == {"audio": 1.0}
    with pytest.raises(ValueError, match="default modality_weights only for image and text"):
        resolve_modality_weights(["image", "audio"], None, "X")
    with pytest.raises(ValueError, match="needs at least one item modality"):
        add_derived_graphs(toy_graph(), [AddTopologicallyPrunedGraph()])
    data = toy_graph(modalities={"image": 4, "audio": 3})
    with pytest.raises(ValueError, match="one weight per modality"):
        add_derived_graphs(data, [AddTopologicallyPrunedGraph(modality_weights={"image": 1.0})])


# --- the neighbour contrastive loss ---------------------------------------------------------


def test_neighbour_contrastive_loss_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    weight = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]])
    # s_01 = 0, s_02 = s_12 = 1/sqrt(2), s_aa = 0; tau = 0.5 -> logits 0 and sqrt(2).
    e = math.exp(math.sqrt(2))
    rows = [
        math.log((2 + e) / (0.5 + 0.5)),
        math.log((2 + e) / 1.0),
        math.log((2 * e + 1) / (0.2 * e + 0.8)),
    ]
    got = neighbour_contrastive_loss(x, weight, temperature=0.5)
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-6)


def _dense_neighbour_contrast(x: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    unit = F.normalize(x, dim=-1)
    logits = (unit @ unit.t()) * (1 - torch.eye(x.size(0))) / tau
    return -torch.log((weight * logits.exp()).sum(1) / logits.exp().sum(1)).mean()


@pytest.mark.parametrize("chunk_size", [1, 4, 2048])
def test_chunked_neighbour_contrast_equals_the_dense_formula(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(11, 5, generator=g)
    x[7] = x[3]  # a repeated item: s = 1 between its two positions
    weight = torch.rand(11, 11, generator=g) * (torch.rand(11, 11, generator=g) < 0.3)
    weight += torch.eye(11) * 0.5
    for tau in (1.0, 0.2):
        dense_x = x.clone().requires_grad_()
        expected = _dense_neighbour_contrast(dense_x, weight, tau)
        expected.backward()
        chunked_x = x.clone().requires_grad_()
        got = neighbour_contrastive_loss(chunked_x, weight.to_sparse(), tau, chunk_size)
        got.backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(chunked_x.grad, dense_x.grad)


@pytest.mark.parametrize("chunk_size", [3, 64, 300])
def test_symmetric_neighbour_contrast_equals_the_row_chunked_one(chunk_size: int) -> None:
    # blocks of at most 128 rows, recomputed (3, 64) or kept (300); float64 to compare tightly
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64)
    x[17] = x[250]  # a repeated item
    weight = torch.rand(300, 300, generator=g, dtype=torch.float64)
    weight = weight * (torch.rand(300, 300, generator=g) < 0.03) + torch.eye(300) * 0.3
    weight[4] = 0.0
    weight[4, 4] = 1.0  # a row whose only positive is its own position
    (rows, cols), values = weight.to_sparse().indices(), weight.to_sparse().values()
    for tau in (1.0, 0.1):
        reference_x = x.clone().requires_grad_()
        unit = F.normalize(reference_x, dim=-1)
        expected = _NeighbourContrast.apply(unit, rows, cols, values.log(), tau, chunk_size)
        expected.backward()
        got_x = x.clone().requires_grad_()
        got = neighbour_contrastive_loss(got_x, weight.to_sparse(), tau, chunk_size)
        got.backward()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(got_x.grad, reference_x.grad, rtol=1e-9, atol=1e-15)
        with torch.no_grad():  # no gradient wanted: the same value
            torch.testing.assert_close(neighbour_contrastive_loss(x, weight, tau, chunk_size), got)


def test_neighbour_contrast_with_a_small_temperature_equals_the_dense_formula() -> None:
    # 1 / tau = 50: past the unshifted exponent's range, the row-shifted computation serves
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    weight = (torch.rand(9, 9, generator=g, dtype=torch.float64) < 0.3) + torch.eye(9)
    dense_x, got_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = _dense_neighbour_contrast(dense_x, weight.to(x.dtype), 0.02)
    expected.backward()
    got = neighbour_contrastive_loss(got_x, weight.to(x.dtype), 0.02, chunk_size=4)
    got.backward()
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_x.grad, dense_x.grad)


def test_neighbour_contrastive_loss_checks_its_inputs() -> None:
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="positive entry in every row"):
        neighbour_contrastive_loss(x, torch.eye(3) * torch.tensor([1.0, 0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match=r"weight \[P, P\]"):
        neighbour_contrastive_loss(x, torch.eye(2), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        neighbour_contrastive_loss(x, torch.eye(3), 0.0)


# --- the model --------------------------------------------------------------------------------

SMALL = {"embedding_dim": 8, "feat_embed_dim": 6, "hidden_dim": 16, "knn_k": 4, "pruned_k": 2}


def _model(data: HeteroData, **settings) -> TMLP:
    torch.manual_seed(0)
    return TMLP(data, **{**SMALL, **settings})


def test_the_loss_reads_the_pruned_graph_at_the_batch_positions(data: HeteroData) -> None:
    model = _model(data)
    batch = first_batch(data, batch_size=16)
    items = torch.cat([batch.pos_item, batch.neg_item])
    assert items.unique().numel() < items.numel()  # repeated items: positions, not ids
    dense = model.pruned_graph.to_dense()
    torch.testing.assert_close(model.neighbour_weights(items).to_dense(), dense[items][:, items])
    out = model()
    parts = model.loss(batch, out)
    expected = neighbour_contrastive_loss(out.item[items], dense[items][:, items], 1.0)
    torch.testing.assert_close(parts["na"], 0.6 * expected)
    assert _model(data, na_weight=0.0).loss(batch)["na"].item() == 0.0


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 3}])
def test_any_number_of_modalities(modalities: dict) -> None:
    data = toy_graph(modalities=modalities)
    weights = None if len(modalities) == 1 else {m: 1 / 3 for m in modalities}
    model = _model(data, modality_weights=weights)
    out = model()
    width = (len(modalities) + 1) * 8
    assert out.user.shape == (40, width) and out.item.shape == (30, width)
    # The modality blocks and the ID block add up to the item representation.
    id_block = out.item.clone()
    id_block[:, : len(modalities) * 8] = 0
    torch.testing.assert_close(sum(out.modalities.values()) + id_block, out.item)
    assert torch.isfinite(sum(model.loss(first_batch(data)).values()))


def test_modality_mlp_is_linear_act_layer_norm_dropout(data: HeteroData) -> None:
    model = _model(data, num_mlp_layers=3).eval()
    encoder = model.encoders["image"]
    x = data["item"]["image"]
    h = encoder.project_out(F.leaky_relu(encoder.project_in(x)))
    lins, norms = encoder.mlp.lins, encoder.mlp.norms
    for lin, norm in zip(lins[:-1], norms):
        h = torch.tanh(lin(h))
        h = F.layer_norm(h, (h.size(1),), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(encoder(x), lins[-1](h))
    assert [lin.out_channels for lin in lins] == [16, 16, 8]


def test_bad_settings_raise(data: HeteroData) -> None:
    with pytest.raises(ValueError, match="activation"):
        _model(data, activation="swish")
    with pytest.raises(ValueError, match="na_weight"):
        _model(data, na_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        _model(data, temperature=0.0)
    with pytest.raises(ValueError, match="num_mlp_layers"):
        _model(data, num_mlp_layers=0)
    with pytest.raises(ValueError, match="pruned_k must be an int >= 1, got 0"):
        _model(data, pruned_k=0)
    with pytest.raises(ValueError, match="at least one item modality"):
        _model(toy_graph())
