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
import os
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import HeteroData

from pyg_dhmrec.config import ConfigError, load_config, merge, overall_defaults, validate_config
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

    if not isinstance(resume, bool):  # resume="no" would be true
        raise ConfigError(f"fit(): resume must be True or False, got {resume!r}")
    if resume and keys.get("output") is None:  # the default folder is named by the clock
        raise ConfigError("fit(resume=True) needs output=<the run folder to continue>")
    config = make_config(model, dataset, **keys)
    return run_with_baseline(config, resume=resume)


def _check_graph_objects(data: Any, source: str) -> None:
    """Python objects a ``HeteroData`` of one's own may hold by mistake, named before a model
    reads them: the modality list, feature matrices that are not tensors, tensors on a device
    a run cannot use (the shape and value checks follow when the model is built)."""
    if not isinstance(data, HeteroData):
        return  # the graph checks name the type
    item = data["item"] if "item" in data.node_types else {}
    declared = item["modalities"] if "modalities" in item else []
    if not (isinstance(declared, (list, tuple)) and all(isinstance(m, str) for m in declared)):
        raise TypeError(
            f"{source}: data['item'].modalities must be a list of modality names, got {declared!r}"
        )
    for m in declared:
        if m in item and not isinstance(item[m], torch.Tensor):
            raise TypeError(
                f"{source}: data['item'].{m} must be a torch.Tensor [items, f], got "
                f"{type(item[m]).__name__} (torch.from_numpy converts an array)"
            )
    for store in data.stores:
        for attr, value in store.items():
            if isinstance(value, torch.Tensor) and value.device.type not in ("cpu", "cuda"):
                raise ValueError(
                    f"{source}: data[{store._key!r}].{attr} is on device '{value.device}'; "
                    "expected cpu or cuda"
                )


def build_model(name: str, data: HeteroData, **keys: Any) -> Recommender:
    """Model ``name`` for ``data``, its settings from ``configs/models/<name>.yaml``
    (and ``embedding_dim`` etc. from ``configs/overall.yaml``), overridden by ``keys``."""
    if not isinstance(name, str):
        raise ConfigError(f"build_model(): name must be a model's name, got {name!r}")
    _check_graph_objects(data, "build_model()")
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
    if not isinstance(model, Recommender):
        raise TypeError(
            "pyg_dhmrec.train(): model must be a Recommender (pyg_dhmrec.build_model(name, "
            f"data)), got {type(model).__name__}"
        )
    if isinstance(device, torch.device):  # torch's own spelling of the same choice
        device = str(device)
    if output is not None and not (isinstance(output, (str, os.PathLike)) and str(output).strip()):
        raise ConfigError(
            f"pyg_dhmrec.train(): output must be None or a folder path, got {output!r}"
        )
    _check_graph_objects(data, "pyg_dhmrec.train()")
    config = merge(overall_defaults(), keys, "pyg_dhmrec.train()")
    validate_config(config, "pyg_dhmrec.train()")
    torch_device = resolve_device(config["device"] if device == "auto" else device)
    seed_everything(config["seed"], torch_device)
    return Trainer(model, data, config, torch_device, output=output).fit()
