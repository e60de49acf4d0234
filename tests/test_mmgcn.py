"""MMGCN (Wei et al., MM 2019) on small hand-built graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.models import MMGCN
from pyg_dhmrec.nn import bpr_loss

DIM, FEATURE_DIM = 8, 6


def _model(modalities: dict[str, int], **kwargs) -> MMGCN:
    torch.manual_seed(0)
    data = toy_graph(12, 10, 40, modalities)
    options = {"embedding_dim": DIM, "feature_dim": FEATURE_DIM, "num_ui_layers": 2}
    return MMGCN(data, **{**options, **kwargs})


def test_id_embeddings_and_preferences_are_trained_parameters() -> None:
    """The paper's u_id and u_m are parameters (the reference code's never get a gradient)."""
    model = _model({"image": 5, "text": 3}).train()
    names = dict(model.named_parameters())
    trained = ["user_embedding.weight", "item_embedding.weight"]
    trained += ["preferences.image", "preferences.text"]
    assert set(trained) <= set(names)
    batch = first_batch(toy_graph(12, 10, 40), batch_size=16)
    sum(model.loss(batch).values()).backward()
    for name in trained:
        grad = names[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # Adam moves them.
    before = {n: names[n].detach().clone() for n in trained}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.step()
    for name in trained:
        assert not torch.equal(before[name], names[name].detach()), name


@pytest.mark.parametrize(
    ("feature_width", "feature_dim"),
    # widening projection, layer 0 narrower than the IDs; widening, W_3 before the mean;
    # narrowing projection, W_3 before the mean
    [(5, FEATURE_DIM), (5, 12), (20, 12)],
)
def test_forward_matches_the_layer_equations_by_hand(feature_width: int, feature_dim: int) -> None:
    """One modality, one layer, recomputed with dense tensors in the paper's order."""
    model = _model({"image": feature_width}, num_ui_layers=1, feature_dim=feature_dim).eval()
    with torch.no_grad():  # biases start at zero: make every one of them count
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    data = toy_graph(12, 10, 40, {"image": feature_width})
    users, items = data["user", "rates", "item"].edge_index
    n = 22
    adj = torch.zeros(n, n)
    adj[users, items + 12] = 1.0
    adj[items + 12, users] = 1.0
    mean = adj / adj.sum(1, keepdim=True)
    layer = model.layers["image"][0]
    x = torch.cat([model.preferences["image"], model.projections["image"](data["item"].image)])
    x = F.normalize(x, dim=-1)
    ids = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h = mean @ F.leaky_relu(x @ layer.aggregation.weight.t())
    x_hat = F.leaky_relu(layer.self_transform(x)) + ids
    expected = F.leaky_relu(layer.neighbour_transform(h) + x_hat)
    out = model()
    torch.testing.assert_close(torch.cat([out.user, out.item]), expected)
    torch.testing.assert_close(out.modalities["image"], expected[12:])


@pytest.mark.parametrize("modalities", [{"image": 5}, {"a": 4, "b": 3, "c": 2}])
def test_scores_sum_the_modality_networks(modalities: dict[str, int]) -> None:
    model = _model(modalities).eval()
    out = model()
    assert list(out.modalities) == list(modalities)
    assert out.user.shape == (12, DIM) and out.item.shape == (10, DIM)
    torch.testing.assert_close(out.item, sum(out.modalities.values()))
    ids = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    users = sum(model.modality_representation(m, ids)[:12] for m in modalities)
    torch.testing.assert_close(out.user, users)


def test_loss_parts_by_hand() -> None:
    model = _model({"image": 5}, reg_weight=0.5).train()
    batch = first_batch(toy_graph(12, 10, 40), batch_size=16)
    parts = model.loss(batch)
    out = model()
    pos = (out.user[batch.user] * out.item[batch.pos_item]).sum(-1)
    neg = (out.user[batch.user] * out.item[batch.neg_item]).sum(-1)
    torch.testing.assert_close(parts["bpr"], bpr_loss(pos, neg))
    items = torch.cat([batch.pos_item, batch.neg_item])
    reg = model.user_embedding.weight[batch.user].pow(2).mean()
    reg = reg + model.item_embedding.weight[items].pow(2).mean()
    reg = reg + model.preferences["image"][batch.user].pow(2).mean()
    torch.testing.assert_close(parts["reg"], 0.5 * reg)


@pytest.mark.parametrize(
    ("key", "value"), [("num_ui_layers", 0), ("feature_dim", 0), ("reg_weight", -1.0)]
)
def test_bad_settings_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        _model({"image": 5}, **{key: value})


def test_raw_modalities_skip_the_projection() -> None:
    """A raw modality's layer-0 items are its features, its preferences as wide as they are."""
    model = _model({"image": 5, "audio": 3}, num_ui_layers=1, raw_modalities=["audio"]).eval()
    assert set(model.projections) == {"image"}
    assert model.preferences["audio"].shape == (12, 3)
    assert model.preferences["image"].shape == (12, FEATURE_DIM)
    data = toy_graph(12, 10, 40, {"image": 5, "audio": 3})
    users, items = data["user", "rates", "item"].edge_index
    adj = torch.zeros(22, 22)
    adj[users, items + 12] = 1.0
    adj[items + 12, users] = 1.0
    mean = adj / adj.sum(1, keepdim=True)
    layer = model.layers["audio"][0]
    x = F.normalize(torch.cat([model.preferences["audio"], data["item"].audio]), dim=-1)
    ids = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h = mean @ F.leaky_relu(x @ layer.aggregation.weight.t())
    x_hat = F.leaky_relu(layer.self_transform(x)) + ids
    expected = F.leaky_relu(layer.neighbour_transform(h) + x_hat)
    torch.testing.assert_close(model().modalities["audio"], expected[12:])


@pytest.mark.parametrize("value", [["text"], "audio", 3])
def test_raw_modalities_must_name_modalities_of_the_dataset(value: object) -> None:
    with pytest.raises(ValueError, match="raw_modalities"):
        _model({"image": 5, "audio": 3}, raw_modalities=value)
