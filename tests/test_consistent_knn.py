"""Item kNN graphs filtered by cross-modal consistency (DA-MRS's denoised item-item graphs),
built in chunks: equal to the dense formula, never an items x items matrix."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import ShapeRecorder, toy_graph

from pyg_dhmrec.data.consistent_knn import consistent_knn_edges, mean_cosine_similarity
from pyg_dhmrec.data.transforms import (
    AddConsistentItemKNNGraphs,
    add_derived_graphs,
    consistent_knn_edge_type,
)


def _dense(features: dict[str, torch.Tensor], k: int) -> dict[str, dict[int, list[int]]]:
    """The reference: dense cosine matrices, their full means, a pair kept where every modality
    is at least its mean, the item itself first, then each row's most similar kept items."""
    sims = {}
    for m, x in features.items():
        unit = x / x.norm(dim=1, keepdim=True)
        sims[m] = unit @ unit.t()
    n = next(iter(features.values())).size(0)
    keep = torch.ones(n, n, dtype=torch.bool)
    for s in sims.values():
        keep &= s >= s.mean()
    keep |= torch.eye(n, dtype=torch.bool)
    out = {}
    for m, s in sims.items():
        rows = {}
        for i in range(n):
            candidates = [j for j in keep[i].nonzero().squeeze(1).tolist() if j != i]
            candidates.sort(key=lambda j: -float(s[i, j]))
            rows[i] = [i, *candidates][:k]
        out[m] = rows
    return out


def _rows(edge_index: torch.Tensor, n: int) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {i: [] for i in range(n)}
    for i, j in edge_index.t().tolist():
        rows[i].append(j)
    return rows


def test_mean_similarity_equals_the_dense_mean() -> None:
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    unit = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(mean_cosine_similarity(x), (unit @ unit.t()).mean())
    zero_row = torch.cat([x, torch.zeros(1, 5)])  # a zero row adds similarity 0 pairs
    expected = (unit @ unit.t()).sum() / 24**2
    torch.testing.assert_close(mean_cosine_similarity(zero_row), expected)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("num_modalities", [1, 2, 3])
def test_chunked_graphs_equal_the_dense_formula(chunk_size: int, num_modalities: int) -> None:
    g = torch.Generator().manual_seed(num_modalities)
    n = 37
    features = {f"m{i}": torch.randn(n, 4 + i, generator=g) for i in range(num_modalities)}
    for k in (1, 5, n):
        got = consistent_knn_edges(features, k, chunk_size)
        expected = _dense(features, k)
        assert list(got) == list(features)
        for m in features:
            assert _rows(got[m], n) == expected[m], (m, k)
        sizes = {got[m].size(1) for m in features}
        assert len(sizes) == 1  # every modality keeps as many neighbours per item


def test_single_modality_is_a_threshold_at_its_mean() -> None:
    # One modality: the plain top-k graph, except that an item keeps only its above-average
    # neighbours. Item 3 is opposite to everything: it keeps only itself.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 1.0], [-1.0, 0.0]])
    rows = _rows(consistent_knn_edges({"image": x}, k=2)["image"], 4)
    assert rows == {0: [0, 1], 1: [1, 0], 2: [2, 1], 3: [3]}


def test_never_builds_an_items_by_items_matrix() -> None:
    n, chunk = 50, 8
    g = torch.Generator().manual_seed(1)
    features = {"image": torch.randn(n, 6, generator=g), "text": torch.randn(n, 3, generator=g)}
    recorder = ShapeRecorder()
    with recorder:
        consistent_knn_edges(features, 4, chunk)
    matrices = [s for s in recorder.shapes if len(s) == 2]
    assert (chunk, n) in matrices  # one chunk of similarity rows
    assert all(s[0] * s[1] <= max(chunk * n, n * 6) < n * n for s in matrices), max(matrices)


def test_bad_inputs_get_clear_errors() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="at least one modality"):
        consistent_knn_edges({}, 2)
    with pytest.raises(ValueError, match="one row per item"):
        consistent_knn_edges({"image": x, "text": torch.randn(4, 3)}, 2)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        consistent_knn_edges({"image": x}, 6)
    with pytest.raises(ValueError, match="'image' contain NaN"):
        consistent_knn_edges({"image": x.index_fill(0, torch.tensor([1]), float("nan"))}, 2)
    with pytest.raises(ValueError, match="knn_k must be a positive int"):
        AddConsistentItemKNNGraphs(k=0)


def test_transform_writes_normalised_graphs_and_caches_them(tmp_path) -> None:
    data = toy_graph(30, 20, 150, modalities={"image": 6, "text": 4}, seed=2)
    transform = AddConsistentItemKNNGraphs(k=3, chunk_size=4)
    add_derived_graphs(data, [transform], cache_dir=tmp_path)
    features = {m: data["item"][m] for m in ("image", "text")}
    edges = consistent_knn_edges(features, 3)
    for m in features:
        store = data[consistent_knn_edge_type(m)]
        torch.testing.assert_close(store.edge_index, edges[m])
        degree = torch.bincount(edges[m][0], minlength=20).float()
        expected = (degree[edges[m][0]] * degree[edges[m][1]]).rsqrt()
        torch.testing.assert_close(store.edge_weight, expected)  # D^-1/2 S D^-1/2, row degrees
        assert store.settings == {"k": 3, "modalities": None}
    again = toy_graph(30, 20, 150, modalities={"image": 6, "text": 4}, seed=2)
    add_derived_graphs(again, [AddConsistentItemKNNGraphs(k=3)], cache_dir=tmp_path)
    torch.testing.assert_close(again[consistent_knn_edge_type("text")].edge_index, edges["text"])
    assert len(list(tmp_path.glob("AddConsistentItemKNNGraphs-*.pt"))) == 1
    with pytest.raises(ValueError, match=r"modalities \['audio'\] not usable"):
        AddConsistentItemKNNGraphs(k=3, modalities=["audio"])(data)
