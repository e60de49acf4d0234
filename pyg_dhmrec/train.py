"""Training loop of the MMRec protocol: BPR batches, valid every epoch, early stopping, test."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from pyg_dhmrec.config import overall_defaults
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.data.sampler import BPRSampler
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models.base import Recommender

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PER_USER = "per_user_test.pt"


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed Python, numpy and torch (CPU and CUDA).

    On CPU it also selects torch's deterministic kernels: with several threads, the default
    accumulating index backward (``index_put_``) sums in a varying order, so two runs with one
    seed drifted apart by float rounding (seen with DHMRec on 2 threads).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device is None or device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def git_commit() -> str | None:
    """The checkout's short commit; ``PYG_DHMREC_COMMIT`` names it where there is no ``.git``."""
    if os.environ.get("PYG_DHMREC_COMMIT"):
        return os.environ["PYG_DHMREC_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Trainer:
    """Trains a :class:`Recommender` on a dataset graph and evaluates it by full ranking.

    Every epoch: the model's :meth:`~Recommender.on_train_epoch_start`, one pass of BPR
    batches (the sum of the model's loss parts is minimised with Adam), then, every
    ``eval_step`` epochs, valid metrics. The best epoch is the one with the highest valid
    ``early_stop_metric``; training stops after ``patience`` evaluations without a strict
    improvement. Test metrics are computed once, with the best epoch's parameters.

    ``config`` may be partial: the general keys it lacks take their ``configs/overall.yaml``
    defaults (logged); ``model`` and ``dataset`` label the results (default: the model's class
    name and ``"data"``).
    """

    def __init__(
        self,
        model: Recommender,
        data: HeteroData,
        config: Mapping[str, Any],
        device: torch.device,
        output: Path | None = None,
    ) -> None:
        self.config = complete_config(config, model)
        config = self.config
        self.device = device
        self.model = model.to(device)
        self.output = Path(output) if output else None
        store = data[RATES]
        num_users, num_items = model.num_users, model.num_items
        above = [k for k in config["topk"] if k > num_items]
        if above:  # checked here, before training, so a finished run never fails on it
            log.warning(
                "cut-off(s) %s above the %d items: all items are ranked for them (positions past "
                "the last item count as misses)",
                ", ".join(map(str, above)),
                num_items,
            )
        self.sampler = BPRSampler(
            store.edge_index, num_users, num_items, config["batch_size"], seed=config["seed"]
        )
        evaluator_args = dict(
            num_users=num_users,
            num_items=num_items,
            ks=config["topk"],
            metrics=config["metrics"],
            user_batch_size=config["eval_batch_size"],
        )
        self.valid_evaluator = FullRankEvaluator(
            store.edge_index, store.valid_edge_index, **evaluator_args
        )
        self.test_evaluator = FullRankEvaluator(
            store.edge_index, store.test_edge_index, **evaluator_args
        )
        metric = config["early_stop_metric"]
        known = [f"{m}@{k}" for m in config["metrics"] for k in config["topk"]]
        if metric not in known:
            raise ValueError(
                f"early_stop_metric {metric!r} is not computed; choose one of {', '.join(known)}"
            )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config["learning_rate"],
            weight_decay=config["weight_decay"],
        )
        self.history: list[dict[str, Any]] = []

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the train interactions; returns the mean of every loss part."""
        self.model.train()
        self.model.on_train_epoch_start()
        sums: dict[str, Tensor] = {}
        bar = tqdm(
            self.sampler,
            total=len(self.sampler),
            desc=f"epoch {epoch}",
            leave=False,
            # redirected stderr (a log file) would collect every carriage-return update
            disable=not self.config["progress"] or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        for batch in bar:
            parts = self.model.loss(batch.to(self.device))
            total = sum(parts.values())
            if not torch.isfinite(total):
                bad = [k for k, v in parts.items() if not torch.isfinite(v)]
                raise FloatingPointError(
                    f"epoch {epoch}: loss part(s) {', '.join(bad)} became NaN or inf"
                )
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            for k, v in parts.items():  # stays on the device: one sync per epoch, not per part
                sums[k] = sums.get(k, 0.0) + v.detach()
            bar.set_postfix(loss=f"{float(total.detach()):.4f}", refresh=False)
        return {k: float(v) / len(self.sampler) for k, v in sums.items()}

    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        evaluator = self.valid_evaluator if split == "valid" else self.test_evaluator
        result = evaluator.evaluate(self.model.full_scores)
        self.model.train()
        return result

    def _fresh_state(self) -> dict[str, Any]:
        """Early-stopping and bookkeeping state before the first epoch."""
        return {
            "epoch": 0,
            "best_value": -math.inf,
            "best_epoch": 0,
            "best_state": None,
            "best_valid": {},
            "bad_evals": 0,
            "train_times": [],
            "eval_times": [],
            "elapsed_s": 0.0,
        }

    def save_checkpoint(self, state: Mapping[str, Any]) -> Path | None:
        """Write the whole run state to ``<output>/checkpoint.pt`` atomically."""
        if not self.output:
            return None
        self.output.mkdir(parents=True, exist_ok=True)
        path = self.output / CHECKPOINT
        payload = {
            "version": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                # DegreeSensitiveEdgeDropout and dropout layers draw from torch's global RNG.
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "state": dict(state),
            "history": self.history,
        }
        tmp = path.with_name(f".{CHECKPOINT}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore a state written by :meth:`save_checkpoint`; :meth:`fit` continues from it."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as e:
            raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
        missing = {"model", "optimizer", "sampler", "rng", "state", "history"} - set(payload)
        if missing:
            raise ValueError(f"{path}: checkpoint lacks key(s) {', '.join(sorted(missing))}")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.sampler.load_state_dict(payload["sampler"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.history = list(payload["history"])
        self._resume_state = dict(payload["state"])
        log.info("resumed from %s after epoch %d", path, self._resume_state["epoch"])

    def fit(self) -> dict[str, Any]:
        """Train until early stopping or ``epochs``; return the results dictionary.

        After :meth:`load_checkpoint`, training continues from the epoch after the saved one.
        """
        cfg = self.config
        metric = cfg["early_stop_metric"]
        state = getattr(self, "_resume_state", None) or self._fresh_state()
        start = time.perf_counter() - state["elapsed_s"]
        epoch = state["epoch"]
        # A checkpoint saved at an early stop has nothing left to train.
        stopped = state["bad_evals"] >= cfg["patience"]
        first = cfg["epochs"] + 1 if stopped else state["epoch"] + 1
        for epoch in range(first, cfg["epochs"] + 1):
            t0 = time.perf_counter()
            try:
                losses = self.train_epoch(epoch)
            except FloatingPointError as e:
                kept = (
                    f"; the checkpoint of epoch {state['epoch']} is kept in "
                    f"{self.output / CHECKPOINT}"
                    if self.output and state["epoch"] > 0
                    else ""
                )
                raise FloatingPointError(f"{e}{kept}") from None
            state["train_times"].append(time.perf_counter() - t0)
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": losses,
                "train_s": state["train_times"][-1],
            }
            line = (
                f"epoch {epoch:4d} | "
                + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
                + f" | train {state['train_times'][-1]:.2f}s"
            )
            if epoch % cfg["eval_step"] == 0 or epoch == cfg["epochs"]:
                t0 = time.perf_counter()
                valid = self.evaluate("valid")
                state["eval_times"].append(time.perf_counter() - t0)
                record.update(valid=valid, eval_s=state["eval_times"][-1])
                improved = valid[metric] > state["best_value"]
                if improved:
                    state.update(best_value=valid[metric], best_epoch=epoch, best_valid=valid)
                    state["best_state"] = copy.deepcopy(self.model.state_dict())
                    state["bad_evals"] = 0
                else:
                    state["bad_evals"] += 1
                line += (
                    f" | eval {state['eval_times'][-1]:.2f}s | valid "
                    + " ".join(f"{k} {valid[k]:.4f}" for k in _headline(valid))
                    + (" *" if improved else "")
                )
            self.history.append(record)
            log.info(line)
            state["epoch"] = epoch
            state["elapsed_s"] = time.perf_counter() - start
            self.save_checkpoint(state)
            if state["bad_evals"] >= cfg["patience"]:
                log.info(
                    "early stop: no valid %s improvement in %d evaluations",
                    metric,
                    state["bad_evals"],
                )
                break
        epoch = state["epoch"]

        if state["best_state"] is not None:
            self.model.load_state_dict(state["best_state"])
        if self.output:
            self.output.mkdir(parents=True, exist_ok=True)
            torch.save(self.model.state_dict(), self.output / "best.pt")
        t0 = time.perf_counter()
        self.model.eval()
        test, per_user = self.test_evaluator.evaluate(self.model.full_scores, per_user=True)
        self.model.train()
        test_eval_s = time.perf_counter() - t0
        if self.output:
            save_per_user(self.test_evaluator.users, per_user, self.output)
        log.info(
            "%s on %s: best epoch %d | test %s",
            cfg["model"] + (f" + {cfg['plugin']}" if cfg.get("plugin") else ""),
            cfg["dataset"],
            state["best_epoch"],
            " ".join(f"{k} {test[k]:.4f}" for k in _headline(test)),
        )
        train_times, eval_times = state["train_times"], state["eval_times"]
        return {
            "model": cfg["model"],
            "plugin": cfg.get("plugin"),  # the objective wrapped around the model, or None
            "dataset": cfg["dataset"],
            "seed": cfg["seed"],
            "config": cfg,
            "best_epoch": state["best_epoch"],
            "epochs_run": epoch,
            "valid": state["best_valid"],
            "test": test,
            "timing": {
                "train_s_per_epoch": float(np.mean(train_times)) if train_times else 0.0,
                "eval_s": float(np.mean(eval_times)) if eval_times else test_eval_s,
                "test_eval_s": test_eval_s,
                "total_s": time.perf_counter() - start,
            },
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": (
                torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda"
                else None
            ),
            "environment": environment(self.device),
            "history": self.history,
        }


def complete_config(config: Mapping[str, Any], model: Recommender) -> dict[str, Any]:
    """``config`` with the general keys it lacks taken from ``configs/overall.yaml``."""
    defaults = overall_defaults()
    missing = [k for k in defaults if k not in config]
    if missing:  # a config from the CLI or fit() lacks none
        log.info("Trainer: defaults of configs/overall.yaml for %s", ", ".join(missing))
    out = {**defaults, **dict(config)}
    out.setdefault("model", type(model).__name__)
    out.setdefault("dataset", "data")
    return out


def save_per_user(users: Tensor, values: Mapping[str, Tensor], output: Path) -> Path:
    """Write ``per_user_test.pt``: the evaluated user ids and each metric per user (for t-tests)."""
    path = output / PER_USER
    tmp = path.with_name(f".{PER_USER}.tmp")
    torch.save({"users": users.clone(), **{k: v.clone() for k, v in values.items()}}, tmp)
    os.replace(tmp, path)
    return path


def _headline(metrics: Mapping[str, float]) -> list[str]:
    return [k for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20") if k in metrics]


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a result: versions, device, machine and commit."""
    import torch_geometric

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "git_commit": git_commit(),
    }


def save_results(results: Mapping[str, Any], output: Path) -> Path:
    """Write ``results.json`` atomically (write, then rename)."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / "results.json"
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)
    return path
