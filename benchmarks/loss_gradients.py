"""Gradient norm of every loss part on a model's embedding tables, on one training batch.

Shows which part steers training at initialisation (Adam follows the largest gradient per
coordinate), e.g. ``python benchmarks/loss_gradients.py --model siger --dataset tiktok
--data-root ../shared/data --cl_weight 0.1``. Extra ``--key value`` options go to the config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks._setup import add_run_arguments, build_run, probe_batch, run_overrides  # noqa: E402
from pyg_dhmrec.config import parse_cli_overrides  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, seed=0)
    args, extra = parser.parse_known_args()
    overrides = run_overrides(args, parse_cli_overrides(extra))
    config, data, model = build_run(args.model, args.dataset, overrides)
    model.train()
    model.on_train_epoch_start()
    parts = model.loss(probe_batch(config, data, model))
    tables = {n: p for n, p in model.named_parameters() if n.endswith("embedding.weight")}
    print("| part | value | " + " | ".join(tables) + " |")
    print("|---|---|" + "---|" * len(tables))
    for name, value in parts.items():
        grads = [None] * len(tables)
        if value.requires_grad:
            grads = torch.autograd.grad(
                value, list(tables.values()), retain_graph=True, allow_unused=True
            )
        norms = ["0" if g is None else f"{g.norm().item():.2e}" for g in grads]
        print(f"| {name} | {value.item():.4f} | " + " | ".join(norms) + " |")


if __name__ == "__main__":
    main()
