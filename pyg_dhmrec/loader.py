"""The one path from a merged configuration to a dataset graph and a built model."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch_geometric.data import HeteroData

from pyg_dhmrec.config import check_config_for_data
from pyg_dhmrec.data.dataset import MMRecDataset, load_dataset
from pyg_dhmrec.data.transforms import add_derived_graphs
from pyg_dhmrec.models import Recommender, model_class, model_settings
from pyg_dhmrec.plugins import build_recommender

log = logging.getLogger(__name__)


def derived_graph_dir(dataset: MMRecDataset) -> Path:
    """Where the dataset's derived graphs are cached: beside its processed file, keyed by the
    raw files' fingerprint (changed raw files get a fresh folder)."""
    return Path(dataset.processed_dir) / f"graphs_{dataset.fingerprint()}"


def load_data_and_model(
    config: Mapping[str, Any],
) -> tuple[MMRecDataset, HeteroData, Recommender]:
    """Load ``config['dataset']``, check the model's modalities, add the derived graphs the
    model reads (from the cache when built before with the same settings) and build the model
    (wrapped in ``config['plugin']`` when set)."""
    t0 = time.perf_counter()
    dataset = load_dataset(config)
    log.info("%r loaded in %.1fs", dataset, time.perf_counter() - t0)
    cls = model_class(config["model"])
    if cls.uses_modalities:
        dataset.require_modalities()
    data = dataset[0]
    check_config_for_data(config, dataset.stats["items"])
    transforms = cls.graph_transforms(model_settings(config["model"], config))
    if transforms:
        t0 = time.perf_counter()
        add_derived_graphs(data, transforms, derived_graph_dir(dataset))
        log.info("derived graphs ready in %.2fs", time.perf_counter() - t0)
    model = build_recommender(config, data)
    return dataset, data, model
