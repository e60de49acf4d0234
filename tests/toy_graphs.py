"""Small random interaction graphs and BPR batches shared by the model tests.

Imported as ``from toy_graphs import ...``: pytest's default ``prepend`` import mode puts
``tests/`` on ``sys.path`` for the test modules in it.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler

NUM_USERS, NUM_ITEMS, NUM_EDGES = 40, 30, 400
#: The modality features most tests use (image 16-d, text 8-d).
MODALITIES = {"image": 16, "text": 8}


def toy_graph(
    num_users: int = NUM_USERS,
    num_items: int = NUM_ITEMS,
    num_interactions: int = NUM_EDGES,
    modalities: dict[str, int] | None = None,
    seed: int = 0,
    skewed: bool = True,
) -> HeteroData:
    """``num_interactions`` distinct (user, item) pairs; every user and item has one at least.

    User ``u`` rates item ``u % num_items`` and item ``i`` is rated by user ``i % num_users``;
    the other pairs are drawn from one generator seeded with ``seed``: ``skewed`` draws
    ``int(n * U(0, 1)^2)`` (small ids favoured, so degrees are skewed), otherwise uniform
    ``randint`` (user, then item). Then, from the same generator and in the given order, one
    ``randn`` feature matrix ``data["item"][name]`` of ``[num_items, size]`` per entry of
    ``modalities`` (``None``: no features, an ID-only graph), declared in
    ``data["item"].modalities``. The edges are sorted, and
    ``data[REV_RATES]`` holds them flipped.
    """
    if num_interactions > num_users * num_items:
        raise ValueError(f"{num_interactions} interactions do not fit {num_users}x{num_items}")
    g = torch.Generator().manual_seed(seed)
    pairs = {(u, u % num_items) for u in range(num_users)}
    pairs |= {(i % num_users, i) for i in range(num_items)}
    while len(pairs) < num_interactions:
        if skewed:
            u = int(num_users * torch.rand(1, generator=g).pow(2))
            i = int(num_items * torch.rand(1, generator=g).pow(2))
        else:
            u = int(torch.randint(num_users, (1,), generator=g))
            i = int(torch.randint(num_items, (1,), generator=g))
        pairs.add((u, i))
    edge_index = torch.tensor(sorted(pairs), dtype=torch.long).t().contiguous()
    data = HeteroData()
    data["user"].num_nodes = num_users
    data["item"].num_nodes = num_items
    for name, size in (modalities or {}).items():
        data["item"][name] = torch.randn(num_items, size, generator=g)
    data["item"].modalities = list(modalities or {})
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data


def first_batch(data: HeteroData, batch_size: int = 64, seed: int = 0) -> BPRBatch:
    """The first batch of a seeded :class:`BPRSampler` over ``data``'s train interactions."""
    sampler = BPRSampler(
        data[RATES].edge_index,
        int(data["user"].num_nodes),
        int(data["item"].num_nodes),
        batch_size=batch_size,
        seed=seed,
    )
    return next(iter(sampler))


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def train_one_epoch(name: str, data: HeteroData, train_keys: dict | None = None, **keys) -> dict:
    """``build_model(name, data, **keys)`` trained one epoch on the CPU (seed 0, batch 32,
    cut-off 5), asserting finite loss parts; its results."""
    import math

    import pyg_dhmrec

    torch.manual_seed(0)
    model = pyg_dhmrec.build_model(name, data, **keys)
    results = pyg_dhmrec.train(
        model,
        data,
        device="cpu",
        epochs=1,
        progress=False,
        topk=[5],
        early_stop_metric="recall@5",
        **{"batch_size": 32, **(train_keys or {})},
    )
    losses = [v for record in results["history"] for v in record["loss"].values()]
    assert losses and all(math.isfinite(v) for v in losses), results["history"]
    results["model"] = model
    return results
