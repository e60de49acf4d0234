"""Keep the finished points of a grid in the repository, and put them back into a grid folder.

    python benchmarks/grid_points.py save <grid folder>
    python benchmarks/grid_points.py restore <dataset> <model> <grid folder>

A CPU grid of the slow baselines (DA-MRS, DiffMM on TikTok) takes longer than one machine
lives. ``save`` copies each finished point of ``run.py --grid ... --output <grid folder>``
(``config.json``, ``results.json``, ``train.log``; no checkpoints) to
``benchmarks/grid_points/<dataset>/<model>/<point>/``, the record behind the grid rows of
``RESULTS.md``. ``restore`` copies them into a grid folder, where ``run.py --grid`` with the
same configuration (the same ``--data-root`` included: the folder's configuration is checked)
reads them as finished and trains only the others. Unfinished points are never copied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "benchmarks" / "grid_points"
KEPT = ("config.json", "results.json", "train.log")


def finished_points(folder: Path) -> list[Path]:
    """The point folders of ``folder`` that hold both ``config.json`` and ``results.json``."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if all((p / name).is_file() for name in KEPT[:2]))


def copy_point(source: Path, target: Path) -> str:
    """Copy a finished point's kept files; refuse to replace a different finished result."""
    if (target / "results.json").is_file():
        if (target / "results.json").read_bytes() == (source / "results.json").read_bytes():
            return "unchanged"
        raise SystemExit(
            f"{target}: already holds another results.json than {source}; delete one of them"
        )
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"{target}: holds an unfinished run; delete it before restoring")
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return "copied"


def save(folder: Path) -> None:
    points = finished_points(folder)
    if not points:
        raise SystemExit(f"{folder}: no finished point (a folder with results.json)")
    for point in points:
        config = json.loads((point / "config.json").read_text(encoding="utf-8"))
        target = ARCHIVE / str(config["dataset"]) / str(config["model"]) / point.name
        print(f"{point.name}: {copy_point(point, target)} -> {target.relative_to(ROOT)}")


def restore(dataset: str, model: str, folder: Path) -> None:
    source = ARCHIVE / dataset / model
    points = finished_points(source) if source.is_dir() else []
    if not points:
        raise SystemExit(f"{source}: no saved point of {model} on {dataset}")
    for point in points:
        print(f"{point.name}: {copy_point(point, folder / point.name)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy a grid folder's finished points into the repository")
    s.add_argument("folder", type=Path)
    r = sub.add_parser("restore", help="copy the saved points into a grid folder")
    r.add_argument("dataset")
    r.add_argument("model")
    r.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.folder)
    else:
        restore(args.dataset, args.model, args.folder)


if __name__ == "__main__":
    sys.exit(main())
