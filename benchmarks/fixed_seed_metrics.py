"""Every model's test metrics and last loss after a few epochs at a fixed seed, for checking
that a refactoring preserves behaviour (compare two checkouts' tables to the last digit).

    python benchmarks/fixed_seed_metrics.py --out runs/fixed-seed [--epochs 3] [--models ...]

Each model trains in its own ``run.py`` process on the synthetic default with one thread;
the table (model, R@20, N@20, sum of the last epoch's loss parts, 10 decimals) is printed and
saved as ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [
    "bpr",
    "lightgcn",
    "layergcn",
    "vbpr",
    "freedom",
    "lattice",
    "micro",
    "mmgcn",
    "grcn",
    "dualgnn",
    "mgcn",
    "lgmrec",
    "bm3",
    "siger",
    "dhmrec",
    "freedom+mrdib",
]


def check_names(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Every ``model[+plugin]`` registered and listed once, before any run starts."""
    sys.path.insert(0, str(ROOT))
    from pyg_dhmrec.config import available

    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"--models lists {', '.join(repeated)} more than once (one run folder each)")
    for name in names:
        model, _, plugin = name.partition("+")
        for kind, value in (("models", model), ("plugins", plugin)):
            if (value or kind == "models") and value not in available(kind):
                parser.error(
                    f"--models {name}: unknown {kind[:-1]} {value!r}; available: "
                    f"{', '.join(available(kind))}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the run folders")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root", default="datasets", help="where synthetic/ is generated")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model[+plugin]")
    args = parser.parse_args()
    check_names(parser, args.models)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = ["| model | R@20 | N@20 | last loss |", "|---|---|---|---|"]
    for name in args.models:
        model, _, plugin = name.partition("+")
        run = args.out / name
        cmd = [sys.executable, str(ROOT / "run.py"), "--model", model, "--epochs", str(args.epochs)]
        cmd += ["--quiet", "--data-root", args.data_root, "--output", str(run)]
        cmd += ["--plugin", plugin] if plugin else []
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            rows.append(f"| {name} | failed | | |")
            continue
        results = json.loads((run / "results.json").read_text(encoding="utf-8"))
        test, last = results["test"], results["history"][-1]["loss"]
        rows.append(
            f"| {name} | {test['recall@20']:.10f} | {test['ndcg@20']:.10f} | "
            f"{sum(last.values()):.10f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
