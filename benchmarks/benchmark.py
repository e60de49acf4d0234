"""Run a model on a dataset (optionally over a grid), select on VALID, record in RESULTS.md.

    python benchmarks/benchmark.py --model lightgcn --dataset baby --data-root ../shared/data \
        --grid num_ui_layers=1,2,3,4 --grid reg_weight=1e-3,1e-4 --jobs 4

Every grid point runs as its own ``run.py`` process (``--jobs`` at a time) writing
``<out>/<model>-<dataset>/<point>/results.json``; finished points are skipped and points with
only a checkpoint are continued (``run.py --resume``), so an interrupted benchmark resumes. The
point with the best valid ``recall@20`` is selected (never test, ``pyg_dhmrec.experiment``) and one
row is appended to ``benchmarks/RESULTS.md``; the table of all points is printed and saved as
``grid.md`` beside the runs. Arguments after ``--`` go to every run (e.g. ``-- --epochs 5``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: import the library beside it

from pyg_dhmrec.atomic_files import write_json, write_text  # noqa: E402
from pyg_dhmrec.cli import build_parser, resolve_config  # noqa: E402
from pyg_dhmrec.config import ConfigError  # noqa: E402
from pyg_dhmrec.experiment import (  # noqa: E402
    check_same_config,
    expand_grid,
    grid_table,
    parse_grid_options,
    point_name,
    select_best,
)
from pyg_dhmrec.train import CHECKPOINT  # noqa: E402

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
HEADER = (
    "| model | dataset | settings | R@10 | R@20 | N@10 | N@20 | best / run epochs | s/epoch "
    "| eval s | peak MB | machine | commit |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def run_point(
    args: argparse.Namespace, point: dict[str, str], folder: Path
) -> dict[str, Any] | None:
    options = ["--model", args.model, "--dataset", args.dataset, "--output", str(folder)]
    if args.data_root:
        options += ["--data-root", args.data_root]
    if args.device:
        options += ["--device", args.device]
    for key, value in point.items():
        options += [f"--{key}", value]
    options += args.extra
    try:  # a folder of another configuration is never reused or resumed
        requested = resolve_config(*build_parser().parse_known_args(options))
        check_same_config(folder, requested)
    except ValueError as e:
        print(f"{point_name(point)} failed: {e}")
        return None
    results = folder / "results.json"
    if not results.exists():
        cmd = [sys.executable, str(ROOT / "run.py"), *options, "--quiet"]
        if (folder / CHECKPOINT).is_file():  # interrupted point: continue it
            cmd = [sys.executable, str(ROOT / "run.py"), "--resume", str(folder), "--quiet"]
            cmd += ["--device", args.device] if args.device else []
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "log.txt", "a") as log:  # a resumed point keeps its log
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = (folder / "log.txt").read_text().splitlines()[-5:]
            print(f"{point_name(point)} failed (exit {done.returncode}):\n" + "\n".join(tail))
            return None
    with open(results) as f:
        return json.load(f)


def fmt_row(r: dict[str, Any], settings: str) -> str:
    env, t, test = r["environment"], r["timing"], r["test"]
    mem = f"{r['peak_rss_mb']:.0f}"
    if r.get("peak_gpu_mb"):
        mem += f" (GPU {r['peak_gpu_mb']:.0f})"
    machine = env["device_name"] or env["device"]
    if env["device"] == "cpu":
        machine = f"CPU, {env['torch_threads']} threads ({machine or 'x86_64'})"
    cells = [
        r["model"],
        r["dataset"],
        settings,
        *(f"{test[k]:.4f}" for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")),
        f"{r['best_epoch']} / {r['epochs_run']}",
        f"{t['train_s_per_epoch']:.2f}",
        f"{t['eval_s']:.2f}",
        mem,
        machine,
        env.get("git_commit") or "-",
    ]
    return "| " + " | ".join(cells) + " |\n"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root")
    parser.add_argument("--device")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="grid points run at once")
    parser.add_argument("--out", default="runs/bench", help="folder of the runs")
    parser.add_argument("--note", default="", help="text added to the settings cell")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    args.extra = extra

    try:
        points = expand_grid(parse_grid_options(args.grid), "--grid")
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    base = Path(args.out) / f"{args.model}-{args.dataset}"
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_point, args, p, base / point_name(p)) for p in points]
        results = [f.result() for f in futures]
    failed = [point_name(p) for p, r in zip(points, results) if r is None]
    points = [p for p, r in zip(points, results) if r is not None]
    runs = [r for r in results if r is not None]
    if not runs:
        raise SystemExit("every grid point failed")

    names = [point_name(p) for p in points]
    best = select_best(runs, names=names)  # errors name the point, not "run i"
    table = grid_table(names, runs)
    print(table)
    write_text(base / "grid.md", table + "\n")
    write_json(base / "selected.json", points[best])
    chosen = ", ".join(f"{k}={v}" for k, v in points[best].items()) or "defaults"
    settings = chosen if len(points) == 1 else f"{chosen} (best valid R@20 of {len(points)})"
    if failed:
        settings += f"; failed points: {', '.join(failed)}"
    if extra:
        settings += " " + " ".join(extra)
    if args.note:
        settings += f"; {args.note}"
    row = fmt_row(runs[best], settings)
    print(f"selected on valid recall@20: {point_name(points[best])}\n{row}", end="")
    if not args.no_record:
        if not RESULTS_MD.exists() or HEADER.splitlines()[0] not in RESULTS_MD.read_text():
            with open(RESULTS_MD, "a") as f:
                f.write("\n" + HEADER)
        with open(RESULTS_MD, "a") as f:
            f.write(row)


if __name__ == "__main__":
    main()
