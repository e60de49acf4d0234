"""DHMRec against baselines over seeds, at settings selected on valid (issue 16's protocol).

Four stages, each resumable (``run.py`` skips finished runs and resumes checkpointed ones):

* ``select``: every model's grid on ``--dataset`` (``--grid MODEL=FILE``, else the grid shipped
  as ``configs/grids/<model>.yaml``; a model with neither keeps its configured settings), the
  point with the best **valid** Recall@20 selected (``<out>/<dataset>/<model>-grid/grid.json``).
* ``seeds``: every model at its selected point over ``--seeds`` seeds
  (``<out>/<dataset>/<model>-seeds/seed=<s>``).
* ``ablations``: DHMRec at its selected point with each of Table 2's ablations over
  ``--ablation-seeds`` seeds (``<out>/<dataset>/dhmrec-<ablation>-seeds``).
* ``summary``: mean ± std of test R@20 / N@20 per model, DHMRec's ratio to each, the paired
  t-test of per-user test R@20 seed by seed (``run.py compare``; the largest p is shown) and
  over the seed means; the ablations against the full model. Printed and written to
  ``<out>/<dataset>/summary.md``.

Each run is its own ``python run.py`` process with one thread (``OMP_NUM_THREADS=1``), ``--jobs``
at once; its log is ``<out>/<dataset>/logs/<name>.log``. Arguments after ``--`` go to every run
(e.g. ``-- --epochs 5`` for a smoke test)::

    python benchmarks/seed_study.py select --dataset tiktok --data-root ../shared/data \\
        --grid dhmrec=configs/grids/dhmrec.yaml --jobs 2
    python benchmarks/seed_study.py seeds --dataset tiktok --data-root ../shared/data
    python benchmarks/seed_study.py ablations --dataset tiktok --data-root ../shared/data
    python benchmarks/seed_study.py summary --dataset tiktok
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scipy.stats import ttest_rel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyg_dhmrec.config import CONFIG_DIR, available  # noqa: E402
from pyg_dhmrec.experiment import compare_runs, point_name  # noqa: E402
from pyg_dhmrec.models.dhmrec import ABLATIONS  # noqa: E402

MODELS = ("dhmrec", "lightgcn", "freedom", "layergcn", "mgcn")
METRICS = ("recall@20", "ndcg@20")


def _option(value: Any) -> str:
    """A grid value as ``run.py`` reads it back (YAML flow style for lists and mappings)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_option(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_option(v)}" for k, v in value.items()) + "}"
    return str(value)


def _point_args(point: dict[str, Any]) -> list[str]:
    return [a for k, v in point.items() for a in (f"--{k}", _option(v))]


def _grid_file(model: str, grids: dict[str, str]) -> Path | None:
    if model in grids:
        return Path(grids[model])
    return CONFIG_DIR / "grids" / f"{model}.yaml" if model in available("grids") else None


def _selected_point(folder: Path, model: str) -> dict[str, Any]:
    """The valid-selected point of ``model``'s grid; ``{}`` when it had no grid."""
    grid = folder / f"{model}-grid" / "grid.json"
    if grid.is_file():
        return json.loads(grid.read_text())["selected_point"]
    if (folder / f"{model}-grid" / "configured").is_file():
        return {}
    raise SystemExit(f"{grid}: not found; run the select stage for {model} first")


def _prepare_dataset(argv: list[str]) -> None:
    """Load (generate, process) the dataset of ``argv`` once, before parallel runs read it."""
    from pyg_dhmrec.cli import build_parser, resolve_config
    from pyg_dhmrec.data.dataset import load_dataset

    namespace, extra = build_parser().parse_known_args(argv)
    print(load_dataset(resolve_config(namespace, extra)), flush=True)


def _run_all(jobs: list[tuple[str, list[str]]], folder: Path, parallel: int) -> None:
    """Run ``(name, run.py arguments)`` jobs, ``parallel`` at once; stop if any fails."""
    if jobs:
        _prepare_dataset(jobs[0][1])
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending, running, failed = list(jobs), [], []
    while pending or running:
        while pending and len(running) < parallel:
            name, argv = pending.pop(0)
            log = logs / f"{name}.log"
            print(f"start {name} (log {log})", flush=True)
            with log.open("a") as out:
                cmd = [sys.executable, str(ROOT / "run.py"), *argv]
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            running.append((name, proc, time.monotonic()))
        time.sleep(2)
        for item in list(running):
            name, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            took = time.monotonic() - start
            print(f"{'done' if proc.returncode == 0 else 'FAILED'} {name} ({took:.0f} s)")
            if proc.returncode != 0:
                failed.append(name)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see {logs})")


def _base_args(args: argparse.Namespace, model: str) -> list[str]:
    out = ["--model", model, "--dataset", args.dataset, "--device", args.device]
    out += ["--data-root", args.data_root] if args.data_root else []
    return out + ["--baseline", "null", "--quiet", *args.run_args]


def select(args: argparse.Namespace, folder: Path) -> None:
    jobs = []
    for model in args.models:
        grid = _grid_file(model, args.grids)
        if grid is None:
            marker = folder / f"{model}-grid" / "configured"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("no grid: the configured settings are used\n")
            print(f"{model}: no grid given or shipped, keeps its configured settings")
            continue
        out = ["--grid", str(grid), "--output", str(folder / f"{model}-grid")]
        jobs.append((f"{model}-grid", _base_args(args, model) + out))
    _run_all(jobs, folder, args.jobs)


def seeds(args: argparse.Namespace, folder: Path) -> None:
    jobs = []
    for model in args.models:
        point = _selected_point(folder, model)
        out = ["--seeds", str(args.seeds), "--output", str(folder / f"{model}-seeds")]
        jobs.append((f"{model}-seeds", _base_args(args, model) + _point_args(point) + out))
    _run_all(jobs, folder, args.jobs)


def ablations(args: argparse.Namespace, folder: Path) -> None:
    point = {k: v for k, v in _selected_point(folder, "dhmrec").items() if k != "ablations"}
    jobs = []
    for ablation in args.ablations:
        out = ["--ablations", f"[{ablation}]", "--seeds", str(args.ablation_seeds)]
        out += ["--output", str(folder / f"dhmrec-{ablation}-seeds")]
        jobs.append((f"dhmrec-{ablation}", _base_args(args, "dhmrec") + _point_args(point) + out))
    _run_all(jobs, folder, args.jobs)


def _seed_runs(folder: Path) -> tuple[dict[str, Any], list[Path]] | None:
    summary = folder / "seeds.json"
    if not summary.is_file():
        return None
    record = json.loads(summary.read_text())
    return record, [folder / f"seed={s}" for s in record["seeds"]]


def _mean_std(record: dict[str, Any], metric: str) -> str:
    cell = record["test"][metric]
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def summary(args: argparse.Namespace, folder: Path) -> str:
    lines = [f"## {args.dataset}: test metrics over seeds, settings selected on valid R@20", ""]
    lines += [
        "| model | settings | seeds | R@20 | N@20 | DHMRec R@20 ratio | "
        "paired t per seed: largest p | t over seed means (p) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    main = _seed_runs(folder / "dhmrec-seeds")
    for model in args.models:
        found = _seed_runs(folder / f"{model}-seeds")
        if found is None:
            lines.append(f"| {model} | not run | | | | | | |")
            continue
        record, runs = found
        try:
            settings = point_name(_selected_point(folder, model)) or "configured"
        except SystemExit:
            settings = "?"
        cells = [model, settings.replace("default", "configured"), str(len(runs))]
        cells += [_mean_std(record, m) for m in METRICS]
        if main is None or model == "dhmrec":
            cells += ["", "", ""]
        else:
            mine, my_runs = main
            a = mine["test"]["recall@20"]["values"]
            b = record["test"]["recall@20"]["values"]
            pairs = list(zip(my_runs, runs))
            ps = [compare_runs(x, y)["p"] for x, y in pairs if (x / "results.json").is_file()]
            cells.append(f"{sum(a) / sum(b):.2f}x")
            cells.append(f"{max(ps):.2g} ({len(ps)} seeds)" if ps else "")
            if len(a) == len(b) and len(a) > 1:
                t = ttest_rel(a, b)
                cells.append(f"{t.statistic:.2f} ({t.pvalue:.2g})")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    if main is not None:
        full = main[0]["test"]
        lines += ["", "### DHMRec ablations (Table 2) at the selected point", ""]
        lines += ["| variant | seeds | R@20 | N@20 | full - variant R@20 | component helps |"]
        lines += ["|---|---|---|---|---|---|"]
        lines.append(
            f"| full | {len(main[1])} | {_mean_std(main[0], 'recall@20')} | "
            f"{_mean_std(main[0], 'ndcg@20')} | | |"
        )
        for ablation in args.ablations:
            found = _seed_runs(folder / f"dhmrec-{ablation}-seeds")
            if found is None:
                lines.append(f"| {ablation} | not run | | | | |")
                continue
            record = found[0]
            gap = full["recall@20"]["mean"] - record["test"]["recall@20"]["mean"]
            spread = max(full["recall@20"]["std"], record["test"]["recall@20"]["std"])
            verdict = "yes" if gap > spread else ("no" if gap < -spread else "within one std")
            lines.append(
                f"| {ablation} | {len(found[1])} | {_mean_std(record, 'recall@20')} | "
                f"{_mean_std(record, 'ndcg@20')} | {gap:+.4f} | {verdict} |"
            )
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["select", "seeds", "ablations", "summary"])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", help="folder of the dataset (run.py's --data-root)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="MODEL=FILE",
        help="grid file of a model (default: the shipped configs/grids/<model>.yaml)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per model (seeds stage)")
    parser.add_argument("--ablation-seeds", type=int, default=3)
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=ABLATIONS)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/seed-study")
    args = parser.parse_args(argv)
    if args.stage == "summary" and "dhmrec" not in args.models:
        parser.error("--models must include dhmrec (every comparison is against it)")
    bad = [g for g in args.grid if "=" not in g]
    if bad:
        parser.error(f"--grid expects MODEL=FILE, got {bad}")
    args.grids = dict(g.split("=", 1) for g in args.grid)
    for model, path in args.grids.items():
        if not Path(path).is_file():
            parser.error(f"--grid {model}={path}: file not found")
    if args.jobs < 1 or args.seeds < 1 or args.ablation_seeds < 1:
        parser.error("--jobs, --seeds and --ablation-seeds must be >= 1")
    args.run_args = run_args
    folder = Path(args.out) / args.dataset
    folder.mkdir(parents=True, exist_ok=True)
    {"select": select, "seeds": seeds, "ablations": ablations, "summary": summary}[args.stage](
        args, folder
    )


if __name__ == "__main__":
    main()
