"""Plug-in objectives: wrappers that add training objectives to a built model without editing
it. ``plugin: <name>`` (or ``--plugin <name>``) attaches one; its settings are the keys
``<name>_<argument>`` of ``configs/plugins/<name>.yaml``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch_geometric.data import HeteroData

from pyg_dhmrec.models import MODELS, Recommender, build_model, model_class
from pyg_dhmrec.plugins.mrdib import MRdIB

PLUGINS: dict[str, type[Recommender]] = {
    "mrdib": MRdIB,
}


def plugin_class(name: str) -> type[Recommender]:
    if name not in PLUGINS:
        raise ValueError(f"unknown plugin '{name}'; available: {', '.join(sorted(PLUGINS))}")
    return PLUGINS[name]


def plugin_keys(name: str) -> dict[str, str]:
    """Configuration key -> constructor argument of the plug-in (``mrdib_kl`` -> ``kl``)."""
    params = inspect.signature(plugin_class(name).__init__).parameters
    return {f"{name}_{k}": k for k in params if k not in ("self", "base")}


def modality_models() -> list[str]:
    """Registered models that expose per-modality item representations."""
    return sorted(n for n, cls in MODELS.items() if cls.exposes_modalities)


def check_plugin(name: str, model: str) -> None:
    """Raise a clear error when ``model`` cannot carry the plug-in ``name``."""
    cls = plugin_class(name)
    if cls.uses_modalities and not model_class(model).exposes_modalities:
        raise ValueError(
            f"plugin '{name}' needs a model that exposes per-modality item representations "
            f"(Embeddings.modalities); model '{model}' does not. Models that do: "
            f"{', '.join(modality_models())}"
        )


def attach_plugin(name: str, model: Recommender, config: Mapping[str, Any]) -> Recommender:
    """Wrap a built ``model`` in the plug-in ``name``, with the config's ``<name>_*`` keys."""
    registered = [n for n, cls in MODELS.items() if cls is type(model)]
    if registered:  # an unregistered class is checked by the plug-in itself
        check_plugin(name, registered[0])
    kwargs = {arg: config[key] for key, arg in plugin_keys(name).items() if key in config}
    return plugin_class(name)(model, **kwargs)


def build_recommender(config: Mapping[str, Any], data: HeteroData) -> Recommender:
    """``config['model']`` built from the config, wrapped in ``config['plugin']`` when set."""
    model = build_model(config["model"], data, config)
    if config.get("plugin"):
        model = attach_plugin(config["plugin"], model, config)
    return model


__all__ = [
    "MRdIB",
    "PLUGINS",
    "attach_plugin",
    "build_recommender",
    "check_plugin",
    "modality_models",
    "plugin_class",
    "plugin_keys",
]
