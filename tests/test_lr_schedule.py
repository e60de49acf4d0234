"""MMRec's learning-rate schedule ``[factor, step]``: values, the trainer's use, validation."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.config import ConfigError, validate_config
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import LightGCN
from pyg_dhmrec.train import Trainer, learning_rate_scheduler


def test_step_size_decays_continuously() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([param], lr=0.01)
    scheduler = learning_rate_scheduler(optimizer, [0.96, 50])
    lrs = []
    for _ in range(3):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    # 0.01 * 0.96^(e/50): not a staircase that stays at 0.01 until epoch 50
    assert lrs == pytest.approx([0.01 * 0.96 ** (e / 50) for e in (1, 2, 3)], rel=1e-12)
    assert lrs[0] < 0.01
    assert learning_rate_scheduler(optimizer, None) is None


def graph_with_splits():
    data = toy_graph(20, 16, 90)
    data[RATES].valid_edge_index = data[RATES].edge_index[:, :6]
    data[RATES].test_edge_index = data[RATES].edge_index[:, 6:12]
    return data


def test_trainer_records_the_step_size_of_every_epoch() -> None:
    data = graph_with_splits()
    torch.manual_seed(0)
    config = {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 0.02,
        "learning_rate_scheduler": [0.5, 2],
        "topk": [5],
        "metrics": ["recall"],
        "early_stop_metric": "recall@5",
        "eval_batch_size": 8,
        "progress": False,
    }
    trainer = Trainer(LightGCN(data, embedding_dim=8), data, config, torch.device("cpu"))
    trainer.fit()
    assert [h["learning_rate"] for h in trainer.history] == pytest.approx(
        [0.02 * 0.5 ** (e / 2) for e in (1, 2, 3)]
    )


def test_constant_without_a_schedule() -> None:
    data = graph_with_splits()
    config = {"epochs": 2, "batch_size": 32, "topk": [5], "metrics": ["recall"]}
    config.update(early_stop_metric="recall@5", progress=False)
    trainer = Trainer(LightGCN(data, embedding_dim=8), data, config, torch.device("cpu"))
    trainer.fit()
    assert trainer.scheduler is None
    assert "learning_rate" not in trainer.history[-1]
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize(
    "bad", [[0.96], [0, 50], [1.5, 50], [0.96, 0], [0.9, -1], "0.96", [True, 5]]
)
def test_bad_schedules_are_refused_naming_the_key(bad) -> None:
    with pytest.raises(
        ConfigError, match=r"key 'learning_rate_scheduler' must be null or \[factor"
    ):
        validate_config({"learning_rate_scheduler": bad}, "x.yaml")


def test_published_schedules_pass_validation() -> None:
    validate_config({"learning_rate_scheduler": [0.96, 50]})
    validate_config({"learning_rate_scheduler": None})
