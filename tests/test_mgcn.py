"""Tests of the MGCN recommender (Yu et al., ACM MM 2023) on small hand-built graphs."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.graph import normalized_adjacency, user_item_matrix
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import MGCN, build_model
from pyg_dhmrec.nn import BehaviorAwareFusion, info_nce

DIM = 8
KNN_K = 3
PARTS = {"bpr", "cl", "reg"}


def _model(data: HeteroData, seed: int = 0, **kwargs) -> MGCN:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "knn_k": KNN_K, "cl_weight": 0.1, "reg_weight": 1e-3}
    options.update(kwargs)
    return MGCN(data, **options)


def test_loss_parts(data: HeteroData, batch: BPRBatch) -> None:
    parts = _model(data).train().loss(batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    assert _model(data, cl_weight=0.0).loss(batch)["cl"].item() == 0.0


def test_parameters(data: HeteroData) -> None:
    # Every parameter gets a gradient: test_model_contract.
    names = {name for name, _ in _model(data).named_parameters()}
    expected = {"user_embedding.weight", "item_embedding.weight"}
    for m in ("image", "text"):
        expected |= {f"features.{m}", f"projections.{m}.weight", f"projections.{m}.bias"}
        expected |= {f"gates.{m}.linear.weight", f"gates.{m}.linear.bias"}
    expected |= {"fusion.attention_proj.weight", "fusion.attention_proj.bias"}
    expected |= {"fusion.attention_query.weight"}
    expected |= {f"fusion.preference.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")}
    assert names == expected


def test_frozen_features(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, finetune_features=False)
    assert not any(name.startswith("features") for name, _ in model.named_parameters())
    sum(model.loss(batch).values()).backward()
    torch.testing.assert_close(model.feature("image"), data["item"].image)
    # Trained copies are restored to the raw features by reset_parameters.
    tuned = _model(data)
    with torch.no_grad():
        tuned.features["image"].add_(1.0)
    tuned.reset_parameters()
    torch.testing.assert_close(tuned.features["image"].detach(), data["item"].image)


def test_purifier_is_id_times_gated_features(data: HeteroData) -> None:
    model = _model(data)
    for m in ("image", "text"):
        proj, gate = model.projections[m], model.gates[m].linear
        # sigma(W_g (W_t x + b_t) + b_g) = sigma(W x + b), W = W_g W_t, b = W_g b_t + b_g.
        w = gate.weight @ proj.weight
        b = gate.weight @ proj.bias + gate.bias
        x = data["item"][m]
        expected = model.item_embedding.weight * torch.sigmoid(x @ w.t() + b)
        torch.testing.assert_close(model.purify(m), expected)
    with torch.no_grad():
        gate = model.gates["image"].linear
        gate.weight.zero_()
        gate.bias.fill_(0.0)  # sigma(0) = 1/2: half of the ID embedding
        torch.testing.assert_close(model.purify("image"), 0.5 * model.item_embedding.weight)
        gate.bias.fill_(-math.inf)  # a closed gate removes the modality
        assert model.purify("image").abs().sum() == 0


def _tiny_data(features: list[list[float]]) -> HeteroData:
    data = HeteroData()
    data["user"].num_nodes = 2
    data["item"].num_nodes = len(features)
    data["item"].image = torch.tensor(features)
    data["item"].modalities = ["image"]
    edge_index = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data


def test_item_graph_keeps_normalised_cosine_weights() -> None:
    # cos(0,1) = 0.8, cos(0,2) = 0, cos(1,2) = 0.6; top-2 with the item itself first.
    data = _tiny_data([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    model = MGCN(data, embedding_dim=4, knn_k=2)
    # Rows: item 0 keeps {0: 1, 1: 0.8}, item 1 {1: 1, 0: 0.8}, item 2 {2: 1, 1: 0.6};
    # row degrees 1.8, 1.8, 1.6 normalise both sides.
    d = torch.tensor([1.8, 1.8, 1.6])
    s = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.6, 1.0]])
    expected = s / (d.sqrt()[:, None] * d.sqrt()[None, :])
    torch.testing.assert_close(model.item_item["image"].matrix.to_dense(), expected)
    torch.testing.assert_close(model.item_item["image"].transpose.to_dense(), expected.t())
    assert expected[2, 1].item() == pytest.approx(0.6 / math.sqrt(1.6 * 1.8))
    # Frozen graph data, not model state.
    assert not any(k.startswith("item_item") for k in model.state_dict())


def test_fuser_attention_and_decomposition() -> None:
    torch.manual_seed(0)
    fuser = BehaviorAwareFusion(4, 3)
    views = [torch.randn(5, 4) for _ in range(3)]
    behavior = torch.randn(5, 4)
    parts = fuser.decompose(views, behavior)
    assert parts.weights.shape == (5, 3) and (parts.weights > 0).all()
    torch.testing.assert_close(parts.weights.sum(-1), torch.ones(5))
    shared = sum(parts.weights[:, m : m + 1] * views[m] for m in range(3))
    torch.testing.assert_close(parts.shared, shared)
    for view, specific in zip(views, parts.specific):
        torch.testing.assert_close(parts.shared + specific, view)  # E_s + (E_m - E_s) = E_m
    weighted = sum(parts.weights[:, m : m + 1] * parts.specific[m] for m in range(3))
    torch.testing.assert_close(weighted, torch.zeros(5, 4), atol=1e-6, rtol=0)
    for gate, pref in zip(fuser.preference, parts.preferences):
        torch.testing.assert_close(pref, torch.sigmoid(gate(behavior)))
    gated = sum(p * s for p, s in zip(parts.preferences, parts.specific))
    torch.testing.assert_close(fuser(views, behavior), (parts.shared + gated) / 4)
    with pytest.raises(ValueError, match="expected 3 modality views, got 2"):
        fuser(views[:2], behavior)


def test_fuser_hand_computed_weights() -> None:
    fuser = BehaviorAwareFusion(2, 2)
    with torch.no_grad():
        fuser.attention_proj.weight.copy_(torch.eye(2))
        fuser.attention_proj.bias.zero_()
        fuser.attention_query.weight.copy_(torch.tensor([[1.0, 0.0]]))
        for gate in fuser.preference:
            gate.weight.zero_()
            gate.bias.zero_()  # P_m = 1/2
    a, b = torch.tensor([[0.5, 2.0]]), torch.tensor([[-0.5, 1.0]])
    # Scores tanh(0.5) and tanh(-0.5): alpha_a = sigma(2 tanh(0.5)).
    alpha = 1.0 / (1.0 + math.exp(-2 * math.tanh(0.5)))
    parts = fuser.decompose([a, b], torch.zeros(1, 2))
    assert parts.weights[0, 0].item() == pytest.approx(alpha, abs=1e-6)
    shared = alpha * a + (1 - alpha) * b
    torch.testing.assert_close(parts.shared, shared)
    expected = (shared + 0.5 * (a - shared) + 0.5 * (b - shared)) / 3
    torch.testing.assert_close(fuser([a, b], torch.zeros(1, 2)), expected)


def test_forward_composes_the_two_views(data: HeteroData) -> None:
    model = _model(data, num_ui_layers=1, num_ii_layers=2).eval()
    out = model()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    adj = normalized_adjacency(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
    id_view = (ego + adj @ ego) / 2
    r = user_item_matrix(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
    views = []
    for m in ("image", "text"):
        s = model.item_item[m].matrix.to_dense()
        item_m = s @ (s @ model.purify(m))
        torch.testing.assert_close(out.modalities[m], item_m)
        views.append(torch.cat([r @ item_m, item_m]))
    mm_view = model.fusion(views, id_view)
    torch.testing.assert_close(out.id_view, id_view)
    torch.testing.assert_close(out.mm_view, mm_view)
    final = id_view + mm_view
    torch.testing.assert_close(out.user, final[:NUM_USERS])
    torch.testing.assert_close(out.item, final[NUM_USERS:])


def test_contrastive_term(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data)
    out = model()
    parts = model.loss(batch, out)  # reads the two views of the pass it is given
    id_view, mm_view = out.id_view, out.mm_view
    u, i = batch.user, batch.pos_item + NUM_USERS
    expected = info_nce(mm_view[i], id_view[i], 0.2) + info_nce(mm_view[u], id_view[u], 0.2)
    torch.testing.assert_close(parts["cl"], 0.1 * expected)
    # Aligned views score lower than the same views with the rows shuffled.
    with torch.no_grad():
        aligned = id_view + 0.05 * torch.randn_like(id_view)
        shuffled = aligned[
            torch.randperm(aligned.size(0), generator=torch.Generator().manual_seed(0))
        ]
        low = model.contrastive_loss(id_view, aligned, batch)
        high = model.contrastive_loss(id_view, shuffled, batch)
    assert low < high - 1.0, (low, high)


def test_a_training_step_fuses_only_its_batch_rows(data: HeteroData, batch: BPRBatch) -> None:
    """The fuser (Eq. 6) runs for the batch's users and items only; the full tables are
    computed on request, and the loss from them (the previous computation) is the same."""
    model = _model(data).train()
    out = model()
    asked = {"users": [], "items": []}
    for side, rows in (("users", out.mm_users), ("items", out.mm_items)):
        rows.compute = (lambda f, log: lambda index: log.append(index) or f(index))(
            rows.compute, asked[side]
        )
    parts = model.loss(batch, out)
    assert [len(v) for v in asked.values()] == [1, 1]
    assert torch.equal(asked["users"][0], batch.user)
    assert torch.equal(asked["items"][0], torch.cat([batch.pos_item, batch.neg_item]))
    user, item = out.user, out.item
    pos = (user[batch.user] * item[batch.pos_item]).sum(-1)
    neg = (user[batch.user] * item[batch.neg_item]).sum(-1)
    torch.testing.assert_close(parts["bpr"], torch.nn.functional.softplus(neg - pos).mean())
    reg = user[batch.user].pow(2).sum() + item[batch.pos_item].pow(2).sum()
    reg = (reg + item[batch.neg_item].pow(2).sum()) / (2 * len(batch))
    torch.testing.assert_close(parts["reg"], model.reg_weight * reg)
    torch.testing.assert_close(
        parts["cl"], model.cl_weight * model.contrastive_loss(out.id_view, out.mm_view, batch)
    )


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    model = _model(data)
    parts = model.loss(first_batch(data, batch_size=32, seed=1))
    assert set(parts) == PARTS
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0
    out = model()
    assert set(out.modalities) == set(modalities)
    assert all(rep.shape == (NUM_ITEMS, DIM) for rep in out.modalities.values())
    if len(modalities) == 1:  # one view: it is all shared, nothing specific
        view = torch.randn(4, DIM)
        parts = model.fusion.decompose([view], torch.randn(4, DIM))
        torch.testing.assert_close(parts.weights, torch.ones(4, 1))
        assert parts.specific[0].abs().max() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"knn_k": 0}, "knn_k must be an int >= 1"),
        ({"knn_k": 31}, "knn_k must be <= the number of items 30"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"cl_weight": -1.0}, "cl_weight must be >= 0"),
        ({"reg_weight": -1e-4}, "reg_weight must be >= 0"),
        ({"num_ui_layers": -1}, "num_ui_layers must be an int >= 0"),
        ({"num_ii_layers": 1.5}, "num_ii_layers must be an int >= 0"),
        ({"embedding_dim": 0}, "embedding_dim must be an int >= 1"),
    ],
)
def test_bad_hyper_parameters(data: HeteroData, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _model(data, **kwargs)


def test_bad_modalities() -> None:
    data = toy_graph(modalities={"image": 4})
    del data["item"].image
    with pytest.raises(ValueError, match=r"declares \['image'\], but the item store has no"):
        _model(data)
    data["item"].modalities = []
    with pytest.raises(ValueError, match="at least one item modality"):
        _model(data)
    data["item"].image = torch.randn(NUM_ITEMS - 1, 4)
    data["item"].modalities = ["image"]
    with pytest.raises(
        ValueError, match=r"data\['item'\]\.image: features of shape \[29, 4\], expected \[30, f\]"
    ):
        _model(data)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "knn_k": KNN_K, "num_ui_layers": 3, "cl_weight": 0.001}
    model = build_model("mgcn", data, config)
    assert isinstance(model, MGCN)
    assert model.ui_propagation.num_layers == 3 and model.cl_weight == 0.001
