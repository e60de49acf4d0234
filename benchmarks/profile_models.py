"""Where each model's training step and evaluation spend their time: ``torch.profiler`` over a
few training steps and one valid evaluation of every registered model on one dataset.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/profile_models.py --dataset tiktok \\
        --data-root /work/shared/data --threads 1 --steps 5 --out runs/profile

Each model is built as ``run.py`` builds it (same configuration layers, ``--key value`` extras
go to every model) and trained through the trainer's own :meth:`Trainer.train_step`:
``--warmup`` steps unprofiled, then ``--steps`` profiled steps, then one profiled
:meth:`Trainer.evaluate` of the valid split. For each model the operators with the most self
CPU time are printed (``--top``; milliseconds per step and their share of the measured wall
time of a step; ``--shapes`` splits them by input shape) and saved as
``<out>/<model>-<dataset>.txt``; ``<out>/profile-<dataset>.json`` has every model's figures.
``--trace`` also writes a Chrome trace of the profiled training steps, with memory events, as
``<out>/<model>-<dataset>-train.trace.json`` (open in ``chrome://tracing`` or Perfetto).
``--threads`` sets ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` (one, by default: the
setting of the speed tables). Models that cannot run on the dataset (an ID-only dataset for a
multimodal model) are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered")
    parser.add_argument("--steps", type=int, default=5, help="profiled training steps")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    parser.add_argument("--threads", type=int, default=1, help="OMP and torch threads")
    parser.add_argument("--top", type=int, default=15, help="operators listed per phase")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    parser.add_argument("--trace", action="store_true", help="write Chrome traces of the steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/profile"))
    return parser.parse_known_args()


def op_table(events, per: int, wall_ms: float, top: int, shapes: bool) -> tuple[str, list]:
    """The ``top`` operators by self CPU time: a text table and its rows (self milliseconds and
    calls per one of ``per`` steps, and the share of ``wall_ms``, a step's wall time)."""
    averages = events.key_averages(group_by_input_shape=shapes)
    rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    in_ops = sum(e.self_cpu_time_total for e in averages) / 1e3 / per
    lines = [f"{'self ms':>9} {'% wall':>7} {'calls':>6}  operator"]
    out = []
    for e in rows[:top]:
        ms = e.self_cpu_time_total / 1e3 / per
        shape = f"  {e.input_shapes}" if shapes and e.input_shapes else ""
        calls = e.count / per
        lines.append(f"{ms:9.2f} {100 * ms / wall_ms:6.1f}% {calls:6.0f}  {e.key}{shape}")
        out.append({"op": e.key, "self_ms": ms, "pct_wall": 100 * ms / wall_ms, "calls": calls})
    lines.append(f"{in_ops:9.2f} {100 * in_ops / wall_ms:6.1f}%         all operators (self)")
    return "\n".join(lines), out


def main() -> int:
    args, extra = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its thread pool
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks._setup import load_run, run_config
    from pyg_dhmrec.config import parse_cli_overrides
    from pyg_dhmrec.models import MODELS
    from pyg_dhmrec.train import Trainer, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    overrides = parse_cli_overrides(extra)
    if args.data_root:
        overrides["data_root"] = args.data_root
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name in args.models or sorted(MODELS):
        config = run_config(name, args.dataset, overrides)
        try:
            data, model = load_run(config, device)
        except (ValueError, FileNotFoundError) as e:
            print(f"== {name}: skipped ({e})", flush=True)
            continue
        trainer = Trainer(model, data, config, device)
        model.train()
        model.on_train_epoch_start()
        batches = iter(trainer.sampler)
        for _ in range(args.warmup):
            trainer.train_step(next(batches).to(device))
        steps = [next(batches).to(device) for _ in range(args.steps)]
        sync()
        with profile(
            activities=activities, record_shapes=args.shapes, profile_memory=args.trace
        ) as train_prof:
            t0 = time.perf_counter()
            for batch in steps:
                trainer.train_step(batch)
            sync()
            step_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        if args.trace:
            train_prof.export_chrome_trace(
                str(args.out / f"{name}-{args.dataset}-train.trace.json")
            )
        trainer.evaluate("valid")  # warm: the first evaluation builds caches
        with profile(activities=activities, record_shapes=args.shapes) as eval_prof:
            t0 = time.perf_counter()
            trainer.evaluate("valid")
            sync()
            eval_ms = (time.perf_counter() - t0) * 1e3
        train_text, train_rows = op_table(train_prof, args.steps, step_ms, args.top, args.shapes)
        eval_text, eval_rows = op_table(eval_prof, 1, eval_ms, args.top, args.shapes)
        threads = torch.get_num_threads()
        text = (
            f"== {name} on {args.dataset} ({device}, {threads} threads, batch "
            f"{config['batch_size']}): train step {step_ms:.1f} ms (mean of {args.steps}), "
            f"valid evaluation {eval_ms:.1f} ms\n-- training step, by self CPU time\n"
            f"{train_text}\n-- valid evaluation, by self CPU time\n{eval_text}\n"
        )
        print(text, flush=True)
        (args.out / f"{name}-{args.dataset}.txt").write_text(text, encoding="utf-8")
        summary[name] = {
            "step_ms": step_ms,
            "eval_ms": eval_ms,
            "threads": threads,
            "train_ops": train_rows,
            "eval_ops": eval_rows,
        }
        (args.out / f"profile-{args.dataset}.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
