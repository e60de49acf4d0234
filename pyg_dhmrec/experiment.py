"""Experiments over finished or resumable runs: grids selected on valid, seed repeats, paired
comparisons, and rebuilding a run's model for recommendations and exports."""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.atomic_files import write_json, write_npy, write_text
from pyg_dhmrec.config import ConfigError, load_yaml, merge
from pyg_dhmrec.data.dataset import RATES, load_dataset
from pyg_dhmrec.models import Recommender, model_class
from pyg_dhmrec.plugins import build_recommender
from pyg_dhmrec.train import CHECKPOINT, PER_USER

log = logging.getLogger(__name__)

#: Valid metric that selects a grid point (never a test metric).
SELECT_METRIC = "recall@20"
#: ``runner(config, resume)`` trains one run into ``config['output']`` and returns its results.
Runner = Callable[[dict[str, Any], bool], dict[str, Any]]


class ExperimentError(ValueError):
    """A run folder, grid or request that an experiment command cannot use."""


# ---------------------------------------------------------------- grids


def load_grid(path: Path) -> dict[str, list[Any]]:
    """Read a grid file: a YAML mapping of config key -> non-empty list of values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    axes = load_yaml(path)
    if not axes:
        raise ConfigError(f"{path}: empty grid; expected a mapping of key -> list of values")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: key '{key}' must map to a non-empty list of values, got {values!r}"
            )
    return axes


def parse_grid_options(items: Sequence[str]) -> dict[str, list[str]]:
    """``['a=1,2', 'b=x']`` -> ``{'a': ['1', '2'], 'b': ['x']}`` (benchmark.py's ``--grid``)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        axes[key] = values.split(",")
    return axes


def expand_grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last key varying fastest."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def point_name(point: Mapping[str, Any]) -> str:
    """Folder name of a grid point: ``alpha_mm=0.5_gamma_kl=1.0`` (``default`` when empty)."""
    return "_".join(f"{k}={_format_value(v)}" for k, v in point.items()) or "default"


def select_best(results: Sequence[Mapping[str, Any]], metric: str = SELECT_METRIC) -> int:
    """Index of the run with the highest VALID ``metric`` (the first one on ties)."""
    if not results:
        raise ExperimentError("no finished run to select from")
    values = [r["valid"].get(metric, -math.inf) for r in results]
    return int(np.argmax(values))


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
    for row in grid_rows(names, results):
        lines.append(
            f"| {row['point']} | {row['valid_recall@20']:.4f} | {row['test_recall@20']:.4f} "
            f"| {row['test_ndcg@20']:.4f} | {row['best_epoch']} / {row['epochs_run']} "
            f"| {row['train_s_per_epoch']:.2f} |"
        )
    return "\n".join(lines)


def run_or_resume(config: dict[str, Any], runner: Runner) -> dict[str, Any]:
    """Results of the run in ``config['output']``: read when finished, else resumed or run."""
    folder = Path(config["output"])
    if (folder / "results.json").is_file():
        log.info("%s: finished, skipped", folder)
        return read_results(folder)
    resume = (folder / CHECKPOINT).is_file()
    if resume:
        log.info("%s: resuming from its checkpoint", folder)
    return runner(config, resume)


def run_grid(
    config: Mapping[str, Any],
    axes: Mapping[str, Sequence[Any]],
    output: Path,
    runner: Runner,
    source: str = "grid",
) -> dict[str, Any]:
    """Run every grid point into ``output/<point>``, select on valid R@20, write grid.md/json.

    Point values are checked against the configuration's types (errors name ``source``).
    """
    output = Path(output)
    points = expand_grid(axes)
    configs = []
    for point in points:  # check every point before training any
        cfg = merge(dict(config), point, source)
        cfg["output"] = str(output / point_name(point))
        configs.append(cfg)
    results = [run_or_resume(cfg, runner) for cfg in configs]
    names = [point_name(p) for p in points]
    best = select_best(results)
    table = grid_table(names, results)
    output.mkdir(parents=True, exist_ok=True)
    write_text(
        output / "grid.md", table + f"\n\nselected on valid {SELECT_METRIC}: {names[best]}\n"
    )
    summary = {
        "model": config["model"],
        "dataset": config["dataset"],
        "axes": {k: list(v) for k, v in axes.items()},
        "select_metric": f"valid {SELECT_METRIC}",
        "selected": names[best],
        "selected_point": points[best],
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
    config: Mapping[str, Any], num_seeds: int, output: Path, runner: Runner
) -> dict[str, Any]:
    """Run seeds ``seed .. seed + num_seeds - 1`` into ``output/seed=<s>``; mean ± std of test.

    The standard deviation is the sample one (ddof 1; 0 for a single seed).
    """
    if num_seeds < 1:
        raise ConfigError(f"--seeds expects a positive number of seeds, got {num_seeds}")
    output = Path(output)
    seeds = [int(config["seed"]) + i for i in range(num_seeds)]
    results = []
    for seed in seeds:
        cfg = dict(config, seed=seed, output=str(output / f"seed={seed}"))
        results.append(run_or_resume(cfg, runner))
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
        "test": test,
    }
    write_json(output / "seeds.json", summary)
    return summary


# ---------------------------------------------------------------- finished runs


def read_results(folder: Path) -> dict[str, Any]:
    """``<folder>/results.json``, with an error naming the folder when it is missing."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise ExperimentError(f"{folder}: no results.json (not a finished run folder)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_config(folder: Path) -> dict[str, Any]:
    """The configuration of a run: ``config.json``, else the ``config`` of ``results.json``."""
    folder = Path(folder)
    path = folder / "config.json"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if (folder / "results.json").is_file():
        return read_results(folder)["config"]
    raise ExperimentError(f"{folder}: neither config.json nor results.json (not a run folder)")


def load_run(
    folder: Path, device: str | torch.device = "cpu"
) -> tuple[Recommender, HeteroData, dict[str, Any]]:
    """Rebuild a run's model from its saved config and ``best.pt``; returned in eval mode."""
    folder = Path(folder)
    weights = folder / "best.pt"
    if not weights.is_file():
        raise ExperimentError(f"{folder}: no best.pt (the run has not finished)")
    config = run_config(folder)
    dataset = load_dataset(config)
    if model_class(config["model"]).uses_modalities:
        dataset.require_modalities()
    data = dataset[0]
    model = build_recommender(config, data)  # with the run's plug-in, if any
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ExperimentError(f"{weights}: does not fit the model of config.json ({e})") from None
    model.to(device).eval()
    return model, data, config


def recommend(
    model: Recommender, data: HeteroData, users: Sequence[int], k: int
) -> list[dict[str, Any]]:
    """Top-``k`` items (ids and scores) of each user, excluding the user's train items."""
    bad = [u for u in users if not 0 <= u < model.num_users]
    if bad:
        raise ExperimentError(
            f"user id(s) {bad} out of range: the run's dataset has users 0..{model.num_users - 1}"
        )
    if not 1 <= k <= model.num_items:
        raise ExperimentError(f"--k must be in 1..{model.num_items} (the items), got {k}")
    model.eval()
    user_t = torch.tensor(list(users), dtype=torch.long)
    device = next(iter(model.parameters())).device
    scores = model.full_scores(user_t.to(device)).float().cpu().clone()
    train = data[RATES].edge_index
    for row, user in enumerate(users):
        scores[row, train[1, train[0] == user]] = -math.inf  # seen items are never recommended
    top_scores, top_items = torch.topk(scores, k, dim=1)
    return [
        {"user": int(u), "items": items.tolist(), "scores": [round(float(s), 6) for s in vals]}
        for u, items, vals in zip(users, top_items, top_scores)
    ]


@torch.no_grad()
def export_embeddings(model: Recommender, output: Path) -> tuple[Path, Path]:
    """Write the final ``user_embeddings.npy`` and ``item_embeddings.npy`` (eval mode)."""
    model.eval()
    user_emb, item_emb = model()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = output / "user_embeddings.npy", output / "item_embeddings.npy"
    for path, emb in zip(paths, (user_emb, item_emb)):
        write_npy(path, emb.detach().float().cpu().numpy())
    return paths


def load_per_user(folder: Path) -> dict[str, Tensor]:
    """``<folder>/per_user_test.pt``: evaluated user ids and per-user test metrics."""
    path = Path(folder) / PER_USER
    if not path.is_file():
        raise ExperimentError(f"{folder}: no {PER_USER} (runs save it when they finish)")
    return torch.load(path, map_location="cpu", weights_only=True)


def compare_runs(a: Path, b: Path, metric: str = "recall@20") -> dict[str, Any]:
    """Paired t-test (``scipy.stats.ttest_rel``) of per-user test ``metric`` of two runs."""
    from scipy.stats import ttest_rel

    ra, rb = read_results(a), read_results(b)
    if ra["dataset"] != rb["dataset"]:
        raise ExperimentError(
            f"runs of different datasets: {a} is on '{ra['dataset']}', {b} on '{rb['dataset']}'"
        )
    pa, pb = load_per_user(a), load_per_user(b)
    for folder, values in ((a, pa), (b, pb)):
        if metric not in values:
            known = ", ".join(k for k in values if k != "users")
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
