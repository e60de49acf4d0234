"""Side-by-side speed and memory of models on one dataset, one process at a time.

    python benchmarks/speed.py --dataset synthetic_baby --models lightgcn dhmrec --epochs 3

Each model trains ``--epochs`` epochs (no early stopping) in its own ``run.py`` process, alone on
the machine, and the table of seconds per training epoch (and its ratio to the first model's),
seconds per valid evaluation, the test evaluation, peak memory, and the evaluation time of the
whole run (valid every epoch + test once) against evaluating test every epoch too, is printed
and saved as ``<out>/speed-<dataset>.md`` (and ``.json``). Then, in the same run,
``benchmarks/eval_overhead.py`` times the evaluation of all valid users against the bare score
product plus top-k (``--no-eval-overhead`` skips it). Other options go to every ``run.py``
(e.g. ``--plugin mrdib``; use another ``--out`` for that table). Accuracy after so few epochs
means nothing and is not reported.
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
    parser.add_argument("--no-eval-overhead", action="store_true")
    args, extra = parser.parse_known_args()

    rows, records, first = [], {}, None
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
        first = first or t["train_s_per_epoch"]
        # the run's evaluations: valid after each epoch, test once; else test after each epoch
        valid = [h["eval_s"] for h in r["history"] if "eval_s" in h]
        run_eval = sum(valid) + t["test_eval_s"]
        every_epoch = sum(valid) + len(valid) * t["test_eval_s"]
        records[name] = {
            "timing": t,
            "peak_rss_mb": r["peak_rss_mb"],
            "environment": env,
            "ratio_to_first": t["train_s_per_epoch"] / first,
            "run_eval_s": run_eval,
            "test_every_epoch_eval_s": every_epoch,
        }
        rows.append(
            f"| {name} | {args.dataset} | {args.epochs} | {t['train_s_per_epoch']:.2f} "
            f"| {t['train_s_per_epoch'] / first:.2f} | {t['eval_s']:.2f} | {t['test_eval_s']:.2f} "
            f"| {run_eval:.2f} / {every_epoch:.2f} | {r['peak_rss_mb']:.0f}{gpu} | {machine} "
            f"| {env.get('git_commit') or '-'} |"
        )
    table = "\n".join(
        [
            f"| model | dataset | epochs | s/epoch | x {args.models[0]} | valid eval s "
            "| test eval s | run eval s: test once / every epoch | peak MB | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    out = Path(args.out)
    if not args.no_eval_overhead:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_overhead.py")]
        cmd += ["--dataset", args.dataset, "--device", args.device, "--out", str(out.resolve())]
        cmd += ["--data-root", args.data_root] if args.data_root else []
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"eval_overhead.py failed:\n{done.stderr[-2000:]}")
        line = done.stdout.strip().splitlines()[-1]
        table += f"\n\nEvaluation against the bare product and top-k: {line}"
        records["eval_overhead"] = json.loads(
            (out / f"eval-overhead-{args.dataset}.json").read_text(encoding="utf-8")
        )
    print(table)
    (out / f"speed-{args.dataset}.md").write_text(table + "\n")
    (out / f"speed-{args.dataset}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
