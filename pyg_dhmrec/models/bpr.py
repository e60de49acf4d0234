"""BPR-MF (Rendle et al., UAI 2009)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import check_int, check_nonnegative
from pyg_dhmrec.nn import bpr_loss, embedding_norm_penalty


class BPR(Recommender):
    r"""Matrix factorisation trained with the BPR loss.

    .. math::
        \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i, \qquad
        \mathcal{L} = -\log\sigma(\hat{y}_{ui} - \hat{y}_{uj})
        + \lambda \frac{1}{B}\left(\lVert E_u\rVert + \lVert E_i\rVert + \lVert E_j\rVert\right)

    The regulariser is MMRec's (:func:`embedding_norm_penalty`); embeddings are Xavier-normal
    initialised, as in MMRec.

    Args:
        data: the dataset graph (only its node counts are used).
        embedding_dim: size ``d`` of the embeddings.
        reg_weight: :math:`\lambda`.
    """

    loss_parts = ("bpr", "reg")

    def __init__(self, data: HeteroData, embedding_dim: int = 64, reg_weight: float = 1e-4):
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_embedding.weight)
        torch.nn.init.xavier_normal_(self.item_embedding.weight)

    def forward(self) -> Embeddings:
        return Embeddings(self.user_embedding.weight, self.item_embedding.weight)

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = embedding_norm_penalty(
            out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
        )
        return {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
