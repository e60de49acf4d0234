"""Vectorised BPR triple sampling: every train interaction once per epoch, one negative each."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.utils import degree

from pyg_dhmrec.config import NEGATIVE_ITEMS
from pyg_dhmrec.data.graph import _check_bipartite


@dataclass
class BPRBatch:
    """A batch of (user, positive item, negative item) triples, all LongTensors of one length."""

    user: Tensor
    pos_item: Tensor
    neg_item: Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> BPRBatch:
        return BPRBatch(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.user, self.pos_item, self.neg_item)
            )
        )

    def pin_memory(self) -> BPRBatch:
        """The batch in page-locked host memory (for a copy that does not wait for the device)."""
        return BPRBatch(
            self.user.pin_memory(), self.pos_item.pin_memory(), self.neg_item.pin_memory()
        )

    def __len__(self) -> int:
        return self.user.numel()


class BPRSampler:
    r"""Shuffles the train interactions each epoch and draws one uniform negative per positive.

    A negative :math:`j` of user :math:`u` is uniform over the items :math:`u` has not trained on,
    among ``negative_items="all"`` items or, with ``"train"`` (MMRec's sampler), among the items
    that have at least one train interaction: MMRec never draws an item seen only in valid or
    test as a negative, so such an item's ID embedding gets no gradient from BPR. Sampling is
    rejection-based and vectorised: all negatives are drawn at once, and only those that hit a
    train item of their user are redrawn, until none does. Membership is a binary search over the
    sorted keys ``user * num_items + item``.

    The sampler owns a CPU :class:`torch.Generator`, so its stream is independent of model
    initialisation and its state can be saved and restored (:meth:`state_dict`).
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_users: int,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        negative_items: str = "all",
    ) -> None:
        if negative_items not in NEGATIVE_ITEMS:
            raise ValueError(
                f"negative_items must be one of {', '.join(NEGATIVE_ITEMS)}, got {negative_items!r}"
            )
        if not isinstance(edge_index, Tensor):
            raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # ids, dtype and counts checked once: an item id >= num_items would alias another
        # user's key (user * num_items + item) and silently change which items are negatives
        _check_bipartite(edge_index, num_users, num_items)
        self.edge_index = edge_index.detach().cpu().long()
        self.num_users, self.num_items, self.batch_size = num_users, num_items, batch_size
        self.keys = torch.unique(self.edge_index[0] * num_items + self.edge_index[1])
        # the items negatives are drawn from; None: every item
        self.negative_pool = torch.unique(self.edge_index[1]) if negative_items == "train" else None
        pool = num_items if self.negative_pool is None else self.negative_pool.numel()
        user_degree = degree(self.edge_index[0], num_users, dtype=torch.long)
        if (user_degree >= pool).any():
            user = int(torch.nonzero(user_degree >= pool)[0])
            raise ValueError(
                f"user {user} trained on every one of the {pool} items negatives are drawn from "
                f"(negative_items {negative_items!r}): no negative can be drawn"
            )
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.edge_index.size(1) // self.batch_size)

    def is_train(self, user: Tensor, item: Tensor) -> Tensor:
        """Whether each (user, item) pair is a train interaction."""
        key = user * self.num_items + item
        pos = torch.searchsorted(self.keys, key).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == key

    def sample_negatives(self, user: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One uniform non-train item per entry of ``user`` (from ``generator``, default the
        sampler's)."""
        generator = self.generator if generator is None else generator
        if not isinstance(user, Tensor) or user.is_floating_point() or user.dtype == torch.bool:
            what = user.dtype if isinstance(user, Tensor) else type(user).__name__
            raise TypeError(f"user must be an integer tensor of user ids, got {what}")
        neg = self._draw(user.shape, generator)
        redo = self.is_train(user, neg)
        while redo.any():
            idx = redo.nonzero().view(-1)
            neg[idx] = self._draw(idx.shape, generator)
            redo[idx] = self.is_train(user[idx], neg[idx])
        return neg

    def _draw(self, shape: torch.Size, generator: torch.Generator) -> Tensor:
        """Uniform items of the negative pool."""
        if self.negative_pool is None:
            return torch.randint(self.num_items, shape, generator=generator)
        pick = torch.randint(self.negative_pool.numel(), shape, generator=generator)
        return self.negative_pool[pick]

    def __iter__(self) -> Iterator[BPRBatch]:
        perm = torch.randperm(self.edge_index.size(1), generator=self.generator)
        user, pos = self.edge_index[0, perm], self.edge_index[1, perm]
        neg = self.sample_negatives(user)
        for start in range(0, user.numel(), self.batch_size):
            end = start + self.batch_size
            yield BPRBatch(user[start:end], pos[start:end], neg[start:end])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
