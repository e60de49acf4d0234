"""Tests of SIGER (issue 5): its three switchable mechanisms on top of FREEDOM's backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from toy_graphs import MODALITIES, NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.config import load_config, parse_cli_overrides
from pyg_dhmrec.data import item_cooccurrence_edges, item_cooccurrence_graph
from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.graph import knn_adjacency, user_item_matrix
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import FREEDOM, SIGER, build_model
from pyg_dhmrec.models.base import Embeddings
from pyg_dhmrec.models.siger import LOSS_PARTS
from pyg_dhmrec.nn import (
    LightPropagation,
    ModulusPerturbation,
    anchor_info_nce,
    info_nce,
    modulus_perturbation,
)

DIM = 8
KNN_K = 3
SWITCHES = {
    "use_infusion": set(),  # changes the graphs, not the set of loss parts
    "use_perturbation": {"cl"},
    "use_alignment": {"align_anchor", "align_fused"},
}


@pytest.fixture(scope="module")
def data() -> HeteroData:
    """40 users, 30 items, 400 interactions, skewed degrees (as in test_freedom)."""
    return toy_graph(modalities=MODALITIES)


def _model(data: HeteroData, seed: int = 0, cls: type = SIGER, **kwargs) -> SIGER:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "knn_k": KNN_K, "reg_weight": 0.1, "l2_weight": 1e-3}
    if cls is SIGER:
        options["infusion_k"] = KNN_K
    options.update(kwargs)
    return cls(data, **options)


def _train_loss(model: SIGER, batch: BPRBatch, seed: int = 0) -> dict[str, torch.Tensor]:
    """Loss on a pruned graph and perturbation noise fixed by ``seed``."""
    model.train()
    torch.manual_seed(seed)
    model.on_train_epoch_start()
    return model.loss(batch)


# --- the model as a whole ---


def test_loss_parts(data: HeteroData, batch: BPRBatch) -> None:
    parts = _train_loss(_model(data), batch)
    assert tuple(parts) == LOSS_PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key


def test_parameters(data: HeteroData) -> None:
    # No mechanism adds a parameter to FREEDOM's; every parameter gets a gradient and one step
    # lowers the loss: test_model_contract.
    names = {name for name, _ in _model(data).named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.text.weight",
    }


def test_reduces_to_freedom_with_the_switches_off(data: HeteroData, batch: BPRBatch) -> None:
    off = {"use_infusion": False, "use_perturbation": False, "use_alignment": False}
    siger, freedom = _model(data, **off), _model(data, cls=FREEDOM)
    for (name, p), (name_f, p_f) in zip(siger.named_parameters(), freedom.named_parameters()):
        assert name == name_f and torch.equal(p, p_f), name
    for model in (siger, freedom):
        model.eval()
    out, out_f = siger(), freedom()
    torch.testing.assert_close(out.user, out_f.user)
    torch.testing.assert_close(out.item, out_f.item)
    # FREEDOM's modality representations (W_m x_m, the mm term) are SIGER's ``projected``.
    assert out.projected.keys() == out_f.modalities.keys()
    for m, rep in out.projected.items():
        torch.testing.assert_close(rep.table(), out_f.modalities[m])
    # One hop: sum_m w_m (S_m E) == (sum_m w_m S_m) E, FREEDOM's mixed graph.
    fused = sum(siger.modality_weights[m] * h for m, h in out.modalities.items())
    torch.testing.assert_close(
        fused, freedom.item_item.matrix.to_dense() @ freedom.item_embedding.weight
    )
    parts, parts_f = _train_loss(siger, batch, seed=3), _train_loss(freedom, batch, seed=3)
    for key in parts_f:
        torch.testing.assert_close(parts[key], parts_f[key])
    assert all(parts[k].item() == 0.0 for k in ("cl", "align_anchor", "align_fused"))


def test_per_modality_propagation_differs_from_mixed_graph_beyond_one_hop(data: HeteroData) -> None:
    model = _model(data, use_infusion=False, num_ii_layers=2).eval()
    e = model.item_embedding.weight
    graphs = {m: knn_adjacency(data["item"][m], KNN_K).to_dense() for m in ("image", "text")}
    semantic = model().modalities
    for m, s in graphs.items():
        torch.testing.assert_close(semantic[m], s @ (s @ e))
    mixed = 0.1 * graphs["image"] + 0.9 * graphs["text"]
    fused = 0.1 * semantic["image"] + 0.9 * semantic["text"]
    assert not torch.allclose(fused, mixed @ (mixed @ e))


def test_forward_embeddings_and_prediction(data: HeteroData) -> None:
    model = _model(data, num_ui_layers=1).eval()
    out = model()
    assert set(out.modalities) == {"image", "text"}
    e = model.item_embedding.weight
    for m, h in out.modalities.items():
        assert h.shape == (NUM_ITEMS, DIM)
        torch.testing.assert_close(h, model.semantic_graphs[m].matrix.to_dense() @ e)
    ego = torch.cat([model.user_embedding.weight, e])
    ui = (ego + model.pruning.full_adjacency.to_dense() @ ego) / 2
    fused = 0.1 * out.modalities["image"] + 0.9 * out.modalities["text"]
    torch.testing.assert_close(out.user, ui[:NUM_USERS])
    torch.testing.assert_close(out.item, ui[NUM_USERS:] + fused)
    assert SIGER.exposes_modalities


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    weights = {m: 1.0 / len(modalities) for m in modalities}
    model = _model(data, modality_weights=weights)
    parts = _train_loss(model, first_batch(data, batch_size=32, seed=1))
    assert tuple(parts) == LOSS_PARTS and all(v.item() > 0 for v in parts.values())
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0


# --- the switches ---


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_switch_removes_exactly_its_part(
    switch: str, data: HeteroData, batch: BPRBatch
) -> None:
    full, ablated = _model(data), _model(data, **{switch: False})
    for p, q in zip(full.parameters(), ablated.parameters()):
        assert torch.equal(p, q)  # no mechanism adds or re-orders parameters
    parts, parts_off = _train_loss(full, batch, seed=4), _train_loss(ablated, batch, seed=4)
    assert tuple(parts_off) == LOSS_PARTS
    for key in SWITCHES[switch]:
        assert parts[key].item() > 0 and parts_off[key].item() == 0.0, key
    if switch == "use_infusion":
        for m in full.modalities:
            knn = knn_adjacency(data["item"][m], KNN_K).to_dense()
            torch.testing.assert_close(ablated.semantic_graphs[m].matrix.to_dense(), knn)
            assert not torch.allclose(full.semantic_graphs[m].matrix.to_dense(), knn)
        assert all(parts_off[k].item() > 0 for k in LOSS_PARTS)  # every part still there
    else:
        for key in set(LOSS_PARTS) - SWITCHES[switch]:
            torch.testing.assert_close(parts[key], parts_off[key])
        for m in full.modalities:
            assert torch.equal(
                full.semantic_graphs[m].matrix.to_dense(),
                ablated.semantic_graphs[m].matrix.to_dense(),
            )


def test_switches_from_the_config_and_command_line(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "knn_k": KNN_K, "use_alignment": False, "cl_weight": 0.5}
    model = build_model("siger", data, config)
    assert isinstance(model, SIGER)
    assert not model.use_alignment and model.use_infusion and model.cl_weight == 0.5
    assert model.modality_weights == {"image": 0.1, "text": 0.9}
    # Switches are booleans on the command line too.
    overrides = parse_cli_overrides(["--use_infusion", "false", "--infusion_k", "3"])
    config = load_config("siger", "synthetic", overrides)
    assert config["use_infusion"] is False and config["infusion_k"] == 3
    model = build_model("siger", data, {**config, "embedding_dim": DIM, "knn_k": KNN_K})
    assert not model.use_infusion and model.use_perturbation and model.use_alignment


# --- (1) collaborative-signal infusion ---


def _hand_interactions() -> torch.Tensor:
    """5 users, 5 items: users 0-2 take items {0, 1} (user 0 twice), user 3 {0, 2, 3}, user 4
    {0, 1, 2, 3}; item 4 has no interaction."""
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 2), (3, 3)]
    pairs += [(4, 0), (4, 1), (4, 2), (4, 3), (0, 1)]
    return torch.tensor(pairs).t()


def test_cooccurrence_counts_top_k_and_normalisation() -> None:
    edges = _hand_interactions()
    # Hand counts |N_i cap N_j|: (0,1) 4 (users 0, 1, 2, 4; the repeat counts once),
    # (0,2) 2, (0,3) 2, (1,2) 1, (1,3) 1, (2,3) 2, nothing with item 4.
    # Top-2 per row, ties to the lower id: row 0 {1, 2}, row 1 {0, 2}, row 2 {0, 3},
    # row 3 {0, 2}, row 4 empty.
    expected = torch.zeros(5, 5)
    for i, j, c in [(0, 1, 4), (0, 2, 2), (1, 0, 4), (1, 2, 1), (2, 0, 2), (2, 3, 2)]:
        expected[i, j] = c
    expected[3, 0], expected[3, 2] = 2, 2
    index, value = item_cooccurrence_edges(edges, 5, 5, k=2, chunk_size=2)
    got = torch.zeros(5, 5)
    got[index[0], index[1]] = value
    torch.testing.assert_close(got, expected)
    assert index[1, :2].tolist() == [1, 2]  # decreasing count within a row
    # Chunking changes nothing.
    index_one, value_one = item_cooccurrence_edges(edges, 5, 5, k=2, chunk_size=1024)
    assert torch.equal(index_one, index) and torch.equal(value_one, value)
    # Symmetric-normalised with the row degrees of the top-k counts.
    deg = expected.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros(()))
    graph = item_cooccurrence_graph(edges, 5, 5, k=2, chunk_size=2).to_dense()
    torch.testing.assert_close(graph, inv[:, None] * expected * inv[None, :])
    assert graph[0, 1] == 4 / math.sqrt(6 * 5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        item_cooccurrence_edges(edges, 5, 5, k=0)
    with pytest.raises(ValueError, match="item id 7 out of range"):
        item_cooccurrence_graph(torch.tensor([[0], [7]]), 5, 5)


def _infusion_case() -> tuple[HeteroData, torch.Tensor]:
    """6 items whose 1-d features make every item's 3-NN {itself, i+1, i+2} (mod wrap aside),
    and interactions in which items 0 and 1 co-occur often, items 0 and 2 never."""
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = 6, 6
    angle = torch.arange(6, dtype=torch.float) * 0.3
    data["item"].image = torch.stack([angle.cos(), angle.sin()], 1)
    data["item"].modalities = ["image"]
    pairs = [(u, 0) for u in range(4)] + [(u, 1) for u in range(4)]
    pairs += [(4, 2), (4, 3), (5, 4), (5, 5), (4, 5)]
    edge_index = torch.tensor(pairs).t()
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data, edge_index


def test_infused_graph_sparsity_normalisation_and_weights() -> None:
    data, edges = _infusion_case()
    beta, k = 0.4, 2
    plain = SIGER(data, embedding_dim=4, knn_k=3, use_infusion=False).semantic_graphs["image"]
    model = SIGER(data, embedding_dim=4, knn_k=3, infusion_k=k, infusion_weight=beta)
    knn = knn_adjacency(data["item"].image, 3).to_dense()
    collaborative = item_cooccurrence_graph(edges, 6, 6, k).to_dense()
    infused = model.semantic_graphs["image"].matrix.to_dense()
    torch.testing.assert_close(plain.matrix.to_dense(), knn)
    torch.testing.assert_close(infused, (1 - beta) * knn + beta * collaborative)
    # Sparsity: at most knn_k + infusion_k entries per row, the collaborative part top-k.
    assert ((infused != 0).sum(1) <= 3 + k).all()
    assert ((collaborative != 0).sum(1) <= k).all()
    # Symmetric normalisation of each part: a kNN row of 3 ones is 1/3 per entry.
    assert set((knn[knn != 0] * 3).round(decimals=5).tolist()) == {1.0}
    # Items 1 and 2 are both semantic neighbours of item 0; only 1 co-occurs with it (4 users).
    assert knn[0, 1] == knn[0, 2] > 0
    torch.testing.assert_close(infused[0, 2], (1 - beta) * knn[0, 2])  # no collaborative gain
    assert infused[0, 1] > infused[0, 2]
    assert collaborative[0, 1] > 0 and collaborative[0, 2] == 0


# --- (2) modulus-based personalised perturbation ---


def test_noise_norm_scales_with_the_embedding_norm() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 16, generator=g) * torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 100.0])[:, None]
    for eps in (0.05, 0.2, 1.0):
        noise = modulus_perturbation(x, eps, torch.Generator().manual_seed(1))
        torch.testing.assert_close(noise.norm(dim=1), eps * x.norm(dim=1))
        assert (noise * x >= 0).all()  # SimGCL's direction: same hyperoctant
    # Doubling an embedding doubles its noise (same random draw).
    a = modulus_perturbation(x, 0.1, torch.Generator().manual_seed(2))
    b = modulus_perturbation(2 * x, 0.1, torch.Generator().manual_seed(2))
    torch.testing.assert_close(b, 2 * a)
    # Intensity 0: no noise at all.
    assert torch.equal(ModulusPerturbation(0.0)(x), x)
    # The modulus is not trained through: d(x + noise)/dx is the identity.
    leaf = x.clone().requires_grad_()
    ModulusPerturbation(0.5)(leaf).sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(x))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"eps must be a finite number >= 0, got {bad!r}"):
            ModulusPerturbation(bad)
    with pytest.raises(ValueError, match="2-D"):
        modulus_perturbation(torch.ones(3), 0.1)


def test_noise_equals_the_normalised_direction_form() -> None:
    """The previous computation, eps |x| sign(x) * u / |u|, from the same random draw; a zero
    coordinate and a zero row get no noise."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 8, generator=g)
    x[4, 2], x[9] = 0.0, 0.0
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    expected = 0.2 * x.norm(dim=1, keepdim=True) * (torch.sign(x) * F.normalize(u, dim=-1))
    noise = modulus_perturbation(x, 0.2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(noise, expected)
    assert noise[4, 2] == 0 and noise[9].abs().sum() == 0


def test_propagation_perturbs_every_hop() -> None:
    adj = torch.tensor([[0.0, 0.5], [0.5, 0.0]]).to_sparse_csr()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    dense = adj.to_dense()
    for mode in ("mean", "last", "sum"):
        prop = LightPropagation(2, mode=mode)
        torch.testing.assert_close(prop(x, adj, perturb=lambda h: h), prop(x, adj))
        h1 = dense @ x + 1
        h2 = dense @ h1 + 1
        expected = {"mean": (x + h1 + h2) / 3, "last": h2, "sum": x + h1 + h2}[mode]
        torch.testing.assert_close(prop(x, adj, perturb=lambda h: h + 1), expected)


def test_model_views_differ_by_the_designed_relative_noise(data: HeteroData) -> None:
    model = _model(data, perturbation_eps=0.0)
    model.train()
    model.on_train_epoch_start()
    clean = model()
    user, item, semantic = model._encode(perturb=True)
    torch.testing.assert_close(user, clean.user)  # intensity 0: the views are the clean pass
    model = _model(data, num_ii_layers=1, perturbation_eps=0.3)
    model.train()
    model.on_train_epoch_start()
    clean = model().modalities
    _, _, semantic = model._encode(perturb=True)
    for m in model.modalities:
        # One semantic hop: h' = h + noise with |noise| = 0.3 |h| per item.
        torch.testing.assert_close((semantic[m] - clean[m]).norm(dim=1), 0.3 * clean[m].norm(dim=1))


# --- (3) dual representation alignment ---


def test_anchor_info_nce_hand_value_and_single_view() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    v1 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    v2 = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    tau = 0.5
    a, views = F.normalize(anchor, dim=1), [F.normalize(v, dim=1) for v in (v1, v2)]
    expected = 0.0
    for i in range(2):
        denominator = sum(math.exp(float(a[i] @ v[j]) / tau) for v in views for j in range(2))
        for v in views:
            expected -= math.log(math.exp(float(a[i] @ v[i]) / tau) / denominator)
    expected /= 4
    torch.testing.assert_close(anchor_info_nce(anchor, [v1, v2], tau), torch.tensor(expected))
    torch.testing.assert_close(anchor_info_nce(anchor, [v1], tau), info_nce(anchor, v1, tau))


def test_anchor_info_nce_prefers_views_that_agree_with_the_anchor() -> None:
    g = torch.Generator().manual_seed(0)
    anchor = torch.randn(32, 8, generator=g)
    views = [anchor + 0.1 * torch.randn(32, 8, generator=g) for _ in range(3)]
    aligned = anchor_info_nce(anchor, views, 0.2)
    perm = torch.randperm(32, generator=g)
    shuffled = anchor_info_nce(anchor, [v[perm] for v in views], 0.2)
    assert aligned < shuffled - 1.0
    assert aligned >= math.log(3) - 1e-5  # the positives share the probability mass
    # One view disagreeing raises the loss: the views are aligned with each other too.
    one_off = anchor_info_nce(anchor, [views[0], views[1], views[2][perm]], 0.2)
    assert aligned < one_off < shuffled


def test_anchor_info_nce_rejects_bad_inputs() -> None:
    x = torch.ones(4, 3)
    with pytest.raises(ValueError, match="non-empty sequence"):
        anchor_info_nce(x, [], 0.2)
    with pytest.raises(ValueError, match="one shape"):
        anchor_info_nce(x, [torch.ones(4, 2)], 0.2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        anchor_info_nce(x, [x], 0.0)


def test_alignment_terms_match_hand_computation(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, use_perturbation=False, anchor_align_weight=0.3, fused_align_weight=0.7)
    parts = _train_loss(model, batch, seed=2)
    user_b, item_b, semantic = model._encode(perturb=False)
    users, items = batch.user.unique(), batch.pos_item.unique()
    r = user_item_matrix(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
    user_sem = {m: (r @ h)[users] for m, h in semantic.items()}
    w = model.modality_weights
    tau = model.align_temperature
    anchor = anchor_info_nce(user_b[users], list(user_sem.values()), tau)
    anchor += anchor_info_nce(item_b[items], [h[items] for h in semantic.values()], tau)
    torch.testing.assert_close(parts["align_anchor"], 0.3 * anchor)
    fused_u = sum(w[m] * s for m, s in user_sem.items())
    fused_i = sum(w[m] * h[items] for m, h in semantic.items())
    fused = 0.0
    for b, h in ((user_b[users], fused_u), (item_b[items], fused_i)):
        fused = fused + 0.5 * (info_nce(b, h, tau) + info_nce(h, b, tau))
    torch.testing.assert_close(parts["align_fused"], 0.7 * fused)
    # The anchor is detached: the anchor term moves the semantic side (item IDs) only.
    model.zero_grad()
    parts["align_anchor"].backward()
    user_grad = model.user_embedding.weight.grad
    assert user_grad is None or user_grad.abs().sum() == 0
    assert model.item_embedding.weight.grad.abs().sum() > 0


# --- bad inputs ---


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"use_infusion": "yes"}, "use_infusion must be true or false"),
        ({"use_alignment": 1}, "use_alignment must be true or false"),
        ({"infusion_weight": 1.5}, r"infusion_weight must be in \[0, 1\]"),
        ({"infusion_k": 0}, "infusion_k must be a positive int"),
        ({"perturbation_eps": -0.1}, "perturbation_eps must be >= 0, got -0.1"),
        ({"cl_temperature": 0.0}, "cl_temperature must be > 0"),
        ({"align_temperature": -1.0}, "align_temperature must be > 0"),
        ({"cl_weight": -0.1}, "cl_weight must be >= 0"),
        ({"modality_weights": {"image": 1.0}}, "one weight per modality"),
        ({"modality_weights": {"image": 0.5, "audio": 0.5}}, "one weight per modality"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, pattern: str, data: HeteroData) -> None:
    with pytest.raises(ValueError, match=pattern):
        _model(data, **kwargs)


def test_bad_data_raises(data: HeteroData) -> None:
    bare = HeteroData()
    bare["user"].num_nodes, bare["item"].num_nodes = NUM_USERS, NUM_ITEMS
    bare["item"].modalities = []
    bare[RATES].edge_index = data[RATES].edge_index
    with pytest.raises(ValueError, match="at least one item modality"):
        SIGER(bare)
    three = toy_graph(modalities={"image": 6, "text": 4, "audio": 5})
    with pytest.raises(ValueError, match="default modality_weights only for image and text"):
        _model(three)


def test_views_share_the_first_hops_of_the_clean_pass(data: HeteroData, batch: BPRBatch) -> None:
    """The clean pass and both perturbed views start from the same layer 0 over the same
    graphs: with the pass's first hops the views are those of a pass of their own (the
    previous computation), noise for noise."""
    model = _model(data, num_ii_layers=2, perturbation_eps=0.3)
    model.train()
    model.on_train_epoch_start()
    out = model()
    users, items = batch.user.unique(), batch.pos_item.unique()
    torch.manual_seed(5)
    shared = model._contrast_views(users, items, out.first_hops)
    torch.manual_seed(5)
    own = model._contrast_views(users, items)
    torch.testing.assert_close(shared, own)
    params = list(model.parameters())
    grads = torch.autograd.grad(shared, params, allow_unused=True)
    for got, want in zip(grads, torch.autograd.grad(own, params, allow_unused=True)):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want)
    hops = out.first_hops
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    torch.testing.assert_close(hops.ui, model.pruning() @ ego)
    for m in model.modalities:
        torch.testing.assert_close(
            hops.semantic[m], model.semantic_graphs[m].matrix @ model.item_embedding.weight
        )


# --- issue 17: the exact rewrites against the previous computations ---


@pytest.mark.parametrize("layers", [(2, 2), (1, 1), (3, 0)])
def test_view_rows_equal_the_full_views_noise_for_noise(
    data: HeteroData, batch: BPRBatch, layers: tuple[int, int]
) -> None:
    """The views computed at the batch's rows only equal the rows of two full perturbed passes
    (the previous computation, with the previous InfoNCE formula), in value and gradient, for
    the same noise: here a deterministic element-wise noise, so that the rows' noise does not
    depend on how many rows are drawn."""
    num_ui, num_ii = layers
    model = _model(data, num_ui_layers=num_ui, num_ii_layers=num_ii, perturbation_eps=0.3)
    calls = []

    class ElementwiseNoise(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.size(0))
            return x + 0.3 * torch.sin(7 * x).detach()

    model.perturbation = ElementwiseNoise()
    model.train()
    model.on_train_epoch_start()
    out = model()
    users, items = batch.user.unique(), batch.pos_item.unique()
    got = model._contrast_views(users, items, out.first_hops)
    got_calls, calls[:] = list(calls), []
    views = []
    for _ in range(2):
        user, item, semantic = model._encode(perturb=True, first_hops=out.first_hops)
        views.append((user, item + model._fuse(semantic)))
    (u1, i1), (u2, i2) = views
    # The last hop's noise is applied to the batch's rows only.
    rows = users.numel() + items.numel()
    semantic = [model.num_items] * (num_ii - 1) + [items.numel()] if num_ii else []
    want_calls = semantic * len(model.modalities)
    want_calls += [model.num_users + model.num_items] * (num_ui - 1) + ([rows] if num_ui else [])
    assert got_calls == want_calls * 2
    tau = model.cl_temperature

    def previous_info_nce(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(a, dim=-1) @ F.normalize(p, dim=-1).t() / tau
        return F.cross_entropy(logits, torch.arange(a.size(0)))

    want = previous_info_nce(u1[users], u2[users]) + previous_info_nce(i1[items], i2[items])
    torch.testing.assert_close(got, want)
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    for g, w in zip(got_grads, torch.autograd.grad(want, params, allow_unused=True)):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w)


def test_mm_term_on_the_batch_items_equals_the_full_projections(
    data: HeteroData, batch: BPRBatch
) -> None:
    """The mm term projects only the batch's distinct items: FREEDOM's term on the full
    projections (the previous computation), in value and gradient."""
    model = _model(data)
    model.train()
    model.on_train_epoch_start()
    out = model()
    got = model.loss(batch, out)["mm"]
    full = {m: rows.table() for m, rows in out.projected.items()}
    want = model.reg_weight * model.modality_bpr(Embeddings(out.user, out.item, full), batch)
    torch.testing.assert_close(got, want)
    params = [*model.projections.parameters(), model.user_embedding.weight]
    for g, w in zip(
        torch.autograd.grad(got, params, retain_graph=True), torch.autograd.grad(want, params)
    ):
        torch.testing.assert_close(g, w)
