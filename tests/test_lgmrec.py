"""Tests of LGMRec (Guo et al., AAAI 2024) and the shared hypergraph blocks, on tiny graphs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData
from toy_graphs import NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import LGMRec, build_model
from pyg_dhmrec.models.base import pair_scores
from pyg_dhmrec.nn import (
    HypergraphPropagation,
    bpr_loss,
    embedding_norm_penalty,
    hypergraph_contrastive_loss,
    relaxed_dependencies,
)

NUM_EDGES = 300
DIM = 8
PARTS = {"bpr", "hcl", "reg"}


def _make_data(modalities: dict[str, int] | None = None) -> HeteroData:
    """40 users, 30 items, 300 uniformly drawn interactions; image 12-d and text 6-d features
    unless ``modalities`` says otherwise."""
    if modalities is None:
        modalities = {"image": 12, "text": 6}
    return toy_graph(num_interactions=NUM_EDGES, modalities=modalities, skewed=False)


@pytest.fixture(scope="module")
def data() -> HeteroData:
    return _make_data()


def _model(data: HeteroData, seed: int = 0, **kwargs) -> LGMRec:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "cl_weight": 0.01, "reg_weight": 1e-3}
    options.update(kwargs)
    return LGMRec(data, **options)


def _dense_interactions(data: HeteroData) -> torch.Tensor:
    r = torch.zeros(NUM_USERS, NUM_ITEMS)
    r[data[RATES].edge_index[0], data[RATES].edge_index[1]] = 1.0
    return r


# --- shared hypergraph blocks ---------------------------------------------------------------


def test_hypergraph_propagation_hand_computed() -> None:
    h = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])  # 3 nodes, 2 hyperedges
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    readers = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    # One layer: H^T X = [[1, 1], [3, 2]]; H (H^T X) and readers (H^T X), by hand.
    out, read = HypergraphPropagation(1)(x, h, readers)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [2.0, 1.5], [3.0, 2.0]]))
    torch.testing.assert_close(read, torch.tensor([[2.5, 1.75], [1.0, 1.0]]))
    # Two layers: H^T X^(1) = [[2, 1.75], [4, 2.75]]; readers use the last layer's messages.
    out, read = HypergraphPropagation(2)(x, h, readers)
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.75], [3.0, 2.25], [4.0, 2.75]]))
    torch.testing.assert_close(read, torch.tensor([[3.5, 2.5], [2.0, 1.75]]))
    torch.testing.assert_close(out, (h @ h.t()) @ (h @ h.t()) @ x)
    assert HypergraphPropagation(2)(x, h)[1] is None


def test_relaxed_dependencies_are_distributions() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    plain = relaxed_dependencies(logits, 0.5)
    torch.testing.assert_close(plain, torch.softmax(logits / 0.5, dim=-1))
    torch.testing.assert_close(plain[1], torch.full((3,), 1 / 3))
    torch.manual_seed(0)
    noisy = relaxed_dependencies(logits.repeat(1000, 1), 0.5, noise=True)
    assert (noisy >= 0).all()
    torch.testing.assert_close(noisy.sum(-1), torch.ones(2000))
    assert not torch.allclose(noisy[:2], plain)  # the relaxation noise is sampled
    # Logistic noise is symmetric: the uniform row stays uniform on average.
    torch.testing.assert_close(noisy[1::2].mean(0), torch.full((3,), 1 / 3), atol=0.03, rtol=0)
    # Low temperature: nearly one-hot rows.
    assert relaxed_dependencies(logits, 1e-3, noise=True).max(-1).values.min() > 0.99


def test_hypergraph_contrastive_loss_hand_computed_and_alignment() -> None:
    eye = torch.eye(2)
    # Orthogonal unit views, tau = 1: each term is log(1 + e^{-1}), summed over the batch.
    loss = hypergraph_contrastive_loss(eye, eye, torch.tensor([0, 1]), 1.0)
    torch.testing.assert_close(loss, torch.tensor(2 * math.log(1 + math.exp(-1))))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 16, generator=g)
    aligned = a + 0.1 * torch.randn(50, 16, generator=g)
    shuffled = aligned[torch.randperm(50, generator=g)]
    index = torch.arange(0, 50, 2)
    low = hypergraph_contrastive_loss(a, aligned, index, 0.2)
    high = hypergraph_contrastive_loss(a, shuffled, index, 0.2)
    assert low < 0.5 * high, (low, high)
    # Candidates are all nodes of the second view, not only the batch's (unlike info_nce).
    logits = F.normalize(a[index], dim=-1) @ F.normalize(aligned, dim=-1).t() / 0.2
    expected = -(logits[torch.arange(25), index] - logits.logsumexp(-1)).sum()
    torch.testing.assert_close(low, expected)


def _reference_hcl(anchor, positive, index, temperature):  # noqa: ANN001, ANN202
    """Eq. 11 as written before the factored rewrite: dense [B, N] cosine logits."""
    anchors = F.normalize(anchor[index], dim=-1) / temperature
    logits = anchors @ F.normalize(positive, dim=-1).t()
    return F.cross_entropy(logits, index, reduction="sum")


@pytest.mark.parametrize("factored", [False, True])
def test_hypergraph_contrastive_loss_equals_the_dense_formula(factored: bool) -> None:
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(30, 8, dtype=torch.double, generator=g, requires_grad=True)
    incidence = torch.rand(30, 3, dtype=torch.double, generator=g, requires_grad=True)
    messages = torch.randn(3, 8, dtype=torch.double, generator=g, requires_grad=True)
    index = torch.tensor([0, 5, 5, 29, 7, 0])
    positive = incidence @ messages  # a hypergraph view: rank 3
    factors = (incidence, messages) if factored else None
    loss = hypergraph_contrastive_loss(anchor, positive, index, 0.2, factors)
    reference = _reference_hcl(anchor, positive, index, 0.2)
    torch.testing.assert_close(loss, reference)
    inputs = (anchor, incidence, messages)
    for got, expected in zip(
        torch.autograd.grad(loss, inputs, retain_graph=True), torch.autograd.grad(reference, inputs)
    ):
        torch.testing.assert_close(got, expected)


def test_hypergraph_propagation_returns_the_factors_of_its_outputs() -> None:
    g = torch.Generator().manual_seed(2)
    x, h, readers = torch.randn(6, 4, generator=g), torch.rand(6, 3, generator=g), torch.rand(5, 3)
    out, read, messages = HypergraphPropagation(2)(x, h, readers, return_messages=True)
    assert messages.shape == (3, 4)
    torch.testing.assert_close(out, h @ messages)
    torch.testing.assert_close(read, readers @ messages)
    torch.testing.assert_close((out, read), HypergraphPropagation(2)(x, h, readers))


def test_hypergraph_blocks_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        HypergraphPropagation(0)
    with pytest.raises(ValueError, match="incidence must be"):
        HypergraphPropagation(1)(torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="readers must be"):
        HypergraphPropagation(1)(torch.ones(3, 2), torch.ones(3, 2), torch.ones(5, 3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        relaxed_dependencies(torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="anchor and positive"):
        hypergraph_contrastive_loss(torch.ones(3, 2), torch.ones(4, 2), torch.tensor([0]), 0.2)
    with pytest.raises(
        ValueError, match=r"positive_factors must be \(H \[N=3, A\], M \[A, d=2\]\)"
    ):
        factors = (torch.ones(3, 4), torch.ones(5, 2))
        hypergraph_contrastive_loss(
            torch.ones(3, 2), torch.ones(3, 2), torch.tensor([0]), 0.2, factors
        )


# --- the model ------------------------------------------------------------------------------


def test_loss_parts_and_parameters(data: HeteroData, batch: BPRBatch) -> None:
    # Every parameter gets a gradient: test_model_contract.
    model = _model(data).train()
    parts = model.loss(batch)
    assert set(parts) == PARTS
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, key
    names = {name for name, _ in model.named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "projections.image.weight",
        "projections.text.weight",
        "hyperedges.image",
        "hyperedges.text",
    }


def test_dependencies(data: HeteroData) -> None:
    model = _model(data, num_hyperedges=5, temperature=0.5).eval()
    r = _dense_interactions(data)
    for m in ("image", "text"):
        item_dep, user_dep = model.dependencies(m)
        assert item_dep.shape == (NUM_ITEMS, 5) and user_dep.shape == (NUM_USERS, 5)
        logits = data["item"][m] @ model.hyperedges[m].detach().t()  # Eq. 7
        torch.testing.assert_close(item_dep, torch.softmax(logits / 0.5, -1))
        torch.testing.assert_close(user_dep, torch.softmax(r @ logits / 0.5, -1))
    model.train()
    torch.manual_seed(0)
    item_dep, user_dep = model.dependencies("image")
    for dep in (item_dep, user_dep):
        assert (dep >= 0).all()
        torch.testing.assert_close(dep.sum(-1), torch.ones(dep.size(0)))
    assert not torch.allclose(item_dep, model.eval().dependencies("image")[0])  # noise in train


def test_forward_follows_the_equations(data: HeteroData) -> None:
    tau, alpha = 0.5, 0.7
    model = _model(
        data, num_ui_layers=1, num_mm_layers=2, num_hyper_layers=2, temperature=tau, alpha=alpha
    ).eval()
    out = model()
    r = _dense_interactions(data)
    deg_u, deg_i = r.sum(1), r.sum(0)
    r_hat = r / torch.sqrt(deg_u[:, None] * deg_i[None, :])
    adj = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS)
    adj[:NUM_USERS, NUM_USERS:], adj[NUM_USERS:, :NUM_USERS] = r_hat, r_hat.t()
    with torch.no_grad():
        ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        collab = (ego + adj @ ego) / 2  # Eqs. 1-2
        local, glob, reps = collab.clone(), 0, {}
        for m in ("image", "text"):
            x = data["item"][m]
            items = x @ model.projections[m].weight.t()  # Eq. 3
            users = (r @ items) / deg_u[:, None]  # Eq. 4: mean of the user's items
            mge = F.normalize(adj @ (adj @ torch.cat([users, items])), dim=-1)  # Eq. 5
            local += mge  # Eq. 6
            logits = x @ model.hyperedges[m].t()
            h_i, h_u = torch.softmax(logits / tau, -1), torch.softmax(r @ logits / tau, -1)
            e1 = h_i @ (h_i.t() @ collab[NUM_USERS:])
            g_items, g_users = h_i @ (h_i.t() @ e1), h_u @ (h_i.t() @ e1)  # Eq. 9
            glob = glob + torch.cat([g_users, g_items])  # Eq. 10
            reps[m] = mge[NUM_USERS:] + alpha * F.normalize(g_items, dim=-1)
        final = local + alpha * F.normalize(glob, dim=-1)  # Eq. 12
    torch.testing.assert_close(out.user, final[:NUM_USERS])
    torch.testing.assert_close(out.item, final[NUM_USERS:])
    assert set(out.modalities) == {"image", "text"}
    for m in reps:
        torch.testing.assert_close(out.modalities[m], reps[m])
        assert out.modalities[m].shape == (NUM_ITEMS, DIM)


def test_precomputed_modality_propagation_equals_projecting_first(
    data: HeteroData, batch: BPRBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(data, num_mm_layers=3).train()
    assert {"mge_basis_image", "mge_basis_text"} <= set(dict(model.named_buffers()))
    monkeypatch.setattr(LGMRec, "precompute_width_ratio", 0.0)  # every modality too wide
    projected_first = _model(data, num_mm_layers=3).train()
    assert not [n for n, _ in projected_first.named_buffers() if n.startswith("mge_basis")]
    for m in ("image", "text"):
        a = model._modality_graph_embedding(m)
        b = projected_first._modality_graph_embedding(m)
        torch.testing.assert_close(a, b)
        weights = (model.projections[m].weight, projected_first.projections[m].weight)
        upstream = torch.randn_like(a)
        got, expected = (torch.autograd.grad(x, w, upstream)[0] for x, w in zip((a, b), weights))
        torch.testing.assert_close(got, expected)
    assert "mge_basis_image" not in model.state_dict()  # graph data, not model state


def test_dropout_and_noise_in_training_only(data: HeteroData) -> None:
    model = _model(data, keep_rate=0.5)
    model.eval()
    first = model.full_scores(torch.arange(NUM_USERS)).clone()
    model.train()
    a, b = model().item, model().item
    assert not torch.allclose(a, b)  # a new dropout mask and noise each training pass
    model.eval()
    torch.testing.assert_close(model.full_scores(torch.arange(NUM_USERS)), first)
    torch.testing.assert_close(
        _model(data, keep_rate=0.5).eval().full_scores(torch.arange(NUM_USERS)), first
    )


def test_loss_equals_the_former_formula_with_its_gradients(
    data: HeteroData, batch: BPRBatch
) -> None:
    # formerly: bpr and reg each gathered the batch rows, hcl had dense [B, N] cosine logits
    model = _model(data, cl_weight=0.3).train().double()
    out = model()
    parts = model.loss(batch, out)
    pos, neg = pair_scores(out.user, out.item, batch)
    reg = embedding_norm_penalty(
        out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
    )
    (user_a, item_a), (user_b, item_b) = out.global_views["image"], out.global_views["text"]
    hcl = _reference_hcl(user_a, user_b, batch.user, model.temperature)
    hcl = hcl + _reference_hcl(item_a, item_b, batch.pos_item, model.temperature)
    former = {"bpr": bpr_loss(pos, neg), "hcl": 0.3 * hcl, "reg": model.reg_weight * reg}
    for key in PARTS:
        torch.testing.assert_close(parts[key], former[key])
    params = list(model.parameters())
    got = torch.autograd.grad(sum(parts.values()), params, retain_graph=True)
    for a, b in zip(got, torch.autograd.grad(sum(former.values()), params)):
        torch.testing.assert_close(a, b)


def test_loss_reads_the_global_views_of_the_given_pass(data: HeteroData, batch: BPRBatch) -> None:
    model = _model(data, cl_weight=0.3).train().double()  # float64: a tight gradient check
    calls = []
    original = model._modality_graph_embedding
    model._modality_graph_embedding = lambda m: calls.append(m) or original(m)
    out = model()
    parts = model.loss(batch, out)
    assert len(calls) == 2  # one MGE pass per modality, in the given pass only
    # The contrastive part is the two-modality Eq. 11 on the pass's global views (the dense
    # formula; the model computes it from the views' factors), with the same gradients.
    (user_a, item_a), (user_b, item_b) = out.global_views["image"], out.global_views["text"]
    expected = _reference_hcl(user_a, user_b, batch.user, model.temperature)
    expected += _reference_hcl(item_a, item_b, batch.pos_item, model.temperature)
    torch.testing.assert_close(model.hypergraph_contrastive(out, batch), expected)
    torch.testing.assert_close(parts["hcl"], 0.3 * expected)
    params = list(model.parameters())
    got = torch.autograd.grad(parts["hcl"], params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(0.3 * expected, params, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = _make_data(modalities)
    model = _model(data).train()
    parts = model.loss(first_batch(data, batch_size=32, seed=1))
    assert set(parts) == PARTS
    assert (parts["hcl"].item() == 0.0) == (len(modalities) == 1)  # nothing to contrast
    sum(parts.values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0
        assert model.hyperedges[m].grad.abs().sum() > 0
    assert set(model().modalities) == set(modalities)


def test_bad_inputs(data: HeteroData) -> None:
    for kwargs, message in (
        ({"keep_rate": 0.0}, "keep_rate must be in"),
        ({"keep_rate": 1.5}, "keep_rate must be in"),
        ({"num_hyperedges": 0}, "num_hyperedges must be an int >= 1"),
        ({"num_hyper_layers": 0}, "num_hyper_layers must be an int >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"alpha": -0.1}, "alpha must be >= 0"),
        ({"cl_weight": float("nan")}, "cl_weight must be >= 0"),
        ({"num_mm_layers": -1}, "num_mm_layers must be an int >= 0, got -1"),
    ):
        with pytest.raises(ValueError, match=message):
            _model(data, **kwargs)
    no_features = _make_data({})
    with pytest.raises(ValueError, match="at least one item modality"):
        _model(no_features)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "num_hyperedges": 7, "keep_rate": 0.4, "alpha": 0.6}
    model = build_model("lgmrec", data, config)
    assert isinstance(model, LGMRec)
    assert model.hyperedges["image"].shape == (7, 12)
    assert model.dependency_dropout.p == pytest.approx(0.6) and model.alpha == 0.6
