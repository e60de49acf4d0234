"""MICRO's own mechanism: per-modality views over their own graphs, attention fusion, the
contrastive loss, errors."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.models import LATTICE, MICRO
from pyg_dhmrec.nn import ModalityAttention, chunked_info_nce


def _graph(modalities: dict[str, int] | None = None):
    return toy_graph(20, 15, 90, modalities or {"image": 6, "text": 4}, seed=6)


def _dense(graph, n: int) -> torch.Tensor:
    edge_index, weight = graph
    out = torch.zeros(n, n)
    out.index_put_((edge_index[1], edge_index[0]), weight.detach(), accumulate=True)
    return out


def test_each_view_propagates_over_its_own_graph_and_fuses_by_attention() -> None:
    torch.manual_seed(0)
    model = MICRO(_graph(), embedding_dim=8, knn_k=3, num_ii_layers=2).eval()
    with torch.no_grad():
        graphs = model.build_item_graphs()
        out = model()
        ids = model.item_embedding.weight
        views = {m: _dense(g, 15) @ (_dense(g, 15) @ ids) for m, g in graphs.items()}
        for m in views:
            torch.testing.assert_close(out.modality_views[m], views[m])
        alpha = model.attention.weights(list(views.values()))
        torch.testing.assert_close(alpha.sum(1), torch.ones(15))
        fused = alpha[:, :1] * views["image"] + alpha[:, 1:] * views["text"]
        torch.testing.assert_close(out.fused_view, fused)
        ui_items = out.item - torch.nn.functional.normalize(fused, dim=1)
        assert ui_items.shape == (15, 8)


def test_contrastive_part_is_the_all_item_loss_of_each_view_against_the_fused_one() -> None:
    torch.manual_seed(0)
    data = _graph()
    model = MICRO(data, embedding_dim=8, knn_k=3, cl_weight=0.5, temperature=0.3)
    model.train()
    model.on_train_epoch_start()
    out = model()
    parts = model.loss(first_batch(data, batch_size=16), out)
    expected = sum(chunked_info_nce(v, out.fused_view, 0.3) for v in out.modality_views.values())
    torch.testing.assert_close(parts["cl"], 0.5 * expected)


def test_attention_of_one_view_is_the_view() -> None:
    attention = ModalityAttention(4)
    x = torch.randn(6, 4)
    torch.testing.assert_close(attention([x]), x)


def test_one_modality_works() -> None:
    model = MICRO(_graph({"audio": 5}), embedding_dim=4, knn_k=3)
    out = model()
    assert out.item.shape == (15, 4) and list(out.modalities) == ["audio"]


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="temperature"):
        MICRO(_graph(), temperature=0.0)
    with pytest.raises(ValueError, match="cl_weight"):
        MICRO(_graph(), cl_weight=-1.0)
    with pytest.raises(ValueError, match="frozen_graph_weight"):
        MICRO(_graph(), frozen_graph_weight=1.5)


def test_the_item_graph_logic_is_lattices_own() -> None:
    # MICRO extends LATTICE: the learned/frozen graphs and their caching exist once.
    model = MICRO(_graph(), embedding_dim=4, knn_k=3)
    assert isinstance(model, LATTICE)
    for name in ("build_item_graphs", "_item_operators", "_propagate", "reset_parameters"):
        assert getattr(MICRO, name) is getattr(LATTICE, name), name
    names = {n for n, _ in model.named_parameters()}
    assert "modality_logits" not in names and "attention.query.weight" in names
    assert model.mix_item_graphs(model.build_item_graphs()) is None
    with pytest.raises(NotImplementedError, match="attention"):
        model.modality_weights()
