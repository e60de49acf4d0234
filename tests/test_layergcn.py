"""Tests of the LayerGCN recommender (Zhou et al., ICDE 2023) on tiny hand-built graphs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from toy_graphs import NUM_EDGES, NUM_ITEMS, NUM_USERS, toy_graph

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import LayerGCN, build_model

DIM = 8
PARTS = {"bpr", "reg"}


def _graph(edges: list[tuple[int, int]], num_users: int, num_items: int) -> HeteroData:
    edge_index = torch.tensor(sorted(edges), dtype=torch.long).t().contiguous()
    data = HeteroData()
    data["user"].num_nodes = num_users
    data["item"].num_nodes = num_items
    data["item"].modalities = []  # ID-only
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data


@pytest.fixture(scope="module")
def data() -> HeteroData:
    """40 users, 30 items, 400 interactions with skewed degrees; no item features."""
    return toy_graph()


def _model(data: HeteroData, seed: int = 0, **kwargs) -> LayerGCN:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "reg_weight": 0.1, "edge_dropout": 0.2}
    options.update(kwargs)
    return LayerGCN(data, **options)


def _set_embeddings(model: LayerGCN, users: list, items: list) -> None:
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor(users, dtype=torch.float32))
        model.item_embedding.weight.copy_(torch.tensor(items, dtype=torch.float32))


def test_loss_parts_are_batch_sums(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data)
    model.train()
    model.on_train_epoch_start()
    parts = model.loss(batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    # Sums over the batch, not means (the authors' BPR and L2 terms).
    out = model()
    user, item = out.user, out.item
    u = user[batch.user]
    diff = (u * item[batch.pos_item]).sum(-1) - (u * item[batch.neg_item]).sum(-1)
    torch.testing.assert_close(parts["bpr"], -F.logsigmoid(diff).sum())
    ego = [
        model.user_embedding.weight[batch.user],
        model.item_embedding.weight[batch.pos_item],
        model.item_embedding.weight[batch.neg_item],
    ]
    torch.testing.assert_close(parts["reg"], 0.1 * 0.5 * sum(e.pow(2).sum() for e in ego))
    assert _model(data, reg_weight=0.0).loss(batch)["reg"].item() == 0.0


def test_parameters(data: HeteroData) -> None:
    # The refinement weights are not parameters; every parameter gets a gradient and one step
    # lowers the loss: test_model_contract.
    names = {name for name, _ in _model(data).named_parameters()}
    assert names == {"user_embedding.weight", "item_embedding.weight"}


def test_refinement_on_one_edge_by_hand() -> None:
    """One user, one item, one edge: the normalised graph swaps the two embeddings."""
    model = _model(
        _graph([(0, 0)], 1, 1), embedding_dim=2, num_ui_layers=2, edge_dropout=0.0
    ).eval()
    # Each hop is orthogonal to the node's ego embedding: weight 0, nothing survives.
    _set_embeddings(model, [[1.0, 0.0]], [[0.0, 1.0]])
    out = model()
    user, item = out.user, out.item
    layers, weights = model.propagation.layers(
        torch.cat([model.user_embedding.weight, model.item_embedding.weight]),
        model.pruning(),
    )
    torch.testing.assert_close(weights[0], torch.zeros(2))
    assert all(layer.abs().max() == 0 for layer in layers)
    torch.testing.assert_close(user, torch.zeros(1, 2))
    torch.testing.assert_close(item, torch.zeros(1, 2))

    # e_u = (1, 0), e_i = (1, 1). Layer 1: the user receives (1, 1), cos = 1/sqrt(2); the
    # item receives (1, 0), cos = 1/sqrt(2). Layer 2: the user receives (1/sqrt(2), 0),
    # cos = 1; the item receives (1, 1)/sqrt(2), cos = 1. The ego layer is not summed.
    _set_embeddings(model, [[1.0, 0.0]], [[1.0, 1.0]])
    model.train().eval()  # drops the cached evaluation embeddings
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers, weights = model.propagation.layers(ego, model.pruning())
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(weights[0], torch.tensor([r, r]))
    torch.testing.assert_close(weights[1], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(layers[0], torch.tensor([[r, r], [r, 0.0]]))
    torch.testing.assert_close(layers[1], torch.tensor([[r, 0.0], [r, r]]))
    out = model()
    user, item = out.user, out.item
    torch.testing.assert_close(user, torch.tensor([[2 * r, r]]))
    torch.testing.assert_close(item, torch.tensor([[2 * r, r]]))

    # A hop pointing away from the ego embedding gets weight -1: it is flipped.
    _set_embeddings(model, [[2.0, 0.0]], [[-1.0, 0.0]])
    model.train().eval()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers, weights = model.propagation.layers(ego, model.pruning())
    torch.testing.assert_close(weights[0], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(layers[0], torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))


def test_refinement_weights_are_cosines_on_a_normalised_graph() -> None:
    """Users 0, 1; items 0, 1; edges (0, 0), (0, 1), (1, 1): degrees u = (2, 1), i = (1, 2)."""
    model = _model(_graph([(0, 0), (0, 1), (1, 1)], 2, 2), embedding_dim=2, num_ui_layers=1)
    _set_embeddings(model, [[1.0, 0.0], [0.0, 2.0]], [[3.0, 4.0], [1.0, -1.0]])
    model.eval()
    s2 = math.sqrt(2)
    # Hand-normalised hops: u0 <- i0/sqrt(2*1) + i1/sqrt(2*2), u1 <- i1/sqrt(1*2),
    # i0 <- u0/sqrt(1*2), i1 <- u0/sqrt(2*2) + u1/sqrt(2*1).
    hops = {
        "u0": (3 / s2 + 1 / 2, 4 / s2 - 1 / 2),
        "u1": (1 / s2, -1 / s2),
        "i0": (1 / s2, 0.0),
        "i1": (1 / 2, 2 / s2),
    }
    egos = {"u0": (1.0, 0.0), "u1": (0.0, 2.0), "i0": (3.0, 4.0), "i1": (1.0, -1.0)}

    def cos(a: tuple, b: tuple) -> float:
        return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))

    expected_w = torch.tensor([cos(hops[k], egos[k]) for k in ("u0", "u1", "i0", "i1")])
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers, weights = model.propagation.layers(ego, model.pruning())
    torch.testing.assert_close(weights[0], expected_w)
    expected = expected_w[:, None] * torch.tensor([hops[k] for k in ("u0", "u1", "i0", "i1")])
    torch.testing.assert_close(layers[0], expected)
    out = model()
    user, item = out.user, out.item
    torch.testing.assert_close(torch.cat([user, item]), expected)


def _keep_counts(model: LayerGCN, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each train edge is kept in the odd and in the even draws."""
    edges = model.pruning.edge_index
    key = edges[0] * NUM_ITEMS + edges[1]
    counts = torch.zeros(2, edges.size(1))
    for r in range(2 * rounds):
        model.on_train_epoch_start()
        kept = model.pruning.kept_edge_index
        assert kept.size(1) == model.pruning.num_keep
        kept_key = kept[0] * NUM_ITEMS + kept[1]
        assert kept_key.unique().numel() == kept.size(1)  # without replacement
        hit = torch.isin(key, kept_key)
        assert hit.sum() == kept.size(1)  # kept edges are train edges
        counts[r % 2] += hit.float()
        # The model trains on the pruned graph.
        assert model.pruning()._nnz() == 2 * kept.size(1)
    deg_u = torch.bincount(edges[0], minlength=NUM_USERS).float()
    deg_i = torch.bincount(edges[1], minlength=NUM_ITEMS).float()
    order = (deg_u[edges[0]] * deg_i[edges[1]]).argsort()
    quarter = edges.size(1) // 4
    low, high = counts[:, order[:quarter]].mean(1), counts[:, order[-quarter:]].mean(1)
    return low / rounds, high / rounds


def test_pruning_alternates_degree_sensitive_and_uniform(data: HeteroData) -> None:
    torch.manual_seed(1)
    model = _model(data, edge_dropout=0.8).train()
    assert model.pruning.num_keep == int(NUM_EDGES * (1 - 0.8))
    low, high = _keep_counts(model, 150)
    # Draws 1, 3, ...: low-degree edges survive far more often; draws 2, 4, ...: uniform.
    assert low[0] > 1.5 * high[0], (low, high)
    assert 0.8 < low[1] / high[1] < 1.25, (low, high)
    assert abs(high[1] - 0.2) < 0.03

    model = _model(data, edge_dropout=0.8, pruning="degree").train()
    low, high = _keep_counts(model, 60)
    assert (low > 1.5 * high).all(), (low, high)
    model = _model(data, edge_dropout=0.8, pruning="uniform").train()
    low, high = _keep_counts(model, 60)
    assert ((low / high - 1).abs() < 0.25).all(), (low, high)


def test_no_dropout_trains_on_the_full_graph(data: HeteroData) -> None:
    model = _model(data, edge_dropout=0.0).train()
    model.on_train_epoch_start()
    assert model.pruning() is model.pruning.full_adjacency
    assert model.pruning.kept_edge_index is None


def test_bad_hyper_parameters(data: HeteroData) -> None:
    with pytest.raises(ValueError, match="num_ui_layers must be an int >= 1, got 0"):
        _model(data, num_ui_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        _model(data, edge_dropout=1.0)
    with pytest.raises(ValueError, match="reg_weight must be >= 0"):
        _model(data, reg_weight=-1e-3)
    with pytest.raises(ValueError, match="pruning must be one of"):
        _model(data, pruning="random")


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "num_ui_layers": 3, "edge_dropout": 0.2, "reg_weight": 1e-2}
    model = build_model("layergcn", data, config)
    assert isinstance(model, LayerGCN) and not model.uses_modalities
    assert model.propagation.num_layers == 3 and model.pruning.dropout == 0.2
    assert model.reg_weight == 1e-2 and model.pruning.mode == "alternate"
