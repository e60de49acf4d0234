"""LightGCN (He et al., SIGIR 2020)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import check_int, check_nonnegative
from pyg_dhmrec.nn import FrozenSparse, LightPropagation, bpr_loss, embedding_norm_penalty


class LightGCN(Recommender):
    r"""Linear propagation on the symmetric-normalised user-item graph, mean over layers.

    .. math::
        E^{(l+1)} = D^{-1/2} A D^{-1/2} E^{(l)}, \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}

    Trained with BPR plus MMRec's embedding regulariser on the layer-0 (ego) embeddings of the
    batch, ``reg_weight * (||e_u|| + ||e_i|| + ||e_j||) / B``; Xavier-uniform initialisation.

    Args:
        data: the dataset graph; its train edges form :math:`A`.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: :math:`L`.
        reg_weight: weight of the regulariser.
    """

    loss_parts = ("bpr", "reg")

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean"
        )
        adjacency = normalized_adjacency(
            self.train_edge_index(data), self.num_users, self.num_items
        )
        self.adjacency = FrozenSparse(adjacency, symmetric=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """The mean over layers of the propagated ID embeddings, ``(users, items)``."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.ui_propagation(x, self.adjacency)
        # split, not two slices: its backward is one cat, not two zero-filled [U + I, d] grads
        users, items = out.split([self.num_users, self.num_items])
        return users, items

    def forward(self) -> Embeddings:
        return Embeddings(*self.propagate())

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = embedding_norm_penalty(
            self.user_embedding(batch.user),
            self.item_embedding(batch.pos_item),
            self.item_embedding(batch.neg_item),
        )
        return {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
