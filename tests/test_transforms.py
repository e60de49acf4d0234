"""Derived graphs: transforms that add edge types, cached with the dataset by their settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from toy_graphs import MODALITIES, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.graph import cosine_knn_edges, knn_adjacency
from pyg_dhmrec.data.item_cooccurrence import item_cooccurrence_graph
from pyg_dhmrec.data.transforms import (
    AddItemCooccurrenceGraph,
    AddItemKNNGraphs,
    add_derived_graphs,
    co_interaction_edge_type,
    knn_edge_type,
)
from pyg_dhmrec.models import FREEDOM


def _dense(store, n: int) -> torch.Tensor:
    dense = torch.zeros(n, n)
    dense[store.edge_index[0], store.edge_index[1]] = store.edge_weight
    return dense


def test_knn_edge_types_hold_the_normalised_graphs_and_their_settings() -> None:
    data = toy_graph(modalities=MODALITIES)
    n = int(data["item"].num_nodes)
    add_derived_graphs(data, [AddItemKNNGraphs(k=4)])
    for m in MODALITIES:
        store = data[knn_edge_type(m)]
        assert store.settings == {"k": 4, "weighting": "binary", "modalities": None}
        expected = knn_adjacency(data["item"][m], k=4).to_dense()
        torch.testing.assert_close(_dense(store, n), expected)
    # The cosine-weighted variant keeps the similarity values (LATTICE, MGCN).
    add_derived_graphs(data, [AddItemKNNGraphs(k=4, weighting="cosine")])
    edge_index, weight = cosine_knn_edges(data["item"]["image"], 4)
    assert torch.equal(data[knn_edge_type("image")].edge_index, edge_index)
    torch.testing.assert_close(data[knn_edge_type("image")].edge_weight, weight)
    assert "knn_image" in repr(data) and "knn_text" in repr(data)


def test_co_interaction_edge_type_matches_the_graph_builder() -> None:
    data = toy_graph(modalities=MODALITIES)
    n = int(data["item"].num_nodes)
    add_derived_graphs(data, [AddItemCooccurrenceGraph(k=3)])
    expected = item_cooccurrence_graph(data[RATES].edge_index, 40, n, 3).to_dense()
    torch.testing.assert_close(_dense(data[co_interaction_edge_type()], n), expected)


def test_transforms_are_declared_and_never_guess_modalities() -> None:
    data = toy_graph(modalities=MODALITIES)
    data["item"].extra = torch.randn(30, 2)  # an item tensor that is not a modality
    add_derived_graphs(data, [AddItemKNNGraphs(k=2)])
    assert knn_edge_type("extra") not in data.edge_types
    del data["item"].modalities
    with pytest.raises(ValueError, match=r"data\['item'\].modalities is not set"):
        AddItemKNNGraphs(k=2)(data)
    with pytest.raises(ValueError, match=r"knn_k must be a positive int"):
        AddItemKNNGraphs(k=0)
    data = toy_graph(modalities=MODALITIES)
    with pytest.raises(ValueError, match=r"knn_k = 31 exceeds the number of items \(30\)"):
        AddItemKNNGraphs(k=31)(data)


def test_cache_builds_once_per_setting_and_rebuilds_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyg_dhmrec.data.transforms")
    first = add_derived_graphs(toy_graph(modalities=MODALITIES), [AddItemKNNGraphs(k=3)], tmp_path)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "built in" in caplog.text
    caplog.clear()
    second = add_derived_graphs(toy_graph(modalities=MODALITIES), [AddItemKNNGraphs(k=3)], tmp_path)
    assert "loaded from the cache" in caplog.text and "built in" not in caplog.text
    for m in MODALITIES:
        assert torch.equal(first[knn_edge_type(m)].edge_index, second[knn_edge_type(m)].edge_index)
        assert torch.equal(
            first[knn_edge_type(m)].edge_weight, second[knn_edge_type(m)].edge_weight
        )
    # Another k is another graph with its own file.
    add_derived_graphs(toy_graph(modalities=MODALITIES), [AddItemKNNGraphs(k=5)], tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # A truncated cache file is rebuilt with one warning, never trusted.
    files[0].write_bytes(files[0].read_bytes()[:50])
    caplog.clear()
    third = add_derived_graphs(toy_graph(modalities=MODALITIES), [AddItemKNNGraphs(k=3)], tmp_path)
    assert "unreadable" in caplog.text and "built in" in caplog.text
    assert torch.equal(
        third[knn_edge_type("image")].edge_weight, first[knn_edge_type("image")].edge_weight
    )


def test_model_reads_the_graph_from_data_and_builds_a_missing_one() -> None:
    data = toy_graph(modalities=MODALITIES)
    add_derived_graphs(data, [AddItemKNNGraphs(k=3)])
    # A hand-swapped graph in data is what the model uses: here an identity graph.
    n = int(data["item"].num_nodes)
    for m in MODALITIES:
        data[knn_edge_type(m)].edge_index = torch.arange(n).repeat(2, 1)
        data[knn_edge_type(m)].edge_weight = torch.ones(n)
    torch.manual_seed(0)
    model = FREEDOM(data, embedding_dim=8, knn_k=3)
    torch.testing.assert_close(model.item_item.matrix.to_dense(), torch.eye(n))
    # Without the edge types (or with other settings) the model builds its own.
    fresh = toy_graph(modalities=MODALITIES)
    model = FREEDOM(fresh, embedding_dim=8, knn_k=4)
    mixed = (
        0.1 * knn_adjacency(fresh["item"]["image"], 4).to_dense()
        + 0.9 * knn_adjacency(fresh["item"]["text"], 4).to_dense()
    )
    torch.testing.assert_close(model.item_item.matrix.to_dense(), mixed)
