"""The contract every registered recommender keeps, checked on one tiny graph per model.

Model-specific behaviour (hand-computed values, special mechanisms, errors) is tested in the
model's own file; this file holds the generic checks once: training lowers the loss, every
parameter learns, full ranking masks the train items, and the per-modality outputs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.cli import main
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models import MODELS, Recommender, build_model, model_keys
from pyg_dhmrec.train import Trainer

NUM_USERS, NUM_ITEMS, NUM_EDGES = 24, 20, 110
MODALITIES = {"image": 6, "text": 4}
DIM = 8
#: Small settings, passed to the models whose constructor takes them.
CONFIG = {
    "embedding_dim": DIM,
    "knn_k": 3,
    "infusion_k": 3,
    "num_hyperedges": 4,
    "user_graph_k": 3,
    "pruned_k": 2,
    "num_positives": 3,
    "denoiser_dims": [16],
    "diffusion_batch_size": 10,
}
NAMES = sorted(MODELS)
#: Models that prune the user-item graph in training (FREEDOM's degree-sensitive dropout).
PRUNED = ["dhmrec", "freedom", "layergcn", "siger"]
MULTIMODAL = [name for name in NAMES if MODELS[name].exposes_modalities]
SEED = 7  # fixes pruned graphs, dropout masks and noise before every loss
#: The trainer's keys that the tests do not vary (configs/overall.yaml's values).
TRAIN_DEFAULTS = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "topk": [5],
    "metrics": ["recall"],
    "eval_batch_size": 64,
    "early_stop_metric": "recall@5",
    "patience": 20,
    "model": "x",
    "dataset": "toy",
}


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
        assert MODELS[name].exposes_modalities <= MODELS[name].uses_modalities, name


@pytest.mark.parametrize("name", NAMES)
def test_cli_trains_and_writes_results(name: str, tmp_path, tiny_cli_argv) -> None:
    """``run.py`` end to end on a tiny synthetic folder: every epoch logs the model's declared
    loss parts, finite, and the run ends with test metrics of the best-valid epoch."""
    argv = tiny_cli_argv(name)
    if "knn_k" not in model_keys(name):  # the fixture's --knn_k 3 is an unknown key here
        i = argv.index("--knn_k")
        del argv[i : i + 2]
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["model"] == name
    assert results["config"].get("knn_k", 3) == 3
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    phase = {f"phase_{part}" for part in MODELS[name].phase_loss_parts}
    for record in results["history"]:
        assert set(record["loss"]) == set(MODELS[name].loss_parts) | phase, record["loss"]
        assert all(math.isfinite(v) for v in record["loss"].values())
    assert 1 <= results["best_epoch"] <= 2
    assert 0.0 <= results["test"]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_loss_returns_the_declared_parts(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs)
    _epoch_start(model)
    assert set(model.loss(batch)) == set(MODELS[name].loss_parts)


@pytest.mark.parametrize("name", PRUNED)
def test_evaluation_uses_the_full_graph(name: str, graphs: dict[bool, HeteroData]) -> None:
    """Edge pruning is a training-time augmentation: training draws a pruned graph, evaluation
    propagates over the full normalised train graph."""
    model = _build(name, {k: g for k, g in graphs.items()}, seed=0)
    model.train()
    _epoch_start(model)
    assert model.pruning() is not model.pruning.full_adjacency
    assert model.pruning()._nnz() < model.pruning.full_adjacency._nnz()
    model.eval()
    assert model.pruning() is model.pruning.full_adjacency


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
    phase = {id(p) for p in model.phase_parameters()}  # trained by the model's own phase
    params = {n: p for n, p in model.named_parameters() if id(p) not in phase}
    assert params, name
    for n, p in model.named_parameters():
        assert id(p) not in phase or p.grad is None, f"the loss reaches phase parameter {n}"
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
    out = model()
    torch.testing.assert_close(scores, out.user[users] @ out.item.t())
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


#: Models whose training noise (Gumbel-softmax) is drawn differently in float64.
DTYPE_DEPENDENT_NOISE = {"lgmrec"}


@pytest.mark.parametrize("name", NAMES)
def test_float64_copy_computes_the_same_model(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    # ``model.double()`` reaches every graph a model builds or caches (float64 gradient checks
    # and comparisons against a reference need it): the same step and the same scores.
    single, double = _build(name, graphs), _build(name, graphs).double()
    _epoch_start(single)
    _epoch_start(double)
    loss_single, loss_double = _loss(single, batch), _loss(double, batch)
    assert loss_double.dtype == torch.float64
    loss_single.backward()
    loss_double.backward()
    for (n, p), q in zip(single.named_parameters(), double.parameters()):
        assert q.dtype == torch.float64 and (p.grad is None) == (q.grad is None), n
        if p.grad is not None and name not in DTYPE_DEPENDENT_NOISE:
            scale = q.grad.abs().max().clamp_min(1e-12)
            assert (p.grad.double() - q.grad).abs().max() <= 1e-2 * scale, n
    if name not in DTYPE_DEPENDENT_NOISE:
        torch.testing.assert_close(loss_single.double(), loss_double, rtol=1e-4, atol=1e-6)
    users = torch.arange(NUM_USERS)
    scores = double.eval().full_scores(users)
    assert scores.dtype == torch.float64
    expected = single.eval().full_scores(users).double()  # float32 rounding apart
    torch.testing.assert_close(expected, scores, rtol=1e-4, atol=1e-5 * scores.abs().max().item())


@pytest.mark.parametrize("name", MULTIMODAL)
@pytest.mark.parametrize("training", [False, True])
def test_modality_representations(
    name: str, training: bool, graphs: dict[bool, HeteroData]
) -> None:
    model = _build(name, graphs).train(training)
    if training:
        _epoch_start(model)
    torch.manual_seed(SEED)
    out = model()
    width = out.item.size(1)
    assert out.user.shape == (NUM_USERS, width) and out.item.shape == (NUM_ITEMS, width)
    assert list(out.modalities) == list(MODALITIES)
    for m, rep in out.modalities.items():
        assert rep.shape == (NUM_ITEMS, width), m
        assert torch.isfinite(rep).all(), m
        assert (out.user @ rep.t()).shape == (NUM_USERS, NUM_ITEMS)


@pytest.mark.parametrize("name", NAMES)
def test_loss_reads_the_pass_it_is_given(
    name: str, graphs: dict[bool, HeteroData], batch: BPRBatch
) -> None:
    model = _build(name, graphs)
    _epoch_start(model)
    torch.manual_seed(SEED)
    out = model()
    calls = []
    forward = model.forward
    model.forward = lambda: calls.append(1) or forward()  # noqa: E731 - counts the passes
    given = model.loss(batch, out)
    assert not calls  # no pass of its own (a pass may compute some rows on demand: DHMRec)
    # The same value as a loss that runs its own pass (same graph and noise) ...
    torch.testing.assert_close(sum(given.values()), _loss(model, batch))
    # ... and its gradient flows through the given pass to the embedding tables.
    sum(given.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", NAMES)
def test_trainer_runs_one_forward_pass_per_step(name: str) -> None:
    data = toy_graph(NUM_USERS, NUM_ITEMS, NUM_EDGES, MODALITIES)
    data[RATES].valid_edge_index = data[RATES].edge_index[:, :5]
    data[RATES].test_edge_index = data[RATES].edge_index[:, 5:10]
    torch.manual_seed(0)
    model = build_model(name, data, CONFIG)
    calls = []
    forward = model.forward
    model.forward = lambda: calls.append(1) or forward()  # noqa: E731 - counts the passes
    config = {"batch_size": 32, "epochs": 1, "eval_step": 1, "seed": 0, "progress": False}
    trainer = Trainer(model, data, {**TRAIN_DEFAULTS, **config}, torch.device("cpu"))
    trainer.train_epoch(1)
    # VBPR's loss projects only the batch's items: no full pass at all
    assert len(calls) == (0 if name == "vbpr" else len(trainer.sampler))


@pytest.mark.parametrize("name", [name for name in NAMES if name not in MULTIMODAL])
def test_id_only_models_expose_no_modalities(name: str, graphs: dict[bool, HeteroData]) -> None:
    model = _build(name, graphs)
    assert not model.uses_modalities and not model.exposes_modalities
    assert model().modalities == {}
