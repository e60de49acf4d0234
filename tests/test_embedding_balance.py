"""Tests of benchmarks/embedding_balance.py's snapshot on the toy graph (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch
from benchmark_scripts import load_benchmark
from toy_graphs import NUM_ITEMS, first_batch, toy_graph

from pyg_dhmrec.models import BPR, DHMRec, LightGCN


@pytest.fixture(scope="module")
def balance():
    return load_benchmark("embedding_balance")


def test_dhmrec_snapshot_reports_both_parts_and_groups(balance) -> None:
    data = toy_graph(modalities={"image": 16, "text": 8}, skewed=False)
    batch = first_batch(data)
    torch.manual_seed(0)
    model = DHMRec(data, embedding_dim=8, knn_k=3, alpha_mm=0.5)
    model.on_train_epoch_start()
    snap = balance.snapshot(model, batch)
    assert set(snap["loss"]) == {"bpr", "jsd", "orth", "kl", "reg"}
    assert set(snap["parts"]) == {"id", "mm"}
    out = model()
    for name, emb in model.ranking_parts(out).items():
        item_norm = emb[model.num_users :].norm(dim=-1).mean().item()
        assert snap["parts"][name]["item_norm"] == pytest.approx(item_norm, rel=1e-5)
        assert 0 < snap["parts"][name]["score_entropy"] <= math.log(NUM_ITEMS) + 1e-5
    assert snap["log_num_items"] == pytest.approx(math.log(NUM_ITEMS))
    groups = {"user_embedding", "item_embedding", "encoders", "gates", "fusion"}
    assert set(snap["grad_norm"]["bpr"]) == groups
    assert all(v > 0 for v in snap["grad_norm"]["bpr"].values())
    # The JSD reads only the encoders' common codes (Eq. 4).
    assert snap["grad_norm"]["jsd"]["encoders"] > 0
    assert snap["grad_norm"]["jsd"]["fusion"] == 0.0


def test_model_without_parts_has_one(balance) -> None:
    data = toy_graph()
    torch.manual_seed(0)
    model = LightGCN(data, embedding_dim=8)
    snap = balance.snapshot(model, first_batch(data))
    assert set(snap["parts"]) == {"all"}
    out = model()
    expected = out.item.norm(dim=-1).mean().item()
    assert snap["parts"]["all"]["item_norm"] == pytest.approx(expected, rel=1e-5)
    assert set(snap["grad_norm"]["bpr"]) == {"user_embedding", "item_embedding"}


def test_item_shared_is_one_for_identical_rows_and_zero_for_centred_rows(balance) -> None:
    data = toy_graph()
    torch.manual_seed(0)
    model = BPR(data, embedding_dim=8)  # no propagation: the ranking rows are the tables
    batch = first_batch(data)
    with torch.no_grad():
        # every item the same row: the shared vector is the whole row
        model.item_embedding.weight.copy_(torch.tensor([3.0, -1.0, 0, 0, 2.0, 0, 0, 1.0]))
        model.user_embedding.weight.zero_()
    snap = balance.snapshot(model, batch)
    assert snap["parts"]["all"]["item_shared"] == pytest.approx(1.0, rel=1e-5)
    with torch.no_grad():
        # rows in +/- pairs (an even number of items): the mean row is 0
        half = torch.randn(NUM_ITEMS // 2, 8)
        model.item_embedding.weight.copy_(torch.cat([half, -half]))
    assert NUM_ITEMS % 2 == 0
    snap = balance.snapshot(model, batch)
    assert snap["parts"]["all"]["item_shared"] == pytest.approx(0.0, abs=1e-6)
