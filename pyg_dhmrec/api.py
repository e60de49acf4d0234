"""The Python training API. Defaults come from the same layered YAML configuration as the
command line (overall < dataset < model < the keyword arguments).

``fit`` does what ``run.py`` does, for a dataset by name or folder::

    results = pyg_dhmrec.fit(model="freedom", dataset="myshop", data_root="data", epochs=3)

``build_model`` and ``train`` work on a ``HeteroData`` of one's own (the layout of
:class:`~pyg_dhmrec.data.MMRecDataset`)::

    model = pyg_dhmrec.build_model("freedom", data)
    results = pyg_dhmrec.train(model, data, epochs=3)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch_geometric.data import HeteroData

from pyg_dhmrec.config import load_config, merge, overall_defaults, validate_config
from pyg_dhmrec.models import Recommender
from pyg_dhmrec.plugins import build_recommender
from pyg_dhmrec.train import Trainer, resolve_device, seed_everything


def make_config(model: str = "dhmrec", dataset: str = "synthetic", **keys: Any) -> dict[str, Any]:
    """The merged, checked configuration ``run.py --model M --dataset D --key value ...`` uses.

    ``keys`` are any configuration keys (``epochs=3``, ``data_root="data"``, ``plugin="mrdib"``);
    an unknown key or a value of the wrong type raises :class:`~pyg_dhmrec.config.ConfigError`.
    """
    from pyg_dhmrec.cli import resolve_config

    return resolve_config(
        argparse.Namespace(model=model, dataset=dataset), [], keys, source="keyword arguments"
    )


def fit(
    model: str = "dhmrec", dataset: str = "synthetic", resume: bool = False, **keys: Any
) -> dict[str, Any]:
    """Load ``dataset``, build ``model``, train, evaluate; return the results dictionary.

    ``dataset`` is a configured name (``baby``), the name of a folder under ``data_root``
    (``myshop``: ``myshop.inter`` and ``*_feat.npy``, no YAML needed) or a path to such a folder.
    The run folder (``output``; default ``runs/<model>-<dataset>-<time>``) gets ``results.json``,
    ``best.pt``, ``train.log`` and the checkpoint, exactly as from the command line; with
    ``resume``, the run in ``output`` continues from its checkpoint. With ``baseline`` set (the
    synthetic dataset's default), that model then trains into ``<output>/baseline-<model>/`` and
    the comparison is returned and stored under ``"baseline"``.
    """
    from pyg_dhmrec.cli import run_with_baseline

    config = make_config(model, dataset, **keys)
    return run_with_baseline(config, resume=resume)


def build_model(name: str, data: HeteroData, **keys: Any) -> Recommender:
    """Model ``name`` for ``data``, its settings from ``configs/models/<name>.yaml``
    (and ``embedding_dim`` etc. from ``configs/overall.yaml``), overridden by ``keys``."""
    return build_recommender(load_config(name, None, keys, source="build_model()"), data)


def train(
    model: Recommender,
    data: HeteroData,
    device: str = "auto",
    output: str | Path | None = None,
    **keys: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` with the general keys of ``configs/overall.yaml``, overridden
    by ``keys`` (``epochs=3``, ``learning_rate=0.01``, ...); return the results dictionary.

    ``data`` holds train edges in ``data['user', 'rates', 'item'].edge_index`` and the held-out
    ones in its ``valid_edge_index`` and ``test_edge_index``. With ``output``, the folder gets
    ``best.pt``, ``checkpoint.pt`` and ``per_user_test.pt``.
    """
    config = merge(overall_defaults(), keys, "pyg_dhmrec.train()")
    validate_config(config, "pyg_dhmrec.train()")
    torch_device = resolve_device(config["device"] if device == "auto" else device)
    seed_everything(config["seed"], torch_device)
    return Trainer(model, data, config, torch_device, output=output).fit()
