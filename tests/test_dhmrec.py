"""Tests of the DHMRec recommender (Zhan et al., AAAI 2026) on a tiny hand-built graph."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import NUM_EDGES, NUM_ITEMS, NUM_USERS, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.graph import (
    knn_adjacency,
    normalized_adjacency,
    user_item_matrix,
    weighted_sum,
)
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import DHMRec, build_model
from pyg_dhmrec.models.base import distinct_rows
from pyg_dhmrec.models.dhmrec import ABLATIONS
from pyg_dhmrec.nn import (
    jensen_shannon_divergence,
    logit_pooling,
    orthogonality_loss,
    score_distribution_kl,
)

DIM = 8
KNN_K = 3
WEIGHTS = {"image": 0.1, "text": 0.9}
ALL_PARTS = {"bpr", "jsd", "orth", "kl", "reg"}


def _make_data(extra_modalities: dict[str, int] | None = None, text: bool = True) -> HeteroData:
    """40 users, 30 items, 400 uniformly drawn interactions; image 16-d, text 8-d (unless
    ``text`` is false), then ``extra_modalities``."""
    modalities = {"image": 16, **({"text": 8} if text else {}), **(extra_modalities or {})}
    return toy_graph(modalities=modalities, skewed=False)


@pytest.fixture(scope="module")
def data() -> HeteroData:
    return _make_data()


def _model(data: HeteroData, seed: int = 0, **kwargs) -> DHMRec:
    torch.manual_seed(seed)
    options = {
        "embedding_dim": DIM,
        "knn_k": KNN_K,
        "modality_weights": WEIGHTS,
        "num_ui_layers": 2,
        "num_ii_layers": 1,
    }
    options.update(kwargs)
    return DHMRec(data, **options)


def _train_loss(model: DHMRec, batch: BPRBatch) -> dict[str, torch.Tensor]:
    model.train()
    model.on_train_epoch_start()
    return model.loss(batch)


def _assert_all_gradients(model: DHMRec) -> None:
    missing = []
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if p.grad.abs().sum() == 0:
            missing.append(name)
    assert not missing, f"zero gradient: {missing}"


# ---------------------------------------------------------------- the loss
# Every parameter gets a gradient and one step lowers the loss: test_model_contract.


def test_loss_parts_full_model(data: HeteroData, batch: BPRBatch) -> None:
    parts = _train_loss(_model(data), batch)
    assert set(parts) == ALL_PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value.item() >= 0, key


def test_loss_parts_equal_their_definitions(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, alpha_mm=0.6, gamma_dis=0.3, gamma_kl=0.7, gamma_reg=0.01)
    parts = _train_loss(model, batch)
    with torch.no_grad():
        emb = model()  # train mode: same pruned graph as the loss
        final = emb.id + 0.6 * emb.mm
        user_f, item_f = final[:NUM_USERS], final[NUM_USERS:]
        pos = (user_f[batch.user] * item_f[batch.pos_item]).sum(-1)
        neg = (user_f[batch.user] * item_f[batch.neg_item]).sum(-1)
        bpr = -torch.log(torch.sigmoid(pos - neg)).mean()  # Eq. 24, mean over the batch
        items = torch.unique(torch.cat([batch.pos_item, batch.neg_item]))
        commons = [emb.commons[m][items] for m in ("image", "text")]
        jsd = 0.3 * jensen_shannon_divergence(commons)
        orth = 0.3 * (
            orthogonality_loss(emb.commons["image"][items], emb.specifics["image"][items])
            + orthogonality_loss(emb.commons["text"][items], emb.specifics["text"][items])
        )
        users = torch.unique(batch.user)
        mm, idv = emb.mm, emb.id
        kl = 0.7 * score_distribution_kl(
            mm[:NUM_USERS][users], mm[NUM_USERS:], idv[:NUM_USERS][users], idv[NUM_USERS:]
        )
        ego_u = model.user_embedding.weight[batch.user]
        ego_i = model.item_embedding.weight[batch.pos_item]
        ego_j = model.item_embedding.weight[batch.neg_item]
        sq = ego_u.pow(2).sum() + ego_i.pow(2).sum() + ego_j.pow(2).sum()
        reg = 0.01 * sq / (2 * len(batch))
    expected = {"bpr": bpr, "jsd": jsd, "orth": orth, "kl": kl, "reg": reg}
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-7), key
    assert parts["kl"].item() > 0 and parts["jsd"].item() > 0 and parts["orth"].item() > 0


@pytest.mark.parametrize("detach", [False, True])
def test_kl_detach_id_keeps_the_value_and_stops_the_id_gradient(
    data: HeteroData, batch: BPRBatch, detach: bool
) -> None:
    """``kl_detach_id``: the same KL value (same seed), no KL gradient into the user ID table
    (the item table still gets one through the collaborative gates of the multimodal side,
    Eq. 3); without it the user table gets one. The multimodal side gets one either way."""
    model = _model(data, kl_detach_id=detach)
    kl = _train_loss(model, batch)["kl"]
    reference = _train_loss(_model(data), batch)["kl"]
    assert kl.item() == pytest.approx(reference.item(), rel=1e-6)
    mm_side = [p for a in model.fusion.attentions for p in a.outer_norm.parameters()]
    grads = torch.autograd.grad(kl, [model.user_embedding.weight, *mm_side], allow_unused=True)
    assert (grads[0] is None) == detach
    assert detach or grads[0].norm() > 0
    assert all(g is not None and g.norm() > 0 for g in grads[1:])


def test_sampled_kl_is_the_kl_over_the_drawn_items(data: HeteroData, batch: BPRBatch) -> None:
    """``kl_items = n``: Eq. 20's softmax over the ``n`` items of one uniform draw, the same
    for both sides, recomputed from the RNG state the step started with; the other parts
    are unchanged, and the next step draws again."""
    n = 7
    model = _model(data, gamma_kl=0.7, kl_items=n)
    exact = _model(data, gamma_kl=0.7)
    exact.load_state_dict(model.state_dict())
    model.train()
    model.on_train_epoch_start()
    out = model()  # both losses read these embeddings
    state = torch.get_rng_state()
    parts = model.loss(batch, out)
    torch.set_rng_state(state)
    sample = torch.randperm(NUM_ITEMS)[:n]
    assert torch.unique(sample).numel() == n
    with torch.no_grad():
        users = torch.unique(batch.user)
        mm, idv = out.mm.detach(), out.id.detach()
        kl = 0.7 * score_distribution_kl(
            mm[:NUM_USERS][users],
            mm[NUM_USERS:][sample],
            idv[:NUM_USERS][users],
            idv[NUM_USERS:][sample],
        )
        everything = exact.loss(batch, out)
    assert parts["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert parts["kl"].item() != pytest.approx(everything["kl"].item(), rel=1e-3)
    for key in ALL_PARTS - {"kl"}:
        assert parts[key].item() == pytest.approx(everything[key].item(), rel=1e-6), key
    assert model.loss(batch, out)["kl"].item() != pytest.approx(parts["kl"].item(), rel=1e-6)


@pytest.mark.parametrize("n", [NUM_ITEMS, NUM_ITEMS + 5])
def test_sampled_kl_with_every_item_is_the_exact_kl(
    data: HeteroData, batch: BPRBatch, n: int
) -> None:
    """``kl_items >= |I|`` draws nothing: the loss is the exact one, bit for bit."""
    sampled = _train_loss(_model(data, kl_items=n), batch)
    exact = _train_loss(_model(data), batch)
    for key in ALL_PARTS:
        assert torch.equal(sampled[key], exact[key]), key


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_kl_items_checked(data: HeteroData, bad) -> None:
    with pytest.raises(ValueError, match="kl_items must be a positive integer or null"):
        _model(data, kl_items=bad)


def test_a_training_step_attends_only_its_batch_users(data: HeteroData, batch: BPRBatch) -> None:
    """Eqs. 18-19 run for the batch's distinct users (and every item); the full tables of the
    Embeddings contract are computed on request, with the same rows."""
    model = _model(data)
    model.train()
    model.on_train_epoch_start()
    out = model()
    asked = []
    compute = out.mm_users.compute
    out.mm_users.compute = lambda rows: asked.append(rows) or compute(rows)  # noqa: E731
    parts = model.loss(batch, out)
    users = torch.unique(batch.user)
    assert len(asked) == 1 and torch.equal(asked[0], users)
    full = out.user  # every user, once
    assert len(asked) == 2 and asked[1] is None
    torch.testing.assert_close(out.mm_users.rows(users), out.mm[:NUM_USERS][users])
    assert len(asked) == 2  # rows now come from the table
    torch.testing.assert_close(full, out.id[:NUM_USERS] + model.alpha_mm * out.mm[:NUM_USERS])
    # The loss of the rows is the loss of the full tables.
    torch.testing.assert_close(sum(model.loss(batch, out).values()), sum(parts.values()))


def test_attention_maps_from_the_items_equal_the_maps_over_all_nodes(data: HeteroData) -> None:
    """Eqs. 15-16 with users = R E_I (Eq. 14): the maps formed from the items and R^T users
    equal AttentionFusion.attention_maps over users and items, in value and gradient."""
    model = _model(data).double()
    torch.manual_seed(5)
    items = torch.randn(NUM_ITEMS, len(model.views) * DIM, dtype=torch.float64)
    items.requires_grad_(True)
    weights = [torch.randn(DIM, DIM, dtype=torch.float64) for _ in model.views]
    got, want = [], []
    for maps_of, out in ((model._attention_maps, got), (None, want)):
        users = model.user_item(items)
        if maps_of is None:
            maps = model.fusion.attention_maps([users, items])
        else:
            maps = maps_of(users, items)
        loss = sum((m * w).sum() for m, w in zip(maps, weights))
        params = [items, model.fusion.fuse.weight, model.fusion.attentions[0].query.weight]
        out.append((maps, torch.autograd.grad(loss, params)))
    for a, b in zip(got[0][0], want[0][0]):
        torch.testing.assert_close(a, b)
    for a, b in zip(got[0][1], want[0][1]):
        torch.testing.assert_close(a, b)
    assert got[0][1][0].abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected a \[d, 3 \* d\] cross product"):
        model.fusion.maps_from_cross(torch.zeros(DIM, DIM, dtype=torch.float64), 5)


def test_the_sync_free_loss_equals_the_distinct_rows_loss(
    data: HeteroData, batch: BPRBatch, monkeypatch
) -> None:
    """On an accelerator the loss reads every batch row with the repeats weighted 0 (no
    torch.unique): the same parts and gradients as over the distinct users and items."""
    import functools

    import pyg_dhmrec.models.dhmrec as module

    model = _model(data, gamma_kl=0.7)
    model.train()
    model.on_train_epoch_start()
    distinct = model.loss(batch)
    params = list(model.parameters())
    want = torch.autograd.grad(sum(distinct.values()), params)
    monkeypatch.setattr(module, "distinct_rows", functools.partial(distinct_rows, sync_free=True))
    sync_free = model.loss(batch)
    for key, value in distinct.items():
        torch.testing.assert_close(sync_free[key], value)
    for got, expected in zip(torch.autograd.grad(sum(sync_free.values()), params), want):
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- the forward pass by hand


def _dense_views(model: DHMRec, data: HeteroData) -> list[torch.Tensor]:
    """Eqs. 7-14 with dense matrices: user-item views (mean of L + 1 = 3 layers on the full
    graph, users initialised as R~ X), then one item-item hop and users = R~ E_I."""
    train = data[RATES].edge_index
    adj = normalized_adjacency(train, NUM_USERS, NUM_ITEMS).to_dense()
    r = user_item_matrix(train, NUM_USERS, NUM_ITEMS).to_dense()
    image = knn_adjacency(data["item"].image, KNN_K).to_dense()
    text = knn_adjacency(data["item"].text, KNN_K).to_dense()
    ii = {"image": image, "text": text, "common": 0.1 * image + 0.9 * text}
    inputs = model._disentangle()[0]
    views = []
    for view in model.views:
        e0 = torch.cat([r @ inputs[view], inputs[view]])
        e1 = adj @ e0
        e2 = adj @ e1
        e = (e0 + e1 + e2) / 3
        user_v, item_v = e[:NUM_USERS], e[NUM_USERS:]
        if model.item_graphs:
            item_v = ii[view] @ item_v
            user_v = r @ item_v
        views.append(torch.cat([user_v, item_v]))
    return views


@pytest.mark.parametrize("center", [True, False])
def test_disentangled_inputs_by_hand(data: HeteroData, center: bool) -> None:
    model = _model(data, center_features=center)
    with torch.no_grad():
        inputs, commons, specifics = model._disentangle()
        assert list(inputs) == ["common", "image", "text"]
        expected_commons = []
        for m in ("image", "text"):
            enc, gate = model.encoders[m], model.gates[m]
            x = data["item"][m]
            if center:  # each dimension's mean over the items subtracted
                x = x - x.sum(0) / x.size(0)
            z = x @ enc.projection.weight.t()  # Eq. 1
            c = z @ enc.common.weight.t() + enc.common.bias  # Eq. 2
            p = z @ enc.private.weight.t() + enc.private.bias
            ids = model.item_embedding.weight
            s = p * torch.sigmoid(ids @ gate.linear.weight.t() + gate.linear.bias)  # Eq. 3
            assert torch.allclose(commons[m], c, atol=1e-5), m
            assert torch.allclose(specifics[m], s, atol=1e-5), m
            assert torch.allclose(inputs[m], s, atol=1e-5), m
            expected_commons.append(c)
        mean_sigmoid = (torch.sigmoid(expected_commons[0]) + torch.sigmoid(expected_commons[1])) / 2
        assert torch.allclose(inputs["common"], torch.logit(mean_sigmoid), atol=1e-4)  # Eq. 5
        assert torch.allclose(inputs["common"], logit_pooling(expected_commons), atol=1e-5)


def test_multimodal_embedding_by_hand(data: HeteroData) -> None:
    model = _model(data)
    model.eval()
    with torch.no_grad():
        emb = model()
        views = _dense_views(model, data)
        assert emb.mm.shape == (NUM_USERS + NUM_ITEMS, DIM)
        assert torch.allclose(emb.mm, model.fusion(views), atol=1e-4)
        # id view: LightGCN mean over 3 layers of the full graph in eval mode (Eqs. 7-8).
        adj = normalized_adjacency(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        expected_id = (ego + adj @ ego + adj @ (adj @ ego)) / 3
        assert torch.allclose(emb.id, expected_id, atol=1e-5)
        final = expected_id + 1.0 * model.fusion(views)  # Eq. 22 with alpha_mm = 1
        assert torch.allclose(torch.cat([emb.user, emb.item]), final, atol=1e-4)


def test_no_af_fuses_by_the_mean_of_the_views(data: HeteroData) -> None:
    model = _model(data, ablations=["no_af"])
    assert not hasattr(model, "fusion")
    model.eval()
    with torch.no_grad():
        mm = model().mm
        views = _dense_views(model, data)
        assert len(views) == 3
        assert mm.shape == (NUM_USERS + NUM_ITEMS, DIM)
        assert torch.allclose(mm, (views[0] + views[1] + views[2]) / 3, atol=1e-5)
        assert not torch.allclose(mm, views[0] + views[1] + views[2], atol=1e-3)


def test_no_ii_views_are_the_user_item_outputs(data: HeteroData) -> None:
    model = _model(data, ablations=["no_ii", "no_af"])
    model.eval()
    with torch.no_grad():
        views = _dense_views(model, data)  # item_graphs is False: no kNN hop
        assert torch.allclose(model().mm, sum(views) / 3, atol=1e-5)


# ---------------------------------------------------------------- scale of the two parts (issue 16)


def test_output_scale_is_the_id_scale(data: HeteroData) -> None:
    """Eq. 18's outer LN times s = per-entry RMS of the propagated ID embeddings / sqrt(V)."""
    model = _model(data)
    adj = normalized_adjacency(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    expected_id = (ego + adj @ ego + adj @ (adj @ ego)) / 3  # Eqs. 7-8, full graph
    scale = expected_id.pow(2).mean().sqrt().item() / math.sqrt(3)  # V = 3 views
    for attention in model.fusion.attentions:
        assert attention.output_scale.item() == pytest.approx(scale, rel=1e-5)
        # the layer norm itself starts at PyTorch's affine (gain 1, bias 0)
        assert torch.equal(attention.outer_norm.weight, torch.ones(DIM))
        assert torch.equal(attention.outer_norm.bias, torch.zeros(DIM))
    # Re-initialising new ID tables moves the scale with them.
    with torch.no_grad():
        model.user_embedding.weight.mul_(0)
    model.reset_parameters()
    assert model.fusion.attentions[0].output_scale.item() == pytest.approx(
        model._id_scale() / math.sqrt(3), rel=1e-5
    )


def test_output_scale_is_restored_from_the_state_dict(data: HeteroData) -> None:
    """s is computed from the initial ID tables: a model built under another seed and loaded
    from a state dict must rank with the saved s, not its own."""
    saved, loaded = _model(data, seed=0), _model(data, seed=1)
    assert loaded.fusion.attentions[0].output_scale != saved.fusion.attentions[0].output_scale
    loaded.load_state_dict(saved.state_dict())
    saved.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded().item, saved().item)


@pytest.mark.parametrize("feature_scale", [1.0, 100.0])
@pytest.mark.parametrize("alpha_mm", [1.0, 1.5])
def test_first_loss_near_ln2_and_parts_balanced(
    data: HeteroData, batch: BPRBatch, alpha_mm: float, feature_scale: float
) -> None:
    """N(0, 1) features (and 100x those), d = 64: the first BPR loss is within 2x of ln 2 and
    the ID and alpha_mm-weighted multimodal parts of Eq. 22 are within 10x in row norm (with
    unit-gain layer norms: 41.8 and 27x at alpha_mm = 1, 94 and 41x at 1.5)."""
    scaled = data.clone()
    for m in ("image", "text"):
        scaled["item"][m] = data["item"][m] * feature_scale
    model = _model(scaled, embedding_dim=64, alpha_mm=alpha_mm)
    model.train()
    model.on_train_epoch_start()
    out = model()
    bpr = model.loss(batch, out)["bpr"].item()
    assert math.log(2) / 2 < bpr < 2 * math.log(2)
    parts = model.ranking_parts(out)
    id_norm = parts["id"].norm(dim=-1).mean().item()
    mm_norm = parts["mm"].norm(dim=-1).mean().item()
    assert 0.1 < mm_norm / id_norm < 10
    assert torch.allclose(parts["id"] + parts["mm"], torch.cat([out.user, out.item]))


# ---------------------------------------------------------------- evaluation


def test_training_prunes_the_id_graph_and_evaluation_uses_the_full_one(data: HeteroData) -> None:
    # Full-graph evaluation and its determinism for every pruning model: test_model_contract.
    model = _model(data)
    train = data[RATES].edge_index
    full = normalized_adjacency(train, NUM_USERS, NUM_ITEMS).to_dense()
    model.train()
    model.on_train_epoch_start()
    pruned = model.pruning()
    # edge_dropout 0.8: floor(400 * 0.2) = 80 kept edges, stored in both directions.
    assert pruned._nnz() == 2 * math.floor(NUM_EDGES * (1 - 0.8))
    with torch.no_grad():
        train_out = model()
    model.eval()
    assert torch.allclose(model.pruning().to_dense(), full, atol=1e-7)
    with torch.no_grad():
        eval_out = model()
    assert not torch.allclose(eval_out.id, train_out.id, atol=1e-4)  # pruned in training
    # Only the ID view is pruned: the modality views propagate over the full graph.
    torch.testing.assert_close(eval_out.mm, train_out.mm)


# ---------------------------------------------------------------- item-item graphs


def test_common_item_graph_is_the_weighted_sum(data: HeteroData) -> None:
    model = _model(data)
    image = knn_adjacency(data["item"].image, KNN_K)
    text = knn_adjacency(data["item"].text, KNN_K)
    graphs = {view: op.matrix.to_dense() for view, op in model.item_item.items()}
    assert list(graphs) == ["image", "text", "common"]
    assert torch.allclose(graphs["image"], image.to_dense())
    assert torch.allclose(graphs["text"], text.to_dense())
    expected = weighted_sum([image, text], [0.1, 0.9]).to_dense()
    assert torch.allclose(graphs["common"], expected, atol=1e-7)
    assert torch.allclose(
        graphs["common"], 0.1 * image.to_dense() + 0.9 * text.to_dense(), atol=1e-7
    )
    for op in model.item_item.values():
        torch.testing.assert_close(op.transpose.to_dense(), op.matrix.to_dense().t())
    # kNN graph: k = 3 entries per row.
    assert model.item_item["image"].matrix._nnz() == NUM_ITEMS * KNN_K


@pytest.mark.parametrize(
    "weights",
    [{"image": 0.1}, {"image": 0.1, "text": 0.9, "audio": 0.5}, {"image": 0.1, "txt": 0.9}],
)
def test_mismatched_modality_weights_raise(data: HeteroData, weights: dict) -> None:
    with pytest.raises(ValueError, match="one weight per modality"):
        _model(data, modality_weights=weights)


# ---------------------------------------------------------------- ablations


def _param_names(model: DHMRec) -> set[str]:
    return {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_removes_exactly_its_part(
    ablation: str, data: HeteroData, batch: BPRBatch
) -> None:
    full_names = _param_names(_model(data))
    model = _model(data, ablations=[ablation])
    names = _param_names(model)
    buffers = {name for name, _ in model.named_buffers()}

    # (a) loss keys
    parts = _train_loss(model, batch)
    expected_keys = {
        "no_dis": ALL_PARTS - {"jsd", "orth"},
        "no_kl": ALL_PARTS - {"kl"},
    }.get(ablation, ALL_PARTS)
    assert set(parts) == expected_keys
    assert all(torch.isfinite(v) for v in parts.values())

    # (b) parameters and buffers
    if ablation == "no_dis":
        assert not any("encoders" in n or "gates" in n for n in names)
        assert {"projections.image.weight", "projections.text.weight"} <= names
        assert model.views == ["image", "text"]
        assert model.fusion.fuse.in_features == 2 * DIM
        assert set(model.item_item) == {"image", "text"}  # no common view, no common graph
    else:
        assert not any("projections" in n for n in names)
    if ablation == "no_af":
        assert not any("fusion" in n for n in names)
        assert names == {n for n in full_names if "fusion" not in n}
    if ablation == "no_pnf":
        assert not any("alpha_pos" in n or "alpha_neg" in n for n in names)
        assert any("fusion" in n for n in names)
        assert names == {n for n in full_names if "alpha" not in n}
    if ablation == "no_ii":
        assert not hasattr(model, "item_item")
        assert not any(b.startswith("item_item") for b in buffers)
        assert names == full_names
    else:
        assert "item_item.image.matrix" in buffers
    if ablation == "no_kl":
        assert names == full_names

    # (c) every remaining parameter still learns
    model = _model(data, ablations=[ablation])
    sum(_train_loss(model, batch).values()).backward()
    _assert_all_gradients(model)


def test_unknown_ablation_raises(data: HeteroData) -> None:
    with pytest.raises(ValueError, match=r"unknown DHMRec ablation\(s\) \['no_gate'\]") as info:
        _model(data, ablations=["no_kl", "no_gate"])
    for name in ABLATIONS:
        assert name in str(info.value)


def test_full_model_buffers(data: HeteroData) -> None:
    model = _model(data)
    buffers = {name for name, _ in model.named_buffers()}
    graphs = {f"item_item.{view}.matrix" for view in ("image", "text", "common")}
    assert graphs | {"feat_image", "feat_text", "user_item.matrix"} <= buffers
    image = data["item"].image
    # Centring keeps the raw features (no centred copy) and registers their mean row.
    assert model.feature("image").data_ptr() == image.data_ptr()
    torch.testing.assert_close(model.feature_mean("image"), image.mean(0))
    raw = _model(data, center_features=False)
    torch.testing.assert_close(raw.feature("image"), image)
    assert raw.feature_mean("image") is None
    # Graph data and features are not model state (the centred ones follow from the data).
    assert not any(k.startswith(("item_item", "user_item", "feat_")) for k in model.state_dict())


def test_all_ablations_together(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, ablations=list(ABLATIONS))
    parts = _train_loss(model, batch)
    assert set(parts) == {"bpr", "reg"}
    sum(parts.values()).backward()
    _assert_all_gradients(model)
    assert _param_names(model) == {
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.text.weight",
    }


def test_no_dis_projections_are_xavier_initialised(data: HeteroData) -> None:
    model = _model(data, ablations=["no_dis"])
    weight = model.projections["image"].weight  # [8, 16]
    kaiming_bound = 1 / math.sqrt(16)
    xavier_bound = math.sqrt(6 / (16 + 8))
    assert weight.abs().max() <= xavier_bound
    # 128 Xavier draws from U(-0.5, 0.5) all within 0.25: probability 2^-128.
    assert weight.abs().max() > kaiming_bound


# ---------------------------------------------------------------- modalities and alpha_mm


def test_three_modalities(batch: BPRBatch) -> None:
    data = _make_data({"audio": 6})
    weights = {"image": 0.2, "text": 0.3, "audio": 0.5}
    model = _model(data, modality_weights=weights)
    assert model.modalities == ["image", "text", "audio"]
    assert model.views == ["common", "image", "text", "audio"]
    assert model.fusion.fuse.in_features == 4 * DIM
    image, text, audio = (knn_adjacency(data["item"][m], KNN_K).to_dense() for m in weights)
    assert torch.allclose(
        model.item_item["common"].matrix.to_dense(),
        0.2 * image + 0.3 * text + 0.5 * audio,
        atol=1e-7,
    )
    parts = _train_loss(model, batch)
    assert set(parts) == ALL_PARTS
    with torch.no_grad():
        emb = model()
        items = torch.unique(torch.cat([batch.pos_item, batch.neg_item]))
        commons = [emb.commons[m][items] for m in ("image", "text", "audio")]
        jsd = 0.1 * jensen_shannon_divergence(commons)  # gamma_dis 0.1, M = 3
    assert parts["jsd"].item() == pytest.approx(jsd.item(), rel=1e-4)
    sum(parts.values()).backward()
    _assert_all_gradients(model)
    model.eval()
    assert model.full_scores(torch.tensor([0, 1])).shape == (2, NUM_ITEMS)


def test_single_modality_raises() -> None:
    data = _make_data(text=False)
    with pytest.raises(ValueError, match=r"at least 2 modalities.*\['image'\]"):
        _model(data, modality_weights={"image": 1.0})


def test_alpha_mm_zero_scores_with_id_view_only(data: HeteroData) -> None:
    model = _model(data, alpha_mm=0.0)
    model.eval()
    users = torch.arange(NUM_USERS)
    with torch.no_grad():
        emb = model()
        id_user, id_item = emb.id[:NUM_USERS], emb.id[NUM_USERS:]
    assert torch.equal(emb.user, id_user) and torch.equal(emb.item, id_item)
    scores = model.full_scores(users)
    assert torch.allclose(scores, id_user @ id_item.t(), atol=1e-6)
    # With alpha_mm = 0.5 the fused multimodal embedding enters (Eq. 22).
    model.alpha_mm = 0.5
    model.train()
    model.eval()
    mixed = model.full_scores(users)
    final = emb.id + 0.5 * emb.mm
    assert torch.allclose(mixed, final[:NUM_USERS] @ final[NUM_USERS:].t(), atol=1e-5)
    assert not torch.allclose(mixed, scores, atol=1e-3)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {
        "embedding_dim": 6,
        "knn_k": 2,
        "modality_weights": WEIGHTS,
        "ablations": ["no_kl"],
        "alpha_mm": 0.4,
        "epochs": 3,
    }
    model = build_model("dhmrec", data, config)
    assert isinstance(model, DHMRec)
    assert model.user_embedding.weight.shape == (NUM_USERS, 6)
    assert model.alpha_mm == 0.4 and model.ablations == ("no_kl",)
    assert model.item_item["image"].matrix._nnz() == NUM_ITEMS * 2
