"""Cost of LightGCN, FREEDOM and DHMRec at 1x, 2x, 4x and 8x Amazon Sports' shape.

    OMP_NUM_THREADS=1 python benchmarks/scale.py --scales 1 2 4 8 --steps 5

For every scale ``s`` the dataset ``synthetic_sports_<s>x`` (configs/datasets/; 35598 s users,
18357 s items, 296337 s interactions, 4096-d image and 384-d text features) is generated,
processed and given its kNN item graphs once, in a process of its own (``prepare`` rows; cached
under ``<data-root>/synthetic_sports_<s>x/``, git-ignored), then every model is measured in a
fresh process, one at a time:

* **s/step**: the trainer's own epoch (``Trainer.train_epoch``) is run with
  ``max_steps_per_epoch`` = 1 and then 1 + n, n = ``--steps``, and again with more steps
  where n steps took less than ``--min-seconds`` (CPU time; wall time on a GPU, whose steps
  of a few milliseconds would otherwise vanish in the epoch's shuffle), up to a whole epoch;
  the difference of the two times over n is the time of one training step (forward pass,
  loss, backward, Adam). An epoch
  of two steps first (not timed) compiles (``--compile``) and warms the allocator.
* **s/epoch** (extrapolated, not run): the 1-step epoch (per-epoch work: pruned-graph resampling,
  the epoch's shuffle and negatives, plus one step) + (steps per epoch - 1) x s/step. Every
  step propagates the whole graph, so s/step grows with the graph and s/epoch with the graph
  times the number of steps: about quadratically in the interactions (slope 2), for LightGCN
  as for the others. The same holds for full-ranking evaluation (users x items scores).
* **eval s**: one full-ranking evaluation of every valid user (``Trainer.evaluate('valid')``);
  with ``--eval-chunks n``, the embedding pass plus the first ``n`` chunks of
  ``eval_batch_size`` users (``FullRankEvaluator.evaluate_chunks``), extrapolated to all chunks
  (chunks cost the same: one ``[chunk, items]`` score block, the train mask and top-k each).
* **peak MB**: peak resident memory (VmHWM) of the process, whole (dataset loading included)
  and from the trainer's construction on (training and evaluation; the peak is reset with
  ``/proc/self/clear_refs`` after loading).

Times are wall seconds and, in parentheses, the process's CPU seconds (``time.process_time``;
one thread, so equal to wall time on an idle machine): on a shared machine the CPU time is the
steadier figure, and the slope fits use it. Each measurement caps its own heap (RLIMIT_DATA) at
the memory available when it starts less ``--memory-margin-mb`` and reports "out of memory"
past it; a watchdog also kills it (the process this script started, by its id) when the
machine's available memory drops below ``--min-available-mb``, and records it as killed. Results:
``<out>/scale.md`` (tables, slope fits), ``<out>/scale.json`` and ``<out>/scale.png`` (log-log
cost against interactions with the least-squares slope of log cost on log interactions: 1 is
linear).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's pyg_dhmrec, as run.py does

MODELS = ("lightgcn", "freedom", "dhmrec")
MB = 2**20


def dataset_name(scale: int) -> str:
    return f"synthetic_sports_{scale}x"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    """Peak resident memory since the start or the last :func:`reset_peak`, in MiB."""
    return _status_kb("VmHWM") / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def limit_memory(margin_mb: float) -> float:
    """Cap this process's heap (RLIMIT_DATA: anonymous memory, about its RSS less the mapped
    libraries) at the machine's available memory less ``margin_mb``, so that a measurement
    too large for the machine fails with an allocation error instead of pushing the machine
    into swap or the OOM killer. Returns the cap in MiB."""
    limit = max(256.0, _available_mb() - margin_mb)
    if limit != float("inf"):
        value = int(limit * MB)
        resource.setrlimit(resource.RLIMIT_DATA, (value, value))
    return limit


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _config(model: str, scale: int, args: argparse.Namespace) -> dict[str, Any]:
    from pyg_dhmrec.config import load_config

    overrides = {
        "data_root": args.data_root,
        "device": args.device,
        "progress": False,
        "compile": args.compile,
    }
    return load_config(model, dataset_name(scale), overrides)


# ----- one process per preparation and per measurement -----
def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, process and add the kNN graphs of one scale (cached for the measurements)."""
    from pyg_dhmrec.data.dataset import load_dataset
    from pyg_dhmrec.data.transforms import add_derived_graphs
    from pyg_dhmrec.loader import derived_graph_dir
    from pyg_dhmrec.models import model_class, model_settings
    from pyg_dhmrec.train import resolve_device

    t0, cpu0 = time.perf_counter(), time.process_time()
    config = _config("freedom", args.scale, args)
    device = resolve_device(config["device"])
    folder = Path(args.data_root) / config["dataset"]
    generated = not (folder / "meta.json").exists()
    dataset = load_dataset(config)
    dataset_s, dataset_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    data = dataset[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for model in args.models:
        transforms = model_class(model).graph_transforms(
            model_settings(model, _config(model, args.scale, args))
        )
        add_derived_graphs(data, transforms, derived_graph_dir(dataset), device=device)
    return {
        "scale": args.scale,
        "dataset": config["dataset"],
        "stats": dataset.stats,
        "generated": generated,
        "dataset_s": dataset_s,
        "dataset_cpu_s": dataset_cpu_s,
        "graphs_s": time.perf_counter() - t0,
        "graphs_cpu_s": time.process_time() - cpu0,
        "graphs_device": str(device),
        "peak_rss_mb": peak_mb(),
        "disk_mb": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MB,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--steps`` training steps, the per-epoch work and one valid evaluation."""
    import torch

    from pyg_dhmrec.loader import load_data_and_model
    from pyg_dhmrec.train import Trainer, resolve_device, seed_everything

    load_start = loadavg()
    config = _config(args.model, args.scale, args)
    device = resolve_device(config["device"])
    seed_everything(config["seed"], device)
    t0 = time.perf_counter()
    dataset, data, model = load_data_and_model(config)
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    peak_reset = reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    trainer = Trainer(model, data, config, device)
    steps_per_epoch = len(trainer.sampler)

    def timed(fn: Any) -> tuple[float, float]:
        """(wall, CPU) seconds of ``fn()``; CPU time is what a loaded machine distorts least."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    def epoch(steps: int) -> tuple[float, float]:
        trainer.config["max_steps_per_epoch"] = steps
        return timed(lambda: trainer.train_epoch(0))

    warmup_s, _ = epoch(min(2, steps_per_epoch))
    one = epoch(1)
    # --steps steps first; then, where a step is cheap against the epoch's own work (a GPU's
    # few milliseconds against the shuffle), enough steps for --min-seconds of them
    clock = 0 if device.type == "cuda" else 1  # wall time on a GPU, CPU time on the CPU
    many_steps = min(1 + args.steps, steps_per_epoch)
    many = epoch(many_steps)
    estimate = max((many[clock] - one[clock]) / max(1, many_steps - 1), 1e-4)
    wanted = min(1 + math.ceil(args.min_seconds / estimate), steps_per_epoch)
    if wanted > many_steps:
        many_steps, many = wanted, epoch(wanted)
    step = [(b - a) / max(1, many_steps - 1) for a, b in zip(one, many)]
    evaluator = trainer.valid_evaluator
    chunks = evaluator.num_chunks
    timed_chunks = chunks if args.eval_chunks == 0 else min(args.eval_chunks, chunks)
    if timed_chunks == chunks:  # the whole evaluation, as the trainer runs it
        eval_s, eval_cpu_s = timed(lambda: trainer.evaluate("valid"))
    else:  # the embedding pass, then user chunks of equal cost, extrapolated to all chunks
        model.eval()
        first = timed(lambda: model.full_scores(evaluator.users[:1]))  # caches the pass
        part = timed(lambda: evaluator.evaluate_chunks(model.full_scores, range(timed_chunks)))
        model.train()
        eval_s, eval_cpu_s = (a + b * chunks / timed_chunks for a, b in zip(first, part))
    stats = dataset.stats
    return {
        "model": args.model,
        "scale": args.scale,
        "users": stats["users"],
        "items": stats["items"],
        "interactions": stats["train"] + stats["valid"] + stats["test"],
        "train_interactions": stats["train"],
        "steps_per_epoch": steps_per_epoch,
        "steps_timed": many_steps - 1,
        "s_per_step": step[0],
        "cpu_s_per_step": step[1],
        "s_epoch_overhead": max(0.0, one[0] - step[0]),
        "cpu_s_epoch_overhead": max(0.0, one[1] - step[1]),
        "s_per_epoch": one[0] + (steps_per_epoch - 1) * step[0],
        "cpu_s_per_epoch": one[1] + (steps_per_epoch - 1) * step[1],
        "warmup_s": warmup_s,
        "eval_s": eval_s,
        "eval_cpu_s": eval_cpu_s,
        "valid_users": evaluator.num_users_evaluated,
        "eval_chunks_timed": timed_chunks,
        "eval_chunks": chunks,
        "load_s": load_s,
        "rss_after_load_mb": after_load,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_train_eval_mb": peak_mb() if peak_reset else None,
        "gpu_peak_mb": (
            torch.cuda.max_memory_allocated(device) / MB if device.type == "cuda" else None
        ),
        "compile": config["compile"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
    }


# ----- the driver -----
def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _run_child(argv: list[str], args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Run this script in a child process with ``argv``; kill it (by its id) when memory or
    time runs out. Returns its JSON result or ``{'error': ...}``."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--result", str(result)]
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        start, reason = time.monotonic(), None
        while child.poll() is None:
            time.sleep(0.5)
            if _available_mb() < args.min_available_mb:
                reason = f"killed: machine memory available < {args.min_available_mb} MB"
            elif time.monotonic() - start > args.timeout:
                reason = f"killed: over {args.timeout} s"
            if reason:
                child.kill()
                child.wait()
    if reason or child.returncode:
        return {"error": reason or f"exit {child.returncode}; see {log}"}
    return json.loads(result.read_text())


def _fit(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log10 y on log10 x (least squares); None with fewer than two points."""
    import numpy as np

    pairs = [(x, y) for x, y in zip(xs, ys) if y and y > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log10(np.array(pairs)).T
    return float(np.polyfit(x, y, 1)[0])


METRICS = {
    "cpu_s_per_step": "CPU s/step",
    "cpu_s_per_epoch": "CPU s/epoch (extrapolated)",
    "eval_cpu_s": "eval CPU s (valid users)",
    "peak_rss_train_eval_mb": "peak MB (train + eval)",
}
# on a GPU the host's CPU seconds only count launches: fit wall time and the GPU's peak memory
GPU_METRICS = {
    "s_per_step": "s/step",
    "s_per_epoch": "s/epoch (extrapolated)",
    "eval_s": "eval s (valid users)",
    "gpu_peak_mb": "GPU peak MB (train + eval)",
}


def metrics_of(rows: list[dict]) -> dict[str, str]:
    """The quantities to fit and plot: :data:`GPU_METRICS` when the rows ran on CUDA."""
    on_gpu = any(str(r.get("device", "")).startswith("cuda") for r in rows)
    return GPU_METRICS if on_gpu else METRICS


def report(rows: list[dict], prepared: list[dict], args: argparse.Namespace) -> dict:
    metrics = metrics_of(rows)
    on_gpu = metrics is GPU_METRICS
    fits = {
        model: {
            key: _fit(
                [r["interactions"] for r in rows if r.get("model") == model and key in r],
                [r[key] for r in rows if r.get("model") == model and key in r],
            )
            for key in metrics
        }
        for model in args.models
    }
    lines = [
        "| model | scale | users | items | interactions | steps/epoch | s/step (CPU) | "
        "epoch work CPU s | s/epoch extrap. (CPU) | eval s (CPU) | valid users | "
        "peak MB train+eval | peak MB process | load avg |" + (" GPU peak MB |" if on_gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else ""),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['scale']}x | {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['model']} | {r['scale']}x | {r['users']} | {r['items']} | "
            f"{r['interactions']} | {r['steps_per_epoch']} | "
            f"{r['s_per_step']:.3f} ({r['cpu_s_per_step']:.3f}) | "
            f"{r.get('cpu_s_epoch_overhead', r['s_epoch_overhead']):.2f} | "
            f"{r['s_per_epoch']:.0f} ({r['cpu_s_per_epoch']:.0f}) | "
            f"{r['eval_s']:.1f} ({r['eval_cpu_s']:.1f}) | {r['valid_users']} "
            f"({r['eval_chunks_timed']}/{r['eval_chunks']} chunks) | "
            f"{r['peak_rss_train_eval_mb'] or 0:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['loadavg_start']} -> {r['loadavg_end']} |"
            + (f" {r.get('gpu_peak_mb') or 0:.0f} |" if on_gpu else "")
        )
    lines += [
        "",
        "Slope of log cost on log interactions (1 = linear, 2 = quadratic):",
        "",
        "| model | " + " | ".join(metrics.values()) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for model, fit in fits.items():
        cells = " | ".join("-" if fit[k] is None else f"{fit[k]:.2f}" for k in metrics)
        lines.append(f"| {model} | {cells} |")
    lines += [
        "",
        "Preparation (generation, processing and kNN graphs, cached after the first run):",
        "",
        "| scale | generated now | dataset s (CPU) | kNN graphs s (CPU) | peak MB | disk MB |",
        "|---|---|---|---|---|---|",
    ]
    for p in prepared:
        if "error" in p:
            lines.append(f"| {p['scale']}x | {p['error']} | | | | |")
            continue
        lines.append(
            f"| {p['scale']}x | {p['generated']} | {p['dataset_s']:.0f} "
            f"({p.get('dataset_cpu_s', float('nan')):.0f}) | {p['graphs_s']:.0f} "
            f"({p.get('graphs_cpu_s', float('nan')):.0f}) | "
            f"{p['peak_rss_mb']:.0f} | {p['disk_mb']:.0f} |"
        )
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": rows,
        "prepare": prepared,
        "slopes": fits,
    }
    (out / "scale.md").write_text(table + "\n")
    (out / "scale.json").write_text(json.dumps(record, indent=1))
    _plot(rows, fits, args, out / "scale.png")
    print(table)
    return record


def _plot(rows: list[dict], fits: dict, args: argparse.Namespace, path: Path) -> None:
    from pyg_dhmrec.plots import MissingExtraError, pyplot

    try:
        plt = pyplot()
    except MissingExtraError as e:
        print(f"no plot: {e}")
        return
    metrics = metrics_of(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8))
    for ax, (key, title) in zip(axes, metrics.items()):
        for model in args.models:
            points = sorted(
                (r["interactions"], r[key]) for r in rows if r.get("model") == model and r.get(key)
            )
            if not points:
                continue
            slope = fits[model][key]
            label = model if slope is None else f"{model} (slope {slope:.2f})"
            ax.plot(*zip(*points), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="interactions", title=title)
        ax.legend(fontsize=8)
    fig.suptitle("cost against interactions, 1x-8x Amazon Sports' shape (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=20.0,
        help="time more steps than --steps until they take about this many CPU seconds",
    )
    parser.add_argument("--data-root", default="datasets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")
    parser.add_argument(
        "--eval-chunks",
        type=int,
        default=0,
        help="time this many chunks of eval_batch_size valid users and extrapolate (0: all)",
    )
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument("--min-available-mb", type=float, default=1536)
    parser.add_argument(
        "--memory-margin-mb",
        type=float,
        default=1024,
        help="each measurement may use the memory available at its start less this",
    )
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per process")
    parser.add_argument(
        "--prepare-jobs",
        type=int,
        default=1,
        help="prepare this many scales at once before measuring (1: each just before its rows)",
    )
    # internal: one child process
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the tables and plot from scale.json"
    )
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.report_only:
        record = json.loads((Path(args.out) / "scale.json").read_text())
        report(record["rows"], record["prepare"], args)
        return

    if args.result:  # a child: one preparation or one measurement
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        # CUDA reserves address space that RLIMIT_DATA would count: no cap on a GPU run
        on_gpu = args.device.startswith("cuda")
        limit = float("inf") if on_gpu else limit_memory(args.memory_margin_mb)
        try:
            record = prepare(args) if args.prepare else measure(args)
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            record = {
                "error": f"out of memory: over {limit:.0f} MB, the memory available at its start "
                f"less {args.memory_margin_mb:.0f} MB (peak {peak_mb():.0f} MB)"
            }
        Path(args.result).write_text(json.dumps(record))
        return

    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--data-root", args.data_root, "--device", args.device, "--models", *args.models]
    common += ["--steps", str(args.steps), "--eval-chunks", str(args.eval_chunks)]
    common += ["--min-seconds", str(args.min_seconds)]
    common += ["--compile"] if args.compile else []
    rows, prepared = [], []

    def prepare_one(scale: int) -> dict[str, Any]:
        log = logs / f"prepare-{scale}x.log"
        print(f"preparing {dataset_name(scale)} (log {log}) ...", flush=True)
        return {
            "scale": scale,
            **_run_child(["--prepare", "--scale", str(scale), *common], args, log),
        }

    ready = {}
    if args.prepare_jobs > 1:  # CPU-bound generation in parallel, measurements one at a time
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.prepare_jobs) as pool:
            ready = dict(zip(args.scales, pool.map(prepare_one, args.scales)))
    for scale in args.scales:
        p = ready[scale] if scale in ready else prepare_one(scale)
        prepared.append(p)
        if "error" in p:
            continue
        for model in args.models:
            log = logs / f"{model}-{scale}x.log"
            print(f"measuring {model} at {scale}x (log {log}) ...", flush=True)
            r = _run_child(["--model", model, "--scale", str(scale), *common], args, log)
            rows.append({"model": model, "scale": scale, **r})
            report(rows, prepared, args)  # after every row: a kill keeps what was measured
    report(rows, prepared, args)


if __name__ == "__main__":
    main()
