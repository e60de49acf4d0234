"""Tests of the FREEDOM recommender (Zhou & Shen, ACM MM 2023) on a tiny hand-built graph."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.graph import knn_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import FREEDOM, build_model

DIM = 8
KNN_K = 3
PARTS = {"bpr", "mm", "reg"}


def _model(data: HeteroData, seed: int = 0, **kwargs) -> FREEDOM:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "knn_k": KNN_K, "reg_weight": 0.1, "l2_weight": 1e-3}
    options.update(kwargs)
    return FREEDOM(data, **options)


def _train_loss(model: FREEDOM, batch: BPRBatch) -> dict[str, torch.Tensor]:
    model.train()
    model.on_train_epoch_start()
    return model.loss(batch)


def test_loss_parts(data: HeteroData, batch: BPRBatch) -> None:
    parts = _train_loss(_model(data), batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    # Defaults: no L2 term, FREEDOM relies on the modality BPR term.
    assert _train_loss(_model(data, l2_weight=0.0), batch)["reg"].item() == 0.0


def test_parameters(data: HeteroData) -> None:
    # Bias-free projections (see the class docstring); test_model_contract checks that every
    # parameter gets a gradient.
    names = {name for name, _ in _model(data).named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.text.weight",
    }


def test_finetuned_features_move_only_through_the_mm_term(
    data: HeteroData, batch: BPRBatch
) -> None:
    frozen = _model(data)
    model = _model(data, finetune_features=True)
    assert {"features.image", "features.text"} <= set(model.state_dict())
    # Same weights, same values: fine-tuning changes what trains, not the loss.
    model.load_state_dict(frozen.state_dict(), strict=False)
    torch.manual_seed(1)  # the same pruned graph
    expected = _train_loss(frozen, batch)
    torch.manual_seed(1)
    torch.testing.assert_close(_train_loss(model, batch), expected)
    out = model()
    mm = model.loss(batch, out)["mm"]
    # The gradient reaches the rows of the batch's positive and negative items only: the
    # projection's gradient times W_m (a bias-free linear map).
    projected, feature = out.modalities["image"], model.features["image"]
    grad_projected, grad = torch.autograd.grad(mm, [projected, feature])
    torch.testing.assert_close(grad, grad_projected @ model.projections["image"].weight)
    touched = set((grad.abs().sum(-1) > 0).nonzero().flatten().tolist())
    assert touched == set(batch.pos_item.tolist()) | set(batch.neg_item.tolist())
    with torch.no_grad():
        model.features["image"].add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.features["image"], data["item"].image)
    with pytest.raises(ValueError, match="finetune_features must be true or false, got 1"):
        _model(data, finetune_features=1)


def test_item_item_graph_mixes_the_modality_knn_graphs(data: HeteroData) -> None:
    model = _model(data)
    expected = 0.1 * knn_adjacency(data["item"].image, KNN_K).to_dense()
    expected += 0.9 * knn_adjacency(data["item"].text, KNN_K).to_dense()
    torch.testing.assert_close(model.item_item.matrix.to_dense(), expected)
    torch.testing.assert_close(model.item_item.transpose.to_dense(), expected.t())
    # Graph data, not model state.
    assert not any(k.startswith("item_item") for k in model.state_dict())
    # Frozen: training does not change it.
    before = model.item_item.matrix.to_dense().clone()
    model.train()
    model.on_train_epoch_start()
    torch.testing.assert_close(model.item_item.matrix.to_dense(), before)


def test_modality_weights(data: HeteroData) -> None:
    model = _model(data, modality_weights={"image": 0.5, "text": 0.5})
    expected = 0.5 * knn_adjacency(data["item"].image, KNN_K).to_dense()
    expected += 0.5 * knn_adjacency(data["item"].text, KNN_K).to_dense()
    torch.testing.assert_close(model.item_item.matrix.to_dense(), expected)
    with pytest.raises(ValueError, match="one weight per modality"):
        _model(data, modality_weights={"image": 1.0})
    three = toy_graph(modalities={"image": 6, "text": 4, "audio": 5})
    with pytest.raises(ValueError, match="default modality_weights only for image and text"):
        _model(three)
    model = _model(three, modality_weights={"image": 0.2, "text": 0.3, "audio": 0.5})
    assert model.modality_weights == {"image": 0.2, "text": 0.3, "audio": 0.5}
    single = toy_graph(modalities={"audio": 5})
    model = _model(single)
    torch.testing.assert_close(
        model.item_item.matrix.to_dense(), knn_adjacency(single["item"].audio, KNN_K).to_dense()
    )


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    weights = {m: 1.0 / len(modalities) for m in modalities}
    model = _model(data, modality_weights=weights)
    parts = _train_loss(model, first_batch(data, batch_size=32, seed=1))
    assert set(parts) == PARTS
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0


def test_forward_is_lightgcn_plus_item_item_part(data: HeteroData) -> None:
    model = _model(data, num_ui_layers=1, num_ii_layers=2).eval()
    out = model()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    adj = model.pruning.full_adjacency.to_dense()
    ui = (ego + adj @ ego) / 2
    ii = model.item_item.matrix.to_dense()
    h = ii @ (ii @ model.item_embedding.weight)
    torch.testing.assert_close(out.user, ui[:NUM_USERS])
    torch.testing.assert_close(out.item, ui[NUM_USERS:] + h)


def test_degree_sensitive_pruning(data: HeteroData) -> None:
    model = _model(data, edge_dropout=0.8)
    model.train()
    edges = data[RATES].edge_index
    num_keep = int(edges.size(1) * (1 - 0.8))
    key = edges[0] * NUM_ITEMS + edges[1]
    counts = torch.zeros(edges.size(1))
    torch.manual_seed(1)
    rounds = 300
    graphs = set()
    for _ in range(rounds):
        model.on_train_epoch_start()
        kept = model.pruning.kept_edge_index
        assert kept.size(1) == num_keep
        kept_key = kept[0] * NUM_ITEMS + kept[1]
        assert kept_key.unique().numel() == num_keep  # without replacement
        hit = torch.isin(key, kept_key)
        assert hit.sum() == num_keep  # kept edges are train edges
        counts += hit.float()
        graphs.add(tuple(kept_key.tolist()))
        # The model trains on the pruned graph, re-normalised on the kept degrees.
        assert model.pruning()._nnz() == 2 * num_keep
    assert len(graphs) > rounds // 2  # resampled every epoch
    deg_u = torch.bincount(edges[0], minlength=NUM_USERS).float()
    deg_i = torch.bincount(edges[1], minlength=NUM_ITEMS).float()
    degree_product = deg_u[edges[0]] * deg_i[edges[1]]
    order = degree_product.argsort()
    quarter = edges.size(1) // 4
    low, high = counts[order[:quarter]].mean(), counts[order[-quarter:]].mean()
    assert degree_product[order[-quarter:]].min() > degree_product[order[:quarter]].max()
    assert low > 1.5 * high, (low, high)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "knn_k": KNN_K, "edge_dropout": 0.9, "num_ui_layers": 3}
    model = build_model("freedom", data, config)
    assert isinstance(model, FREEDOM)
    assert model.pruning.dropout == 0.9 and model.ui_propagation.num_layers == 3
    assert model.modality_weights == {"image": 0.1, "text": 0.9}
