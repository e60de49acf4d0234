"""Training loop of the MMRec protocol: BPR batches, valid every epoch, early stopping, test."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from pyg_dhmrec.atomic_files import (
    DamagedFile,
    WriteFailed,
    ensure_folder,
    read_torch_checked,
    write_json,
    write_torch,
    write_torch_checked,
)
from pyg_dhmrec.config import DEVICE_RE, MATMUL_PRECISIONS, overall_defaults
from pyg_dhmrec.data.dataset import RATES, check_interaction_graph
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.distributed import (
    Dist,
    DistributedError,
    LossStep,
    ShardedBPRSampler,
    peer_failure,
    sharded_evaluate,
)
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models.base import Recommender
from pyg_dhmrec.optim import adam

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 2  # 2: sha256 header line, early stopping as EarlyStopping.state_dict()
CHECKPOINT_KIND = "checkpoint"  # header word of checkpoint.pt
BEST = "best.pt"
RESULTS = "results.json"
PER_USER = "per_user_test.pt"
RUN_FILES = (CHECKPOINT, BEST, RESULTS, PER_USER)  # the files Trainer writes into its folder
PROGRESS_EVERY = 20  # batches between progress-bar loss readings (each waits for the device)


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed Python, numpy and torch (CPU and CUDA).

    On CPU it also selects torch's deterministic kernels: with several threads, the default
    accumulating index backward (``index_put_``) sums in a varying order, so two runs with one
    seed drifted apart by float rounding (seen with DHMRec on 2 threads). Without torch's
    companion setting that fills every new uninitialised tensor with NaN: a debugging aid that
    changes no result of correct code but costs a pass over each fresh tensor (on TikTok about
    a tenth of an LGMRec step and of an evaluation's time).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device is None or device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def resolve_device(name: str) -> torch.device:
    if not isinstance(name, str) or not DEVICE_RE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
            "device(s), indices from 0"
        )
    return device


def set_matmul_precision(precision: str) -> None:
    """``torch.set_float32_matmul_precision``: ``highest`` (float32), ``high`` (TF32 on CUDA
    Ampere+) or ``medium`` (bfloat16 on CUDA; on CPU, oneDNN uses either only where the CPU
    has the instructions). Process-wide: every Trainer sets it from its config."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {precision!r}"
        )
    if precision != torch.get_float32_matmul_precision():
        log.info("float32 matmul precision: %s", precision)
    torch.set_float32_matmul_precision(precision)


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on CPU (``$CXX``, else g++, clang++ or c++ on
    ``PATH``), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((path for path in map(shutil.which, names) if path), None)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean torch.compile itself failed (not the model's code)."""
    found = []
    for module, name in (
        ("torch._dynamo.exc", "BackendCompilerFailed"),
        ("torch._inductor.exc", "InductorError"),
        ("torch._inductor.exc", "CppCompileError"),
    ):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


#: torch.compile backend of ``compile: true`` (tests switch to ``aot_eager``: traced, not
#: code-generated, so seconds instead of a minute of C++ compilation).
COMPILE_BACKEND = "inductor"


class CompiledStep:
    """A training step under ``torch.compile`` (config ``compile: true``).

    TorchInductor compiles the step on its first calls (and once more for a batch of another
    size, the epoch's last); what it cannot trace (sparse CSR products, the models' Python
    checks) runs eagerly between compiled graphs, with the same values. Refused up front, with
    the reason, where torch.compile cannot run (Python/torch without Dynamo; CPU without a C++
    compiler); a compiler failure on the first steps is raised naming the fix,
    ``compile: false``.

    Args:
        step: the eager step (``LossStep`` or its DDP wrapper).
        device: where the step runs (CPU needs a C++ compiler).
        backend: ``torch.compile`` backend (name or callable); None: :data:`COMPILE_BACKEND`.
    """

    def __init__(self, step: torch.nn.Module, device: torch.device, backend: Any = None) -> None:
        backend = COMPILE_BACKEND if backend is None else backend
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError(
                f"compile: true needs torch.compile, which torch {torch.__version__} does not "
                f"support on Python {platform.python_version()}; set compile: false"
            )
        if backend == "inductor" and device.type == "cpu" and cpp_compiler() is None:
            raise RuntimeError(
                "compile: true on CPU needs a C++ compiler for TorchInductor's kernels and none "
                "was found (set CXX or put g++ or clang++ on PATH); set compile: false to "
                "train eagerly"
            )
        self.step = step
        self.compiled = torch.compile(step, backend=backend)
        log.info("compile: the training step runs under torch.compile (backend %s)", backend)

    def __call__(self, batch: Any) -> dict[str, Tensor]:
        try:
            return self.compiled(batch)
        except _compile_errors() as e:
            first = str(e).strip().splitlines()[:1]
            raise RuntimeError(
                f"torch.compile of the training step failed ({type(e).__name__}: "
                f"{' '.join(first)}); set compile: false to train eagerly"
            ) from e


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


@functools.cache
def git_commit() -> str | None:
    """The checkout's short commit when this process imported the library (a long grid records
    the code it runs, not a later checkout); ``PYG_DHMREC_COMMIT`` names it where there is no
    ``.git``."""
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


git_commit()  # read at import: the code in memory


class EarlyStopping:
    """Early stopping on a valid metric: the best value, its epoch, metrics and parameters, and
    a stop after ``patience`` evaluations without a strict improvement.

    ``state_dict`` / ``load_state_dict`` carry it through checkpoints.
    """

    def __init__(self, metric: str, patience: int) -> None:
        self.metric = metric
        self.patience = patience
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, Tensor] | None = None
        self.bad_evals = 0

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def step(self, epoch: int, metrics: Mapping[str, float], model: torch.nn.Module) -> bool:
        """Record one evaluation; keep a copy of ``model``'s parameters when it improved."""
        improved = metrics[self.metric] > self.best_value
        if improved:
            self.best_value, self.best_epoch = metrics[self.metric], epoch
            self.best_metrics = dict(metrics)
            self.best_state = copy.deepcopy(model.state_dict())
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["metric"] != self.metric:
            raise ValueError(
                f"early stopping monitored {state['metric']!r}, this run monitors {self.metric!r}"
            )
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_metrics = dict(state["best_metrics"])
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, foreign or does not fit the run."""


def model_class_name(model: torch.nn.Module) -> str:
    """``LightGCN``, or ``MRdIB(LightGCN)`` for a plug-in around a model: what a checkpoint's
    parameters belong to (two models may share parameter names and shapes)."""
    base = getattr(model, "base", None)
    name = type(model).__name__
    return f"{name}({model_class_name(base)})" if isinstance(base, torch.nn.Module) else name


def write_checkpoint(path: Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` of ``payload`` behind a header line holding its sha256, atomically."""
    return write_torch_checked(path, dict(payload), CHECKPOINT_KIND)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a file written by :func:`write_checkpoint`, its checksum verified."""
    try:
        payload = read_torch_checked(path, CHECKPOINT_KIND)
    except DamagedFile as e:
        raise CheckpointError(f"{e}; it cannot be resumed from") from None
    version = payload.get("version") if isinstance(payload, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: a checkpoint of layout version {version}, this pyg_dhmrec reads version "
            f"{CHECKPOINT_VERSION}; resume it with the pyg_dhmrec that wrote it, or start a new "
            "run in another folder"
        )
    keys = {"model", "optimizer", "sampler", "rng", "progress", "early_stopping", "history"}
    missing = keys - set(payload)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks key(s) {', '.join(sorted(missing))}")
    return payload


class Trainer:
    """Trains a :class:`Recommender` on a dataset graph and evaluates it by full ranking.

    Every epoch: the model's own phase (:meth:`~Recommender.train_phase`, with the phase
    optimiser of :meth:`~Recommender.phase_optimizer`, for models that have one), its
    :meth:`~Recommender.on_train_epoch_start`, one pass of BPR
    batches (per batch one :meth:`~Recommender.forward` pass, whose output the model's
    :meth:`~Recommender.loss` reads; the sum of the loss parts is minimised with Adam over
    every parameter but :meth:`~Recommender.phase_parameters`, whose step size follows
    ``learning_rate_scheduler``, stepped after each epoch's training), then, every
    ``eval_step`` epochs, valid metrics. The best epoch is the one with the highest valid
    ``early_stop_metric``; training stops after ``patience`` evaluations without a strict
    improvement. Test metrics are computed once, with the best epoch's parameters.

    ``config`` may be partial: the general keys it lacks take their ``configs/overall.yaml``
    defaults (logged); ``model`` and ``dataset`` label the results (default: the model's class
    name and ``"data"``).

    With ``dist`` (several ranks, :mod:`pyg_dhmrec.distributed`), each rank trains on its
    shard of every batch through DDP, evaluates its share of the users, and rank 0 alone
    writes files; the checkpoint holds every rank's sampler and RNG states.

    ``data_fingerprint`` (e.g. :meth:`~pyg_dhmrec.data.MMRecDataset.fingerprint`) is saved in
    the checkpoint, and :meth:`load_checkpoint` refuses a checkpoint saved with another one:
    a run is never resumed on data files that changed under it.
    """

    def __init__(
        self,
        model: Recommender,
        data: HeteroData,
        config: Mapping[str, Any],
        device: torch.device,
        output: Path | None = None,
        dist: Dist | None = None,
        data_fingerprint: str | None = None,
    ) -> None:
        self.data_fingerprint = data_fingerprint
        self.config = complete_config(config, model)
        config = self.config
        self.device = device
        self.model = model.to(device)
        self.dist = dist
        self.is_main = dist is None or dist.is_main  # the rank that writes files and logs
        self.output = Path(output) if output and self.is_main else None
        check_interaction_graph(data, features=False)  # the model's constructor checked them
        store = data[RATES]
        num_users, num_items = model.num_users, model.num_items
        if (data["user"].num_nodes, data["item"].num_nodes) != (num_users, num_items):
            raise ValueError(
                f"the model was built for {num_users} users and {num_items} items, the data "
                f"has {data['user'].num_nodes} and {data['item'].num_nodes}; build the model "
                "on the data it trains on"
            )
        if self.output is not None:  # refused now, not at the first checkpoint
            ensure_folder(self.output, "output")
        above = [k for k in config["topk"] if k > num_items]
        if above:  # checked here, before training, so a finished run never fails on it
            log.warning(
                "cut-off(s) %s above the %d items: all items are ranked for them (positions past "
                "the last item count as misses)",
                ", ".join(map(str, above)),
                num_items,
            )
        args = (store.edge_index, num_users, num_items, config["batch_size"])
        negatives = config["negative_items"]
        if dist is None:
            self.sampler = BPRSampler(*args, seed=config["seed"], negative_items=negatives)
        else:
            self.sampler = ShardedBPRSampler(
                *args,
                seed=config["seed"],
                rank=dist.rank,
                world_size=dist.world_size,
                negative_items=negatives,
            )
        # the model's own phase: its parameters, trained by its optimiser only
        self.phase_params = list(self.model.phase_parameters())
        self.phase_optimizer = self._build_phase_optimizer()
        # one step's forward: the full-graph pass and the loss parts (in DDP with several ranks)
        step = LossStep(self.model)
        self.step = step if dist is None else dist.wrap(step, ignore=self.phase_params)
        set_matmul_precision(config["matmul_precision"])
        if config["compile"]:
            self.step = CompiledStep(self.step, device)
        evaluator_args = dict(
            num_users=num_users,
            num_items=num_items,
            ks=config["topk"],
            metrics=config["metrics"],
            user_batch_size=config["eval_batch_size"],
        )
        for code, split in ((1, "valid"), (2, "test")):
            if store[f"{split}_edge_index"].size(1) == 0:
                raise ValueError(
                    f"dataset {config['dataset']!r} has no {split} interaction (x_label {code}) "
                    "of a user with train interactions; early stopping selects the epoch on "
                    "valid and the run reports test, so both splits are needed"
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
        phase_ids = {id(p) for p in self.phase_params}
        self.optimizer = adam(
            [p for p in self.model.parameters() if id(p) not in phase_ids],
            lr=config["learning_rate"],
            weight_decay=config["weight_decay"],
        )
        self.scheduler = learning_rate_scheduler(
            self.optimizer, config.get("learning_rate_scheduler")
        )
        self.history: list[dict[str, Any]] = []
        self.early_stopping = EarlyStopping(metric, config["patience"])
        self.epoch = 0  # last finished epoch
        self._saved_epoch = 0  # the epoch checkpoint.pt holds (0: none)
        self._created, self._swept = time.time(), False  # see _remove_stale_temporaries
        self.train_times: list[float] = []
        # CPU seconds of this process per epoch: steadier than wall time on a shared machine
        self.train_cpu_times: list[float] = []
        self.eval_times: list[float] = []
        self.elapsed_s = 0.0  # training time before this process (resumed runs)

    def _build_phase_optimizer(self) -> torch.optim.Optimizer | None:
        """The model's phase optimiser, checked to step exactly its phase parameters."""
        optimizer = self.model.phase_optimizer()
        name = type(self.model).__name__
        if not self.phase_params:
            if optimizer is not None:
                raise ValueError(
                    f"{name}.phase_optimizer() gave an optimiser, but "
                    f"{name}.phase_parameters() is empty"
                )
            return None
        if optimizer is None:
            raise ValueError(
                f"{name}.phase_parameters() names {len(self.phase_params)} parameter(s), but "
                f"{name}.phase_optimizer() gave no optimiser"
            )
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if stepped != {id(p) for p in self.phase_params}:
            raise ValueError(
                f"{name}.phase_optimizer() must step exactly {name}.phase_parameters()"
            )
        return optimizer

    def train_phase(self, epoch: int) -> dict[str, float]:
        """The model's own phase of ``epoch`` (none: ``{}``); its mean losses, checked finite."""
        if self.phase_optimizer is None:
            return {}
        losses = {
            k: float(v) for k, v in self.model.train_phase(epoch, self.phase_optimizer).items()
        }
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"epoch {epoch}: phase loss part(s) {', '.join(bad)} became NaN or inf"
            )
        return losses

    def train_step(self, batch: BPRBatch) -> dict[str, Tensor]:
        """One optimiser step on ``batch`` (on the model's device); its loss parts, detached.

        Nothing in it waits for the device: the loss parts stay where they were computed. A
        non-finite loss raises :class:`FloatingPointError` before the update when the step ran
        on the CPU (where reading the value costs nothing); on an accelerator
        :meth:`train_epoch` checks the epoch's sums instead.
        """
        # one embedding pass per step (or the rows the batch reads), shared by every loss part
        parts = self.step(batch)
        total = sum(parts.values())
        if total.device.type == "cpu" and not torch.isfinite(total):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"loss part(s) {', '.join(bad)} became NaN or inf")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {k: v.detach() for k, v in parts.items()}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """The model's phase and one pass over the train interactions (its first
        ``max_steps_per_epoch`` batches when that is set); returns the mean of every loss part
        over the batches run (the phase's as ``phase_<name>``)."""
        self.model.train()
        if self.dist:
            self.dist.sync_rng()  # phase, per-epoch graphs, forward() dropout: same on every rank
        phase = self.train_phase(epoch)
        self.model.on_train_epoch_start()
        sums: dict[str, Tensor] = {}
        steps = len(self.sampler)
        if self.config.get("max_steps_per_epoch") is not None:  # a benchmark's short epoch
            steps = min(steps, self.config["max_steps_per_epoch"])
        bar = tqdm(
            itertools.islice(self.sampler, steps),
            total=steps,
            desc=f"epoch {epoch}",
            leave=False,
            # redirected stderr (a log file) would collect every carriage-return update
            disable=not (self.config["progress"] and self.is_main) or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )
        # pinned host batches copy to an accelerator without waiting for its queue
        pin = self.device.type == "cuda"
        for step, batch in enumerate(bar):
            batch = batch.pin_memory() if pin else batch
            try:
                parts = self.train_step(batch.to(self.device, non_blocking=pin))
            except FloatingPointError as e:
                raise FloatingPointError(f"epoch {epoch}: {e}") from None
            for k, v in parts.items():  # stays on the device: one sync per epoch, not per part
                sums[k] = sums.get(k, 0.0) + v
            if not bar.disable and step % PROGRESS_EVERY == 0:  # reading the loss waits
                bar.set_postfix(loss=f"{float(sum(parts.values())):.4f}", refresh=False)
        if self.dist:  # the logged loss parts: means over the ranks' shards
            sums = self.dist.mean(sums)
        bad = [k for k, v in sums.items() if not torch.isfinite(v)]
        if bad:  # a non-finite step leaves its part's sum non-finite (the accelerator's check)
            raise FloatingPointError(
                f"epoch {epoch}: loss part(s) {', '.join(bad)} became NaN or inf"
            )
        # a finite loss can still take a step to inf (learning_rate 1e308): ranking would be NaN
        names, params = zip(*self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params]).tolist()  # one sync
        broken = [n for n, ok in zip(names, finite) if not ok]
        if broken:
            more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            raise FloatingPointError(
                f"epoch {epoch}: parameter(s) {', '.join(broken[:3])}{more} became NaN or inf "
                f"in the optimizer's steps (learning_rate {self.config['learning_rate']}, "
                f"weight_decay {self.config['weight_decay']}): lower them"
            )
        losses = {k: float(v) / steps for k, v in sums.items()}
        return {**losses, **{f"phase_{k}": v for k, v in phase.items()}}

    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        evaluator = self.valid_evaluator if split == "valid" else self.test_evaluator
        result = self._evaluate(evaluator)
        self.model.train()
        return result

    def _evaluate(self, evaluator: FullRankEvaluator, per_user: bool = False) -> Any:
        """Full-ranking metrics of the model in eval mode (users shared by the ranks)."""
        if self.dist:
            return sharded_evaluate(evaluator, self.model.full_scores, self.dist, per_user)
        return evaluator.evaluate(self.model.full_scores, per_user=per_user)

    # ----- checkpoints -----
    def save_checkpoint(self) -> Path | None:
        """Write the whole run state to ``<output>/checkpoint.pt`` atomically, with a checksum.

        A kill mid-write leaves the previous checkpoint intact; a file damaged later is refused
        by :meth:`load_checkpoint`. With several ranks, every rank's sampler and RNG states are
        gathered to rank 0 (``ranks``, with ``world_size``), which writes the file.
        """
        state = self._rank_state()
        ranks = self.dist.all_gather_object(state) if self.dist else None
        if not self.output:
            return None
        payload = {
            "version": CHECKPOINT_VERSION,
            "model_class": model_class_name(self.model),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "phase_optimizer": (
                self.phase_optimizer.state_dict() if self.phase_optimizer is not None else None
            ),
            **state,  # rank 0's
            "progress": {
                "epoch": self.epoch,
                "train_times": self.train_times,
                "train_cpu_times": self.train_cpu_times,
                "eval_times": self.eval_times,
                "elapsed_s": self.elapsed_s,
            },
            "early_stopping": self.early_stopping.state_dict(),
            "history": self.history,
            "data_fingerprint": self.data_fingerprint,
            # a resume elsewhere rounds sums in another order: load_checkpoint warns
            "arithmetic": _arithmetic(self.device),
        }
        if ranks is not None:
            payload.update(world_size=self.dist.world_size, ranks=ranks)
        if not self._swept:
            self._remove_stale_temporaries()
        try:
            written = write_checkpoint(self.output / CHECKPOINT, payload)
        except WriteFailed as e:
            raise WriteFailed(
                e.path,
                e.error,
                f"{self._kept_checkpoint()}; {e.remedy} and "
                + (f"continue with --resume {self.output}" if self._saved_epoch else "run again"),
            ) from None
        self._saved_epoch = self.epoch
        return written

    def _remove_stale_temporaries(self) -> None:
        """Remove the temporary files of a run killed mid-write (each as large as the file it
        was to replace); only those older than this trainer, so no live writer's."""
        self._swept = True
        for name in RUN_FILES:
            for tmp in self.output.glob(f".{name}.*.tmp"):
                try:
                    if tmp.stat().st_mtime < self._created:
                        tmp.unlink()
                        log.info("removed %s, left by a run killed while writing it", tmp)
                except OSError:  # gone meanwhile, or not ours to remove: harmless
                    continue

    def _kept_checkpoint(self) -> str:
        """What the run folder holds to continue from, for an error message."""
        if not self._saved_epoch:
            return "no epoch was saved yet"
        return f"the checkpoint of epoch {self._saved_epoch} is kept in {self.output / CHECKPOINT}"

    def _rank_state(self) -> dict[str, Any]:
        """This process's sampler and RNG states."""
        return {
            "sampler": self.sampler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                # DegreeSensitiveEdgeDropout and dropout layers draw from torch's global RNG.
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore a state written by :meth:`save_checkpoint`; :meth:`fit` continues from it.

        Raises :class:`CheckpointError` (naming the file) for a damaged or foreign file and for
        parameters that do not fit this model.
        """
        payload = read_checkpoint(path)
        saved = payload.get("data_fingerprint")  # None: no fingerprint given, or an older file
        if None not in (saved, self.data_fingerprint) and saved != self.data_fingerprint:
            raise CheckpointError(
                f"{path}: saved while training on other data: the files of dataset "
                f"{self.config['dataset']!r} changed since (fingerprint {saved}, now "
                f"{self.data_fingerprint}); restore them to resume, or start a new run in "
                "another folder"
            )
        world_size = self.dist.world_size if self.dist else 1
        saved_world = payload.get("world_size", 1)
        if saved_world != world_size:
            how = (
                "resume in one process: run.py --resume without torchrun"
                if saved_world == 1
                else f"resume with the same number of ranks (torchrun --nnodes x "
                f"--nproc-per-node = {saved_world})"
            )
            raise CheckpointError(
                f"{path}: written by {saved_world} process(es), this run has {world_size}; {how}"
            )
        saved_class, built = payload.get("model_class"), model_class_name(self.model)
        if saved_class is not None and saved_class != built:  # None: written before the key
            raise CheckpointError(
                f"{path}: saved by a {saved_class} model, and the run's config.json now builds "
                f"{built}; resume with the model it was saved by, or start a new run"
            )
        own = payload["ranks"][self.dist.rank] if self.dist else payload
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(payload["scheduler"])
            if self.phase_optimizer is not None:
                phase_state = payload.get("phase_optimizer")
                if phase_state is None:
                    raise ValueError("no phase optimizer state, the model has a phase")
                self.phase_optimizer.load_state_dict(phase_state)
            self.sampler.load_state_dict(own["sampler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()
            raise CheckpointError(
                f"{path}: does not fit the model and optimizer built from the run's config.json "
                f"({' '.join(line.strip() for line in first[:3])})"
            ) from None
        try:
            rng = own["rng"]
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            progress = payload["progress"]
            self.epoch = self._saved_epoch = int(progress["epoch"])
            self.train_times = list(progress["train_times"])
            self.train_cpu_times = list(progress.get("train_cpu_times", []))  # older checkpoints
            self.eval_times = list(progress["eval_times"])
            self.elapsed_s = float(progress["elapsed_s"])
            self.early_stopping.load_state_dict(payload["early_stopping"])
            self.history = list(payload["history"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path}: its run state does not fit the run's config.json ({reason}); resume "
                "with the config.json it was saved with, or start a new run in another folder"
            ) from None
        self._warn_other_arithmetic(path, payload.get("arithmetic"))
        log.info("resumed from %s after epoch %d", path, self.epoch)

    def _warn_other_arithmetic(self, path: Path, saved: Mapping[str, Any] | None) -> None:
        """Warn when the checkpoint was saved on another kind of device or thread count: the
        run continues, but its sums round differently from an uninterrupted run's."""
        now = _arithmetic(self.device)
        if not self.is_main or not isinstance(saved, Mapping) or dict(saved) == now:
            return  # None: an older checkpoint
        log.warning(
            "%s: saved on %s, resumed on %s: floating-point sums round in another order, so "
            "the results can differ from an uninterrupted run's (resume with the saved "
            "device and OMP_NUM_THREADS to repeat it exactly)",
            path,
            _describe_arithmetic(saved),
            _describe_arithmetic(now),
        )

    def _extreme_settings(self) -> str:
        """The run's number settings far from 1 (outside [1e-6, 1e6] in size), where a NaN loss
        usually starts (a temperature of 1e-300 overflows the exp of a contrastive term)."""
        extreme = [
            f"{k} {v:g}"
            for k, v in sorted(self.config.items())
            if isinstance(v, float) and v != 0 and not 1e-6 <= abs(v) <= 1e6
        ]
        return f" (settings far from 1: {', '.join(extreme)})" if extreme else ""

    # ----- the loop -----
    def _train_step(self, epoch: int) -> tuple[dict[str, Any], str]:
        """Train one epoch; its history record and log line."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            losses = self.train_epoch(epoch)
        except FloatingPointError as e:
            kept = (
                f"; the checkpoint of epoch {self.epoch} is kept in {self.output / CHECKPOINT}"
                if self.output and self.epoch > 0
                else ""
            )
            raise FloatingPointError(f"{e}{self._extreme_settings()}{kept}") from None
        self.train_times.append(time.perf_counter() - t0)
        self.train_cpu_times.append(time.process_time() - cpu0)
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": losses,
            "train_s": self.train_times[-1],
            "train_cpu_s": self.train_cpu_times[-1],
        }
        if self.scheduler is not None:
            self.scheduler.step()  # once per epoch, after its training, as MMRec's trainer
            record["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        line = (
            f"epoch {epoch:4d} | "
            + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            + f" | train {self.train_times[-1]:.2f}s"
        )
        return record, line

    def validate(self, epoch: int, record: dict[str, Any]) -> str:
        """Valid metrics of ``epoch`` into ``record`` and early stopping; the log line's part."""
        t0 = time.perf_counter()
        valid = self.evaluate("valid")
        self.eval_times.append(time.perf_counter() - t0)
        record.update(valid=valid, eval_s=self.eval_times[-1])
        improved = self.early_stopping.step(epoch, valid, self.model)
        return (
            f" | eval {self.eval_times[-1]:.2f}s | valid "
            + " ".join(f"{k} {valid[k]:.4f}" for k in _headline(valid, self.early_stopping.metric))
            + (" *" if improved else "")
        )

    def fit(self) -> dict[str, Any]:
        """Train until early stopping or ``epochs``; return the results dictionary.

        After :meth:`load_checkpoint`, training continues from the epoch after the saved one.
        With several ranks, a collective broken by another rank's death raises
        :class:`~pyg_dhmrec.distributed.DistributedError` (an ``error:`` line, no traceback).
        """
        try:
            return self._fit()
        except RuntimeError as e:
            lost = peer_failure(e) if self.dist else None
            if lost is None:
                raise
            kept = (
                f"{self._kept_checkpoint()}: continue with torchrun ... run.py --resume "
                f"{self.output}"
                if self.is_main
                else "rank 0 keeps the last checkpoint"
            )
            raise DistributedError(
                f"rank {self.dist.rank}: a collective with the other ranks failed ({lost}); "
                f"another rank stopped or lost contact (its own output says why); {kept}"
            ) from None

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter() - self.elapsed_s
        # A checkpoint saved at an early stop has nothing left to train.
        first = cfg["epochs"] + 1 if self.early_stopping.should_stop else self.epoch + 1
        for epoch in range(first, cfg["epochs"] + 1):
            record, line = self._train_step(epoch)
            if epoch % cfg["eval_step"] == 0 or epoch == cfg["epochs"]:
                line += self.validate(epoch, record)
            self.history.append(record)
            log.info(line)
            self.epoch = epoch
            self.elapsed_s = time.perf_counter() - start
            self.save_checkpoint()
            if self.early_stopping.should_stop:
                log.info(
                    "early stop: no valid %s improvement in %d evaluations",
                    self.early_stopping.metric,
                    self.early_stopping.bad_evals,
                )
                break
        return self._test(start)

    def _test(self, start: float) -> dict[str, Any]:
        """Test metrics with the best epoch's parameters (saved as ``best.pt``); the results."""
        cfg, stopper = self.config, self.early_stopping
        if stopper.best_state is not None:
            self.model.load_state_dict(stopper.best_state)
        if self.output:
            with _resumable_write(self.output):
                write_torch(self.output / BEST, self.model.state_dict())
        t0 = time.perf_counter()
        self.model.eval()
        test, per_user = self._evaluate(self.test_evaluator, per_user=True)
        self.model.train()
        test_eval_s = time.perf_counter() - t0
        if self.output:
            with _resumable_write(self.output):
                save_per_user(self.test_evaluator.users, per_user, self.output)
        log.info(
            "%s on %s: best epoch %d | test %s",
            cfg["model"] + (f" + {cfg['plugin']}" if cfg.get("plugin") else ""),
            cfg["dataset"],
            stopper.best_epoch,
            " ".join(f"{k} {test[k]:.4f}" for k in _headline(test, stopper.metric)),
        )
        train_times, eval_times = self.train_times, self.eval_times
        return {
            "model": cfg["model"],
            "plugin": cfg.get("plugin"),  # the objective wrapped around the model, or None
            "dataset": cfg["dataset"],
            "seed": cfg["seed"],
            "config": cfg,
            "best_epoch": stopper.best_epoch,
            "epochs_run": self.epoch,
            "valid": stopper.best_metrics,
            "test": test,
            "timing": {
                "train_s_per_epoch": float(np.mean(train_times)) if train_times else 0.0,
                # CPU seconds of the process (all its threads) per epoch, resumed runs included
                "train_cpu_s_per_epoch": (
                    float(np.mean(self.train_cpu_times)) if self.train_cpu_times else 0.0
                ),
                "eval_s": float(np.mean(eval_times)) if eval_times else test_eval_s,
                "test_eval_s": test_eval_s,
                "total_s": time.perf_counter() - start,
            },
            "peak_rss_mb": peak_rss_mb(),
            "world_size": self.dist.world_size if self.dist else 1,
            "backend": self.dist.backend if self.dist else None,
            # rank order; one entry without torch.distributed
            "peak_rss_mb_per_rank": (
                self.dist.all_gather_object(peak_rss_mb()) if self.dist else [peak_rss_mb()]
            ),
            "peak_gpu_mb": (
                torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda"
                else None
            ),
            "environment": environment(self.device),
            "history": self.history,
        }


def _arithmetic(device: torch.device) -> dict[str, Any]:
    """What decides the order of floating-point sums: the kind of device (the GPU's model)
    and torch's CPU thread count."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def _describe_arithmetic(arithmetic: Mapping[str, Any]) -> str:
    return f"{arithmetic.get('device')} with {arithmetic.get('torch_threads')} torch thread(s)"


def learning_rate_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Sequence[float] | None
) -> torch.optim.lr_scheduler.LambdaLR | None:
    r"""MMRec's schedule ``[factor, step]``: after epoch :math:`e` the step size is
    :math:`\eta_0 \cdot \text{factor}^{e / \text{step}}` (continuous in :math:`e`, not a staircase);
    ``None``: a constant step size."""
    if schedule is None:
        return None
    factor, step = float(schedule[0]), float(schedule[1])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_decay, factor=factor, step=step))


def _decay(epoch: int, factor: float, step: float) -> float:
    return factor ** (epoch / step)


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
    payload = {"users": users.clone(), **{k: v.clone() for k, v in values.items()}}
    return write_torch(output / PER_USER, payload)


HEADLINE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _headline(metrics: Mapping[str, float], early_stop_metric: str | None = None) -> list[str]:
    """The metrics a log line shows: R@10/20 and N@10/20 where computed, otherwise every one
    (a custom ``topk``), and always the early-stopping metric."""
    keys = [k for k in HEADLINE_METRICS if k in metrics] or list(metrics)
    if early_stop_metric in metrics and early_stop_metric not in keys:
        keys.insert(0, early_stop_metric)
    return keys


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
    """Write ``results.json`` atomically."""
    with _resumable_write(output):
        return write_json(output / RESULTS, results)


@contextlib.contextmanager
def _resumable_write(output: Path) -> Iterator[None]:
    """A refused write of a file written after training (``best.pt``, ``results.json``) names
    the run's checkpoint, from which ``--resume`` repeats only the test."""
    try:
        yield
    except WriteFailed as e:
        if not (output / CHECKPOINT).is_file():
            raise
        raise WriteFailed(
            e.path,
            e.error,
            f"{output / CHECKPOINT} holds the trained run: {e.remedy} and continue with "
            f"--resume {output} (only the test is repeated)",
        ) from None
