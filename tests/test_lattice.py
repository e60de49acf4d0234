"""Tests of LATTICE (Zhang et al., ACM MM 2021) and its learned kNN graph block."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from toy_graphs import MODALITIES, NUM_ITEMS, NUM_USERS, first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.graph import normalized_adjacency, to_csr
from pyg_dhmrec.models import LATTICE, build_model
from pyg_dhmrec.nn import LearnedKNNGraph, cosine_knn_edges

DIM, FEAT_DIM, KNN_K = 8, 6, 3
PARTS = {"bpr", "reg"}


@pytest.fixture(scope="module")
def data() -> HeteroData:
    return toy_graph(modalities=MODALITIES)


def _model(data: HeteroData, seed: int = 0, **kwargs) -> LATTICE:
    torch.manual_seed(seed)
    options = {"embedding_dim": DIM, "feat_embed_dim": FEAT_DIM, "knn_k": KNN_K}
    options.update({"reg_weight": 1e-2, **kwargs})
    return LATTICE(data, **options)


def _dense(edge_index: Tensor, weight: Tensor, n: int) -> Tensor:
    return to_csr(edge_index, weight, n, n).to_dense()


def _reference_knn(x: Tensor, k: int) -> Tensor:
    """Dense LATTICE Eqs. 1-3: cosine, keep the k largest per row (values kept), D^-1/2 S D^-1/2."""
    unit = x / x.norm(dim=1, keepdim=True)
    sim = unit @ unit.t()
    mask = torch.zeros_like(sim).scatter_(1, sim.detach().topk(k, dim=1).indices, 1.0)
    kept = sim * mask
    inv = kept.sum(1).rsqrt()
    return inv[:, None] * kept * inv[None, :]


# --- the shared block -------------------------------------------------------------------------


def test_learned_graph_hand_computed_values() -> None:
    # 5 items in 2-d; with k = 2 every item keeps itself and its most similar other item.
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [-1.0, 1.0], [3.0, 1.0]])
    edge_index, weight = LearnedKNNGraph(k=2)(x)
    c04, c14, c23 = 3 / math.sqrt(10), 7 / math.sqrt(50), 1 / math.sqrt(2)
    # Neighbours: 0 -> 4, 1 -> 4, 4 -> 1, 2 -> 3, 3 -> 2 (asymmetric: 4 does not keep 0).
    deg = torch.tensor([1 + c04, 1 + c14, 1 + c23, 1 + c23, 1 + c14])
    expected = torch.zeros(5, 5)
    for i, j, s in [(0, 4, c04), (1, 4, c14), (4, 1, c14), (2, 3, c23), (3, 2, c23)]:
        expected[i, j] = s / math.sqrt(deg[i] * deg[j])
    for i in range(5):
        expected[i, i] = 1 / deg[i]
    torch.testing.assert_close(_dense(edge_index, weight, 5), expected)
    # Without normalisation the kept values are the cosines themselves (a weighted graph).
    edge_index, raw = cosine_knn_edges(x, k=2, normalize=False)
    assert _dense(edge_index, raw, 5)[0, 4].item() == pytest.approx(c04)
    assert _dense(edge_index, raw, 5)[3, 3].item() == pytest.approx(1.0)


def test_learned_graph_keeps_exactly_top_k_per_row() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g)
    k = 4
    edge_index, weight = cosine_knn_edges(x, k, chunk_size=7)  # several chunks
    assert edge_index.shape == (2, 40 * k) and weight.shape == (40 * k,)
    assert torch.equal(torch.bincount(edge_index[0], minlength=40), torch.full((40,), k))
    dense = _dense(edge_index, weight, 40)
    assert torch.equal((dense != 0).sum(1), torch.full((40,), k))  # k distinct columns per row
    assert bool((dense.diagonal() > 0).all())  # every item keeps itself
    torch.testing.assert_close(dense, _reference_knn(x, k))


def test_gradient_reaches_the_projection_through_kept_values() -> None:
    g = torch.Generator().manual_seed(4)
    raw = torch.randn(25, 7, generator=g)
    target = torch.randn(25, 25, generator=g)
    proj = torch.nn.Linear(7, 4)
    edge_index, weight = LearnedKNNGraph(k=3)(proj(raw))
    (_dense(edge_index, weight, 25) * target).sum().backward()
    grads = [p.grad.clone() for p in proj.parameters()]
    assert all(gr.abs().sum() > 0 for gr in grads)
    # Same gradient as the dense reference, where only the kept (masked) entries carry it.
    proj.zero_grad()
    (_reference_knn(proj(raw), 3) * target).sum().backward()
    for got, want in zip(grads, [p.grad for p in proj.parameters()]):
        torch.testing.assert_close(got, want)


def test_learned_graph_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be a positive int"):
        LearnedKNNGraph(k=0)
    with pytest.raises(ValueError, match="k must be an int in"):
        cosine_knn_edges(torch.randn(3, 2), k=5)


# --- the model --------------------------------------------------------------------------------


def test_initial_graph_is_the_weighted_cosine_knn_graph(data: HeteroData) -> None:
    model = _model(data)
    for m in ("image", "text"):
        init = _dense(
            getattr(model, f"init_edge_index_{m}").flip(0), getattr(model, f"init_weight_{m}"), 30
        )
        torch.testing.assert_close(init, _reference_knn(data["item"][m], KNN_K))
    assert not any(k.startswith(("init_", "feat_", "adj")) for k in model.state_dict())


def test_mixing_with_the_initial_graph_and_modality_weights(data: HeteroData) -> None:
    model = _model(data, frozen_graph_weight=0.7, num_ii_layers=2).eval()
    with torch.no_grad():
        model.modality_logits.copy_(torch.tensor([0.3, -0.2]))
    alpha = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    graphs, got_alpha = model.build_item_graphs(), model.modality_weights()
    torch.testing.assert_close(got_alpha, alpha)
    fused = torch.zeros(NUM_ITEMS, NUM_ITEMS)
    for a, m in zip(alpha, ("image", "text")):
        learned = _reference_knn(model.projections[m](data["item"][m]), KNN_K)
        init = _reference_knn(data["item"][m], KNN_K)
        expected = 0.3 * learned + 0.7 * init  # Eq. 6, lambda = 0.7
        torch.testing.assert_close(_dense(graphs[m][0].flip(0), graphs[m][1], 30), expected)
        fused += a * expected  # Eq. 7
    # Prediction: LightGCN items + L2-normalised two-hop propagation over the fused graph.
    with torch.no_grad():
        out = model()
        ids = model.item_embedding.weight
        ego = torch.cat([model.user_embedding.weight, ids])
        adj = normalized_adjacency(data[RATES].edge_index, NUM_USERS, NUM_ITEMS).to_dense()
        ui = (ego + adj @ ego + adj @ (adj @ ego)) / 3
        h = F.normalize(fused @ (fused @ ids), dim=1)
    torch.testing.assert_close(out.user, ui[:NUM_USERS])
    torch.testing.assert_close(out.item, ui[NUM_USERS:] + h)


def test_lambda_one_ignores_the_learned_graph(data: HeteroData) -> None:
    a, b = (
        _model(data, frozen_graph_weight=1.0).eval(),
        _model(data, frozen_graph_weight=1.0).eval(),
    )
    with torch.no_grad():
        b.projections["image"].weight.mul_(-3.0)
        first, second = a.full_scores(torch.arange(5)), b.full_scores(torch.arange(5))
    torch.testing.assert_close(first, second)


def test_loss_parts_and_parameters(data: HeteroData, batch) -> None:
    # Every parameter gets a gradient on an epoch's first batch: test_model_contract.
    model = _model(data).train()
    model.on_train_epoch_start()
    parts = model.loss(batch)
    assert set(parts) == PARTS
    assert all(v.dim() == 0 and torch.isfinite(v) and v.item() > 0 for v in parts.values())
    names = {n for n, _ in model.named_parameters()}
    assert names == {
        "user_embedding.weight",
        "item_embedding.weight",
        "modality_logits",
        "projections.image.weight",
        "projections.image.bias",
        "projections.text.weight",
        "projections.text.bias",
    }


def test_graph_is_learned_once_per_epoch(data: HeteroData, batch) -> None:
    model = _model(data).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.on_train_epoch_start()
    grads = []
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        sum(model.loss(batch).values()).backward()
        grads.append(model.projections["image"].weight.grad)
        optimizer.step()
    # Only the first batch of the epoch learns the graph; later ones reuse it, detached.
    assert grads[0] is not None and grads[1] is None and grads[2] is None
    cached = model._train_graph[1]["image"][0].to_dense()  # the epoch's graph, a constant
    assert not cached.requires_grad
    # Evaluation rebuilds the graph from the updated projection.
    model.eval()
    with torch.no_grad():
        fresh = model._item_operators()[1]["image"][0].to_dense()
        assert not torch.allclose(fresh, cached)
        graphs = model.build_item_graphs()
        torch.testing.assert_close(
            fresh, _dense(graphs["image"][0].flip(0), graphs["image"][1], 30)
        )
    model.train()
    model.on_train_epoch_start()
    optimizer.zero_grad(set_to_none=True)
    sum(model.loss(batch).values()).backward()
    assert model.projections["image"].weight.grad is not None
    # graph_update="batch": learned with gradient on every step.
    model = _model(data, graph_update="batch").train()
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        sum(model.loss(batch).values()).backward()
        assert model.projections["text"].weight.grad is not None


def test_adam_steps_lower_the_batch_loss_with_per_batch_graphs(data: HeteroData, batch) -> None:
    # The default "epoch" update: test_model_contract.
    model = _model(data, graph_update="batch").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(4):
        loss = sum(model.loss(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0], losses
    assert sum(model.loss(batch).values()).item() < losses[0]


def test_modality_representations(data: HeteroData) -> None:
    # Scores, masking and the loss reading the given pass: test_model_contract.
    model = _model(data).eval()
    # Per-modality representations: the item IDs propagated over that modality's graph only.
    with torch.no_grad():
        out = model()
    graphs = model.build_item_graphs()
    for m, rep in out.modalities.items():
        ei, w = graphs[m]
        graph = _dense(ei.flip(0), w, NUM_ITEMS)
        expected = F.normalize(graph @ model.item_embedding.weight, dim=1)
        torch.testing.assert_close(rep, expected.detach())
        assert (out.user @ rep.t()).shape == (NUM_USERS, NUM_ITEMS)


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities_trains(modalities: dict[str, int]) -> None:
    data = toy_graph(modalities=modalities)
    model = _model(data).train()
    sum(model.loss(first_batch(data, batch_size=32, seed=1)).values()).backward()
    for m in modalities:
        assert model.projections[m].weight.grad.abs().sum() > 0
    assert set(model().modalities) == set(modalities)
    assert model.modality_weights().shape == (len(modalities),)


def test_bad_inputs(data: HeteroData) -> None:
    cases = [
        ({"frozen_graph_weight": 1.5}, "frozen_graph_weight must be in"),
        ({"knn_k": 0}, "knn_k must be an int >= 1"),
        ({"knn_k": 31}, "knn_k must be <= the number of items"),
        ({"num_ii_layers": 0}, "num_ii_layers must be an int >= 1"),
        ({"reg_weight": -1.0}, "reg_weight must be >= 0"),
        ({"graph_update": "step"}, "graph_update must be one of"),
        ({"feat_embed_dim": 2.5}, "feat_embed_dim must be an int >= 1, got 2.5"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            _model(data, **kwargs)
    empty = toy_graph(modalities={})
    with pytest.raises(ValueError, match="needs at least one item modality"):
        _model(empty)


def test_build_model_from_config(data: HeteroData) -> None:
    config = {"embedding_dim": DIM, "knn_k": 4, "frozen_graph_weight": 0.5, "num_ii_layers": 2}
    model = build_model("lattice", data, config)
    assert isinstance(model, LATTICE) and model.knn_k == 4 and model.frozen_graph_weight == 0.5
    assert model.num_ii_layers == 2


def test_edge_wise_and_csr_propagation_agree(data: HeteroData) -> None:
    model = _model(data, num_ii_layers=2).train()
    model.on_train_epoch_start()
    learned = model()  # learns the graph: edge-wise, with gradient
    assert learned.item.requires_grad and model._train_graph is not None
    reused = model()  # the epoch's graph as CSR constants
    torch.testing.assert_close(reused.item, learned.item)
    for m in learned.modalities:
        torch.testing.assert_close(reused.modalities[m], learned.modalities[m])
