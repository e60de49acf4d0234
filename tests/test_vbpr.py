"""Tests of the VBPR recommender (He & McAuley, AAAI 2016) on small hand-built graphs."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import VBPR, build_model
from pyg_dhmrec.models.base import pair_scores
from pyg_dhmrec.nn import bpr_loss, embedding_norm_penalty

DIM = 8
PARTS = {"bpr", "reg"}


def _model(data: HeteroData, seed: int = 0, **kwargs) -> VBPR:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "reg_weight": 0.1}
    options.update(kwargs)
    return VBPR(data, **options)


def test_loss_parts_and_hand_values(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data).train()
    parts = model.loss(batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    # Recomputed from the parameters: x_ui = gamma_u.gamma_i + theta_u.(sum_m E_m f_i^m).
    gamma_u, theta_u = model.user_embedding.weight.split(DIM, dim=-1)
    visual = data["item"].image @ model.projections["image"].weight.t()
    visual = visual + data["item"].text @ model.projections["text"].weight.t()
    item = torch.cat([model.item_embedding.weight, visual], dim=-1)

    def score(items: torch.Tensor) -> torch.Tensor:
        u = batch.user
        return (gamma_u[u] * model.item_embedding.weight[items]).sum(-1) + (
            theta_u[u] * visual[items]
        ).sum(-1)

    torch.testing.assert_close(parts["bpr"], bpr_loss(score(batch.pos_item), score(batch.neg_item)))
    user = model.user_embedding.weight
    reg = embedding_norm_penalty(user[batch.user], item[batch.pos_item], item[batch.neg_item])
    torch.testing.assert_close(parts["reg"], 0.1 * reg)
    assert _model(data, reg_weight=0.0).loss(batch)["reg"].item() == 0.0


def test_parameters_and_both_user_halves_learn(data: HeteroData, batch: BPRBatch) -> None:
    # Every parameter gets a gradient: test_model_contract.
    model = _model(data).train()
    sum(model.loss(batch).values()).backward()
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.text.weight",
    }
    assert model.user_embedding.weight.shape == (NUM_USERS, 2 * DIM)
    assert model.item_embedding.weight.shape == (NUM_ITEMS, DIM)
    # Both user halves learn: gamma_u from the ID part, theta_u from the feature part.
    grad = model.user_embedding.weight.grad
    assert grad[:, :DIM].abs().sum() > 0 and grad[:, DIM:].abs().sum() > 0


def test_loss_equals_the_former_formula_with_its_gradients(
    data: HeteroData, batch: BPRBatch
) -> None:
    # the loss gathers the batch rows once for both parts; formerly each part gathered them
    model = _model(data).train().double()
    out = model()
    parts = model.loss(batch, out)
    pos, neg = pair_scores(out.user, out.item, batch)
    reg = embedding_norm_penalty(
        out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
    )
    former = {"bpr": bpr_loss(pos, neg), "reg": 0.1 * reg}
    params = list(model.parameters())
    for key in PARTS:
        torch.testing.assert_close(parts[key], former[key])
    got = torch.autograd.grad(sum(parts.values()), params, retain_graph=True)
    for a, b in zip(got, torch.autograd.grad(sum(former.values()), params)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sync_free", [False, True])
def test_batch_rows_loss_equals_the_full_forward_with_its_gradients(
    data: HeteroData, batch: BPRBatch, sync_free: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loss(batch) projects the batch's items only (distinct ids on the CPU, every row with
    ``sync_free`` as on a GPU); loss(batch, model()) gathers from every item's projection."""
    import pyg_dhmrec.models.vbpr as vbpr_module
    from pyg_dhmrec.models.base import distinct_rows

    monkeypatch.setattr(vbpr_module, "distinct_rows", lambda i: distinct_rows(i, sync_free))
    model = _model(data).train().double()
    assert torch.cat([batch.pos_item, batch.neg_item]).unique().numel() < 2 * batch.user.numel()
    params = list(model.parameters())
    rows, full = model.loss(batch), model.loss(batch, model())
    for key in PARTS:
        torch.testing.assert_close(rows[key], full[key])
    got = torch.autograd.grad(sum(rows.values()), params)
    for a, b in zip(got, torch.autograd.grad(sum(full.values()), params)):
        torch.testing.assert_close(a, b)


def _hand_model() -> VBPR:
    """2 users, 3 items, d = 2; image 2-d and text 1-d features with hand-set parameters."""
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = 2, 3
    data["item"].image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    data["item"].text = torch.tensor([[3.0], [0.0], [-1.0]])
    data["item"].modalities = ["image", "text"]
    edge_index = torch.tensor([[0, 1], [0, 2]])
    data[RATES].edge_index, data[REV_RATES].edge_index = edge_index, edge_index.flip(0)
    model = VBPR(data, embedding_dim=2)
    with torch.no_grad():
        model.projections["image"].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        model.projections["text"].weight.copy_(torch.tensor([[0.5], [1.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.user_embedding.weight.copy_(
            torch.tensor([[1.0, 2.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]])
        )
    return model


def test_block_projection_equals_one_linear_map_of_the_concatenated_features() -> None:
    model = _hand_model()
    out = model()
    # By hand: E_image f^image = [1, 0], [4, -2], [-1, 1]; E_text f^text = [1.5, 3], [0, 0],
    # [-0.5, -1]; their sums are the feature half of the item embedding.
    visual = torch.tensor([[2.5, 3.0], [4.0, -2.0], [-1.5, 0.0]])
    ids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(out.item, torch.cat([ids, visual], dim=-1))
    # The same as E = [E_image, E_text] applied to the concatenation [f^image; f^text].
    e = torch.cat([model.projections["image"].weight, model.projections["text"].weight], dim=1)
    f = torch.cat([model.feature("image"), model.feature("text")], dim=1)
    torch.testing.assert_close(out.item[:, 2:], f @ e.t())
    # Scores by hand: user 0 = gamma [1, 2], theta [1, 0]; user 1 = gamma [0, -1], theta [0, 1].
    expected = torch.tensor([[1 + 2.5, 2 + 4.0, 3 - 1.5], [0 + 3.0, -1 - 2.0, -1 + 0.0]])
    torch.testing.assert_close(out.user @ out.item.t(), expected)
    torch.testing.assert_close(model.eval().full_scores(torch.arange(2)), expected)


def test_modality_representations_sum_to_the_item_embedding() -> None:
    model = _hand_model()
    out = model()
    assert list(out.modalities) == ["image", "text"]
    image, text = out.modalities["image"], out.modalities["text"]
    torch.testing.assert_close(image, torch.tensor([[0, 0, 1, 0], [0, 0, 4, -2], [0, 0, -1, 1.0]]))
    torch.testing.assert_close(
        text, torch.tensor([[0, 0, 1.5, 3], [0, 0, 0, 0], [0, 0, -0.5, -1.0]])
    )
    id_half = torch.cat([model.item_embedding.weight, torch.zeros(3, 2)], dim=-1)
    torch.testing.assert_close(id_half + image + text, out.item)
    # user . [0; E_m f^m] = theta_u^T E_m f^m: the modality's part of the score.
    # By hand: theta_0 = [1, 0], theta_1 = [0, 1] against E_image f^image above.
    torch.testing.assert_close(out.user @ image.t(), torch.tensor([[1, 4, -1], [0, -2, 1.0]]))
    assert out.user is model.user_embedding.weight


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    model = _model(data).train()
    out = model()
    assert list(out.modalities) == list(modalities)
    for rep in out.modalities.values():
        assert rep.shape == (NUM_ITEMS, 2 * DIM) and not rep[:, :DIM].any()
    parts = model.loss(first_batch(data, batch_size=32, seed=1))
    assert set(parts) == PARTS
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0


def test_initialisation_is_xavier_of_the_concatenated_map() -> None:
    data = toy_graph(20, 10, 100, {"image": 500, "text": 300})
    model = VBPR(data, embedding_dim=64)
    expected = math.sqrt(2.0 / (500 + 300 + 64))  # one Xavier-normal [64, 800] map
    weights = torch.cat([p.weight.flatten() for p in model.projections.values()])
    assert abs(weights.std().item() / expected - 1) < 0.03
    for m, p in model.projections.items():
        assert abs(p.weight.std().item() / expected - 1) < 0.05, m
    bound = math.sqrt(6.0 / (20 + 128))  # Xavier-uniform bound of the [20, 2d] user table
    assert model.user_embedding.weight.abs().max() <= bound


def test_bad_inputs(data: HeteroData) -> None:
    with pytest.raises(ValueError, match="at least one item modality"):
        VBPR(toy_graph(modalities={}))
    with pytest.raises(ValueError, match="reg_weight must be >= 0"):
        _model(data, reg_weight=-1.0)
    with pytest.raises(ValueError, match="reg_weight must be >= 0"):
        _model(data, reg_weight=float("nan"))
    with pytest.raises(ValueError, match="embedding_dim must be an int >= 1, got 0"):
        _model(data, embedding_dim=0)
    with pytest.raises(ValueError, match="embedding_dim must be an int >= 1, got 2.5"):
        _model(data, embedding_dim=2.5)
    short = toy_graph(modalities={"image": 4})
    short["item"].image = short["item"].image[:-1]
    with pytest.raises(ValueError, match=r"data\['item'\]\.image: features of shape \[29, 4\]"):
        VBPR(short)


def test_build_model_from_config(data: HeteroData) -> None:
    model = build_model("vbpr", data, {"embedding_dim": DIM, "reg_weight": 0.5, "knn_k": 3})
    assert isinstance(model, VBPR)
    assert model.reg_weight == 0.5 and model.embedding_dim == DIM
