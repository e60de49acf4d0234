"""Tests of the BM3 recommender (Zhou et al., WWW 2023) on a tiny hand-built graph."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

import pyg_dhmrec.models.bm3 as bm3_module
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import BM3, build_model
from pyg_dhmrec.nn import cosine_alignment_loss, dropout_view

DIM = 8
PARTS = {"rec", "align", "mask", "reg"}


def _model(data: HeteroData, seed: int = 0, **kwargs) -> BM3:
    torch.manual_seed(seed)
    return BM3(data, **{"embedding_dim": DIM, **kwargs}).train()


def _loss(model: BM3, batch: BPRBatch, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # same dropout masks for equal seeds
    return model.loss(batch)


def _identity_predictor(model: BM3) -> None:
    with torch.no_grad():
        model.predictor.weight.copy_(torch.eye(DIM))
        model.predictor.bias.zero_()


def test_loss_parts(data: HeteroData, batch: BPRBatch) -> None:
    parts = _loss(_model(data), batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    assert _loss(_model(data, reg_weight=0.0), batch)["reg"].item() == 0.0


def test_loss_does_not_depend_on_negatives(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data)
    other = BPRBatch(batch.user, batch.pos_item, (batch.neg_item + 7) % NUM_ITEMS)
    assert not torch.equal(other.neg_item, batch.neg_item)
    first, second = _loss(model, batch), _loss(model, other)
    for key in PARTS:
        assert torch.equal(first[key], second[key]), key


def test_parameters_and_finetuned_feature_rows(data: HeteroData, batch: BPRBatch) -> None:
    # Every parameter gets a gradient: test_model_contract.
    model = _model(data)
    sum(_loss(model, batch).values()).backward()
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        "features.image",
        "features.text",
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.image.bias",
        "projections.text.weight",
        "projections.text.bias",
        "predictor.weight",
        "predictor.bias",
    }
    # Only the batch's positive items' raw features are fine-tuned.
    touched = model.features["image"].grad.abs().sum(-1) > 0
    assert set(touched.nonzero().flatten().tolist()) == set(batch.pos_item.tolist())


def test_frozen_features(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, finetune_features=False)
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith("features") for name in names)
    assert not any(key.startswith(("features", "raw_")) for key in model.state_dict())
    sum(_loss(model, batch).values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(model.feature("image"), data["item"].image)


def test_reset_restores_finetuned_features(data: HeteroData) -> None:
    model = _model(data)
    assert "features.image" in model.state_dict()  # learned, so saved with the model
    with torch.no_grad():
        model.features["image"].add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.features["image"], data["item"].image)


def test_cosine_alignment_hand_computed() -> None:
    online = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0], [4.0, 3.0]])
    # cosines 0, 1/sqrt(2), 24/25
    expected = 1.0 - (0.0 + 1.0 / math.sqrt(2.0) + 24.0 / 25.0) / 3.0
    assert cosine_alignment_loss(online, target).item() == pytest.approx(expected, abs=1e-6)
    assert cosine_alignment_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_alignment_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"two \[B, d\] tensors of one shape"):
        cosine_alignment_loss(online, target[:2])


def test_loss_parts_hand_computed(data: HeteroData, batch: BPRBatch) -> None:
    """No layers, no dropout, identity predictor: every part reduces to plain cosines."""
    model = _model(data, num_ui_layers=0, dropout=0.0, reg_weight=0.5, cl_weight=3.0)
    _identity_predictor(model)
    parts = _loss(model, batch)
    e_u = model.user_embedding.weight.detach()[batch.user]
    e_i = model.item_embedding.weight.detach()[batch.pos_item]

    def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    # h_u = e_u, h_i = e_i + e_i (layer-0 mean plus the residual ID term): cos is scale-free.
    assert parts["rec"].item() == pytest.approx(2 * (1 - cos(e_u, e_i).mean().item()), abs=1e-5)
    align = 0.0
    for m in ("image", "text"):
        proj = model.projections[m]
        h_m = (data["item"][m] @ proj.weight.detach().t() + proj.bias.detach())[batch.pos_item]
        align += 1 - cos(h_m, e_i).mean().item()
    assert parts["align"].item() == pytest.approx(3.0 * align, abs=1e-5)
    assert parts["mask"].item() == pytest.approx(0.0, abs=1e-5)  # view == online w/o dropout
    norms = model.user_embedding.weight.norm() + (2 * model.item_embedding.weight).norm()
    assert parts["reg"].item() == pytest.approx(0.5 * norms.item() / NUM_ITEMS, rel=1e-5)


def test_dropout_view_keeps_the_asked_fraction() -> None:
    torch.manual_seed(0)
    x = torch.ones(200, 100, requires_grad=True)
    view = dropout_view(x, 0.3)
    assert not view.requires_grad  # stop-gradient target
    kept = view != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.02)
    torch.testing.assert_close(view[kept], torch.full_like(view[kept], 1 / 0.7))
    assert torch.equal(dropout_view(x, 0.0), x.detach())
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout p must be in"):
            dropout_view(x, p)


def test_model_target_views_use_its_dropout(
    data: HeteroData, batch: BPRBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    views, rates = [], []

    def recording(x: torch.Tensor, p: float) -> torch.Tensor:
        out = dropout_view(x, p)
        views.append(out)
        rates.append(p)
        return out

    monkeypatch.setattr(bm3_module, "dropout_view", recording)
    _loss(_model(data, embedding_dim=32, dropout=0.3), batch)
    assert rates == [0.3] * 4  # user, item, and one per modality
    assert all(not v.requires_grad for v in views)
    zeros = torch.cat([(v == 0).flatten() for v in views]).float().mean().item()
    assert zeros == pytest.approx(0.3, abs=0.03)


def test_targets_get_no_gradient(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, dropout=0.0)
    out = model()
    parts = model.loss(batch, out)
    users, items = batch.user, batch.pos_item
    online = out.online
    # rec: h_u is reached only through the predicted user, h_i only through the predicted item.
    got_u, got_i = torch.autograd.grad(parts["rec"], [online.user, online.item], retain_graph=True)
    ref = 1 - F.cosine_similarity(out.user[users], online.item[items].detach()).mean()
    torch.testing.assert_close(got_u, torch.autograd.grad(ref, online.user, retain_graph=True)[0])
    ref = 1 - F.cosine_similarity(out.item[items], online.user[users].detach()).mean()
    torch.testing.assert_close(got_i, torch.autograd.grad(ref, online.item, retain_graph=True)[0])
    # mask: the projected feature h_m is reached only through the predicted feature (the
    # loss projects the batch's items only: the rows of the full h_m).
    image = model.projections["image"].weight
    got = torch.autograd.grad(parts["mask"], image, retain_graph=True)[0]
    h_m = online.features["image"].table()
    ref = 2.0 * (1 - F.cosine_similarity(out.modalities["image"][items], h_m[items].detach()))
    torch.testing.assert_close(got, torch.autograd.grad(ref.mean(), image, retain_graph=True)[0])
    # align: the ID embeddings are a target only, so they get no gradient from it.
    parts["align"].backward()
    assert model.user_embedding.weight.grad is None
    assert model.item_embedding.weight.grad is None
    assert model.projections["image"].weight.grad.abs().sum() > 0


def test_forward_embeddings(data: HeteroData) -> None:
    model = _model(data).eval()
    out = model()
    assert set(out.modalities) == {"image", "text"}
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    ui = (ego + model.adjacency.matrix.to_dense() @ ego) / 2  # one layer, mean over layers 0..1
    pred = model.predictor
    torch.testing.assert_close(out.user, pred(ui[:NUM_USERS]))
    torch.testing.assert_close(out.item, pred(ui[NUM_USERS:] + model.item_embedding.weight))
    for m, rep in out.modalities.items():
        assert rep.shape == (NUM_ITEMS, DIM)
        torch.testing.assert_close(rep, pred(model.projections[m](data["item"][m])))


def test_full_scores_use_the_predicted_online_embeddings(data: HeteroData) -> None:
    # Shape, masking and determinism: test_model_contract.
    model = _model(data).eval()
    scores = model.full_scores(torch.arange(NUM_USERS))
    out = model()
    torch.testing.assert_close(scores, out.user @ out.item.t())
    online = out.online
    assert not torch.allclose(scores, online.user @ online.item.t())


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    model = _model(data)
    parts = _loss(model, first_batch(data, batch_size=32, seed=1))
    assert set(parts) == PARTS
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0
    assert set(model().modalities) == set(modalities)


def test_bad_inputs(data: HeteroData) -> None:
    bare = toy_graph(modalities={})
    with pytest.raises(ValueError, match="at least one item modality"):
        BM3(bare)
    for kwargs, message in (
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.2}, r"dropout must be in \[0, 1\), got -0.2"),
        ({"reg_weight": -1.0}, "reg_weight must be >= 0"),
        ({"cl_weight": -1.0}, "cl_weight must be >= 0"),
        ({"embedding_dim": 0}, "embedding_dim must be an int >= 1, got 0"),
        ({"num_ui_layers": -1}, "num_ui_layers must be an int >= 0, got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            BM3(data, **kwargs)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "num_ui_layers": 2, "dropout": 0.3, "reg_weight": 0.01}
    model = build_model("bm3", data, {**config, "cl_weight": 1.0, "finetune_features": False})
    assert isinstance(model, BM3)
    assert model.ui_propagation.num_layers == 2 and model.dropout == 0.3
    assert (model.reg_weight, model.cl_weight, model.finetune_features) == (0.01, 1.0, False)


@pytest.mark.parametrize("finetune", [True, False])
def test_batch_row_loss_equals_the_full_table_formula(
    data: HeteroData, batch: BPRBatch, finetune: bool
) -> None:
    """Issue 17: the loss predicts and projects only the batch's rows; the previous
    computation (full predicted and projected tables, then the batch's rows) gives the same
    parts, the same gradients and the same dropout masks (random stream)."""
    model = _model(data, dropout=0.4, finetune_features=finetune)
    out = model()
    torch.manual_seed(3)
    got = model.loss(batch, out)
    after_got = torch.rand(3)
    torch.manual_seed(3)
    online, p = out.online, model.dropout
    users, items = batch.user, batch.pos_item
    features = {m: h.table() for m, h in online.features.items()}
    user_target = dropout_view(online.user[users], p)
    item_target = dropout_view(online.item[items], p)
    predicted_user, predicted_item = model.predictor(online.user), model.predictor(online.item)
    want = {
        "rec": cosine_alignment_loss(predicted_user[users], item_target)
        + cosine_alignment_loss(predicted_item[items], user_target),
        "align": 0.0,
        "mask": 0.0,
    }
    for m in model.modalities:
        predicted = model.predictor(features[m])[items]
        want["align"] = want["align"] + cosine_alignment_loss(predicted, item_target)
        want["mask"] = want["mask"] + cosine_alignment_loss(
            predicted, dropout_view(features[m][items], p)
        )
    want = {k: model.cl_weight * v if k != "rec" else v for k, v in want.items()}
    torch.testing.assert_close(torch.rand(3), after_got)
    params = [q for q in model.parameters() if q.requires_grad]
    for key, value in want.items():
        torch.testing.assert_close(got[key], value)
        got_grads = torch.autograd.grad(got[key], params, retain_graph=True, allow_unused=True)
        want_grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        for g, w in zip(got_grads, want_grads):
            assert (g is None) == (w is None)
            if g is not None:
                torch.testing.assert_close(g, w)
    # the full tables, read from the embeddings, are the predictor's outputs
    torch.testing.assert_close(out.user, predicted_user)
    torch.testing.assert_close(out.item, predicted_item)
