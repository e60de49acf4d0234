"""The training protocol: early stopping's patience after an improvement, the test metrics of
the best valid epoch, validation on the valid split, and a freshly pruned ID graph every
training epoch (each was left unchecked by the rest of the suite, found by a mutation audit)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models import FREEDOM, DHMRec, LightGCN
from pyg_dhmrec.train import EarlyStopping, Trainer

CONFIG = {
    "batch_size": 32,
    "epochs": 3,
    "eval_step": 1,
    "patience": 10,
    "learning_rate": 0.1,
    "seed": 0,
    "progress": False,
    "topk": [5, 10],
    "metrics": ["recall", "ndcg"],
    "early_stop_metric": "recall@5",
    "eval_batch_size": 64,
}


@pytest.fixture(scope="module")
def split():
    """24 users, 20 items: 80 train pairs, 15 valid and 15 test pairs held out of train."""
    data = toy_graph(num_users=24, num_items=20, num_interactions=110)
    edges = data[RATES].edge_index
    order = torch.randperm(edges.size(1), generator=torch.Generator().manual_seed(1))
    train, valid, test = edges[:, order[30:]], edges[:, order[:15]], edges[:, order[15:30]]
    data[RATES].edge_index = train
    data[REV_RATES].edge_index = train.flip(0)
    data[RATES].valid_edge_index = valid
    data[RATES].test_edge_index = test
    return data


def _evaluator(data, eval_edges) -> FullRankEvaluator:
    return FullRankEvaluator(
        data[RATES].edge_index,
        eval_edges,
        int(data["user"].num_nodes),
        int(data["item"].num_nodes),
        ks=CONFIG["topk"],
        metrics=CONFIG["metrics"],
    )


def _trainer(data) -> tuple[LightGCN, Trainer]:
    torch.manual_seed(0)
    model = LightGCN(data, embedding_dim=8, num_ui_layers=2)
    return model, Trainer(model, data, dict(CONFIG), torch.device("cpu"))


# ---------------------------------------------------------------- early stopping


def test_patience_counts_only_evaluations_since_the_last_strict_improvement() -> None:
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping("recall@20", patience=2)
    assert stopper.step(1, {"recall@20": 0.5}, model)
    assert not stopper.step(2, {"recall@20": 0.4}, model)
    assert stopper.bad_evals == 1
    assert stopper.step(3, {"recall@20": 0.6}, model)  # a strict improvement resets the count
    assert stopper.bad_evals == 0
    assert not stopper.step(4, {"recall@20": 0.55}, model)
    assert stopper.bad_evals == 1 and not stopper.should_stop  # 1 of 2, not 2 of 2
    assert not stopper.step(5, {"recall@20": 0.6}, model)  # a tie is no improvement
    assert stopper.should_stop
    assert (stopper.best_epoch, stopper.best_value) == (3, 0.6)


def test_fit_reports_the_test_metrics_of_the_best_valid_epoch(split, monkeypatch) -> None:
    model, trainer = _trainer(split)
    # valid recall@5 falls after epoch 1, so epoch 1 is the best; the parameters are recorded
    # at each validation (after the epoch's training)
    valid_values = iter([0.3, 0.2, 0.1])
    states = []

    def fake_evaluate(name: str) -> dict[str, float]:
        assert name == "valid"
        states.append(copy.deepcopy(model.state_dict()))
        return {"recall@5": next(valid_values)}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    results = trainer.fit()
    assert results["best_epoch"] == 1 and results["epochs_run"] == 3
    # the parameters changed between epoch 1 and epoch 3, and the model ends at epoch 1's
    assert not torch.equal(states[0]["user_embedding.weight"], states[2]["user_embedding.weight"])
    for key, value in states[0].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    # the reported test metrics are those of epoch 1's parameters, recomputed independently
    torch.manual_seed(0)
    best = LightGCN(split, embedding_dim=8, num_ui_layers=2)
    best.load_state_dict(states[0])
    best.eval()
    expected = _evaluator(split, split[RATES].test_edge_index).evaluate(best.full_scores)
    assert results["test"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    last = LightGCN(split, embedding_dim=8, num_ui_layers=2)
    last.load_state_dict(states[2])
    last.eval()
    at_last = _evaluator(split, split[RATES].test_edge_index).evaluate(last.full_scores)
    assert at_last != expected  # the split tells the two epochs apart


def test_validation_ranks_the_valid_split_and_test_the_test_split(split) -> None:
    model, trainer = _trainer(split)
    model.eval()
    expected_valid = _evaluator(split, split[RATES].valid_edge_index).evaluate(model.full_scores)
    expected_test = _evaluator(split, split[RATES].test_edge_index).evaluate(model.full_scores)
    assert expected_valid != expected_test  # the splits give different metrics
    assert trainer.evaluate("valid") == pytest.approx(expected_valid, rel=1e-12, abs=1e-12)
    assert trainer.evaluate("test") == pytest.approx(expected_test, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- degree-sensitive pruning


@pytest.fixture(scope="module")
def features_graph():
    return toy_graph(modalities={"image": 6, "text": 4})


@pytest.mark.parametrize("model_class", [DHMRec, FREEDOM])
def test_each_training_epoch_prunes_a_new_id_graph(features_graph, model_class) -> None:
    torch.manual_seed(0)
    model = model_class(
        features_graph,
        embedding_dim=8,
        knn_k=3,
        modality_weights={"image": 0.5, "text": 0.5},
        edge_dropout=0.5,
    )
    model.train()
    train = features_graph[RATES].edge_index
    num_users, num_items = (
        int(features_graph["user"].num_nodes),
        int(features_graph["item"].num_nodes),
    )
    graphs, items = [], []
    for _ in range(2):
        model.on_train_epoch_start()
        adjacency = model.pruning()  # what the epoch's training passes propagate over
        kept = model.pruning.kept_edge_index.clone()
        assert kept.size(1) == math.floor(train.size(1) * 0.5)
        # the kept graph, renormalised on its own degrees
        torch.testing.assert_close(
            adjacency.to_dense(), normalized_adjacency(kept, num_users, num_items).to_dense()
        )
        graphs.append(kept)
        with torch.no_grad():
            items.append(model().item)
    assert not torch.equal(graphs[0], graphs[1])  # a new draw per epoch
    assert not torch.allclose(items[0], items[1], atol=1e-6)  # and the ID view follows it
