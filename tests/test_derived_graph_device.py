"""``add_derived_graphs(..., device=...)``: graphs built on another device equal the CPU's."""

from __future__ import annotations

import pytest
import torch

from pyg_dhmrec.data.graph import to_csr
from pyg_dhmrec.data.transforms import (
    AddConsistentItemKNNGraphs,
    AddItemCooccurrenceGraph,
    AddItemKNNGraphs,
    AddTopologicallyPrunedGraph,
    AddUserCooccurrenceGraph,
    add_derived_graphs,
    on_device,
)
from tests.toy_graphs import MODALITIES, toy_graph

TRANSFORMS = [
    (AddItemKNNGraphs, {"k": 4}, True),
    (AddTopologicallyPrunedGraph, {"knn_k": 5, "k": 3}, True),
    (AddConsistentItemKNNGraphs, {"k": 3}, True),
    # integer counts tie: a device may keep another of the tied neighbours, same weights
    (AddItemCooccurrenceGraph, {"k": 5}, False),
    (AddUserCooccurrenceGraph, {"k": 6}, False),
]


def _dense(data, transform) -> dict:
    out = {}
    for edge_type in transform.edge_types(data):
        store = data[edge_type]
        rows = data[edge_type[0]].num_nodes
        cols = data[edge_type[2]].num_nodes
        weight = getattr(store, "edge_weight", None)
        if weight is None:
            weight = torch.ones(store.edge_index.size(1))
        out[edge_type] = to_csr(store.edge_index, weight.float(), rows, cols).to_dense()
    return out


def _check_same(device: str, cls, kwargs: dict, exact: bool) -> None:
    on_cpu = add_derived_graphs(toy_graph(modalities=MODALITIES), [cls(**kwargs)])
    elsewhere = add_derived_graphs(toy_graph(modalities=MODALITIES), [cls(**kwargs)], device=device)
    want, got = _dense(on_cpu, cls(**kwargs)), _dense(elsewhere, cls(**kwargs))
    assert want.keys() == got.keys() and want
    for edge_type in want:
        store = elsewhere[edge_type]
        assert store.edge_index.device.type == "cpu"  # back on data's own device
        assert store.settings == on_cpu[edge_type].settings
        if exact:
            torch.testing.assert_close(got[edge_type], want[edge_type], rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(
                got[edge_type].sort(1).values, want[edge_type].sort(1).values, rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("cls,kwargs,exact", TRANSFORMS)
def test_graphs_built_through_a_device_copy_equal_those_built_in_place(cls, kwargs, exact) -> None:
    _check_same("cpu", cls, kwargs, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls,kwargs,exact", TRANSFORMS)
def test_graphs_built_on_cuda_equal_the_cpu_graphs(cls, kwargs, exact) -> None:
    _check_same("cuda", cls, kwargs, exact)


def test_a_later_transform_reads_an_earlier_graph_built_on_the_device(tmp_path) -> None:
    # the pruned graph reads the kNN graphs: both built on the copy, both cached from there
    data = toy_graph(modalities=MODALITIES)
    knn, pruned = AddItemKNNGraphs(k=5), AddTopologicallyPrunedGraph(knn_k=5, k=3)
    add_derived_graphs(data, [knn, pruned], cache_dir=tmp_path, device="cpu")
    reference = add_derived_graphs(toy_graph(modalities=MODALITIES), [knn, pruned])
    for edge_type in pruned.edge_types(data):
        torch.testing.assert_close(data[edge_type].edge_weight, reference[edge_type].edge_weight)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # and loaded from the cache, then one more built on the device copy after it
    again = toy_graph(modalities=MODALITIES)
    add_derived_graphs(again, [knn, AddConsistentItemKNNGraphs(k=3)], tmp_path, device="cpu")
    assert all(again[et].edge_index.numel() for et in knn.edge_types(again))


def test_the_device_copy_leaves_the_dataset_where_it_is() -> None:
    data = toy_graph(modalities=MODALITIES)
    moved = on_device(data, "meta")  # a device with no memory: nothing is computed
    for store, there in zip(data.stores, moved.stores):
        for name, value in store.items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == "cpu", name
                assert there[name].device.type == "meta", name
