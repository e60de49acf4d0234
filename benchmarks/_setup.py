"""Set-up shared by the per-model benchmark scripts: a model on a dataset as ``run.py`` builds it.

The scripts put the checkout on ``sys.path`` and import this as ``benchmarks._setup``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
from torch_geometric.data import HeteroData

from pyg_dhmrec.config import load_config
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.loader import load_data_and_model
from pyg_dhmrec.models.base import Recommender
from pyg_dhmrec.train import seed_everything


def add_run_arguments(parser: argparse.ArgumentParser, seed: int | None = None) -> None:
    """``--model``, ``--dataset``, ``--data-root`` and ``--seed`` (``seed``: its default;
    None, the configuration's)."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default=None, help="default: the configuration's")
    parser.add_argument("--seed", type=int, default=seed)


def run_overrides(args: argparse.Namespace, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration overrides of :func:`add_run_arguments`' options and ``extra``."""
    overrides = dict(extra)
    if args.data_root is not None:
        overrides["data_root"] = args.data_root
    if args.seed is not None:
        overrides["seed"] = args.seed
    return overrides


def run_config(model: str, dataset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The merged configuration of ``model`` on ``dataset``, ``overrides`` last, no progress
    bars."""
    return load_config(model, dataset, {**overrides, "progress": False})


def load_run(
    config: Mapping[str, Any], device: torch.device | None = None
) -> tuple[HeteroData, Recommender]:
    """The dataset graph and the model of ``config``, built as ``run.py`` builds them after
    seeding every generator with the configuration's seed. Raises ``ValueError`` or
    ``FileNotFoundError`` where the model cannot run on the dataset."""
    seed_everything(config["seed"], device)
    _, data, model = load_data_and_model(config)
    return data, model


def build_run(
    model: str, dataset: str, overrides: Mapping[str, Any], device: torch.device | None = None
) -> tuple[dict[str, Any], HeteroData, Recommender]:
    """:func:`run_config` and :func:`load_run` in one."""
    config = run_config(model, dataset, overrides)
    return (config, *load_run(config, device))


def probe_batch(config: Mapping[str, Any], data: HeteroData, model: Recommender) -> BPRBatch:
    """The first training batch of a sampler seeded with the configuration's seed."""
    sampler = BPRSampler(
        data[RATES].edge_index,
        model.num_users,
        model.num_items,
        config["batch_size"],
        config["seed"],
        negative_items=config["negative_items"],
    )
    return next(iter(sampler))
