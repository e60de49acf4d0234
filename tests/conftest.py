"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from torch_geometric.data import HeteroData
from toy_graphs import MODALITIES, first_batch, toy_graph

from pyg_dhmrec.data.sampler import BPRBatch

TINY_SYNTHETIC = (
    "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"
)


@pytest.fixture
def tiny_cli_argv(tmp_path: Path) -> Callable[..., list[str]]:
    """``run.py`` arguments training ``model`` 2 epochs on a tiny synthetic set in ``tmp_path``;
    the run folder is ``tmp_path / 'run'``."""

    def argv(model: str, *extra: str) -> list[str]:
        return [
            *("--model", model, "--dataset", "synthetic", "--data-root", str(tmp_path)),
            *("--synthetic", TINY_SYNTHETIC, "--epochs", "2", "--quiet", "--topk", "[10,20]"),
            *("--knn_k", "3", "--device", "cpu", "--output", str(tmp_path / "run")),
            # the synthetic dataset's LightGCN comparison has its own tests (test_baseline.py)
            *("--baseline", "null", *extra),
        ]

    return argv


@pytest.fixture(scope="module")
def data() -> HeteroData:
    """40 users, 30 items, 400 interactions with skewed degrees; image and text features
    (a module may override it with its own graph)."""
    return toy_graph(modalities=MODALITIES)


@pytest.fixture(scope="module")
def batch(data: HeteroData) -> BPRBatch:
    """The first BPR batch of the module's ``data``."""
    return first_batch(data)
