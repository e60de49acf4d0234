"""Layered YAML configuration: overall < dataset < model < plug-in < command line.

``configs/overall.yaml`` defines every general key (training, evaluation and dataset keys) with
its default and one comment line; ``configs/models/<name>.yaml`` defines the model's own keys.
When ``plugin`` names a plug-in objective (in any layer or on the command line),
``configs/plugins/<plugin>.yaml`` adds its own keys, which must all be new (prefixed
``<plugin>_``). A later layer may only override a key some layer defined, with a value of the
same type; anything else is an error naming the file (or the command-line option) and what was
expected. Model and plug-in files may hold ``per_dataset: {<dataset>: {key: value}}``, applied
right after the file; every entry is checked whichever dataset runs (a configured dataset's
name, known keys, values of the right types).
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

# Package data: pyg_dhmrec/configs links to the repository's configs/ in a checkout and is a real
# folder in an installed wheel; installs are unpacked files, so the resource is a filesystem path.
CONFIG_DIR = Path(str(resources.files("pyg_dhmrec") / "configs"))
# Options of the command line that are not configuration keys (for "did you mean" hints).
CLI_OPTIONS = ("model", "dataset", "plugin", "data_root", "output", "device", "quiet", "resume")
FEATURE_SUFFIX = "_feat.npy"
# Dataset files that are templates, used as --dataset <template>:<Category>.
DATASET_TEMPLATES = ("amazon",)
_CATEGORY_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Mapping-valued keys that a later layer updates key by key instead of replacing.
MERGED_MAPPINGS = ("amazon",)


class ConfigError(ValueError):
    """A configuration file, key or value that cannot be used."""


def available(kind: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the known ``datasets``, ``models`` or ``plugins`` (one YAML file each),
    templates aside."""
    names = sorted(p.stem for p in (config_dir / kind).glob("*.yaml"))
    return [n for n in names if kind != "datasets" or n not in DATASET_TEMPLATES]


def available_datasets(config_dir: Path = CONFIG_DIR) -> list[str]:
    """The known datasets, then the templates as ``<template>:<Category>``."""
    templates = [
        f"{t}:<Category>"
        for t in DATASET_TEMPLATES
        if (config_dir / "datasets" / f"{t}.yaml").exists()
    ]
    return available("datasets", config_dir) + templates


def _fill_template(value: Any, category: str) -> Any:
    if isinstance(value, str):
        return value.replace("{category}", category)
    if isinstance(value, dict):
        return {k: _fill_template(v, category) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_template(v, category) for v in value]
    return value


# What a dataset folder of one's own must hold (the unknown-dataset error quotes it).
FOLDER_CONTENTS = (
    "<name>.inter (tab-separated, header row with userID, itemID and x_label: 0 train, 1 valid, "
    "2 test) and, for multimodal models, one <modality>_feat.npy per modality (a float matrix "
    "with one row per item, e.g. image_feat.npy, text_feat.npy)"
)


def suggest(name: str, known: Sequence[str]) -> list[str]:
    """Known names close to ``name``: initials (``lr`` -> ``learning_rate``), prefix, spelling."""
    low = str(name).lower()
    initials = [k for k in known if "_" in k and "".join(p[:1] for p in k.split("_")) == low]
    prefixed = [k for k in known if len(low) >= 3 and k.startswith(low)]
    close = difflib.get_close_matches(low, list(known), n=3)
    return list(dict.fromkeys(initials + prefixed + close))[:3]


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` Did you mean: a, b?`` for :func:`suggest`'s names, or an empty string."""
    close = suggest(name, known)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def discover_dataset(folder: Path) -> dict[str, Any]:
    """Settings of a dataset folder that has no YAML: ``<name>.inter`` and ``*_feat.npy``.

    Each ``<modality>_feat.npy`` becomes modality ``<modality>`` (``image_feat.npy`` -> image);
    their rows are checked against the item count when the dataset is processed.
    """
    name = folder.name
    try:
        entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    except PermissionError as e:  # else no *_feat.npy would be found, silently
        raise ConfigError(
            f"dataset folder {folder.resolve()}: cannot list its files ({e.strerror}); make it "
            "readable"
        ) from None
    inter = folder / f"{name}.inter"
    # A folder named like a data file is listed here and refused by name when the dataset
    # reads its files (MMRecDataset), so both kinds of dataset share one check.
    if not inter.exists():
        if inter.is_symlink():
            found = f"{inter.name} is a symbolic link to {os.readlink(inter)}, which does not exist"
        else:
            found = f"it holds: {', '.join(entries[:10]) or 'nothing'}"
        raise ConfigError(
            f"dataset folder {folder.resolve()} has no {name}.inter ({found}); a dataset folder "
            "must contain " + FOLDER_CONTENTS.replace("<name>", name)
        )
    modalities = {f[: -len(FEATURE_SUFFIX)]: f for f in entries if f.endswith(FEATURE_SUFFIX)}
    # near misses (image_feat.NPY, image_feat.npy.bak) are not read: say so, not nothing
    unread = [f for f in entries if "_feat." in f.lower() and f not in modalities.values()]
    if unread:
        log.warning(
            "dataset folder %s: %s not read as modalities (only files named "
            "<modality>%s are; or name the files with --modalities)",
            folder,
            ", ".join(unread[:10]),
            FEATURE_SUFFIX,
        )
    listed = ", ".join(f"{m} ({f})" for m, f in modalities.items()) or "none (ID-only models)"
    log.info(
        "dataset '%s' from folder %s (no configs/datasets/%s.yaml): %s.inter, modalities %s",
        name,
        folder,
        name,
        name,
        listed,
    )
    return {"modalities": modalities}


def dataset_layer(
    dataset: str, config_dir: Path = CONFIG_DIR, data_root: str | None = None
) -> tuple[str, dict[str, Any], str]:
    """``(name, settings, source)`` of ``dataset``: a file's name, ``<template>:<Category>``,
    a folder ``<data_root>/<dataset>`` or a path ``dir/<name>`` to a folder in MMRec's format.

    ``amazon:Toys_and_Games`` reads ``datasets/amazon.yaml`` with ``{category}`` replaced by
    ``Toys_and_Games`` and is named ``amazon_toys_and_games``. A folder without a YAML gets the
    modalities :func:`discover_dataset` finds; a path also sets ``data_root`` to its parent.
    """
    template, colon, category = dataset.partition(":")
    path = config_dir / "datasets" / f"{template}.yaml"
    if template in DATASET_TEMPLATES and path.exists():
        if not colon or not _CATEGORY_RE.match(category):
            raise ConfigError(
                f"dataset '{dataset}': use --dataset {template}:<Category> with a category of "
                f"letters, digits and underscores as in the source's file names, e.g. "
                f"{template}:Toys_and_Games"
            )
        name = f"{template}_{category.lower()}"
        return name, _fill_template(load_yaml(path), category), f"{path} ({dataset})"
    if not colon and ("/" in dataset or "\\" in dataset):
        folder = Path(dataset).expanduser()
        if folder.is_file():
            raise ConfigError(
                f"--dataset {dataset}: a file; give the dataset folder that holds it, --dataset "
                f"{folder.parent}"
            )
        if not folder.is_dir():
            raise ConfigError(
                f"--dataset {dataset}: no such folder (looked for {folder.resolve()}); a dataset "
                "folder must contain " + FOLDER_CONTENTS
            )
        own = config_dir / "datasets" / f"{folder.name}.yaml"
        settings = load_yaml(own) if own.exists() else discover_dataset(folder)
        return folder.name, {**settings, "data_root": str(folder.parent)}, f"folder {folder}"
    if not colon and path.exists():
        return dataset, load_yaml(path), str(path)
    folder = Path(data_root or "datasets") / dataset
    if not colon and folder.is_dir():
        return dataset, discover_dataset(folder), f"folder {folder}"
    known = available_datasets(config_dir)
    raise ConfigError(
        f"unknown dataset '{dataset}'; available: {', '.join(known)}."
        + did_you_mean(dataset, known)
        + f" A dataset of your own needs no YAML: looked for the folder {folder.resolve()} "
        f"(--data-root {data_root or 'datasets'}), which must contain "
        + FOLDER_CONTENTS.replace("<name>", dataset)
        + "; or give its path, --dataset path/to/<name>"
    )


#: Largest configuration or grid file read (a grid of this size already has thousands of points).
MAX_YAML_BYTES = 1 << 20


class _StrictYAMLError(yaml.constructor.ConstructorError):
    """Valid YAML that :class:`_StrictLoader` refuses (a repeated key, an alias)."""


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that refuses what would silently change a file's meaning: a key given twice
    in one mapping (YAML keeps the last) and aliases (``*name``), which may nest a value in
    itself or expand exponentially."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _StrictYAMLError(
                None,
                None,
                f"found the alias *{event.anchor}; anchors and aliases are not supported, write "
                "the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' keys are overridden by the mapping's own, as YAML defines
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _StrictYAMLError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key!r} a second time (first on line {first}); give "
                        "each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        text = str(node.value).replace("_", "").lstrip("+-")
        # YAML 1.1 reads 010 as octal 8 and 1:30 as base 60 (90): never what a seed meant
        if ":" in text or (len(text) > 1 and text[0] == "0" and text[1].isdigit()):
            raise _StrictYAMLError(
                None,
                None,
                f"found the integer {node.value!r}, which YAML 1.1 reads as "
                f"{super().construct_yaml_int(node)} (a leading 0 is octal, a ':' counts in "
                "base 60); write it without them, or quote it for text",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; an empty file is an empty mapping. A key given twice, an alias, a
    file that is not UTF-8 or larger than :data:`MAX_YAML_BYTES` is an error naming the file."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = 0  # open() below reports a missing file
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {size} bytes, larger than the {MAX_YAML_BYTES} bytes a configuration or "
            "grid file may have; expected a YAML mapping of key: value"
        )
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(content).__name__}")
    return content


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the type of ``default`` (int is accepted for float). Python
    callers' values are read as the YAML ones: a path as its string, a numpy integer as an
    int, a tuple as a list."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif isinstance(value, tuple):
        value = list(value)
    if default is None:
        return value
    if value is None:
        # null means "none" where the default may be absent: a key null in overall.yaml that a
        # layer set (baseline), a mapping (modality_weights: equal weights) or a path; elsewhere
        # (batch_size) it is a slip
        if isinstance(default, dict) or key in PATH_KEYS or key in _overall_null_keys():
            return value
        raise ConfigError(
            f"{source}: key '{key}' expects {_type_name(default)} (like its default {default!r}), "
            "got null (an empty value)"
        )
    if isinstance(default, bool):
        if isinstance(value, (bool, np.bool_)):  # numpy's bool is no subclass of bool
            return bool(value)
    elif isinstance(default, float):
        # numbers.Real: numpy's float32 too, which is no subclass of float
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, int):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif isinstance(value, type(default)):
        return value
    hint = ""
    if isinstance(default, list) and isinstance(value, (str, int, float)):
        # --ablations no_kl, --topk 10,20: YAML reads a list only in brackets
        items = value.split(",") if isinstance(value, str) else [value]
        hint = f"; a list is written in brackets, e.g. [{', '.join(str(v).strip() for v in items)}]"
    raise ConfigError(
        f"{source}: key '{key}' expects {_type_name(default)} (like its default {default!r}), "
        f"got {_type_name(value)} {value!r}{hint}"
    )


@functools.cache
def _overall_null_keys() -> frozenset[str]:
    """The keys whose default in configs/overall.yaml is null."""
    return frozenset(k for k, v in load_yaml(CONFIG_DIR / "overall.yaml").items() if v is None)


def _unknown_key(
    key: str, known: Sequence[str], source: str, also: Sequence[str] = ()
) -> ConfigError:
    if key in also:  # an option of the command line given where keys go (Python keywords)
        return ConfigError(
            f"{source}: '{key}' is an option of the command line, not a configuration key "
            "(every key: configs/overall.yaml, the model's YAML)"
        )
    hint = did_you_mean(key, [*known, *also])
    if hint:  # a close name is more use than the whole list
        return ConfigError(
            f"{source}: unknown key '{key}'.{hint} (every key: configs/overall.yaml, the model's "
            "YAML, --help)"
        )
    return ConfigError(f"{source}: unknown key '{key}'. Known keys: {', '.join(sorted(known))}")


def merge(
    base: dict[str, Any], layer: Mapping[str, Any], source: str, allow_new: bool = False
) -> dict[str, Any]:
    """Return ``base`` overridden by ``layer``; new keys only when ``allow_new``."""
    out = dict(base)
    for key, value in layer.items():
        if key in MERGED_MAPPINGS and isinstance(base.get(key), dict) and isinstance(value, dict):
            out[key] = {**base[key], **value}  # a partial mapping overrides only its keys
        elif key in base:
            out[key] = coerce(key, value, base[key], source)
        elif allow_new:
            out[key] = value
        else:
            raise _unknown_key(key, list(base), source)
    return out


def parse_cli_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``['--lr', '0.01', '--flag', 'true']`` into ``{'lr': 0.01, 'flag': True}``.

    Values are parsed as YAML scalars or flow sequences (``--topk [10,20]``).
    """
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # key -> the text given, for the error on a repeated option
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"command line: expected an option '--key value', got {token!r}")
        key, eq, raw = token[2:].partition("=")
        key = key.replace("-", "_")  # the key only: a value (path, negative number) keeps dashes
        if eq:
            i += 1
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"command line: option --{key} needs a value")
            raw = args[i + 1]
            i += 2
        if key in out:  # later wins, as between the YAML layers, but never silently
            log.warning(
                "command line: option --%s given twice (%r, then %r); the last one is used",
                key,
                given[key],
                raw,
            )
        given[key] = raw
        try:
            out[key] = yaml.load(raw, Loader=_CommandLineLoader)  # noqa: S506 (a SafeLoader)
        except _StrictYAMLError as e:
            raise ConfigError(f"command line: --{key} {raw!r}: {e.problem}") from None
        except yaml.YAMLError:
            out[key] = raw
        _check_flow_mapping(key, raw, out[key])
    return out


def _check_flow_mapping(key: str, raw: str, value: Any) -> None:
    """Refuse ``{image:0.5}``: without a space after ':' YAML reads one key 'image:0.5' with no
    value, which a later check would report as a modality named 'image:0.5'."""
    if isinstance(value, list):
        for item in value:
            _check_flow_mapping(key, raw, item)
    if not isinstance(value, dict):
        return
    for name, item in value.items():
        if item is None and isinstance(name, str) and ":" in name:
            left, _, right = name.partition(":")
            raise ConfigError(
                f"command line: --{key} {raw!r}: the key {name!r} has no value; YAML needs a "
                f"space after ':' ({{{left}: {right}}})"
            )
        _check_flow_mapping(key, raw, item)


class _CommandLineLoader(_StrictLoader):
    """YAML 1.1 as ``safe_load`` reads it, plus exponent floats without a dot (``5e1``,
    ``1e-4``), which YAML 1.1 leaves strings; at the top level :func:`coerce` converts them,
    inside a list or mapping (``--modality_weights '{image: 1e-1}'``) only this can."""


_CommandLineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _file_with_per_dataset(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model or plug-in file: its keys and its ``per_dataset`` mapping."""
    layer = load_yaml(path)
    per_dataset = layer.pop("per_dataset", None) or {}
    bad = (
        [k for k, v in per_dataset.items() if not isinstance(v, dict)]
        if isinstance(per_dataset, dict)
        else ["-"]
    )
    if bad:
        raise ConfigError(
            f"{path}: 'per_dataset' must map dataset names to mappings of key: value"
            + (f"; entry '{bad[0]}' is not a mapping" if bad != ["-"] else "")
        )
    return layer, per_dataset


def _plugin_layer(
    config: dict[str, Any], plugin: Any, dataset: str, config_dir: Path
) -> dict[str, Any]:
    """Add ``configs/plugins/<plugin>.yaml`` (and its ``per_dataset`` entry) to ``config``."""
    path = config_dir / "plugins" / f"{plugin}.yaml"
    # a name, not a path: '../models/lightgcn' would read a model's file as a plug-in's
    if not isinstance(plugin, str) or plugin not in available("plugins", config_dir):
        raise ConfigError(
            f"unknown plugin {plugin!r}; available: "
            f"{', '.join(available('plugins', config_dir)) or 'none'} (or null for none)"
        )
    layer, per_dataset = _file_with_per_dataset(path)
    clash = sorted(set(layer) & set(config))
    if clash:
        raise ConfigError(
            f"{path}: key(s) {', '.join(clash)} are already defined by another layer; plug-in "
            f"keys must be new (named {plugin}_<argument>)"
        )
    config = merge(config, layer, str(path), allow_new=True)
    return _per_dataset_layer(config, path, per_dataset, dataset, config_dir)


def _is_dataset_name(name: Any, config_dir: Path) -> bool:
    """Whether a ``per_dataset`` entry's ``name`` is a configured dataset's: a dataset file's
    name or ``<template>_<category>`` (what ``--dataset amazon:<Category>`` is named). A folder
    of one's own takes entries once it has a file (the same answer whichever dataset runs)."""
    if not isinstance(name, str):
        return False
    if name in available("datasets", config_dir):
        return True
    return any(
        name.startswith(f"{t}_")
        and _CATEGORY_RE.match(name[len(t) + 1 :])
        and (config_dir / "datasets" / f"{t}.yaml").exists()
        for t in DATASET_TEMPLATES
    )


def _per_dataset_layer(
    config: dict[str, Any],
    path: Path,
    per_dataset: Mapping[Any, dict[str, Any]],
    dataset: str,
    config_dir: Path,
) -> dict[str, Any]:
    """``config`` with ``per_dataset[dataset]`` applied. Every entry is checked whichever dataset
    runs (its name is a dataset's, its keys are known, its values of the right types), so a
    misspelt name or key is refused at once instead of being skipped until that dataset runs."""
    out = config
    for name, entry in per_dataset.items():
        if not _is_dataset_name(name, config_dir):
            known = available_datasets(config_dir)
            hint = did_you_mean(str(name), known)
            raise ConfigError(
                f"{path}: per_dataset entry {name!r} names no dataset; expected the name of a "
                f"configs/datasets/<name>.yaml ({', '.join(known)}; amazon:<Category> is named "
                f"amazon_<category>).{hint} A dataset folder of one's own takes per_dataset "
                f"settings once it has a configs/datasets/{name}.yaml (it may be empty)"
            )
        merged = merge(config, entry, f"{path} (per_dataset.{name})")
        if name == dataset:
            out = merged
    return out


def _model_layers(
    config: dict[str, Any], model: str, dataset: str, config_dir: Path
) -> dict[str, Any]:
    """Add ``configs/models/<model>.yaml`` (and its ``per_dataset`` entry) to ``config``."""
    model_path = config_dir / "models" / f"{model}.yaml"
    model_layer, per_dataset = _file_with_per_dataset(model_path)
    # Model files may define new (model-specific) keys; they become part of the schema.
    config = merge(config, model_layer, str(model_path), allow_new=True)
    return _per_dataset_layer(config, model_path, per_dataset, dataset, config_dir)


def load_config(
    model: str,
    dataset: str | None,
    overrides: Mapping[str, Any] | None = None,
    config_dir: Path = CONFIG_DIR,
    source: str = "command line",
) -> dict[str, Any]:
    """Merge overall < dataset < model (< its ``per_dataset`` entry) < plug-in (< its
    ``per_dataset`` entry) < ``overrides``; errors in ``overrides`` are said to come from
    ``source``.

    ``dataset`` is a file's name, ``<template>:<Category>`` or a folder (see
    :func:`dataset_layer`), or None for no dataset layer (named ``data``);
    ``config['dataset']`` is the resulting dataset name.
    """
    models = available("models", config_dir)
    if model not in models:  # a name, not a path through configs/ ('../plugins/mrdib')
        hint = did_you_mean(model, models)
        raise ConfigError(
            f"unknown model '{model}'; available: {', '.join(models)}"
            + (f".{hint}" if hint else "")
        )
    overrides = overrides or {}
    overall_path = config_dir / "overall.yaml"
    config = load_yaml(overall_path)
    if overrides.get("data_root", 0) is None:  # None from Python: the default
        overrides = {k: v for k, v in overrides.items() if k != "data_root"}
    if overrides.get("data_root", 0) == "":
        raise ConfigError(f"{source}: --data-root must be a folder, got {overrides['data_root']!r}")
    root = overrides.get("data_root") or config.get("data_root")
    if dataset is None:  # a model for data held in memory (pyg_dhmrec.build_model)
        dataset, dataset_settings, dataset_source = "data", {}, "no dataset"
    else:
        dataset, dataset_settings, dataset_source = dataset_layer(dataset, config_dir, root)
    if "data_root" in dataset_settings and overrides.get("data_root"):
        raise ConfigError(
            f"{dataset_source}: --dataset names a folder, which sets the data root; drop "
            "--data-root (or give --dataset <name> --data-root <its parent>)"
        )
    config = merge(config, dataset_settings, dataset_source)
    if dataset_source.startswith("folder") and "modalities" in overrides:
        log.info("dataset '%s': modalities as given, %s", dataset, overrides["modalities"])

    config = _model_layers(config, model, dataset, config_dir)
    plugin = overrides.get("plugin", config.get("plugin"))
    if plugin is not None:
        config = _plugin_layer(config, plugin, dataset, config_dir)
    for key in overrides:  # also suggest the options that are not keys (--datset -> dataset)
        if key not in config:
            owners = _models_with_key(key, config_dir)
            if owners:  # a key of other models: say so rather than list every key
                raise ConfigError(
                    f"{source}: unknown key '{key}' for {model}: it is an option of "
                    f"{', '.join(owners)} ({model}'s keys: configs/models/{model}.yaml)"
                    + ("; a plug-in's keys need --plugin <name>" if "plug-in" in owners[-1] else "")
                )
            raise _unknown_key(key, list(config), source, also=CLI_OPTIONS)
    config = merge(config, overrides, source)
    config["model"], config["dataset"] = model, dataset
    validate_config(config)
    return config


def _models_with_key(key: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The models (and plug-ins) whose YAML defines ``key``."""
    owners = []
    for kind in ("models", "plugins"):
        for name in available(kind, config_dir):
            try:
                keys = load_yaml(config_dir / kind / f"{name}.yaml")
            except ConfigError:
                continue  # a broken file is reported when it is used
            if key in keys and key != "per_dataset":
                owners.append(name if kind == "models" else f"plug-in {name}")
    return owners


# ----- value checks of the merged configuration (types are checked by merge) -----
METRIC_NAMES = ("recall", "ndcg", "precision", "map")
MAX_EMBEDDING_DIM = 4096
# key -> (smallest, largest) allowed integer; None: no bound.
#: General keys a model's YAML may set to its published value (documented in overall.yaml).
MODEL_FILE_TRAINER_KEYS = frozenset({"learning_rate", "learning_rate_scheduler", "weight_decay"})
#: General keys a ``baseline`` run does not take from the run it is compared with: its own
#: optimiser settings (published per model) and plug-in, its folder, and no baseline of its own.
BASELINE_OWN_KEYS = MODEL_FILE_TRAINER_KEYS | {"plugin", "output", "baseline"}
#: Test metrics whose ratio a baseline comparison reports (its t-test: per-user recall@20).
BASELINE_METRICS = ("recall@20", "ndcg@20")

_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "seed": (0, 2**32 - 1),  # numpy's seed range
    "epochs": (1, None),
    "batch_size": (1, None),
    "embedding_dim": (1, MAX_EMBEDDING_DIM),
    "eval_step": (1, None),
    "patience": (1, None),
    "eval_batch_size": (1, None),
    "knn_k": (1, None),  # the dataset's item count bounds it too (check_config_for_data)
    "infusion_k": (1, None),
    "max_steps_per_epoch": (1, None),  # null (every batch) is allowed
    "kl_items": (1, None),  # DHMRec's sampled KL; null (every item) is allowed
    # propagation depths of every model (a model may ask for more, e.g. MMGCN's >= 1)
    # (64: far above any published depth; 10**12 would hang, not fail)
    "num_ui_layers": (0, 64),
    "num_ii_layers": (0, 64),
    "num_mm_layers": (0, 64),
}
#: Values of ``matmul_precision`` (torch.set_float32_matmul_precision).
MATMUL_PRECISIONS = ("highest", "high", "medium")
#: Values of ``negative_items``: negatives from every item, or from the items with a train
#: interaction (MMRec's sampler); see :class:`~pyg_dhmrec.data.sampler.BPRSampler`.
NEGATIVE_ITEMS = ("all", "train")
#: keys that hold a path (or URL) or null
PATH_KEYS = ("data_root", "cache_dir", "output", "inter_file", "url")
#: the devices a run can use: CPU and CUDA (other torch device types lack sparse CSR support)
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def validate_config(config: Mapping[str, Any], source: str | None = None) -> None:
    """Raise :class:`ConfigError` naming the key for a value of the right type but outside its
    range (``epochs`` 0, an empty ``topk``, ``embedding_dim`` 10**8)."""

    def bad(key: str, expected: str) -> ConfigError:
        where = f"{source}: " if source else ""
        return ConfigError(f"{where}key '{key}' must be {expected}, got {config[key]!r}")

    for key, (low, high) in _INT_RANGES.items():
        value = config.get(key)
        if value is None or key not in config:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(key, "an integer")
        if value < low or (high is not None and value > high):
            raise bad(key, f"an integer >= {low}" if high is None else f"in [{low}, {high}]")
    for key, strict in (("learning_rate", True), ("weight_decay", False)):
        value = config.get(key)
        if isinstance(value, (int, float)) and not (
            math.isfinite(value) and (value > 0 if strict else value >= 0)
        ):
            raise bad(key, "a finite number > 0" if strict else "a finite number >= 0")
    schedule = config.get("learning_rate_scheduler")
    if schedule is not None and not (
        isinstance(schedule, list)
        and len(schedule) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in schedule)
        and 0 < schedule[0] <= 1
        and 0 < schedule[1] < math.inf
    ):
        raise bad(
            "learning_rate_scheduler",
            "null or [factor, step] with 0 < factor <= 1 and a finite step > 0, e.g. [0.96, 50]",
        )
    topk = config.get("topk")
    if "topk" in config and (
        not isinstance(topk, list)
        or not topk
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in topk)
        or len(set(topk)) < len(topk)
    ):
        raise bad("topk", "a non-empty list of distinct cut-offs, integers >= 1, e.g. [10, 20]")
    metrics = config.get("metrics")
    if "metrics" in config and (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(m, str) for m in metrics)
        or not set(metrics) <= set(METRIC_NAMES)
        or len(set(metrics)) < len(metrics)
    ):
        raise bad("metrics", f"a non-empty list of distinct names among {', '.join(METRIC_NAMES)}")
    if "compile" in config and not isinstance(config["compile"], bool):
        raise bad("compile", "true or false")
    if "matmul_precision" in config and config["matmul_precision"] not in MATMUL_PRECISIONS:
        raise bad("matmul_precision", f"one of {', '.join(MATMUL_PRECISIONS)}")
    if "negative_items" in config and config["negative_items"] not in NEGATIVE_ITEMS:
        raise bad("negative_items", f"one of {', '.join(NEGATIVE_ITEMS)}")
    baseline = config.get("baseline")
    if baseline is not None:
        models = available("models")
        if not isinstance(baseline, str) or baseline not in models:
            raise bad("baseline", f"null or a registered model: one of {', '.join(models)}")
        if "model" in config and baseline_applies(config):
            missing = [
                m
                for m in BASELINE_METRICS
                if m.split("@")[0] not in (config.get("metrics") or [])
                or int(m.split("@")[1]) not in (config.get("topk") or [])
            ]
            if missing:
                where = f"{source}: " if source else ""
                raise ConfigError(
                    f"{where}key 'baseline' ({baseline}) compares test "
                    f"{' and '.join(BASELINE_METRICS)}, which the run does not measure "
                    f"({', '.join(missing)} missing): topk needs 20 and metrics recall and "
                    "ndcg, or set baseline null (--baseline null)"
                )
    for key in PATH_KEYS:  # null by default, so merge() cannot check their type
        value = config.get(key)
        if value is not None and not (isinstance(value, (str, os.PathLike)) and str(value).strip()):
            raise bad(key, "null or a non-empty path" + " or URL" * (key == "url"))
        if value is not None and "\x00" in str(value):  # the OS refuses it deep in a file call
            raise bad(key, "a path without NUL characters")
    for key in ("synthetic", "amazon"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise bad(key, "null or a mapping of its settings")
    device = config.get("device")
    if device is not None and not (isinstance(device, str) and DEVICE_RE.match(device)):
        raise bad("device", "auto, cpu, cuda or cuda:<index>")
    modalities = config.get("modalities")
    if isinstance(modalities, dict) and not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in modalities.items()
    ):
        raise bad("modalities", "a mapping of modality name -> feature file name")


def check_config_for_data(config: Mapping[str, Any], num_items: int) -> None:
    """Range checks that need the dataset: kNN sizes against its item count (a cut-off above
    it ranks all items, with a warning from the trainer)."""
    for key in ("knn_k", "infusion_k"):
        value = config.get(key)
        if isinstance(value, int) and num_items < 2:
            raise ConfigError(
                f"key '{key}' counts neighbours among the dataset's items, and it has "
                f"{num_items}: a model with item-item graphs needs at least 2 items"
            )
        if isinstance(value, int) and value > num_items - 1:
            raise ConfigError(
                f"key '{key}' must be in [1, {num_items - 1}] (neighbours among the dataset's "
                f"{num_items} items), got {value}"
            )


def baseline_applies(config: Mapping[str, Any]) -> bool:
    """Whether ``config['baseline']`` names a model to compare with: set, and not the run's
    own model (a run with a plug-in is compared with its model alone)."""
    baseline = config.get("baseline")
    if baseline is None:
        return False
    return baseline != config["model"] or config.get("plugin") is not None


def baseline_config(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The configuration of the run's ``baseline`` model on the run's data, seed and protocol.

    overall.yaml < the run's general keys (``BASELINE_OWN_KEYS`` aside) < the baseline's YAML
    (and its ``per_dataset`` entry for the run's dataset) < the run's general keys again: the
    protocol is the run's, the optimiser settings are the baseline's own, the run's model keys
    never reach it. A function of the run's stored configuration alone, so ``--resume`` gets
    the same baseline.
    """
    overall = load_yaml(config_dir / "overall.yaml")
    shared = {k: config[k] for k in overall if k not in BASELINE_OWN_KEYS and k in config}
    source = f"key 'baseline' ({config['baseline']})"
    out = merge(overall, shared, source)
    out = _model_layers(out, config["baseline"], config["dataset"], config_dir)
    out = merge(out, shared, source)  # the run's protocol over the baseline's per_dataset entry
    out["model"], out["dataset"] = config["baseline"], config["dataset"]
    validate_config(out, source)
    return out


def overall_defaults(config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The general keys and their defaults: ``configs/overall.yaml``."""
    return load_yaml(config_dir / "overall.yaml")


def key_help(keys: Sequence[str], config_dir: Path = CONFIG_DIR) -> dict[str, str]:
    """``key -> 'comment (default value)'`` from ``overall.yaml``, the one place keys are
    documented (``run.py --help`` lists the common ones)."""
    defaults = overall_defaults(config_dir)
    comments: dict[str, str] = {}
    for line in (config_dir / "overall.yaml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\w+):[^#]*#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return {k: f"{comments.get(k, '')} (default {defaults[k]})".strip() for k in keys}
