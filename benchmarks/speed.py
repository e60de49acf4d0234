"""Side-by-side speed and memory of models on one dataset, one process at a time.

    python benchmarks/speed.py --dataset synthetic_baby --models lightgcn dhmrec --epochs 3

Each model trains ``--epochs`` epochs (no early stopping) in its own ``run.py`` process, alone on
the machine, and the table of seconds per training epoch, seconds per full-ranking evaluation
and peak memory is printed and saved as ``<out>/speed-<dataset>.md`` (and ``.json``). Other
options go to every ``run.py`` (e.g. ``--plugin mrdib``; use another ``--out`` for that table).
Accuracy after so few epochs means nothing and is not reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/speed")
    args, extra = parser.parse_known_args()

    rows, records = [], {}
    for model in args.models:
        folder = Path(args.out) / f"{model}-{args.dataset}"
        cmd = [sys.executable, str(ROOT / "run.py"), "--model", model, "--dataset", args.dataset]
        cmd += ["--epochs", str(args.epochs), "--patience", str(args.epochs + 1), "--quiet"]
        cmd += ["--device", args.device, "--output", str(folder), *extra]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "log.txt", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
                raise SystemExit(f"{model} failed; see {folder / 'log.txt'}")
        with open(folder / "results.json") as f:
            r = json.load(f)
        env, t = r["environment"], r["timing"]
        gpu = f" (GPU {r['peak_gpu_mb']:.0f})" if r.get("peak_gpu_mb") else ""
        machine = (
            env["device_name"] if env["device"] != "cpu" else f"CPU, {env['torch_threads']} threads"
        )
        plugin = r.get("config", {}).get("plugin")
        name = f"{model} + {plugin}" if plugin else model
        records[name] = {"timing": t, "peak_rss_mb": r["peak_rss_mb"], "environment": env}
        rows.append(
            f"| {name} | {args.dataset} | {args.epochs} | {t['train_s_per_epoch']:.2f} "
            f"| {t['eval_s']:.2f} | {r['peak_rss_mb']:.0f}{gpu} | {machine} "
            f"| {env.get('git_commit') or '-'} |"
        )
    table = "\n".join(
        [
            "| model | dataset | epochs | s/epoch | eval s | peak MB | machine | commit |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    out = Path(args.out)
    (out / f"speed-{args.dataset}.md").write_text(table + "\n")
    (out / f"speed-{args.dataset}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
