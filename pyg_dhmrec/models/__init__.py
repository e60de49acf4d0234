"""Model registry: `--model <name>` picks the class, `configs/models/<name>.yaml` its settings."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch_geometric.data import HeteroData

from pyg_dhmrec.models.base import Recommender
from pyg_dhmrec.models.bm3 import BM3
from pyg_dhmrec.models.bpr import BPR
from pyg_dhmrec.models.cmdl import CMDL
from pyg_dhmrec.models.damrs import DAMRS
from pyg_dhmrec.models.dhmrec import DHMRec
from pyg_dhmrec.models.diffmm import DiffMM
from pyg_dhmrec.models.dualgnn import DualGNN
from pyg_dhmrec.models.freedom import FREEDOM
from pyg_dhmrec.models.grcn import GRCN
from pyg_dhmrec.models.lattice import LATTICE
from pyg_dhmrec.models.layergcn import LayerGCN
from pyg_dhmrec.models.lgmrec import LGMRec
from pyg_dhmrec.models.lightgcn import LightGCN
from pyg_dhmrec.models.mgcn import MGCN
from pyg_dhmrec.models.micro import MICRO
from pyg_dhmrec.models.mmgcn import MMGCN
from pyg_dhmrec.models.siger import SIGER
from pyg_dhmrec.models.tmlp import TMLP
from pyg_dhmrec.models.vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {
    "bm3": BM3,
    "bpr": BPR,
    "damrs": DAMRS,
    "cmdl": CMDL,
    "dhmrec": DHMRec,
    "diffmm": DiffMM,
    "dualgnn": DualGNN,
    "freedom": FREEDOM,
    "grcn": GRCN,
    "lattice": LATTICE,
    "layergcn": LayerGCN,
    "lgmrec": LGMRec,
    "lightgcn": LightGCN,
    "mgcn": MGCN,
    "micro": MICRO,
    "mmgcn": MMGCN,
    "siger": SIGER,
    "tmlp": TMLP,
    "vbpr": VBPR,
}


def model_class(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_keys(name: str) -> set[str]:
    """Configuration keys the model's constructor takes."""
    params = inspect.signature(model_class(name).__init__).parameters
    return {k for k in params if k not in ("self", "data")}


def model_settings(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's constructor arguments: the config's value where it has the key, else the
    constructor's default."""
    params = inspect.signature(model_class(name).__init__).parameters
    return {
        k: config[k] if k in config else p.default
        for k, p in params.items()
        if k not in ("self", "data") and (k in config or p.default is not p.empty)
    }


def build_model(name: str, data: HeteroData, config: Mapping[str, Any]) -> Recommender:
    """Instantiate a model, passing the config keys that name its constructor arguments."""
    kwargs = {k: config[k] for k in model_keys(name) if k in config}
    return model_class(name)(data, **kwargs)


__all__ = [
    "BM3",
    "BPR",
    "DAMRS",
    "CMDL",
    "DHMRec",
    "DiffMM",
    "DualGNN",
    "FREEDOM",
    "GRCN",
    "LATTICE",
    "LayerGCN",
    "LGMRec",
    "LightGCN",
    "MGCN",
    "MICRO",
    "MMGCN",
    "MODELS",
    "Recommender",
    "SIGER",
    "TMLP",
    "VBPR",
    "build_model",
    "model_class",
    "model_keys",
    "model_settings",
]
