"""Command line: ``python run.py [--model M] [--dataset D] [--key value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyg_dhmrec.config import (
    CONFIG_DIR,
    ConfigError,
    available,
    available_datasets,
    load_config,
    load_yaml,
    parse_cli_overrides,
)
from pyg_dhmrec.data.dataset import load_dataset
from pyg_dhmrec.data.download import DownloadError
from pyg_dhmrec.data.mmrec_format import DataFormatError
from pyg_dhmrec.models import build_model, model_class, model_keys
from pyg_dhmrec.train import Trainer, resolve_device, save_results, seed_everything

log = logging.getLogger("pyg_dhmrec")

DEFAULT_MODEL = "dhmrec"
DEFAULT_DATASET = "synthetic"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Train and evaluate a multimodal recommender (MMRec protocol).",
        epilog="Any key of configs/overall.yaml or of the model's YAML can be overridden with "
        "--key value (e.g. --learning_rate 0.01 --topk [10,20]).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"one of {available('models')}")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"one of {available_datasets()}")
    parser.add_argument("--data-root", dest="data_root", help="folder of the dataset folders")
    parser.add_argument("--output", help="run folder for results.json and best.pt")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    return parser


def resolve_config(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    overrides = parse_cli_overrides(extra)
    for key in ("data_root", "output", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.quiet:
        overrides["progress"] = False
    config = load_config(args.model, args.dataset, overrides)
    model_class(args.model)  # unknown model -> clear error
    declared = set(load_yaml(CONFIG_DIR / "models" / f"{args.model}.yaml")) - {"per_dataset"}
    unused = declared - model_keys(args.model)
    if unused:
        raise ConfigError(
            f"configs/models/{args.model}.yaml: key(s) {', '.join(sorted(unused))} are not "
            f"arguments of the model; it takes {', '.join(sorted(model_keys(args.model)))}"
        )
    return config


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Load data, build the model, train, evaluate and save ``results.json``."""
    seed_everything(config["seed"])
    device = resolve_device(config["device"])
    t0 = time.perf_counter()
    dataset = load_dataset(config)
    log.info("%r loaded in %.1fs", dataset, time.perf_counter() - t0)
    cls = model_class(config["model"])
    if cls.uses_modalities:
        dataset.require_modalities()
    data = dataset[0]
    model = build_model(config["model"], data, config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s (%d parameters) on %s", config["model"], n_params, device)
    output = Path(
        config["output"]
        or f"runs/{config['model']}-{config['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    trainer = Trainer(model, data, config, device, output=output)
    results = trainer.fit()
    results["dataset_stats"] = dataset.stats
    path = save_results(results, output)
    log.info("results written to %s", path)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        config = resolve_config(args, extra)
        results = run(config)
    except (ConfigError, DataFormatError, FileNotFoundError, DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    test = {k: round(v, 4) for k, v in results["test"].items()}
    print(
        json.dumps(
            {
                "model": results["model"],
                "dataset": results["dataset"],
                "best_epoch": results["best_epoch"],
                "test": test,
            }
        )
    )
    return 0
