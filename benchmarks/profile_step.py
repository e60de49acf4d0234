"""Where one training step of a model spends its time: ``torch.profiler`` over a few steps.

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --model dhmrec --dataset tiktok \
        --data-root /work/shared/data [--steps 5] [--top 25] [--key value ...]

Builds the model as ``run.py`` does (same configuration layers; extra ``--key value`` options
go to the config), draws an epoch's pruned / learned graphs, runs one warm-up step and then
``--steps`` steps (forward, loss, backward, Adam) of the first batches under the profiler. Prints
the mean wall time of a step and the operators with the largest self CPU time (forward and
backward operators separately, as autograd names them), and, with ``--trace``, writes a Chrome
trace. Times on a shared machine vary; compare the shares within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from pyg_dhmrec.config import load_config, parse_cli_overrides  # noqa: E402
from pyg_dhmrec.data.dataset import RATES, load_dataset  # noqa: E402
from pyg_dhmrec.data.sampler import BPRSampler  # noqa: E402
from pyg_dhmrec.models import build_model  # noqa: E402
from pyg_dhmrec.train import seed_everything  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default="datasets")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--trace", help="write a Chrome trace to this path")
    args, extra = parser.parse_known_args()
    overrides = {"data_root": args.data_root, "progress": False, **parse_cli_overrides(extra)}
    config = load_config(args.model, args.dataset, overrides)
    data = load_dataset(config)[0]
    seed_everything(args.seed)
    model = build_model(args.model, data, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    sampler = BPRSampler(
        data[RATES].edge_index, model.num_users, model.num_items, config["batch_size"], args.seed
    )
    model.train()
    model.on_train_epoch_start()
    batches = iter(sampler)

    def step() -> None:
        batch = next(batches)
        with record_function("forward"):
            out = model()
        with record_function("loss"):
            total = sum(model.loss(batch, out).values())
        optimizer.zero_grad(set_to_none=True)
        with record_function("backward"):
            total.backward()
        with record_function("optimizer"):
            optimizer.step()

    step()  # warm-up: lazy caches, allocator
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - start) / args.steps
    print(
        f"{args.model} on {args.dataset}: {seconds * 1000:.0f} ms per step under the profiler "
        f"({torch.get_num_threads()} threads, {len(sampler)} steps an epoch)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
