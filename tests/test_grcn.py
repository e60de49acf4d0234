"""GRCN (Wei et al., MM 2020) on small hand-built graphs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from torch_geometric.utils import scatter
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.models import GRCN
from pyg_dhmrec.nn import neighborhood_affinity

DIM = 4


def _one_user_two_items() -> HeteroData:
    """User 0 rated items 0 and 1; item 0's feature points along e_1, item 1's along e_2."""
    data = HeteroData()
    data["user"].num_nodes = 1
    data["item"].num_nodes = 2
    data["item"].image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    data["item"].modalities = ["image"]
    data[RATES].edge_index = torch.tensor([[0, 0], [0, 1]])
    data[REV_RATES].edge_index = data[RATES].edge_index.flip(0)
    return data


def test_edge_weight_is_lower_where_item_disagrees_with_the_prototype() -> None:
    model = GRCN(_one_user_two_items(), embedding_dim=DIM, feature_dim=2, num_routing=0)
    with torch.no_grad():
        model.projections["image"].weight.copy_(torch.eye(2))  # content = the raw feature
        model.projections["image"].bias.zero_()
        model.prototypes["image"].copy_(torch.tensor([[1.0, 0.0]]))  # the user likes e_1
        model.edge_weights.confidence.zero_()  # sigmoid(0) = 1/2 for every node
    weights, _, _ = model.refined_edge_weights()
    assert ((weights >= 0) & (weights <= 1)).all()
    # Edges: u0->i0, u0->i1, i0->u0, i1->u0 (nodes: user 0, items 1, 2).
    source, target = model.edge_index
    into_user = {int(s): float(w) for s, t, w in zip(source, target, weights) if t == 0}
    e = math.e
    assert into_user[1] == pytest.approx(0.5 * e / (e + 1))  # agrees: cos 1
    assert into_user[2] == pytest.approx(0.5 * 1 / (e + 1))  # disagrees: cos 0
    assert into_user[2] < into_user[1]
    # Each item has the one user as its only neighbour: weight 1/2 * softmax of one = 1/2.
    into_items = weights[target > 0]
    torch.testing.assert_close(into_items, torch.full((2,), 0.5))


def test_the_model_routes_its_prototypes() -> None:
    """One routing step by hand: p <- normalize(p + sum_i softmax(p.i) i)."""
    model = GRCN(_one_user_two_items(), embedding_dim=DIM, feature_dim=2, num_routing=1)
    with torch.no_grad():
        model.projections["image"].weight.copy_(torch.eye(2))
        model.projections["image"].bias.zero_()
        model.prototypes["image"].copy_(torch.tensor([[0.8, 0.6]]))
    prototype = model.modality_nodes("image")[0]
    a = torch.softmax(torch.tensor([0.8, 0.6]), 0)
    expected = torch.nn.functional.normalize(torch.tensor([0.8, 0.6]) + a, dim=0)
    torch.testing.assert_close(prototype.detach(), expected)


@pytest.mark.parametrize("modalities", [{"image": 5}, {"a": 4, "b": 3, "c": 2}])
def test_weights_in_unit_range_and_concatenated_representation(
    modalities: dict[str, int],
) -> None:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, modalities)
    model = GRCN(data, embedding_dim=DIM, feature_dim=3).eval()
    weights, nodes, affinity = model.refined_edge_weights()
    assert weights.shape == (80,) and ((weights >= 0) & (weights <= 1)).all()
    for a in affinity.values():  # a softmax over each node's in-edges
        sums = torch.zeros(22).index_add_(0, model.edge_index[1], a)
        torch.testing.assert_close(sums, torch.ones(22))
    out = model()
    width = DIM + 3 * len(modalities)
    assert out.user.shape == (12, width) and out.item.shape == (10, width)
    # Each modality's block of the item representation, zeros elsewhere.
    for k, rep in enumerate(out.modalities.values()):
        block = slice(DIM + 3 * k, DIM + 3 * (k + 1))
        torch.testing.assert_close(rep[:, block], out.item[:, block])
        rest = torch.ones(width, dtype=torch.bool)
        rest[block] = False
        assert rep[:, rest].abs().sum() == 0


def test_relu_confidence_weights_are_the_codes_formula() -> None:
    """``confidence_activation="relu"``: w = relu(max_m c_{j,m} a^m_{jv}) per edge, with the
    sender's confidence; a sender with negative confidences in every modality sends nothing."""
    torch.manual_seed(1)
    data = toy_graph(12, 10, 40, {"a": 4, "b": 3})
    model = GRCN(data, embedding_dim=DIM, feature_dim=3, confidence_activation="relu").eval()
    with torch.no_grad():
        model.edge_weights.confidence.normal_(0.0, 2.0)
        model.edge_weights.confidence[0] = -1.0  # user 0: pruned on all its edges
    weights, _, affinity = model.refined_edge_weights()
    source = model.edge_index[0]
    conf = model.edge_weights.confidence[source]
    expected = torch.relu(torch.maximum(conf[:, 0] * affinity["a"], conf[:, 1] * affinity["b"]))
    torch.testing.assert_close(weights, expected)
    assert (weights[source == 0] == 0).all() and (weights >= 0).all()


def test_id_gcn_sums_the_weighted_layers() -> None:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, {"image": 5})
    model = GRCN(data, embedding_dim=DIM, feature_dim=3, num_ui_layers=2).eval()
    weights, _, _ = model.refined_edge_weights()
    dense = torch.zeros(22, 22)
    dense[model.edge_index[1], model.edge_index[0]] = weights  # row = target
    x = torch.nn.functional.normalize(
        torch.cat([model.user_embedding.weight, model.item_embedding.weight]), dim=-1
    )
    expected = x + dense @ x + dense @ (dense @ x)
    out = model()
    torch.testing.assert_close(torch.cat([out.user, out.item])[:, :DIM], expected)


def test_parameters_learn_including_the_confidence() -> None:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, {"image": 5, "text": 3})
    model = GRCN(data, embedding_dim=DIM, feature_dim=3).train()
    sum(model.loss(first_batch(data, batch_size=16)).values()).backward()
    for name in ("edge_weights.confidence", "prototypes.image", "user_embedding.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_unchanged() -> None:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, {"image": 5})
    model = GRCN(data, embedding_dim=DIM, feature_dim=3).to("cuda").eval()
    out = model()
    assert out.item.device.type == "cuda" and torch.isfinite(out.item).all()


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_routing", -1), ("feature_dim", 0), ("confidence_activation", "softplus")],
)
def test_bad_settings_name_the_key(key: str, value: int | str) -> None:
    with pytest.raises(ValueError, match=key):
        GRCN(toy_graph(12, 10, 40, {"image": 5}), **{key: value})


def _edge_wise_reference(model: GRCN) -> tuple[torch.Tensor, torch.Tensor]:
    """GRCN's first implementation, kept as the reference: per-edge gathers, edge-wise
    softmaxes over the two-way graph, scatter sums."""
    num_users, num_items = model.num_users, model.num_items
    n = num_users + num_items
    edge_index = model.edge_index
    ui = torch.stack(
        [
            edge_index[0, : edge_index.size(1) // 2],
            edge_index[1, : edge_index.size(1) // 2] - num_users,
        ]
    )

    def conv(x, weight):  # sum over in-edges of weight * source
        return scatter(weight.unsqueeze(-1) * x[edge_index[0]], edge_index[1], 0, n, "sum")

    nodes = {}
    for m in model.modalities:
        content = F.normalize(F.leaky_relu(model.projections[m](model.feature(m))), dim=-1)
        out = F.normalize(model.prototypes[m], dim=-1)
        for _ in range(model.routing.num_iterations):
            w = neighborhood_affinity(content, out, ui.flip(0), num_users)
            pulled = scatter(w.unsqueeze(-1) * content[ui[1]], ui[0], 0, num_users, "sum")
            out = F.normalize(out + pulled, dim=-1)
        nodes[m] = torch.cat([out, content])
    affinity = {m: neighborhood_affinity(x, x, edge_index, n) for m, x in nodes.items()}
    weights = model.edge_weights(torch.stack(list(affinity.values()), -1), edge_index[0])
    x = F.normalize(torch.cat([model.user_embedding.weight, model.item_embedding.weight]), dim=-1)
    id_rep = x
    for _ in range(model.num_ui_layers):
        x = conv(x, weights)
        id_rep = id_rep + x
    content = [nodes[m] + conv(nodes[m], affinity[m]) for m in model.modalities]
    rep = torch.cat([id_rep, *content], dim=-1)
    return rep[:num_users], rep[num_users:]


def test_fused_sparse_forward_equals_the_edge_wise_reference_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, {"image": 5, "text": 3})
    model = GRCN(data, embedding_dim=DIM, feature_dim=3, num_routing=2).double().train()
    g = torch.Generator().manual_seed(3)
    up_user = torch.randn(12, DIM + 6, generator=g, dtype=torch.float64)
    up_item = torch.randn(10, DIM + 6, generator=g, dtype=torch.float64)
    expected_user, expected_item = _edge_wise_reference(model)
    ((expected_user * up_user).sum() + (expected_item * up_item).sum()).backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model()
    torch.testing.assert_close(out.user, expected_user)
    torch.testing.assert_close(out.item, expected_item)
    ((out.user * up_user).sum() + (out.item * up_item).sum()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[name], msg=name)
