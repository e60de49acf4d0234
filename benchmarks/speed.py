"""Side-by-side speed and memory of models on one dataset, one process at a time.

    python benchmarks/speed.py --dataset synthetic_baby --models lightgcn dhmrec --epochs 3

Each model trains ``--epochs`` epochs (no early stopping) in its own ``run.py`` process, alone on
the machine, and the table of seconds per training epoch (and its ratio to the first model's),
seconds per valid evaluation, the test evaluation, peak memory, and the evaluation time of the
whole run (valid every epoch + test once) against evaluating test every epoch too, is printed
and saved as ``<out>/speed-<dataset>.md`` (and ``.json``). Then, in the same run,
``benchmarks/eval_overhead.py`` times the evaluation of all valid users against the bare score
product plus top-k (``--no-eval-overhead`` skips it). Other options go to every ``run.py``
(e.g. ``--plugin mrdib``; use another ``--out`` for that table); options of one model only
follow its name, ``model:key=value,key=value`` (``dhmrec:kl_items=1024`` runs ``run.py --model
dhmrec --kl_items 1024``, its row named by the whole spec). Accuracy after so few epochs means
nothing and is not reported.

On a shared machine, ``--rounds R`` runs the list of models ``R`` times, one model after the
other in each round, and reports each figure's minimum over the rounds (the least disturbed
run; every round's figures are in the ``.json``), so that a burst of other load in one model's
run does not decide a ratio. Each run also records its process's CPU seconds per training
epoch (``time.process_time``): with one thread (``OMP_NUM_THREADS=1``) that is the wall time on an
idle machine, and on a shared machine it leaves out the time the process waited for a core, so
the CPU ratio (``x <first> CPU``) is the steadier comparison there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def model_spec(spec: str) -> tuple[str, list[str]]:
    """``name`` or ``name:key=value,key=value``: the model and its own ``run.py`` options."""
    model, colon, options = spec.partition(":")
    pairs = [option.partition("=") for option in options.split(",")] if colon else []
    bad = [key + sep + value for key, sep, value in pairs if not (key and sep and value)]
    if not model or bad:
        detail = f" (bad part '{bad[0]}')" if bad else ""
        raise SystemExit(f"--models: '{spec}' is not name or name:key=value[,key=value]{detail}")
    return model, [arg for key, _, value in pairs for arg in (f"--{key}", value)]


def run_model(
    spec: str, folder: Path, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    """One ``run.py`` process of the model ``spec`` writing into ``folder``; its figures."""
    model, own = model_spec(spec)
    extra = [*extra, *own]
    cmd = [sys.executable, str(ROOT / "run.py"), "--model", model, "--dataset", args.dataset]
    cmd += ["--epochs", str(args.epochs), "--patience", str(args.epochs + 1), "--quiet"]
    cmd += ["--device", args.device, "--output", str(folder), *extra]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.txt", "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"{model} failed; see {folder / 'log.txt'}")
    with open(folder / "results.json") as f:
        r = json.load(f)
    t = r["timing"]
    # the run's evaluations: valid after each epoch, test once; else test after each epoch
    valid = [h["eval_s"] for h in r["history"] if "eval_s" in h]
    return {
        "train_s_per_epoch": t["train_s_per_epoch"],
        "train_cpu_s_per_epoch": t.get("train_cpu_s_per_epoch", float("nan")),
        "eval_s": t["eval_s"],
        "test_eval_s": t["test_eval_s"],
        "run_eval_s": sum(valid) + t["test_eval_s"],
        "test_every_epoch_eval_s": sum(valid) + len(valid) * t["test_eval_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "peak_gpu_mb": r.get("peak_gpu_mb"),
        "plugin": r.get("config", {}).get("plugin"),
        "environment": r["environment"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/speed")
    parser.add_argument("--no-eval-overhead", action="store_true")
    args, extra = parser.parse_known_args()
    out = Path(args.out)

    for spec in args.models:
        model_spec(spec)  # a malformed spec stops the run before any training
    repeated = sorted({spec for spec in args.models if args.models.count(spec) > 1})
    if repeated:
        parser.error(f"--models lists {', '.join(repeated)} more than once (--rounds repeats)")
    runs: dict[str, list[dict[str, Any]]] = {model: [] for model in args.models}
    for k in range(args.rounds):
        for model in args.models:
            tail = f"-r{k + 1}" if args.rounds > 1 else ""
            folder = out / f"{model.replace(':', '-').replace(',', '-')}-{args.dataset}{tail}"
            runs[model].append(run_model(model, folder, args, extra))

    rows, records, first = [], {}, None
    for model, figures in runs.items():
        best = {key: min(f[key] for f in figures) for key in figures[0] if key.endswith("_s")}
        best["train_s_per_epoch"] = min(f["train_s_per_epoch"] for f in figures)
        best["train_cpu_s_per_epoch"] = min(f["train_cpu_s_per_epoch"] for f in figures)
        peak = max(f["peak_rss_mb"] for f in figures)
        env, plugin = figures[0]["environment"], figures[0]["plugin"]
        gpu = figures[0]["peak_gpu_mb"]
        gpu = f" (GPU {gpu:.0f})" if gpu else ""
        machine = (
            env["device_name"] if env["device"] != "cpu" else f"CPU, {env['torch_threads']} threads"
        )
        name = f"{model} + {plugin}" if plugin else model
        first = first or (best["train_s_per_epoch"], best["train_cpu_s_per_epoch"])
        cpu_ratio = best["train_cpu_s_per_epoch"] / first[1]
        records[name] = {
            **best,
            "ratio_to_first": best["train_s_per_epoch"] / first[0],
            "cpu_ratio_to_first": cpu_ratio,
            "peak_rss_mb": peak,
            "rounds": figures,
        }
        rows.append(
            f"| {name} | {args.dataset} | {args.epochs} | {best['train_s_per_epoch']:.2f} "
            f"| {best['train_s_per_epoch'] / first[0]:.2f} "
            f"| {best['train_cpu_s_per_epoch']:.2f} | {cpu_ratio:.2f} | {best['eval_s']:.2f} "
            f"| {best['test_eval_s']:.2f} "
            f"| {best['run_eval_s']:.2f} / {best['test_every_epoch_eval_s']:.2f} "
            f"| {peak:.0f}{gpu} | {machine} | {env.get('git_commit') or '-'} |"
        )
    rounds = f" (minimum of {args.rounds} rounds)" if args.rounds > 1 else ""
    table = "\n".join(
        [
            f"| model | dataset | epochs | s/epoch{rounds} | x {args.models[0]} "
            f"| CPU s/epoch | x {args.models[0]} CPU | valid eval s "
            "| test eval s | run eval s: test once / every epoch | peak MB | machine | commit |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if not args.no_eval_overhead:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_overhead.py")]
        cmd += ["--dataset", args.dataset, "--device", args.device, "--out", str(out.resolve())]
        cmd += ["--data-root", args.data_root] if args.data_root else []
        done = subprocess.run(cmd, capture_output=True, text=True)
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
