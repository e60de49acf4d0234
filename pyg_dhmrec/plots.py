"""Figures of runs: training curves, hyper-parameter sweeps and t-SNE of item embeddings.

Needs matplotlib, the optional ``plots`` extra (``pip install -e ".[plots]"``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyg_dhmrec.atomic_files import atomic_write
from pyg_dhmrec.experiment import ExperimentError, load_run, read_results

log = logging.getLogger(__name__)


class MissingExtraError(ImportError):
    """An optional dependency (a setup.cfg extra) is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(
            "plots need matplotlib, the optional 'plots' extra: pip install -e \".[plots]\" "
            "(or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _history(run: Path, results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``results.json``'s history, checked: each entry an epoch number and a mapping of loss
    part -> number (``valid``, when present, a mapping of metric -> number)."""
    path = Path(run) / "results.json"
    history = results.get("history")
    if history is None or history == []:
        raise ExperimentError(f"{path}: empty 'history', nothing to plot")
    if not isinstance(history, list):
        raise ExperimentError(
            f"{path}: 'history' must be a list of epoch records, got {type(history).__name__}"
        )

    def numbers(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
        )

    for i, h in enumerate(history):
        ok = (
            isinstance(h, dict)
            and isinstance(h.get("epoch"), int)
            and numbers(h.get("loss"))
            and ("valid" not in h or numbers(h["valid"]))
        )
        if not ok:
            got = f"keys {sorted(h)}" if isinstance(h, dict) else type(h).__name__
            raise ExperimentError(
                f"{path}: history entry {i} must hold 'epoch' (a number), 'loss' (loss part -> "
                f"number) and optionally 'valid' (metric -> number), got {got}; the file is "
                "damaged or not a results.json of run.py"
            )
    return history


def plot_curves(run: Path, out: Path) -> Path:
    """Loss parts (left) and valid metrics (right) per epoch from ``results.json``'s history."""
    plt = pyplot()
    results = read_results(run)
    missing = [k for k in ("best_epoch", "model", "dataset") if k not in results]
    if missing:
        raise ExperimentError(f"{run}/results.json: lacks {', '.join(missing)}; not a finished run")
    best = results["best_epoch"]
    if isinstance(best, bool) or not isinstance(best, int):
        raise ExperimentError(
            f"{run}/results.json: 'best_epoch' must be an epoch number, got {best!r}"
        )
    history = _history(run, results)
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    # every part of any epoch (a phase may add parts), a gap where an epoch lacks one
    parts = list(dict.fromkeys(part for h in history for part in h["loss"]))
    values = [v for h in history for v in h["loss"].values() if math.isfinite(v)]
    for part in parts:
        ax_loss.plot(
            epochs, [h["loss"].get(part, math.nan) for h in history], marker=".", label=part
        )
    # a log axis would drop zero and negative parts (a CLUB bound is negative): symlog keeps them
    if values and min(values) <= 0:
        tiny = min((abs(v) for v in values if v != 0), default=1.0)
        ax_loss.set_yscale("symlog", linthresh=tiny)
        scale = "symlog"
    else:
        ax_loss.set_yscale("log")
        scale = "log"
    ax_loss.set(xlabel="epoch", ylabel=f"mean loss part ({scale} axis)", title="training loss")
    ax_loss.legend()
    evaluated = [h for h in history if "valid" in h]
    for key in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        if evaluated and any(key in h["valid"] for h in evaluated):
            values = [h["valid"].get(key, math.nan) for h in evaluated]
            ax_valid.plot([h["epoch"] for h in evaluated], values, marker=".", label=key)
    ax_valid.axvline(best, color="grey", linestyle=":", label="best epoch")
    ax_valid.set(xlabel="epoch", ylabel="valid metric", title="valid metrics")
    ax_valid.legend()
    fig.suptitle(f"{results['model']} on {results['dataset']}")
    fig.tight_layout()
    return _save(fig, plt, out / "curves.png")


def _sweep_points(folder: Path) -> list[dict[str, Any]]:
    points = []
    for path in sorted(Path(folder).glob("*/results.json")):
        results = read_results(path.parent)  # names the file of a damaged one
        missing = [k for k in ("config", "valid", "test", "model", "dataset") if k not in results]
        if missing:
            raise ExperimentError(f"{path}: lacks {', '.join(missing)}; not a finished run")
        points.append(results)
    if not points:
        raise ExperimentError(f"{folder}: no point folder holds a results.json")
    grid = Path(folder) / "grid.json"
    if grid.is_file():  # folders of an earlier grid into the same --output are plotted too
        try:
            listed = {p["point"] for p in json.loads(grid.read_text(encoding="utf-8"))["points"]}
        except (ValueError, KeyError, TypeError):
            listed = None
        found = [p.parent.name for p in Path(folder).glob("*/results.json")]
        others = sorted(n for n in found if listed is not None and n not in listed)
        if others:
            log.warning(
                "%s: plots point folders that its grid.json does not list: %s",
                folder,
                ", ".join(others),
            )
    for key in ("model", "dataset"):  # one figure compares settings of one model on one dataset
        values = sorted({str(p[key]) for p in points})
        if len(values) > 1:
            raise ExperimentError(
                f"{folder}: its points are of more than one {key} ({', '.join(values)}); a sweep "
                f"plots one {key}"
            )
    return points


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys whose values differ between the points (output and seed aside)."""
    keys = sorted(set().union(*configs) - {"output", "progress"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def plot_sweep(
    folder: Path,
    out: Path,
    x: str | None = None,
    lines: str | None = None,
    metric: str = "recall@20",
) -> Path:
    """Valid and test ``metric`` against ``x``, one line per value of ``lines`` (Figs. 4-5)."""
    plt = pyplot()
    results = _sweep_points(folder)
    configs = [r["config"] for r in results]
    varying = varying_keys(configs)
    x = x or (varying[0] if varying else None)
    if x is None:
        raise ExperimentError(f"{folder}: the points do not differ in any config key")
    if lines is None:
        lines = next((k for k in varying if k != x), None)
    for key in (x, lines):
        if key is not None and any(key not in c for c in configs):
            raise ExperimentError(f"{folder}: key '{key}' is not in every point's config")
        if key is not None and not all(
            isinstance(c[key], (int, float, str, bool)) or c[key] is None for c in configs
        ):
            raise ExperimentError(
                f"{folder}: key '{key}' holds lists or mappings; --x and --lines take a key of "
                "single values"
            )
    for r in results:
        for split in ("valid", "test"):
            if metric not in (r[split] or {}):
                raise ExperimentError(
                    f"{folder}: a point ({r['config'].get('output', '?')}) has no {split} "
                    f"{metric}; it has {', '.join(sorted(r[split] or {})) or 'none'}"
                )
    # keys that vary beyond x and lines (a third grid key, one_at_a_time's other keys) split
    # the lines too: one line would otherwise join points of different settings
    split_by = ([lines] if lines else []) + [k for k in varying if k not in (x, lines)]
    groups: dict[tuple[Any, ...], list[tuple[Any, dict[str, Any]]]] = {}
    for r in results:
        label = tuple(json.dumps(r["config"][k]) for k in split_by)
        groups.setdefault(label, []).append((r["config"][x], r))
    for members in groups.values():
        seen = [json.dumps(m[0]) for m in members]
        repeated = sorted({v for v in seen if seen.count(v) > 1})
        if repeated:  # same settings but another key (seed, ...) varies where x and lines do not
            raise ExperimentError(
                f"{folder}: several points have {x} = {repeated[0]} and the same other settings; "
                "a line needs one point per x value"
            )
    numeric = all(
        isinstance(m[0], (int, float)) and not isinstance(m[0], bool)
        for members in groups.values()
        for m in members
    )
    # names, bools or null (max_steps_per_epoch: null) are categories, in their written order
    categories = sorted({json.dumps(m[0]) for ms in groups.values() for m in ms})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("valid", "test")):
        for label, members in sorted(groups.items()):
            if numeric:
                members.sort(key=lambda m: m[0])
                xs = [m[0] for m in members]
            else:
                members.sort(key=lambda m: categories.index(json.dumps(m[0])))
                xs = [categories.index(json.dumps(m[0])) for m in members]
            name = ", ".join(f"{k} = {v}" for k, v in zip(split_by, label))
            ax.plot(xs, [m[1][split][metric] for m in members], marker="o", label=name or split)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set(xlabel=x, ylabel=f"{split} {metric}", title=f"{split} {metric} vs {x}")
        ax.tick_params(labelleft=True)  # shared y axis, but both panels keep their numbers
        ax.legend()
    fig.suptitle(f"{results[0]['model']} on {results[0]['dataset']}: {Path(folder).name}")
    fig.tight_layout()
    return _save(fig, plt, out / f"sweep_{x}.png")


def tsne_points(
    parts: Mapping[str, torch.Tensor], max_items: int, seed: int
) -> tuple[np.ndarray, list[str]]:
    """2-D t-SNE of the same random ``max_items`` items of every part, and each point's part."""
    from sklearn.manifold import TSNE

    num_items = next(iter(parts.values())).size(0)
    rng = np.random.default_rng(seed)
    items = np.sort(rng.permutation(num_items)[: min(max_items, num_items)])
    # Each part on its own scale: standardise so parts are compared by structure, not norm.
    blocks, labels = [], []
    for name, emb in parts.items():
        x = emb[items].double().numpy()
        blocks.append((x - x.mean(0)) / (x.std(0) + 1e-12))
        labels += [name] * len(items)
    stacked = np.concatenate(blocks)
    perplexity = float(min(30, max(2, (len(stacked) - 1) // 3)))
    coords = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(stacked)
    return coords, labels


#: Most items ``plot tsne`` samples per part (t-SNE's time grows faster than the points:
#: 10,000 items of 4 parts take minutes; more would look hung).
MAX_TSNE_ITEMS = 10_000


def plot_tsne(run: Path, out: Path, max_items: int = 1000, seed: int = 0) -> Path:
    """t-SNE of a finished run's item embeddings, coloured by part (C, S_m, ID for DHMRec);
    ``max_items`` items (at most :data:`MAX_TSNE_ITEMS`) are sampled, the title says how many."""
    if isinstance(max_items, bool) or not isinstance(max_items, int) or not 2 <= max_items:
        raise ExperimentError(f"--max-items must be an integer of at least 2, got {max_items!r}")
    if max_items > MAX_TSNE_ITEMS:
        raise ExperimentError(
            f"--max-items {max_items}: more than the {MAX_TSNE_ITEMS} items t-SNE plots in "
            "reasonable time; give at most that (a random sample of the items is plotted)"
        )
    plt = pyplot()
    model, _, config = load_run(run)
    parts = model.item_representations()
    coords, labels = tsne_points(parts, max_items, seed)
    num_items = next(iter(parts.values())).size(0)
    shown = min(max_items, num_items)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for name in parts:
        mask = np.array([label == name for label in labels])
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.6, label=name)
    sample = f"all {num_items} items" if shown == num_items else f"{shown} of {num_items} items"
    title = f"t-SNE of {config['model']} item embeddings ({sample})"
    ax.set(xticks=[], yticks=[], title=title)
    ax.legend(markerscale=3)
    fig.tight_layout()
    return _save(fig, plt, out / "tsne.png")


def _save(fig: Any, plt: Any, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path
