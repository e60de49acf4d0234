"""The contract every registered recommender keeps, checked on one tiny graph per model.

Model-specific behaviour (hand-computed values, special mechanisms, errors) is tested in the
model's own file; this file holds the generic checks once: training lowers the loss, every
parameter learns, full ranking masks the train items, and the per-modality outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models import MODELS, Recommender, build_model

NUM_USERS, NUM_ITEMS, NUM_EDGES = 24, 20, 110
MODALITIES = {"image": 6, "text": 4}
DIM = 8
#: Small settings, passed to the models whose constructor takes them.
CONFIG = {"embedding_dim": DIM, "knn_k": 3, "infusion_k": 3, "num_hyperedges": 4}
NAMES = sorted(MODELS)
MULTIMODAL = [name for name in NAMES if MODELS[name].exposes_modalities()]
SEED = 7  # fixes pruned graphs, dropout masks and noise before every loss


@pytest.fixture(scope="module")
def graphs() -> dict[bool, HeteroData]:
    """By ``uses_modalities``: one interaction graph, with and without item features."""
    return {
        True: toy_graph(NUM_USERS, NUM_ITEMS, NUM_EDGES, MODALITIES),
        False: toy_graph(NUM_USERS, NUM_ITEMS, NUM_EDGES),
    }


@pytest.fixture(scope="module")
def batch(graphs: dict[bool, HeteroData]) -> BPRBatch:
    return first_batch(graphs[False], batch_size=32)


def _build(name: str, graphs: dict[bool, HeteroData], seed: int = 0) -> Recommender:
    torch.manual_seed(seed)
    model = build_model(name, graphs[MODELS[name].uses_modalities], CONFIG)
    assert isinstance(model, MODELS[name])
    return model


def _epoch_start(model: Recommender) -> None:
    """Training mode and a new epoch: pruned graphs resampled, learned graphs rebuilt."""
    model.train()
    torch.manual_seed(SEED)
    model.on_train_epoch_start()


def _loss(model: Recommender, batch: BPRBatch) -> torch.Tensor:
    torch.manual_seed(SEED)
    return sum(model.loss(batch).values())


def test_the_registry_is_covered() -> None:
    assert MULTIMODAL, "no model exposes per-modality representations"
    for name in NAMES:
        assert MODELS[name].exposes_modalities() <= MODELS[name].uses_modalities, name


@pytest.mark.parametrize("name", NAMES)
def test_loss_parts_are_finite_scalars(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs)
    _epoch_start(model)
    parts = model.loss(batch)
    assert parts and all(isinstance(key, str) for key in parts)
    for key, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() >= 0, key


@pytest.mark.parametrize("name", NAMES)
def test_adam_step_lowers_the_batch_loss(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs)
    _epoch_start(model)  # the same pruned / learned graph for both losses
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # a small step: first order
    before = _loss(model, batch)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = _loss(model, batch)
    assert after.item() < before.item(), (before.item(), after.item())


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    # On the first batch of an epoch: LATTICE ("epoch" graph update) learns its item graph,
    # so its projections and modality weights get their gradient, on this batch only.
    model = _build(name, graphs)
    _epoch_start(model)
    _loss(model, batch).backward()
    params = dict(model.named_parameters())
    assert params, name
    missing = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient: {missing}"
    for n, p in params.items():
        assert torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", NAMES)
def test_full_scores_rank_all_items_and_mask_train_items(
    name: str, graphs: dict[bool, HeteroData]
) -> None:
    model = _build(name, graphs)
    data = graphs[model.uses_modalities]
    with pytest.raises(RuntimeError, match=r"call model\.eval\(\) first"):
        model.train().full_scores(torch.tensor([0]))
    model.eval()
    users = torch.tensor([3, 0, NUM_USERS - 1, 7])
    scores = model.full_scores(users)
    assert scores.shape == (len(users), NUM_ITEMS) and not scores.requires_grad
    user, item = model()
    torch.testing.assert_close(scores, user[users] @ item.t())
    all_scores = model.full_scores(torch.arange(NUM_USERS))
    assert all_scores.shape == (NUM_USERS, NUM_ITEMS) and torch.isfinite(all_scores).all()
    # Train items are never ranked: with the train items as ground truth nothing is hit
    # (every user keeps at least k = 5 items outside its train items).
    train = data[RATES].edge_index
    assert torch.bincount(train[0]).max() <= NUM_ITEMS - 5
    evaluator = FullRankEvaluator(train, train, NUM_USERS, NUM_ITEMS, ks=(5,))
    results = evaluator.evaluate(model.full_scores)
    assert results and all(v == 0.0 for v in results.values()), results


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_deterministic(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs).eval()
    users = torch.arange(NUM_USERS)
    first = model.full_scores(users).clone()
    torch.testing.assert_close(model.full_scores(users), first)
    # A training epoch's pruned graph, dropout or noise does not reach evaluation.
    model.on_train_epoch_start()
    model.loss(batch)
    model.eval()
    torch.testing.assert_close(model.full_scores(users), first)
    torch.testing.assert_close(_build(name, graphs).eval().full_scores(users), first)


@pytest.mark.parametrize("name", MULTIMODAL)
@pytest.mark.parametrize("training", [False, True])
def test_forward_modalities(name: str, training: bool, graphs: dict[bool, HeteroData]) -> None:
    model = _build(name, graphs).train(training)
    if training:
        _epoch_start(model)
    torch.manual_seed(SEED)
    out = model.forward_modalities()
    width = out.item.size(1)
    assert out.user.shape == (NUM_USERS, width) and out.item.shape == (NUM_ITEMS, width)
    assert list(out.modalities) == list(MODALITIES)
    for m, rep in out.modalities.items():
        assert rep.shape == (NUM_ITEMS, width), m
        assert torch.isfinite(rep).all(), m
        assert (out.user @ rep.t()).shape == (NUM_USERS, NUM_ITEMS)
    torch.manual_seed(SEED)
    user, item = model()
    torch.testing.assert_close(user, out.user)
    torch.testing.assert_close(item, out.item)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_memoized_runs_forward_once(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs)
    _epoch_start(model)
    calls = []
    original = model.forward_modalities
    model.forward_modalities = lambda: calls.append(1) or original()
    torch.manual_seed(SEED)
    with model.memoized():
        out = model.forward_modalities()
        assert model.forward_modalities() is out
        user, item = model()
        assert user is out.user and item is out.item
        parts = model.loss(batch)
    assert len(calls) == 1, "forward_modalities ran more than once inside memoized()"
    assert "forward" not in vars(model) and "forward_modalities" not in vars(model)
    # Memoizing changes no value: the same loss as a plain call (same graph and noise).
    torch.testing.assert_close(sum(parts.values()), _loss(model, batch))
    # Outside the block every call computes again.
    assert model()[1] is not out.item


@pytest.mark.parametrize("name", [name for name in NAMES if name not in MULTIMODAL])
def test_id_only_models_expose_no_modalities(name: str, graphs: dict[bool, HeteroData]) -> None:
    model = _build(name, graphs)
    assert not model.uses_modalities
    with pytest.raises(NotImplementedError, match="does not expose per-modality"):
        model.forward_modalities()
