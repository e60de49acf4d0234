"""Experiments over finished or resumable runs: grids selected on valid, seed repeats, paired
comparisons, and rebuilding a run's model for recommendations and exports."""

from __future__ import annotations

import itertools
import json
import logging
import math
import operator
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.atomic_files import ensure_folder, write_json, write_npy, write_text
from pyg_dhmrec.config import (
    BASELINE_METRICS,
    ConfigError,
    _models_with_key,
    load_config,
    load_yaml,
    merge,
    overall_defaults,
    validate_config,
)
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.loader import load_data_and_model
from pyg_dhmrec.models import Recommender
from pyg_dhmrec.train import BEST, CHECKPOINT, PER_USER, RESULTS

log = logging.getLogger(__name__)

#: Valid metric that selects a grid point (never a test metric).
SELECT_METRIC = "recall@20"
#: Keys that select YAML layers or the run folder: fixed for a whole grid.
GRID_FIXED_KEYS = ("model", "dataset", "plugin", "output")
#: numpy's largest seed (configs/overall.yaml's ``seed`` range)
MAX_SEED = 2**32 - 1
#: Keys that choose the data: the points of a grid must share the valid split they are selected on.
GRID_DATA_KEYS = ("data_root", "cache_dir", "inter_file", "url", "synthetic", "amazon")
#: ``runner(config, resume)`` trains one run into ``config['output']`` and returns its results.
Runner = Callable[[dict[str, Any], bool], dict[str, Any]]


class ExperimentError(ValueError):
    """A run folder, grid or request that an experiment command cannot use."""


# ---------------------------------------------------------------- grids


#: Reserved key of a grid file: how its axes combine into points (not a configuration key).
GRID_DESIGN_KEY = "design"
#: ``product``: every combination; ``one_at_a_time``: the first value of every key is the
#: centre point, then each other value of one key with the rest at the centre (a paper's
#: sensitivity study), 1 + sum(len - 1) points.
GRID_DESIGNS = ("product", "one_at_a_time")


def grid_design(axes: Mapping[str, Any], source: str = "grid") -> str:
    """The grid's :data:`GRID_DESIGN_KEY` (``product`` when absent), checked."""
    design = axes.get(GRID_DESIGN_KEY, "product")
    if design not in GRID_DESIGNS:
        raise ConfigError(
            f"{source}: '{GRID_DESIGN_KEY}' must be one of {', '.join(GRID_DESIGNS)}, got "
            f"{design!r}"
        )
    return design


def grid_axes(axes: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The configuration keys of a grid and their values (without :data:`GRID_DESIGN_KEY`)."""
    return {k: list(v) for k, v in axes.items() if k != GRID_DESIGN_KEY}


def load_grid(path: Path) -> dict[str, Any]:
    """Read a grid file: a YAML mapping of config key -> non-empty list of values, and
    optionally ``design: product | one_at_a_time`` (:data:`GRID_DESIGNS`)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder; --grid expects a grid YAML file (key: [values])")
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    axes = load_yaml(path)
    if not axes:
        raise ConfigError(f"{path}: empty grid; expected a mapping of key -> list of values")
    grid_design(axes, str(path))
    for key, values in axes.items():
        if key == GRID_DESIGN_KEY:
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: key '{key}' must map to a non-empty list of values, got {values!r}"
            )
    if not grid_axes(axes):
        raise ConfigError(f"{path}: the grid varies no key; expected key -> list of values")
    count = grid_size(axes)
    if count > MAX_GRID_POINTS:  # counted, not expanded: a product this size would not fit
        raise ConfigError(
            f"{path}: {count} points, more than the {MAX_GRID_POINTS} a grid may have; split it "
            "or use design: one_at_a_time"
        )
    return axes


#: Most points of one grid (listing more would take the memory before any point trains).
MAX_GRID_POINTS = 100_000


def grid_size(axes: Mapping[str, Any]) -> int:
    """The number of points of a grid, without expanding it."""
    lengths = [len(v) for v in grid_axes(axes).values()]
    if axes.get(GRID_DESIGN_KEY, "product") == "one_at_a_time":
        return 1 + sum(n - 1 for n in lengths)
    return math.prod(lengths)


def parse_grid_options(items: Sequence[str]) -> dict[str, list[str]]:
    """``['a=1,2', 'b=x']`` -> ``{'a': ['1', '2'], 'b': ['x']}`` (benchmark.py's ``--grid``)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        axes[key] = values.split(",")
    return axes


def expand_grid(axes: Mapping[str, Any], source: str = "grid") -> list[dict[str, Any]]:
    """The grid's points: every combination of the axes' values, the last key varying fastest
    (``design: product``, the default), or the centre point (every key's first value)
    followed by each other value of one key at a time (``design: one_at_a_time``). Raises
    :class:`ConfigError` (naming ``source``) where two points share a run folder name (a key
    lists one value twice)."""
    design = grid_design(axes, source)
    values = grid_axes(axes)
    keys = list(values)
    if design == "product":
        points = [dict(zip(keys, combo)) for combo in itertools.product(*values.values())]
    else:
        centre = {k: v[0] for k, v in values.items()}
        points = [centre] + [{**centre, k: v} for k in keys for v in values[k][1:]]
    names = [point_name(p) for p in points]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{source}: the grid holds the point {repeated[0]} more than once (a key lists a "
            "value twice); list each value once"
        )
    return points


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def point_name(point: Mapping[str, Any]) -> str:
    """Folder name of a grid point: ``alpha_mm=0.5_gamma_kl=1.0`` (``default`` when empty); a
    path separator in a value is written ``%2F`` (one folder per point)."""
    name = "_".join(f"{k}={_format_value(v)}" for k, v in point.items()) or "default"
    return name.replace("/", "%2F").replace("\\", "%5C")


#: How :func:`select_best` breaks a tie (written into grid.md and grid.json).
TIE_RULE = "the first of the tied points in the grid's order"


def select_best(
    results: Sequence[Mapping[str, Any]],
    metric: str = SELECT_METRIC,
    names: Sequence[str] | None = None,
) -> int:
    """Index of the run with the highest VALID ``metric`` (the first one on ties, in the
    given order); a NaN value is never selected, and every value NaN, or one missing or not
    a number, is an error naming the run (``names``, else its index)."""
    if not results:
        raise ExperimentError("no finished run to select from")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(results))]
    values = []
    for name, r in zip(names, results):
        value = (r.get("valid") or {}).get(metric) if isinstance(r, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExperimentError(
                f"{name}: its results hold no valid {metric} number (got {value!r}); the "
                f"selection is on valid {metric}"
            )
        values.append(float(value))
    if all(math.isnan(v) for v in values):
        raise ExperimentError(
            f"every point's valid {metric} is NaN ({', '.join(names)}); none can be selected"
        )
    # NaN is unordered: np.argmax would return a NaN point, so NaN ranks below every number
    return int(np.argmax([-math.inf if math.isnan(v) else v for v in values]))


def grid_rows(names: Sequence[str], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per point: valid R@20, test R@20 / N@20, epochs and seconds per epoch."""
    return [
        {
            "point": name,
            "valid_recall@20": r["valid"].get("recall@20"),
            "test_recall@20": r["test"].get("recall@20"),
            "test_ndcg@20": r["test"].get("ndcg@20"),
            "best_epoch": r["best_epoch"],
            "epochs_run": r["epochs_run"],
            "train_s_per_epoch": r["timing"]["train_s_per_epoch"],
        }
        for name, r in zip(names, results)
    ]


def grid_table(names: Sequence[str], results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`grid_rows`."""
    lines = [
        "| point | valid R@20 | test R@20 | test N@20 | best / run epochs | s/epoch |",
        "|---|---|---|---|---|---|",
    ]

    def metric(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"  # not computed (metrics, topk)

    for row in grid_rows(names, results):
        lines.append(
            f"| {row['point']} | {metric(row['valid_recall@20'])} | "
            f"{metric(row['test_recall@20'])} | {metric(row['test_ndcg@20'])} "
            f"| {row['best_epoch']} / {row['epochs_run']} | {row['train_s_per_epoch']:.2f} |"
        )
    return "\n".join(lines)


#: Keys of a finished run's results.json that grid and seed summaries read, beside
#: ``valid`` and ``test``: (type, description for errors).
SUMMARY_KEYS: dict[str, tuple[type, str]] = {
    "best_epoch": (int, "an epoch number"),
    "epochs_run": (int, "a number of epochs"),
    "timing": (dict, "a mapping holding train_s_per_epoch"),
}


def check_summary_results(results: Any, folder: Path) -> None:
    """Refuse the results of the run in ``folder`` that lack a key a grid or seed summary
    reads (a damaged or hand-edited results.json), naming the file, the key and the remedy."""
    path = Path(folder) / RESULTS
    redo = (
        f"; delete {path} to evaluate the run again from its {CHECKPOINT}, or the folder "
        f"{folder} to train it again"
    )
    if not isinstance(results, dict):
        raise ExperimentError(f"{path}: expected a JSON object, got {type(results).__name__}{redo}")
    schema = {k: RESULTS_SCHEMA[k] for k in ("valid", "test")} | SUMMARY_KEYS
    for key, (kind, what) in schema.items():
        value = results.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and key in ("valid", "test"):  # metric -> number
            ok = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
            )
        if ok and key == "timing":
            seconds = value.get("train_s_per_epoch")
            ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        if not ok:
            got = "it is missing" if key not in results else f"got {value!r}"[:200]
            raise ExperimentError(f"{path}: key '{key}' must be {what}, {got}{redo}")


def run_or_resume(config: dict[str, Any], runner: Runner) -> dict[str, Any]:
    """Results of the run in ``config['output']``: read when finished, else resumed or run;
    a folder holding another configuration is an error naming the differing keys."""
    folder = Path(config["output"])
    check_same_config(folder, config)
    if (folder / RESULTS).is_file():
        log.info("%s: finished, skipped", folder)
        return read_results(folder)
    resume = (folder / CHECKPOINT).is_file()
    if resume:
        log.info("%s: resuming from its checkpoint", folder)
    return runner(config, resume)


def _in_use(folder: Path) -> bool:
    """Whether another process holds ``folder``'s run lock now."""
    if not (Path(folder) / LOCK_FILE).exists():
        return False
    try:
        with RunLock(folder):
            return False
    except RunInUse:
        return True


def run_points(configs: Sequence[dict[str, Any]], runner: Runner) -> list[dict[str, Any]]:
    """:func:`run_or_resume` of every configuration, shared with other processes running the
    same list into the same folders (``run.py --grid`` started several times, e.g. one per
    GPU or core): a point whose folder another process holds is left to it and read when that
    process lets the folder go (resumed here if it ended unfinished)."""
    results: list[dict[str, Any] | None] = [None] * len(configs)
    waiting = list(range(len(configs)))
    first_pass = True
    while waiting:
        held = []
        for i in waiting:
            folder = Path(configs[i]["output"])
            if not first_pass:
                log.info("%s: waiting for the process that holds it", folder)
                with RunLock(folder, wait=True):  # until the holding process lets it go
                    pass
            elif _in_use(folder):  # before the runner opens the folder's log
                log.info("%s: in use by another process; read when it ends", folder)
                held.append(i)
                continue
            try:
                results[i] = run_or_resume(configs[i], runner)
            except RunInUse:
                log.info("%s: in use by another process; read when it ends", folder)
                held.append(i)
        waiting, first_pass = held, False
    return results  # type: ignore[return-value]


#: Keys a grid may not vary because no point would use them, and why.
GRID_UNUSED_KEYS = {
    "baseline": "the points train without a baseline; compare the selected point with "
    "run.py compare",
    "progress": "it changes no result, only the terminal's progress bar",
}
#: Files that mark a folder as a run's or a seed study's: a grid writes folders of its own.
FOREIGN_MARKERS = (("config.json", "a run"), (RESULTS, "a run"))


def _check_grid_keys(config: Mapping[str, Any], axes: Mapping[str, Any], source: str) -> None:
    """Refuse keys a grid cannot vary, naming them and why (before any point is built)."""
    fixed = sorted(set(axes) & set(GRID_FIXED_KEYS))
    if fixed:
        raise ConfigError(
            f"{source}: a grid cannot vary {', '.join(fixed)} (they select the YAML layers and "
            "the run folder); run one grid per model, dataset or plugin"
        )
    data = sorted(set(axes) & set(GRID_DATA_KEYS))
    if data:
        raise ConfigError(
            f"{source}: a grid cannot vary {', '.join(data)}: they choose the data, and a grid's "
            "points are selected on one valid split; run one grid per dataset"
        )
    for key in sorted(set(axes) & set(GRID_UNUSED_KEYS)):
        raise ConfigError(f"{source}: a grid cannot vary {key}: {GRID_UNUSED_KEYS[key]}")
    model = config.get("model")
    for key in grid_axes(axes):  # another model's key: name its models, as the command line does
        owners = [o for o in _models_with_key(key) if not o.startswith("plug-in")]
        if key not in config and model and owners:
            raise ConfigError(
                f"{source}: unknown key '{key}' for {model}: it is an option of "
                f"{', '.join(owners)} ({model}'s keys: configs/models/{model}.yaml)"
            )
    from pyg_dhmrec.plugins import PLUGINS, plugin_keys  # the registry imports every model

    for plugin in PLUGINS:  # else merge reports an unknown key and suggests a model key
        keys = sorted(k for k in grid_axes(axes) if k in plugin_keys(plugin))
        if keys and config.get("plugin") != plugin:
            raise ConfigError(
                f"{source}: key(s) {', '.join(keys)} set the plug-in {plugin}, which this "
                f"grid's runs do not attach (plugin: {config.get('plugin') or 'none'}); give "
                f"--plugin {plugin} (every point then trains with it)"
            )


def check_plugin_options(config: Mapping[str, Any], where: str | None = None) -> None:
    """The options of ``config['plugin']`` (when set) checked as its constructor checks them,
    before any data is read or any run trains (a plug-in class's ``check_config``)."""
    if config.get("plugin") is None:
        return
    from pyg_dhmrec.plugins import plugin_class  # the registry imports every model

    check = getattr(plugin_class(config["plugin"]), "check_config", None)
    if check is None:
        return
    try:
        check(config)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _check_point_metrics(cfg: Mapping[str, Any], where: str) -> None:
    """A point must compute the selection's valid metric and its own early-stop metric (a
    grid over ``topk`` or ``metrics`` changes them per point)."""
    known = [f"{m}@{k}" for m in cfg["metrics"] for k in cfg["topk"]]
    if SELECT_METRIC not in known:
        metric, cutoff = SELECT_METRIC.split("@")
        raise ConfigError(
            f"{where}: a grid selects its point on valid {SELECT_METRIC} (the protocol), which "
            f"this point does not compute (metrics {cfg['metrics']}, topk {cfg['topk']}); "
            f"include {metric} in metrics and {cutoff} in topk"
        )
    if cfg["early_stop_metric"] not in known:
        raise ConfigError(
            f"{where}: early_stop_metric {cfg['early_stop_metric']!r} is not computed; choose "
            f"one of {', '.join(known)}"
        )


def run_grid(
    config: Mapping[str, Any],
    axes: Mapping[str, Any],
    output: Path,
    runner: Runner,
    source: str = "grid",
    check_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every grid point into ``output/<point>``, select on valid R@20, write grid.md/json.
    Several processes may run the same grid into the same ``output``: they share the points
    (:func:`run_points`), and each writes the same selection once all have ended.

    Point values are checked against the configuration's types (errors name ``source``);
    ``check_point(cfg)``, when given, then runs for every point without a finished run (the
    command line builds its dataset and model there), so that a model's own refusal of a
    value stops the grid before any point trains; its ``ValueError`` names the point.
    Test metrics are reported, never used to select; a tie goes to :data:`TIE_RULE`.
    """
    output = Path(output)
    _check_grid_keys(config, axes, source)
    for marker, what in (*FOREIGN_MARKERS, ("seeds.json", "a seed study")):
        if (output / marker).exists():  # its point folders would mix with that run's files
            raise ConfigError(
                f"{source}: --output {output} holds {what} ({marker}); a grid writes its point "
                "folders, grid.md and grid.json into a folder of its own"
            )
    metric, cutoff = SELECT_METRIC.split("@")
    if metric not in config.get("metrics", [metric]) or int(cutoff) not in config.get(
        "topk", [int(cutoff)]
    ):
        raise ConfigError(
            f"{source}: a grid selects its point on valid {SELECT_METRIC} (the protocol), which "
            f"this configuration does not compute (metrics {config.get('metrics')}, topk "
            f"{config.get('topk')}); include {metric} in metrics and {cutoff} in topk"
        )
    points = expand_grid(axes, source)
    names = [point_name(p) for p in points]
    configs = []
    seen: dict[str, str] = {}
    for point, name in zip(points, names):  # check every point before training any
        where = f"{source}, point {name}"
        cfg = merge(dict(config), point, source)
        validate_config(cfg, where)
        for key in point:  # a model option's own check runs only when it trains
            if isinstance(cfg[key], float) and math.isnan(cfg[key]):
                raise ConfigError(f"{where}: key '{key}' must be a number, got nan")
            if isinstance(cfg[key], float) and math.isinf(cfg[key]):  # no key takes inf
                raise ConfigError(f"{where}: key '{key}' must be a finite number, got {cfg[key]}")
        check_plugin_options(cfg, where)
        _check_point_metrics(cfg, where)
        cfg["output"] = str(output / name)
        configs.append(cfg)
        # values equal once read (1e-3 and 0.001) are one point under two names
        values = json.dumps([cfg[k] for k in grid_axes(axes)], sort_keys=True, default=str)
        if values in seen:
            raise ConfigError(
                f"{source}: the points {seen[values]} and {name} are the same configuration "
                "(equal values written differently); list each value once"
            )
        seen[values] = name
    if check_point is not None:
        unfinished = [(c, n) for c, n in zip(configs, names) if not (output / n / RESULTS).exists()]
        log.info(
            "%s: building the models of %d point(s) before any trains", source, len(unfinished)
        )
        for cfg, name in unfinished:
            try:
                check_point(cfg)
            except ValueError as e:  # a model's check of its options, on this point's value
                raise ConfigError(f"{source}, point {name}: {e}") from None
    results = run_points(configs, runner)
    for cfg, r in zip(configs, results):
        check_summary_results(r, Path(cfg["output"]))
    best = select_best(results, SELECT_METRIC, [str(output / n) for n in names])
    valid = [r["valid"][SELECT_METRIC] for r in results]
    tied = [n for n, v in zip(names, valid) if v == valid[best]]
    unranked = [n for n, v in zip(names, valid) if math.isnan(v)]
    for name in unranked:
        log.warning("%s: valid %s is NaN; not selectable", output / name, SELECT_METRIC)
    # finished runs of another grid in this folder: not part of this selection, said so
    others = sorted(
        f.parent.name for f in output.glob(f"*/{RESULTS}") if f.parent.name not in set(names)
    )
    if others:
        log.warning(
            "%s: holds point folders not in this grid, left out of its selection: %s",
            output,
            ", ".join(others),
        )
    table = grid_table(names, results)
    notes = [
        f"selected on valid {SELECT_METRIC}: {names[best]}",
        "(the selection reads valid metrics only; test metrics are reported, never selected on)",
    ]
    if len(tied) > 1:
        notes.append(f"tied on valid {SELECT_METRIC} ({', '.join(tied)}): {TIE_RULE} is selected")
    if unranked:
        notes.append(f"not selectable (valid {SELECT_METRIC} is NaN): {', '.join(unranked)}")
    if others:
        notes.append(f"folders of another grid, left out: {', '.join(others)}")
    output.mkdir(parents=True, exist_ok=True)
    write_text(output / "grid.md", table + "\n\n" + "\n".join(notes) + "\n")
    if notes[2:]:  # the command line prints the table and then the selection itself
        table += "\n\n" + "\n".join(notes[2:])
    summary = {
        "model": config["model"],
        "dataset": config["dataset"],
        "axes": grid_axes(axes),
        "design": grid_design(axes, source),
        "select_metric": f"valid {SELECT_METRIC}",
        "select_split": "valid",
        "tie_rule": TIE_RULE,
        "selected": names[best],
        "selected_point": points[best],
        "tied": tied,
        "not_selectable": unranked,
        "other_folders": others,
        "selected_valid": results[best]["valid"],
        "selected_test": results[best]["test"],
        "points": [
            {**row, "config": point} for row, point in zip(grid_rows(names, results), points)
        ],
    }
    write_json(output / "grid.json", summary)
    summary["table"] = table
    return summary


# ---------------------------------------------------------------- seeds


def run_seeds(
    config: Mapping[str, Any],
    num_seeds: int,
    output: Path,
    runner: Runner,
    then: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run seeds ``seed .. seed + num_seeds - 1`` into ``output/seed=<s>``; mean ± std of test.

    The standard deviation is the sample one (ddof 1; 0 for a single seed). ``then(config,
    results)``, when given, follows each seed's run, finished earlier or not, and returns its
    results (the command line's baseline comparison; their list is ``"baseline"``).
    """
    if num_seeds < 1:
        raise ConfigError(f"--seeds expects a positive number of seeds, got {num_seeds}")
    if int(config["seed"]) + num_seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"--seeds {num_seeds} from seed {config['seed']} reaches "
            f"{int(config['seed']) + num_seeds - 1}, above the largest seed {MAX_SEED}"
        )
    output = Path(output)
    for marker, what in ((CONFIG_FILE, "a run"), (RESULTS, "a run"), ("grid.json", "a grid")):
        if (output / marker).exists():  # its seed=<s>/ folders would mix with that run's files
            raise ConfigError(
                f"--output {output}: holds {what} ({marker}); --seeds writes seed=<s>/ folders "
                "and seeds.json into a folder of its own"
            )
    seeds = [int(config["seed"]) + i for i in range(num_seeds)]
    results = []
    for seed in seeds:
        cfg = dict(config, seed=seed, output=str(output / f"seed={seed}"))
        result = run_or_resume(cfg, runner)
        check_summary_results(result, Path(cfg["output"]))
        results.append(then(cfg, result) if then else result)
    for seed, r in zip(seeds, results):  # one metric missing in one seed would drop it
        if set(r["test"]) != set(results[0]["test"]):
            raise ExperimentError(
                f"{output / f'seed={seed}' / RESULTS}: test metrics "
                f"{', '.join(sorted(r['test']))} differ from seed {seeds[0]}'s "
                f"{', '.join(sorted(results[0]['test']))}; delete that folder to train it again"
            )
    test: dict[str, dict[str, Any]] = {}
    for key in results[0]["test"]:
        values = np.array([r["test"][key] for r in results], dtype=np.float64)
        test[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "values": values.tolist(),
        }
    summary = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seeds": seeds,
        "runs": [str(output / f"seed={s}") for s in seeds],
        "best_epochs": [r["best_epoch"] for r in results],
        # std is the sample standard deviation (ddof 1), undefined for one seed: written 0
        "std_kind": "sample (ddof 1)" if len(seeds) > 1 else "one seed: no spread, written 0",
        "test": test,
    }
    if all("baseline" in r for r in results):
        summary["baseline"] = [r["baseline"] for r in results]
    write_json(output / "seeds.json", summary)
    return summary


# ---------------------------------------------------------------- run folders

#: Keys that may differ between the runs of one folder (where and how visibly it runs).
FOLDER_FREE_KEYS = ("device", "progress", "output")
LOCK_FILE = "run.lock"
MAX_SHOWN_DIFFERENCES = 6  # differing keys listed in the error
CONFIG_FILE = "config.json"
#: Files a run writes into its folder (config.json and the lock file aside).
RUN_FILES = (RESULTS, BEST, PER_USER, CHECKPOINT)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ExperimentError(
            f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); the file is "
            "truncated or was edited by hand"
        ) from None
    except UnicodeDecodeError as e:
        raise ExperimentError(f"{path}: not a UTF-8 text file ({e.reason})") from None


def checked_stored_config(config: Any, source: str) -> dict[str, Any]:
    """A configuration read from a run folder, checked like a fresh one: a mapping holding
    every key of its model's schema with values of the right type and range."""
    if not isinstance(config, dict):
        raise ConfigError(
            f"{source}: expected a JSON object of key: value, got {type(config).__name__}"
        )
    for key in ("model", "dataset"):
        if not isinstance(config.get(key), str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {config.get(key)!r}")
    plugin = config.get("plugin")
    if plugin is None:  # a plug-in's keys without it: say which, not "unknown key"
        from pyg_dhmrec.plugins import PLUGINS, plugin_keys  # the registry imports every model

        for name in PLUGINS:
            keys = sorted(k for k in config if k in plugin_keys(name))
            if keys:
                raise ConfigError(
                    f"{source}: holds the key(s) {', '.join(keys)} of the plug-in {name} but "
                    f"'plugin' is null (the run was configured with plugin {name}); set 'plugin' "
                    f"back to {name!r}, or start a new run"
                )
    try:  # the key set and types do not depend on the dataset: any dataset file gives them
        schema = load_config(config["model"], "synthetic", {"plugin": plugin})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    fixed = {k: v for k, v in config.items() if k not in ("model", "dataset")}
    checked = merge(schema, fixed, source)
    missing = sorted(set(schema) - set(config))
    added = [k for k in missing if k not in overall_defaults()]
    if added:  # a model option newer than the run: its default keeps the older behaviour
        try:  # the run's own dataset layer, where it can be read (per_dataset defaults)
            layered = load_config(
                config["model"],
                config["dataset"],
                {"plugin": plugin, "data_root": config.get("data_root")},
            )
        except ConfigError:
            layered = schema
        for key in added:
            checked[key] = layered.get(key, schema[key])
        log.warning(
            "%s: lacks the model or plug-in key(s) %s, newer than the run; resumed with the "
            "default(s) %s",
            source,
            ", ".join(added),
            ", ".join(f"{k}={checked[k]!r}" for k in added),
        )
        missing = [k for k in missing if k not in added]
    if missing:
        raise ConfigError(
            f"{source}: lacks key(s) {', '.join(missing)} (keys this version adds to "
            f"{config['model']}'s configuration, or removed by hand): add each with the value "
            "the run used (its default in configs/ keeps an older run's behaviour), or start a "
            "new run"
        )
    validate_config(checked, source)
    checked["model"], checked["dataset"] = config["model"], config["dataset"]
    return checked


#: Keys holding a folder: two spellings of one folder (relative to the current folder or
#: absolute) are the same configuration.
FOLDER_PATH_KEYS = ("data_root", "cache_dir")


def _same_value(key: str, a: Any, b: Any) -> bool:
    if a == b or _both_nan(a, b):
        return True
    if key in FOLDER_PATH_KEYS and isinstance(a, str) and isinstance(b, str):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def _both_nan(a: Any, b: Any) -> bool:
    """NaN in both (NaN != NaN, so a stored NaN would read as a changed value), also inside
    lists and mappings."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isnan(a) and math.isnan(b)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(x == y or _both_nan(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(a[k] == b[k] or _both_nan(a[k], b[k]) for k in a)
    return False


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """``key: stored -> requested`` for each key (``FOLDER_FREE_KEYS`` aside) that differs;
    ``FOLDER_PATH_KEYS`` differ only when they name different folders."""
    a, b = (json.loads(json.dumps(c, default=str)) for c in (stored, requested))
    # the keys that choose the YAML layers first: a plug-in dropped is named, not cut off
    # behind its own keys
    keys = sorted(
        (set(a) | set(b)) - set(FOLDER_FREE_KEYS),
        key=lambda k: (k not in ("model", "dataset", "plugin"), k),
    )
    absent = "<absent>"
    return [
        f"{k}: {json.dumps(a.get(k, absent))} -> {json.dumps(b.get(k, absent))}"
        for k in keys
        if not _same_value(k, a.get(k, absent), b.get(k, absent))
    ]


def check_same_config(folder: Path, requested: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored configuration of ``folder`` (None when it holds no training yet); an error
    naming the differing keys when it is not ``requested``."""
    folder = Path(folder)
    progress = [name for name in RUN_FILES if (folder / name).exists()]
    if not progress:
        return None  # at most the config.json of a run that stopped before its first epoch
    if not ((folder / CONFIG_FILE).is_file() or (folder / RESULTS).is_file()):
        raise ExperimentError(
            f"{folder}: holds {', '.join(progress)} but no {CONFIG_FILE}, so its configuration "
            "is unknown; choose another --output or delete the folder"
        )
    stored = run_config(folder)
    differences = config_differences(stored, requested)
    if differences:
        shown = "; ".join(differences[:MAX_SHOWN_DIFFERENCES])
        if len(differences) > MAX_SHOWN_DIFFERENCES:
            shown += f"; and {len(differences) - MAX_SHOWN_DIFFERENCES} more key(s)"
        raise ExperimentError(
            f"{folder}: holds a run of another configuration ({shown}; stored -> requested); a "
            "folder holds one configuration: choose another --output or delete the folder"
        )
    return stored


class RunInUse(ExperimentError):
    """A run folder is locked by a run of another process."""


class RunLock:
    """An exclusive ``flock`` on ``<folder>/run.lock`` for a run's lifetime; the OS drops it
    when the process ends, killed or not, so a stale file never blocks a later run.

    A held lock raises :class:`RunInUse`; with ``wait``, entering blocks until it is free."""

    def __init__(self, folder: Path, wait: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.wait = wait
        self._file: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not protected from each other
            log.warning("%s: file locking is unavailable on this system", self.path)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise RunInUse(
                f"{self.path.parent}: in use by another run ({holder}; lock file {self.path}); "
                "wait for it to end or choose another --output"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock_file.flush()
        self._file = lock_file
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


@contextmanager
def claim_run_folder(
    folder: Path, config: Mapping[str, Any], resume: bool = False
) -> Iterator[None]:
    """Hold ``folder`` for one run of ``config``, from the checks to the end of the run.

    Under the lock: a folder holding another configuration is an error naming the differing
    keys; ``resume`` needs a checkpoint; otherwise the run starts over, and a previous run's
    results go before the new ``config.json`` is written, so a killed new run is never taken
    as finished.
    """
    folder = Path(folder)
    with RunLock(folder):
        stored = check_same_config(folder, config)
        if resume:
            if not (folder / CHECKPOINT).is_file():
                raise ConfigError(f"{folder}: no {CHECKPOINT} to resume from")
            if stored is None:
                raise ExperimentError(f"{folder}: no {CONFIG_FILE} beside {CHECKPOINT}")
        else:
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)  # files of this folder's earlier run
            write_json(folder / CONFIG_FILE, dict(config))
        yield


# ---------------------------------------------------------------- finished runs


def read_results(folder: Path, required: Sequence[str] = ()) -> dict[str, Any]:
    """``<folder>/results.json``, with an error naming the folder when it is missing, and the
    file and key when one of ``required`` (:data:`RESULTS_SCHEMA` keys) is missing or of the
    wrong type."""
    path = Path(folder) / RESULTS
    if Path(folder).is_file():  # results.json itself, say, instead of its folder
        raise ExperimentError(f"{folder}: a file; give the run folder that holds {RESULTS}")
    if not path.is_file():
        raise ExperimentError(f"{folder}: no {RESULTS} (not a finished run folder)")
    results = _read_json(path)
    if not isinstance(results, dict):
        raise ExperimentError(f"{path}: expected a JSON object, got {type(results).__name__}")
    for key in required:
        kind, what = RESULTS_SCHEMA[key]
        value = results.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and key in ("test", "valid"):  # metric -> value
            ok = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
            )
        if not ok:
            got = "it is missing" if key not in results else f"got {value!r}"[:200]
            raise ExperimentError(
                f"{path}: key '{key}' must be {what}, {got}; not a results.json of run.py"
            )
    return results


#: Keys of results.json the experiment commands read: (type, description for errors).
RESULTS_SCHEMA: dict[str, tuple[type, str]] = {
    "model": (str, "the model's name"),
    "dataset": (str, "the dataset's name"),
    "test": (dict, "a mapping of metric -> number"),
    "valid": (dict, "a mapping of metric -> number"),
    "config": (dict, "the run's configuration (a mapping)"),
}


def run_config(folder: Path) -> dict[str, Any]:
    """The checked configuration of a run: ``config.json``, else the ``config`` of
    ``results.json``; errors name the file and the key."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if path.is_file():
        return checked_stored_config(_read_json(path), str(path))
    if (folder / RESULTS).is_file():
        stored = read_results(folder).get("config")
        return checked_stored_config(stored, f"{folder / RESULTS} (key 'config')")
    raise ExperimentError(f"{folder}: neither {CONFIG_FILE} nor {RESULTS} (not a run folder)")


def load_run(
    folder: Path, device: str | torch.device = "cpu"
) -> tuple[Recommender, HeteroData, dict[str, Any]]:
    """Rebuild a run's model from its saved config and ``best.pt``; returned in eval mode."""
    folder = Path(folder)
    weights = folder / "best.pt"
    if not folder.is_dir():
        raise ExperimentError(f"{folder}: no such run folder")
    if not weights.is_file():
        what = "an unfinished run" if (folder / "config.json").is_file() else "not a run"
        raise ExperimentError(f"{folder}: no best.pt ({what} folder of run.py)")
    config = run_config(folder)
    dataset, data, model = load_data_and_model(config)  # with the run's plug-in, if any
    trained_on = (
        read_results(folder).get("data_fingerprint") if (folder / RESULTS).is_file() else None
    )
    now = dataset.fingerprint()
    if trained_on is not None and trained_on != now:
        log.warning(
            "%s: the files of dataset %r changed since this run trained (fingerprint %s, now %s): "
            "its embeddings come from the old files, the train items excluded from the new ones",
            folder,
            config["dataset"],
            trained_on,
            now,
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a cut or foreign file raises many kinds)
        raise ExperimentError(f"{weights}: not a readable state_dict ({_load_error(e)})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300]  # torch lists every missing key: the first is enough
        raise ExperimentError(
            f"{weights}: does not fit the {config['model']} model of config.json ({detail})"
        ) from None
    model.to(device).eval()
    return model, data, config


def recommend(
    model: Recommender, data: HeteroData, users: Sequence[int], k: int
) -> list[dict[str, Any]]:
    """Top-``k`` items (ids and scores) of each user, excluding the user's train items (a user
    with fewer than ``k`` other items gets all of them, ``"unseen_items"`` says how many).

    Items are ranked by the model's ``full_scores`` (in float32), highest first, equal scores
    by the smaller item id (a stable sort: the evaluation, as MMRec's, takes ``torch.topk``,
    whose order among equal scores is torch's); a NaN score ranks first, as in ``torch.sort``.
    Each score is the float32 score, written as the shortest decimal that reads back to it.
    ``users`` are integer ids (a bool or a fraction is refused); a user may be asked twice.
    """
    ids, bad = [], []
    for u in users:
        if isinstance(u, (bool, np.bool_)) or (isinstance(u, Tensor) and u.dtype == torch.bool):
            bad.append(u)
            continue
        try:
            ids.append(operator.index(u))
        except TypeError:
            bad.append(u)
    if bad:
        raise ExperimentError(f"user ids must be integers, got {bad}")
    bad = [u for u in ids if not 0 <= u < model.num_users]
    if bad:
        raise ExperimentError(
            f"user id(s) {bad} out of range: the run's dataset has users 0..{model.num_users - 1}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= model.num_items:
        raise ExperimentError(f"--k must be in 1..{model.num_items} (the items), got {k}")
    k = int(k)
    model.eval()
    user_t = torch.tensor(ids, dtype=torch.long)
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        scores = model.full_scores(user_t.to(device)).detach().float().cpu()
    train = data[RATES].edge_index.cpu()
    train = train[:, torch.isin(train[0], user_t)]  # the asked users' train items
    seen = torch.zeros(len(ids), model.num_items, dtype=torch.bool)
    for row, user in enumerate(ids):
        seen[row, train[1, train[0] == user]] = True
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    out = []
    for row, user in enumerate(ids):
        ranked = order[row]
        items = ranked[~seen[row, ranked]][:k]
        entry = {
            "user": user,
            "items": items.tolist(),
            "scores": [float(str(v)) for v in scores[row, items].numpy()],
        }
        unseen = model.num_items - int(seen[row].sum())
        if unseen < k:
            entry["unseen_items"] = unseen
        out.append(entry)
    return out


@torch.no_grad()
def export_embeddings(model: Recommender, output: Path) -> tuple[Path, Path]:
    """Write the final ``user_embeddings.npy`` ``[num_users, d]`` and ``item_embeddings.npy``
    ``[num_items, d]`` (float32, eval mode): the embeddings the model scores with,
    ``full_scores(users) = user_embeddings[users] @ item_embeddings.T``."""
    output = ensure_folder(output, "export --out")  # before the embeddings are computed
    model.eval()
    out = model()
    paths = output / "user_embeddings.npy", output / "item_embeddings.npy"
    for path, emb in zip(paths, (out.user, out.item)):
        write_npy(path, emb.detach().float().cpu().numpy())
    return paths


def load_per_user(folder: Path) -> dict[str, Tensor]:
    """``<folder>/per_user_test.pt``: evaluated user ids and per-user test metrics."""
    path = Path(folder) / PER_USER
    if not path.is_file():
        raise ExperimentError(f"{folder}: no {PER_USER} (runs save it when they finish)")
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a cut or foreign file raises many kinds)
        raise ExperimentError(f"{path}: not readable ({_load_error(e)})") from None
    expected = "a mapping of 'users' and each metric to one value per evaluated user"
    if not (isinstance(values, dict) and isinstance(values.get("users"), Tensor)):
        raise ExperimentError(f"{path}: expected {expected}, got {type(values).__name__}")
    users = values["users"]
    for key, tensor in values.items():
        if not (
            isinstance(key, str)
            and isinstance(tensor, Tensor)
            and tensor.dim() == 1
            and tensor.numel() == users.numel()
        ):
            raise ExperimentError(
                f"{path}: entry {key!r} is not one value per user ({users.numel()} users); "
                f"expected {expected}"
            )
    return values


def _load_error(error: BaseException) -> str:
    """A ``torch.load`` failure in words (some carry no message: an empty file, a text file)."""
    # the first sentence: torch's zip errors go on with advice about saving
    text = str(error).strip().splitlines()[0].split(". ")[0][:200] if str(error).strip() else ""
    if len(text) < 8:  # '' or a bare byte value such as '101'
        return f"{type(error).__name__}{': ' + text if text else ''}; a cut or foreign file"
    return text


def baseline_comparison(folder: Path, baseline: Path) -> dict[str, Any]:
    """The finished run in ``folder`` against its finished ``baseline`` run: ratios of their
    test ``BASELINE_METRICS`` (None where the baseline's is 0) and :func:`compare_runs`'s
    paired t-test of per-user test recall@20, with the one-line summary ``line``."""
    needed = ("model", "dataset", "test", "config")
    run, base = read_results(folder, needed), read_results(baseline, needed)
    ratio = {
        m: run["test"][m] / base["test"][m] if base["test"][m] > 0 else None
        for m in BASELINE_METRICS
    }
    paired = compare_runs(folder, baseline, SELECT_METRIC)
    parts = [
        f"{m[0].upper()}@{m.split('@')[1]} {run['test'][m]:.4f} vs {base['test'][m]:.4f} "
        + (f"({ratio[m]:.2f}x)" if ratio[m] is not None else "(ratio undefined)")
        for m in BASELINE_METRICS
    ]
    line = (
        f"{run['model']} vs {base['model']} (seed {run['config']['seed']}): "
        + ", ".join(parts)
        + f", paired t-test of per-user R@20: t = {paired['t']:.2f}, p = {paired['p']:.2g}"
    )
    return {
        "model": base["model"],
        "folder": str(baseline),
        "test": base["test"],
        "ratio": ratio,
        "paired_t_test": paired,
        "line": line,
    }


def compare_runs(a: Path, b: Path, metric: str = "recall@20") -> dict[str, Any]:
    """Paired t-test (``scipy.stats.ttest_rel``) of per-user test ``metric`` of two runs."""
    from scipy.stats import ttest_rel

    ra, rb = read_results(a, ("dataset",)), read_results(b, ("dataset",))
    if ra["dataset"] != rb["dataset"]:
        raise ExperimentError(
            f"runs of different datasets: {a} is on '{ra['dataset']}', {b} on '{rb['dataset']}'"
        )
    fa, fb = ra.get("data_fingerprint"), rb.get("data_fingerprint")
    if fa is not None and fb is not None and fa != fb:
        log.warning(
            "%s and %s trained on different files of dataset '%s' (fingerprints %s and %s): "
            "their test interactions may differ",
            a,
            b,
            ra["dataset"],
            fa,
            fb,
        )
    pa, pb = load_per_user(a), load_per_user(b)
    for folder, values in ((a, pa), (b, pb)):
        if metric not in values or metric == "users":  # the ids are stored, not compared
            known = ", ".join(k for k in values if k != "users") or "none"
            raise ExperimentError(f"{folder}/{PER_USER}: no metric '{metric}'; it has {known}")
    if not torch.equal(pa["users"], pb["users"]):
        raise ExperimentError(
            f"{a} and {b} evaluated different test users ({pa['users'].numel()} vs "
            f"{pb['users'].numel()}); a paired test needs the same users"
        )
    xa, xb = pa[metric].double().numpy(), pb[metric].double().numpy()
    test = ttest_rel(xa, xb)
    return {
        "metric": metric,
        "users": int(xa.size),
        "mean_a": float(xa.mean()),
        "mean_b": float(xb.mean()),
        "difference": float(xa.mean() - xb.mean()),
        "t": float(test.statistic),
        "p": float(test.pvalue),
    }
