"""Code that runs inside the ranks started by ``tests/test_distributed.py``.

``one_step`` is started by ``torch.multiprocessing`` (spawn).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from toy_graphs import MODALITIES, first_batch, toy_graph

from pyg_dhmrec import distributed
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.plugins import build_recommender
from pyg_dhmrec.train import Trainer

SEED = 7
#: configs/overall.yaml's trainer keys that the tests do not vary, small evaluation chunks so
#: that the ranks share several
TRAIN = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "topk": [5, 10],
    "metrics": ["recall", "ndcg"],
    "eval_batch_size": 6,
    "early_stop_metric": "recall@10",
    "patience": 20,
    "dataset": "toy",
    "batch_size": 64,
    "epochs": 1,
    "eval_step": 1,
    "seed": 0,
    "progress": False,
}
MODEL = {"embedding_dim": 8, "knn_k": 3}


def toy_data():
    data = toy_graph(modalities=MODALITIES)
    edges = data[RATES].edge_index
    data[RATES].valid_edge_index = edges[:, ::7]
    data[RATES].test_edge_index = edges[:, 3::11]
    return data


def config(model: str, plugin: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {**TRAIN, **MODEL, "model": model, "plugin": plugin, **extra}


def one_step(
    rank: int, world: int, port: int, variants: list[tuple[str, str | None, dict]], out: str
) -> list[dict[str, Any]] | None:
    """For each (model, plugin, config keys) of ``variants``: evaluate the initial model,
    then train one step on this rank's half of the global batch (the whole batch with
    ``world == 1``); save (or return) parameters, gradients and metrics."""
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    results = [_one_step(ctx, *variant) for variant in variants]
    distributed.teardown()
    if world == 1:
        return results
    torch.save(results, Path(out) / f"rank{rank}.pt")
    return None


def _one_step(
    ctx: distributed.Dist | None, model: str, plugin: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    data = toy_data()
    torch.manual_seed(SEED)
    cfg = config(model, plugin, extra)
    recommender = build_recommender(cfg, data)
    trainer = Trainer(recommender, data, cfg, torch.device("cpu"), dist=ctx)
    trainer.model.eval()
    valid = trainer._evaluate(trainer.valid_evaluator)
    test, per_user = trainer._evaluate(trainer.test_evaluator, per_user=True)
    batch = first_batch(data, batch_size=TRAIN["batch_size"])
    if ctx is not None:
        parts = (batch.user, batch.pos_item, batch.neg_item)
        batch = BPRBatch(*(t.tensor_split(ctx.world_size)[ctx.rank] for t in parts))
    trainer.sampler = [batch]  # one step on this batch
    losses = trainer.train_epoch(1)
    return {
        "valid": valid,
        "test": test,
        "per_user": per_user,
        "losses": losses,
        "params": {k: v.detach().clone() for k, v in recommender.named_parameters()},
        "grads": {
            k: v.grad.clone() for k, v in recommender.named_parameters() if v.grad is not None
        },
    }
