"""Figures of runs: training curves, hyper-parameter sweeps and t-SNE of item embeddings.

Needs matplotlib, the optional ``plots`` extra (``pip install -e ".[plots]"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyg_dhmrec.atomic_files import atomic_write
from pyg_dhmrec.experiment import ExperimentError, load_run, read_results


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


def plot_curves(run: Path, out: Path) -> Path:
    """Loss parts (left) and valid metrics (right) per epoch from ``results.json``'s history."""
    plt = pyplot()
    results = read_results(run)
    history = results.get("history") or []
    if not history:
        raise ExperimentError(f"{run}/results.json: empty 'history', nothing to plot")
    missing = [k for k in ("best_epoch", "model", "dataset") if k not in results]
    if missing:
        raise ExperimentError(f"{run}/results.json: lacks {', '.join(missing)}; not a finished run")
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    for part in history[0]["loss"]:
        ax_loss.plot(epochs, [h["loss"][part] for h in history], label=part)
    ax_loss.set(xlabel="epoch", ylabel="mean loss part", title="training loss", yscale="log")
    ax_loss.legend()
    evaluated = [h for h in history if "valid" in h]
    for key in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        if evaluated and key in evaluated[0]["valid"]:
            values = [h["valid"][key] for h in evaluated]
            ax_valid.plot([h["epoch"] for h in evaluated], values, label=key)
    ax_valid.axvline(results["best_epoch"], color="grey", linestyle=":", label="best epoch")
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
    groups: dict[Any, list[tuple[Any, dict[str, Any]]]] = {}
    for r in results:
        groups.setdefault(r["config"][lines] if lines else None, []).append((r["config"][x], r))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("valid", "test")):
        for value, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
            members.sort(key=lambda m: m[0])
            ax.plot(
                [m[0] for m in members],
                [m[1][split][metric] for m in members],
                marker="o",
                label=f"{lines} = {value}" if lines else split,
            )
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


def plot_tsne(run: Path, out: Path, max_items: int = 1000, seed: int = 0) -> Path:
    """t-SNE of a finished run's item embeddings, coloured by part (C, S_m, ID for DHMRec)."""
    plt = pyplot()
    model, _, config = load_run(run)
    parts = model.item_representations()
    coords, labels = tsne_points(parts, max_items, seed)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for name in parts:
        mask = np.array([label == name for label in labels])
        ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.6, label=name)
    ax.set(xticks=[], yticks=[], title=f"t-SNE of {config['model']} item embeddings")
    ax.legend(markerscale=3)
    fig.tight_layout()
    return _save(fig, plt, out / "tsne.png")


def _save(fig: Any, plt: Any, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path
