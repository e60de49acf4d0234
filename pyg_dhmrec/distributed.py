"""Training on several processes with ``torch.distributed`` and ``DistributedDataParallel``.

``torchrun --nproc-per-node N run.py ...`` starts N ranks; :func:`setup` sees torchrun's
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and joins the process group (``gloo`` on CPU, ``nccl``
on CUDA with GPU ``LOCAL_RANK`` per rank). Without them, or with ``WORLD_SIZE=1``, nothing here
runs and training is the single-process code path.

What every rank shares and what is its own:

* **Common**: the graph, the dataset and the model replica (every rank holds all of them; a
  loss that needs all-node statistics computes them on its full replica, since ``forward()``
  is one full-graph pass); the parameters (DDP averages the gradients, so Adam steps agree);
  the shuffle of the epoch's positives (:class:`ShardedBPRSampler`'s ``generator``, seeded
  with ``seed`` on every rank); torch's global RNG, which rank 0's state overwrites on every
  rank before the model's phase (:meth:`~pyg_dhmrec.models.base.Recommender.train_phase`) and
  :meth:`~pyg_dhmrec.models.base.Recommender.on_train_epoch_start` (:meth:`Dist.sync_rng`),
  so a model's own phase (every rank runs it whole, on the same numbers), degree-sensitive
  pruning, learned graphs and the dropout of ``forward()`` draw the same numbers on every
  replica.
* **Per rank**: its shard of each global batch (``batch_size / N`` positives) and its
  negatives, drawn from its own generator (``seed`` and the rank), both in the checkpoint per
  rank. Random draws *inside* ``loss()`` on batch rows (BM3's dropout views) come from the
  common global stream, so ranks draw the same masks for their different rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.metrics import FullRankEvaluator

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
#: Seconds a collective waits for the other ranks before the job fails (a rank stuck in an
#: endless loop); a rank that *dies* ends the job sooner through torchrun.
TIMEOUT_ENV = "PYG_DHMREC_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


class DistributedError(ValueError):
    """A setting that does not work with several ranks."""


#: Words of the errors a collective raises when another rank died or hung (gloo's C++ errors
#: arrive as plain RuntimeErrors, NCCL's and the store's as DistError).
PEER_FAILURE_MARKERS = ("gloo", "nccl", "connection reset by peer", "connection closed by peer")


def peer_failure(error: BaseException) -> str | None:
    """The first line of ``error`` when it is a collective that failed because another rank
    died, hung or became unreachable; None for any other error (the step's own)."""
    if not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, dist.DistError) or any(m in text.lower() for m in PEER_FAILURE_MARKERS):
        return first
    return None


def under_torchrun() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return all(v in os.environ for v in TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes files and prints."""
    return not under_torchrun() or int(os.environ["RANK"]) == 0


@dataclass
class Dist:
    """This process's place in the job and the collectives the trainer uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def sync_rng(self) -> None:
        """Give every rank rank 0's torch RNG state (CPU, and CUDA on GPUs): the common stream
        of per-epoch work (pruning, learned graphs) and of ``forward()``'s dropout."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        state = self.broadcast_object(state)
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def mean(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The mean over ranks of each scalar tensor of ``values`` (one all-reduce)."""
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[k]).float() for k in keys])
        stacked = stacked.to(self.device)
        dist.all_reduce(stacked)
        stacked /= self.world_size
        return dict(zip(keys, stacked, strict=True))

    def wrap(
        self, module: torch.nn.Module, ignore: Iterable[torch.nn.Parameter] = ()
    ) -> DistributedDataParallel:
        """``module`` in DDP: gradients averaged over ranks at ``backward()``.

        ``ignore``: parameters DDP leaves alone (a model's phase parameters, which every rank
        trains identically in its own phase; averaging their unused gradients every step would
        only move zeros). They are broadcast from rank 0 here like the others.

        ``find_unused_parameters=True``: some models and plug-ins leave parameters out of a
        step's loss (a modality head, a frozen branch); DDP then walks the autograd graph once
        per step to find them, a cost small next to a full-graph propagation.
        no buffer sync: buffers are graph data built identically on every rank
        (and sparse, which DDP cannot broadcast); parameters are broadcast from rank 0 here.
        """
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                if t.layout == torch.strided:
                    dist.broadcast(t.data, src=0)
        ignored = {id(p) for p in ignore}
        names = [n for n, p in module.named_parameters() if id(p) in ignored]
        if names:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            module,
            device_ids=device_ids,
            forward_sync_buffers=False,
            init_sync=False,
            find_unused_parameters=True,
        )


_CURRENT: Dist | None = None


def setup(device_name: str) -> Dist | None:
    """Join torchrun's process group (once per process); ``None`` for a single process."""
    global _CURRENT
    if not under_torchrun():
        return None
    if _CURRENT is not None:
        return _CURRENT
    from pyg_dhmrec.train import resolve_device

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"local rank {local_rank} needs GPU {local_rank}, torch sees "
                f"{torch.cuda.device_count()}; use --nproc-per-node <= the GPUs per node"
            )
        device = torch.device("cuda", local_rank)  # one GPU per local rank
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise DistributedError(f"device {device} is not supported with several ranks")
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    if rank != 0:  # rank 0 alone logs
        logging.getLogger("pyg_dhmrec").setLevel(logging.WARNING)
    _CURRENT = Dist(rank, world, local_rank, backend, device)
    return _CURRENT


def teardown() -> None:
    """Leave the process group (end of the process)."""
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


@contextmanager
def on_main(ctx: Dist | None, manager: AbstractContextManager[Any]) -> Iterator[None]:
    """Enter ``manager`` on rank 0 only (e.g. claiming the run folder); an error entering it
    is raised on every rank, so the whole job stops with rank 0's message."""
    with ExitStack() as stack:
        if ctx is None:
            stack.enter_context(manager)
            yield
            return
        error: Exception | None = None
        if ctx.is_main:
            try:
                stack.enter_context(manager)
            except Exception as e:  # reported to every rank, re-raised here
                error = e
        message = ctx.broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise DistributedError(f"rank 0: {message}")
        yield


@contextmanager
def main_first(ctx: Dist | None) -> Iterator[None]:
    """Rank 0 runs the block first (building dataset and graph caches), then the others."""
    if ctx is not None and not ctx.is_main:
        dist.barrier()
    yield
    if ctx is not None and ctx.is_main:
        dist.barrier()


class LossStep(torch.nn.Module):
    """One step's forward for DDP: the model's loss parts on ``batch``, with the forward pass
    its ``loss`` runs (DDP's hooks see every parameter the loss used). ``loss`` is called
    without embeddings, so a model may compute only the rows the batch reads (VBPR)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: BPRBatch) -> dict[str, Tensor]:
        return self.model.loss(batch)


class ShardedBPRSampler(BPRSampler):
    """One rank's share of the BPR batches.

    Every rank shuffles the train interactions with the common ``generator`` (same seed on
    every rank), cuts the permutation into global batches of ``batch_size`` and takes its
    ``batch_size / world_size`` slice of each; its negatives come from its own
    ``neg_generator``. The shards of an epoch are disjoint and cover it, except a last
    global batch smaller than ``world_size``, which is skipped (fewer than ``world_size``
    positives an epoch, reshuffled every epoch). A last batch that does not split evenly
    gives ranks sizes differing by one; DDP still weighs them equally.
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_users: int,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        negative_items: str = "all",
    ) -> None:
        if batch_size % world_size:
            raise DistributedError(
                f"batch_size {batch_size} is not divisible by the {world_size} ranks; the "
                f"global batch is split evenly (e.g. --batch_size "
                f"{batch_size - batch_size % world_size})"
            )
        super().__init__(
            edge_index, num_users, num_items, batch_size, seed=seed, negative_items=negative_items
        )
        self.rank, self.world_size = rank, world_size
        self.neg_generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (rank + 1))

    def __len__(self) -> int:
        full, tail = divmod(self.edge_index.size(1), self.batch_size)
        return full + (tail >= self.world_size)

    def __iter__(self) -> Iterator[BPRBatch]:
        perm = torch.randperm(self.edge_index.size(1), generator=self.generator)
        for start in range(0, perm.numel(), self.batch_size):
            chunk = perm[start : start + self.batch_size]
            if chunk.numel() < self.world_size:
                break
            mine = chunk.tensor_split(self.world_size)[self.rank]
            user, pos = self.edge_index[0, mine], self.edge_index[1, mine]
            yield BPRBatch(user, pos, self.sample_negatives(user, self.neg_generator))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "neg_generator": self.neg_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.neg_generator.set_state(state["neg_generator"])


def sharded_evaluate(
    evaluator: FullRankEvaluator, score_fn: Any, ctx: Dist, per_user: bool = False
) -> Any:
    """:meth:`FullRankEvaluator.evaluate` with its user chunks dealt round-robin to the ranks
    and the per-user values gathered: every rank returns exactly what one process computes
    (each chunk is scored as one process scores it, and the mean is taken in user order)."""
    mine = range(ctx.rank, evaluator.num_chunks, ctx.world_size)
    local = evaluator.evaluate_chunks(score_fn, mine)
    merged: dict[int, dict[str, Tensor]] = {}
    for part in ctx.all_gather_object(local):
        merged.update(part)
    return evaluator.summarize(merged, per_user=per_user)
