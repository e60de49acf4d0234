"""Tests of the CMDL recommender (Lin et al., ACM TOIS 2025) on small hand-built graphs."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.config import load_config
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import CMDL, build_model, model_keys
from pyg_dhmrec.nn import NCECLUB, info_nce

DIM = 8
KNN_K = 3
PARTS = {"bpr", "reg", "cl", "mi", "critic"}


def _model(data: HeteroData, seed: int = 0, **kwargs) -> CMDL:
    torch.manual_seed(seed)
    # Width-4 critics: a width-1 ReLU critic may start dead on a tiny graph.
    options = {"embedding_dim": DIM, "knn_k": KNN_K, "critic_hidden": 4, "reg_weight": 1e-3}
    options.update(kwargs)
    return CMDL(data, **options)


def _critic_names(model: CMDL) -> set[str]:
    """Parameters of the NCE-CLUB critics (trained by the ``critic`` part only)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NCECLUB):
            names |= {f"{prefix}.{name}" for name, _ in module.named_parameters()}
    return names


def test_loss_parts(data: HeteroData, batch: BPRBatch) -> None:
    parts = _model(data).train().loss(batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    off = _model(data, cl_weight=0.0, mi_weight=0.0, reg_weight=0.0).loss(batch)
    assert off["cl"].item() == 0.0 and off["mi"].item() == 0.0 and off["reg"].item() == 0.0
    assert off["critic"].item() > 0  # the critics still fit (the objective is unweighted)


def test_parameters(data: HeteroData) -> None:
    # Every parameter gets a gradient: test_model_contract.
    names = {name for name, _ in _model(data).named_parameters()}
    expected = {"user_embedding.weight", "item_embedding.weight"}
    for m in ("image", "text"):
        expected |= {f"features.{m}", f"projections.{m}.weight", f"projections.{m}.bias"}
        expected |= {f"gates.{m}.linear.weight", f"gates.{m}.linear.bias"}
        for critic in (f"lower_critics.{m}", f"specific_critics.{m}.critic"):
            expected |= {f"{critic}.mlp.0.weight", f"{critic}.mlp.0.bias", f"{critic}.mlp.2.weight"}
    for pair in ("image__text", "text__image"):
        critic = f"conditional_critics.{pair}.critic"
        expected |= {f"{critic}.mlp.0.weight", f"{critic}.mlp.0.bias", f"{critic}.mlp.2.weight"}
    expected |= {"fusion.attention_proj.weight", "fusion.attention_proj.bias"}
    expected |= {"fusion.attention_query.weight"}
    expected |= {f"fusion.preference.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")}
    expected |= {"common_preference.weight", "common_preference.bias"}
    expected |= {"part_scorer.0.weight", "part_scorer.0.bias", "part_scorer.2.weight"}
    assert names == expected
    model = _model(data)
    assert model.conditional_critics["image__text"].critic.mlp[0].in_features == 3 * DIM


def test_forward_composes_the_parts(data: HeteroData) -> None:
    model = _model(data).eval()
    out = model()
    u = NUM_USERS
    for m, view, specific in zip(model.modalities, out.views, out.specific):
        torch.testing.assert_close(view[u:], out.modalities[m])  # the item rows before fusion
        torch.testing.assert_close(out.common + specific, view)  # C + S_m = Z_m
    weights = model.fusion.attention(out.views)
    torch.testing.assert_close(
        out.common, sum(weights[:, j : j + 1] * v for j, v in enumerate(out.views))
    )
    # Eq. (5)-(7) by hand: gated parts, one global softmax weight per part, ID view + side view.
    gates = [torch.sigmoid(layer(out.id_view)) for layer in model.fusion.preference]
    gated = [g * s for g, s in zip(gates, out.specific)]
    gated.append(torch.sigmoid(model.common_preference(out.id_view)) * out.common)
    scores = model.part_scorer(out.id_view)  # [U + I, 3]
    part_weights = torch.softmax(scores.max(dim=0).values, dim=0)
    side = sum(w * g for w, g in zip(part_weights, gated))
    torch.testing.assert_close(out.side_view, side)
    final = out.id_view + side
    torch.testing.assert_close(out.user, final[:u])
    torch.testing.assert_close(out.item, final[u:])


def test_mutual_information_by_hand_on_item_rows(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data).train()
    torch.manual_seed(0)
    out = model()
    u, items = NUM_USERS, batch.pos_item
    c = out.common[u:][items]  # item rows: the release's user rows numbered like items differ
    z = {m: v[u:][items] for m, v in zip(model.modalities, out.views)}
    s = {m: v[u:][items] for m, v in zip(model.modalities, out.specific)}
    log_n = math.log(len(items))
    mi = critic = 0.0
    for m in ("image", "text"):
        mi += log_n - model.lower_critics[m].info_nce(z[m], c)
        mi += model.specific_critics[m].critic.nce_club(s[m], c)
        critic += log_n - model.specific_critics[m].critic.info_nce(s[m], c)
    for m, n in (("image", "text"), ("text", "image")):
        club = model.conditional_critics[f"{m}__{n}"].critic
        mi += club.nce_club(torch.cat([c, z[n]], dim=-1), z[m])
        critic += log_n - club.info_nce(torch.cat([c, z[n]], dim=-1), z[m])
    got_mi, got_critic = model.mutual_information(out, items)
    torch.testing.assert_close(got_mi, mi)
    torch.testing.assert_close(got_critic, critic)
    # The loss sums the positive and the negative items' terms.
    neg_mi, neg_critic = model.mutual_information(out, batch.neg_item)
    parts = model.loss(batch, out)
    torch.testing.assert_close(parts["mi"], model.mi_weight * (got_mi + neg_mi))
    torch.testing.assert_close(parts["critic"], got_critic + neg_critic)


def test_view_contrast_and_regulariser(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, item_temperature=0.3, user_temperature=0.7, cl_weight=0.5).train()
    torch.manual_seed(0)
    out = model()
    u = NUM_USERS
    cl = info_nce(out.side_view[u:][batch.pos_item], out.id_view[u:][batch.pos_item], 0.3)
    cl = cl + info_nce(out.side_view[:u][batch.user], out.id_view[:u][batch.user], 0.7)
    parts = model.loss(batch, out)
    torch.testing.assert_close(parts["cl"], 0.5 * cl)
    rows = (out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item])
    reg = sum(r.pow(2).sum() for r in rows) / (2 * len(batch.user))
    torch.testing.assert_close(parts["reg"], 1e-3 * reg)


def test_critics_learn_only_from_the_critic_objective(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data).train()
    critics = _critic_names(model)
    assert len(critics) == 4 * 3  # 2 specific + 2 conditional critics, 3 tensors each
    params = dict(model.named_parameters())
    parts = model.loss(batch)
    rest = sum(v for k, v in parts.items() if k != "critic")
    from_critic = torch.autograd.grad(
        parts["critic"], list(params.values()), retain_graph=True, allow_unused=True
    )
    from_rest = torch.autograd.grad(rest, list(params.values()), allow_unused=True)
    for (name, _), g_critic, g_rest in zip(params.items(), from_critic, from_rest):
        if name in critics:  # the critic objective (detached inputs) trains the critics ...
            assert g_critic is not None and g_critic.abs().sum() > 0, name
            assert g_rest is None or g_rest.abs().sum() == 0, name  # ... and nothing else does
        else:  # the encoders (and the lower-bound critics) never see the critic objective
            assert g_critic is None or g_critic.abs().sum() == 0, name
            assert g_rest is not None and g_rest.abs().sum() > 0, name


def test_one_modality() -> None:
    data = toy_graph(modalities={"audio": 6})
    model = _model(data).train()
    assert len(model.specific_critics) == 0 and len(model.conditional_critics) == 0
    out = model()
    torch.testing.assert_close(out.common, out.views[0])
    assert out.specific[0].abs().sum() == 0
    parts = model.loss(first_batch(data))
    assert parts["critic"].item() == 0.0
    items = first_batch(data).pos_item
    mi, critic = model.mutual_information(out, items)
    c = out.common[NUM_USERS:][items]
    torch.testing.assert_close(mi, model.lower_critics["audio"].info_nce_loss(c, c))
    assert list(model().modalities) == ["audio"]


def test_three_modalities_use_every_ordered_pair() -> None:
    data = toy_graph(modalities={"a": 5, "b": 4, "c": 3})
    model = _model(data)
    assert sorted(model.conditional_critics) == ["a__b", "a__c", "b__a", "b__c", "c__a", "c__b"]
    parts = model.train().loss(first_batch(data))
    assert all(torch.isfinite(v) for v in parts.values())


def test_reset_restores_the_features(data: HeteroData) -> None:
    model = _model(data)
    with torch.no_grad():
        model.features["image"].add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.features["image"].detach(), data["item"].image)
    frozen = _model(data, finetune_features=False)
    assert not any(name.startswith("features") for name, _ in frozen.named_parameters())


def test_config_keys_are_constructor_arguments() -> None:
    config = load_config(model="cmdl", dataset="synthetic")
    keys = model_keys("cmdl")
    for key in ("num_ui_layers", "knn_k", "cl_weight", "mi_weight", "critic_hidden"):
        assert key in keys and key in config
    model = build_model(
        "cmdl",
        toy_graph(modalities={"image": 4, "text": 3}),
        {**config, "embedding_dim": 4, "knn_k": 3},
    )
    assert model.mi_weight == config["mi_weight"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"knn_k": NUM_ITEMS + 1}, "knn_k must be <= the number of items"),
        ({"critic_hidden": 0}, "critic_hidden must be an int >= 1, got 0"),
        ({"item_temperature": 0.0}, "item_temperature must be > 0, got 0.0"),
        ({"user_temperature": -1.0}, "user_temperature must be > 0, got -1.0"),
        ({"mi_weight": -0.1}, "mi_weight must be >= 0, got -0.1"),
        ({"num_ui_layers": 1.5}, "num_ui_layers must be an int >= 0, got 1.5"),
    ],
)
def test_bad_settings(data: HeteroData, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model(data, **kwargs)


def test_needs_item_features() -> None:
    with pytest.raises(ValueError, match="CMDL needs at least one item modality"):
        _model(toy_graph())
