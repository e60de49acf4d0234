import math

import pytest
import torch

from pyg_dhmrec.data.graph import (
    DegreeSensitiveEdgeDropout,
    item_knn_graph,
    knn_adjacency,
    mix_modality_graphs,
    normalized_adjacency,
    resolve_modality_weights,
    symmetric_normalize,
    to_csr,
    unit_rows,
)

S2 = 1.0 / math.sqrt(2.0)


def _dense(adj: torch.Tensor) -> torch.Tensor:
    assert adj.layout == torch.sparse_csr
    assert adj.dtype == torch.float32
    return adj.to_dense()


# 2 users, 3 items: u0-i0, u0-i1, u1-i1; item 2 has no interaction.
# Degrees: u0=2, u1=1, i0=1, i1=2, i2=0. Node ids: u0=0, u1=1, i0=2, i1=3, i2=4.
BIPARTITE = torch.tensor([[0, 0, 1], [0, 1, 1]])
BIPARTITE_EXPECTED = torch.tensor(
    [
        [0.0, 0.0, S2, 0.5, 0.0],
        [0.0, 0.0, 0.0, S2, 0.0],
        [S2, 0.0, 0.0, 0.0, 0.0],
        [0.5, S2, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)


def test_normalized_adjacency_hand_example():
    dense = _dense(normalized_adjacency(BIPARTITE, num_users=2, num_items=3))
    assert dense.shape == (5, 5)
    torch.testing.assert_close(dense, BIPARTITE_EXPECTED)
    torch.testing.assert_close(dense, dense.t())
    assert torch.all(dense[4] == 0) and torch.all(dense[:, 4] == 0)


def test_normalized_adjacency_weights_and_duplicates():
    # A duplicated edge counts twice: d_u0 = 3, d_i0 = 2, d_i1 = 2 -> A[u0,i0] = 2 / sqrt(3 * 2).
    edge_index = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0]])
    dense = _dense(normalized_adjacency(edge_index, 2, 3))
    assert dense[0, 2].item() == pytest.approx(2.0 / math.sqrt(6.0))
    assert dense[0, 3].item() == pytest.approx(1.0 / math.sqrt(6.0))
    weighted = _dense(normalized_adjacency(BIPARTITE, 2, 3, torch.tensor([2.0, 1.0, 1.0])))
    # d_u0 = 3, d_i0 = 2 -> 2 / sqrt(6).
    assert weighted[0, 2].item() == pytest.approx(2.0 / math.sqrt(6.0))


def test_normalized_adjacency_errors():
    with pytest.raises(ValueError, match=r"user id 12 out of range \[0, 10\)"):
        normalized_adjacency(torch.tensor([[0, 12], [0, 1]]), 10, 3)
    with pytest.raises(ValueError, match=r"item id 3 out of range \[0, 3\)"):
        normalized_adjacency(torch.tensor([[0, 1], [0, 3]]), 2, 3)
    with pytest.raises(ValueError, match=r"item id -1 out of range"):
        normalized_adjacency(torch.tensor([[0, 1], [0, -1]]), 2, 3)
    with pytest.raises(ValueError, match=r"shape \[2, E\], got \[3, 2\]"):
        normalized_adjacency(torch.zeros(3, 2, dtype=torch.long), 2, 3)
    with pytest.raises(ValueError, match="integer"):
        normalized_adjacency(BIPARTITE.float(), 2, 3)
    with pytest.raises(ValueError, match="edge_weight"):
        normalized_adjacency(BIPARTITE, 2, 3, torch.ones(2))


def test_symmetric_normalize_row_degree_asymmetric():
    # 0->1, 0->2, 1->2, 2->0, 0->3. Row sums: d0=3, d1=1, d2=1, d3=0.
    edge_index = torch.tensor([[0, 0, 1, 2, 0], [1, 2, 2, 0, 3]])
    out_index, w = symmetric_normalize(edge_index, 4, degree="row")
    assert out_index is edge_index
    s3 = 1.0 / math.sqrt(3.0)
    torch.testing.assert_close(w, torch.tensor([s3, s3, 1.0, s3, 0.0]))

    # "col": column sums (in-degrees) on both sides: d0=1, d1=1, d2=2, d3=1.
    _, w_col = symmetric_normalize(edge_index, 4, degree="col")
    torch.testing.assert_close(w_col, torch.tensor([1.0, S2, S2, S2, 1.0]))

    _, w_weighted = symmetric_normalize(
        edge_index, 4, torch.tensor([2.0, 1.0, 4.0, 1.0, 1.0]), degree="row"
    )
    # d0 = 4, d1 = 4, d2 = 1: w01 = 2 / sqrt(16), w12 = 4 / sqrt(4).
    assert w_weighted[0].item() == pytest.approx(0.5)
    assert w_weighted[2].item() == pytest.approx(2.0)
    assert torch.isfinite(w_weighted).all()

    with pytest.raises(ValueError, match="degree"):
        symmetric_normalize(edge_index, 4, degree="both")


def test_to_csr_sums_duplicates():
    edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 1, 2]])
    csr = to_csr(edge_index, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), 3, 4)
    expected = torch.zeros(3, 4)
    expected[0, 1], expected[1, 0], expected[2, 2] = 4.0, 2.0, 4.0
    torch.testing.assert_close(_dense(csr), expected)
    assert csr._nnz() == 3
    assert _dense(to_csr(torch.zeros(2, 0, dtype=torch.long), None, 2, 2)).abs().sum() == 0


# Items 0/1 point along x, 2/3 along y (2 has a large norm, so dot product != cosine),
# item 4 is between x and y but closer to x, item 5 is a zero row.
FEATURES = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 5.0], [0.1, 1.0], [1.0, 0.8], [0.0, 0.0]])


def test_item_knn_graph_hand_neighbours():
    edge_index = item_knn_graph(FEATURES[:5], k=2)
    assert edge_index.shape == (2, 10) and edge_index.dtype == torch.long
    assert edge_index[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Self first (cos = 1), then the nearest other item by cosine.
    assert edge_index[1].tolist() == [0, 1, 1, 0, 2, 3, 3, 2, 4, 1]

    no_self = item_knn_graph(FEATURES[:5], k=1, include_self=False)
    assert no_self[1].tolist() == [1, 0, 3, 2, 1]
    no_self = item_knn_graph(FEATURES[:5], k=4, include_self=False)
    assert not torch.any(no_self[0] == no_self[1])
    # Least similar to item 4 (cos 0.63 to [0, 5]) is ranked last.
    assert no_self[1].view(5, 4)[4].tolist() == [1, 0, 3, 2]


def test_item_knn_graph_chunking_matches_unchunked():
    torch.manual_seed(0)
    feats = torch.randn(7, 5)
    for include_self in (True, False):
        full = item_knn_graph(feats, k=3, chunk_size=1024, include_self=include_self)
        for chunk_size in (1, 2, 3):
            chunked = item_knn_graph(feats, 3, chunk_size=chunk_size, include_self=include_self)
            assert torch.equal(chunked, full)


def test_item_knn_graph_breaks_ties_as_mmrecs_build_sim() -> None:
    # MMRec: rows divided by their norms, one full product, top-k. Features of few distinct
    # values give tied and nearly tied cosines; seed 5 holds a row where a product with the
    # reciprocal norm keeps another neighbour than the division does.
    def top_k_sets(unit: torch.Tensor, k: int) -> torch.Tensor:
        return (unit @ unit.t()).topk(k, dim=1).indices.sort(dim=1).values

    g = torch.Generator().manual_seed(5)
    x = torch.randint(1, 6, (12, 6), generator=g).float() * torch.rand(12, 1, generator=g) * 7
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    mmrec = top_k_sets(x.div(norm), 3)
    assert (mmrec == torch.arange(12).unsqueeze(1)).any(dim=1).all()  # each item kept itself
    ours = item_knn_graph(x, k=3)[1].view(12, 3).sort(dim=1).values
    assert torch.equal(ours, mmrec)
    assert not torch.equal(top_k_sets(x * (1.0 / norm), 3), mmrec)
    assert torch.equal(unit_rows(x), x / norm)
    assert torch.equal(unit_rows(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_item_knn_graph_zero_rows_and_errors():
    edge_index = item_knn_graph(FEATURES, k=3)
    assert edge_index.shape == (2, 18)
    assert (edge_index >= 0).all() and (edge_index < 6).all()
    # The zero row keeps itself first; its other (zero-similarity) picks are arbitrary.
    assert edge_index[1].view(6, 3)[5, 0].item() == 5
    adj = _dense(knn_adjacency(FEATURES, k=3))
    assert torch.isfinite(adj).all()

    with pytest.raises(ValueError, match="k must be"):
        item_knn_graph(FEATURES, k=0)
    with pytest.raises(ValueError, match="k must be"):
        item_knn_graph(FEATURES, k=7)
    with pytest.raises(ValueError, match="k must be"):
        item_knn_graph(FEATURES, k=6, include_self=False)
    assert item_knn_graph(FEATURES, k=6).shape == (2, 36)
    bad = FEATURES.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        item_knn_graph(bad, k=2)
    bad[1, 0] = float("inf")
    bad[4, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 6 row\(s\), first at row 1$"):
        item_knn_graph(bad, k=2)
    with pytest.raises(ValueError, match="2-D"):
        item_knn_graph(torch.ones(4), k=1)


def test_knn_adjacency_row_normalisation():
    adj = _dense(knn_adjacency(FEATURES[:5], k=2))
    # Every row holds k = 2 neighbours, so D = 2I and each entry is 1 / sqrt(2 * 2) = 0.5.
    expected = torch.zeros(5, 5)
    for i, j in [(0, 0), (0, 1), (1, 1), (1, 0), (2, 2), (2, 3), (3, 3), (3, 2), (4, 4), (4, 1)]:
        expected[i, j] = 0.5
    torch.testing.assert_close(adj, expected)
    assert ((adj != 0).sum(dim=1) == 2).all()


# Low-degree edge u0-i0 (d_u=1, d_i=1, weight 1), a complete block u1..u3 x i1..i3
# (weight 1/3, or 1/sqrt(12) at i1) and u4-i1 (d_u=1, d_i=4, weight 1/2).
DROP_EDGES = torch.tensor(
    [
        [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4],
        [0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1],
    ]
)


def _edge_set(edge_index: torch.Tensor) -> list:
    return [tuple(e) for e in edge_index.t().tolist()]


def test_edge_dropout_sample_shape_and_subset():
    module = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.5)
    # Degrees: u0=1, u1..u3=3, u4=1; i0=1, i1=4, i2=i3=3.
    a, b = 1.0 / math.sqrt(12.0), 1.0 / 3.0
    expected_w = [1.0, a, b, b, a, b, b, a, b, b, 0.5]
    torch.testing.assert_close(module.edge_weight, torch.tensor(expected_w))
    original = set(_edge_set(DROP_EDGES))
    for _ in range(20):
        kept = module.sample()
        assert kept.shape == (2, int(11 * 0.5))
        edges = _edge_set(kept)
        assert len(set(edges)) == len(edges)
        assert set(edges) <= original


def test_edge_dropout_prefers_low_degree_edges():
    torch.manual_seed(0)
    module = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.5)
    index = {e: n for n, e in enumerate(_edge_set(DROP_EDGES))}
    counts = torch.zeros(DROP_EDGES.size(1))
    draws = 2000
    for _ in range(draws):
        for e in _edge_set(module.sample()):
            counts[index[e]] += 1
    freq = counts / draws
    assert freq.sum().item() == pytest.approx(5.0)
    low, high = freq[0].item(), freq[5].item()  # u0-i0 (weight 1) vs u2-i2 (weight 1/3)
    # Binomial standard error is <= 0.012 at 2000 draws; the gap is ~0.5.
    assert low - high > 0.3
    corr = torch.corrcoef(torch.stack([freq, module.edge_weight]))[0, 1].item()
    assert corr > 0.9


def test_edge_dropout_seed_and_caching():
    module = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.4)
    torch.manual_seed(123)
    first = module.sample()
    torch.manual_seed(123)
    assert torch.equal(module.sample(), first)

    module.train()
    adj = module()
    assert module() is adj  # cached: one sample per epoch
    module.resample()
    assert module() is not adj


def test_edge_dropout_eval_and_zero_dropout_use_full_graph():
    full = _dense(normalized_adjacency(DROP_EDGES, 5, 4))
    module = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.5).eval()
    torch.testing.assert_close(_dense(module()), full)
    module.train()
    assert (_dense(module()) != 0).sum().item() == 2 * int(11 * 0.5)

    no_drop = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.0).train()
    torch.testing.assert_close(_dense(no_drop()), full)
    assert no_drop.sample().size(1) == 11


def test_edge_dropout_renormalises_on_kept_graph():
    # u0-i0, u0-i1 with dropout 0.5 keeps one edge: on the kept graph d_u0 = d_i = 1, so the
    # entry is 1 (the full graph would give 1 / sqrt(2)).
    module = DegreeSensitiveEdgeDropout(torch.tensor([[0, 0], [0, 1]]), 1, 2, dropout=0.5)
    full = _dense(module.eval()())
    assert full[0, 1].item() == pytest.approx(S2)
    module.train()
    for seed in range(4):
        torch.manual_seed(seed)
        module.resample()
        adj = _dense(module())
        item = module.kept_edge_index[1, 0].item()
        assert adj[0, 1 + item].item() == pytest.approx(1.0)
        assert adj[1 + item, 0].item() == pytest.approx(1.0)
        assert adj.abs().sum().item() == pytest.approx(2.0)


def test_edge_dropout_invalid_dropout():
    for dropout in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=dropout)
    with pytest.raises(ValueError, match=r"item id 3 out of range \[0, 3\)"):
        DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 3, dropout=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_device():
    module = DegreeSensitiveEdgeDropout(DROP_EDGES, 5, 4, dropout=0.5).to("cuda")
    assert module.eval()().device.type == "cuda"
    assert module.train()().device.type == "cuda"
    torch.testing.assert_close(
        _dense(module.eval()()).cpu(), _dense(normalized_adjacency(DROP_EDGES, 5, 4))
    )
    knn = item_knn_graph(FEATURES[:5].cuda(), k=2, chunk_size=2)
    assert knn.device.type == "cuda"
    assert torch.equal(knn.cpu(), item_knn_graph(FEATURES[:5], k=2))
    assert knn_adjacency(FEATURES[:5].cuda(), k=2).device.type == "cuda"


def test_add_item_knn_graphs_transform_matches_knn_adjacency() -> None:
    from torch_geometric.data import HeteroData

    from pyg_dhmrec.data.transforms import AddItemKNNGraphs

    torch.manual_seed(3)
    data = HeteroData()
    data["item"].num_nodes = 6
    data["item"].image = torch.randn(6, 5)
    data["item"].text = torch.randn(6, 3)
    data["item"].modalities = ["image", "text"]
    out = AddItemKNNGraphs(k=2)(data)
    for name in ("image", "text"):
        store = out["item", f"knn_{name}", "item"]
        assert store.edge_index.shape == (2, 12)
        # Every item keeps itself and one neighbour, each weighted 1/k = 1/2.
        assert torch.allclose(store.edge_weight, torch.full((12,), 0.5))
        dense = torch.zeros(6, 6)
        dense[store.edge_index[0], store.edge_index[1]] = store.edge_weight
        assert torch.allclose(dense, knn_adjacency(data["item"][name], k=2).to_dense())
    with pytest.raises(ValueError, match=r"modalities \['audio'\] not found"):
        AddItemKNNGraphs(k=2, modalities=["audio"])(data)


def test_cache_key_changes_with_the_build_version(monkeypatch: pytest.MonkeyPatch) -> None:
    # graphs cached before the division (build 1) are not reused: their ties may differ
    from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph

    key = AddItemKNNGraphs(k=2).key()
    assert key.startswith("AddItemKNNGraphs-")
    assert AddItemKNNGraphs(k=2).key() == key
    monkeypatch.setattr(DerivedGraph, "build_version", 1)
    assert AddItemKNNGraphs(k=2).key() != key


@pytest.mark.parametrize(
    "bad",
    [{"image": -1.0, "text": 2.0}, {"image": float("inf"), "text": 1.0}, {"image": 0, "text": 0}],
)
def test_mixing_weights_checked(bad: dict) -> None:
    """Negative, non-finite or all-zero weights are refused by both the graph mix and the
    weight resolution of FREEDOM-like models; zero for one modality is allowed."""
    a = to_csr(torch.tensor([[0, 1], [1, 0]]), None, 2, 2)
    b = to_csr(torch.tensor([[0, 1], [0, 1]]), None, 2, 2)
    mixed = mix_modality_graphs({"image": a, "text": b}, {"image": 0.25, "text": 0.5}, "beta")
    torch.testing.assert_close(mixed.to_dense(), torch.tensor([[0.5, 0.25], [0.25, 0.5]]))
    assert resolve_modality_weights(["image", "text"], {"image": 0, "text": 2}, "X") == {
        "image": 0.0,
        "text": 2.0,
    }
    with pytest.raises(ValueError, match=r"^beta must be finite numbers >= 0 with a positive sum"):
        mix_modality_graphs({"image": a, "text": b}, bad, "beta")
    with pytest.raises(ValueError, match=r"^modality_weights must be finite numbers >= 0 with a"):
        resolve_modality_weights(["image", "text"], bad, "X")
    with pytest.raises(ValueError, match=r"^beta must give one weight per modality"):
        mix_modality_graphs({"image": a, "text": b}, {"image": 1.0}, "beta")
