"""FREEDOM (Zhou & Shen, ACM MM 2023): freezing and denoising graph structures for multimodal
recommendation."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import (
    DegreeSensitiveEdgeDropout,
    csr_transpose,
    knn_adjacency,
    mix_modality_graphs,
)
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import ModalityOutputs, Recommender, pair_scores
from pyg_dhmrec.nn import LightPropagation, bpr_loss, squared_l2_penalty

#: FREEDOM's published mixing weights of the modality kNN graphs (image 0.1, text 0.9).
DEFAULT_MODALITY_WEIGHTS = {"image": 0.1, "text": 0.9}


class FREEDOM(Recommender):
    r"""FREEDOM: a frozen item-item graph plus a degree-sensitively denoised user-item graph.

    **Frozen item-item graph.** Per modality :math:`m`, :func:`knn_adjacency` builds the top-k
    cosine kNN graph on the raw features, binary and normalised :math:`D^{-1/2} S^m D^{-1/2}`
    (row degrees); the graphs are mixed as :math:`\tilde{I} = \sum_m w_m \tilde{I}^m`
    (:func:`mix_modality_graphs`). It is built once, never learned or updated ("freezing"),
    and stored with its transpose as non-persistent buffers. The item ID embeddings propagate
    over it: :math:`h = \tilde{I}^{L_{mm}} E_I` (last layer only).

    **Denoised user-item graph.** LightGCN (mean over layers :math:`0..L_{ui}`) on the
    symmetric-normalised train graph. In training the graph is pruned by
    :class:`DegreeSensitiveEdgeDropout`: :math:`\lfloor E(1-\rho) \rfloor` edges are kept, drawn
    without replacement with probability :math:`\propto 1/\sqrt{d_u d_i}` (edges between
    low-degree nodes survive more often), and re-normalised on the kept degrees; a new graph is
    drawn in :meth:`on_train_epoch_start`. Evaluation uses the full graph.

    **Prediction.** :math:`e_u = \bar{e}_u`, :math:`e_i = \bar{e}_i + h_i`, score
    :math:`e_u^\top e_i`.

    **Loss.** ``bpr``: BPR on the final embeddings. ``mm``: per modality a linear projection
    :math:`W_m x_i` of the raw features to ``d`` (*choice*: no bias. FREEDOM's code uses a
    biased ``Linear``, but the bias cancels exactly in the BPR difference
    :math:`e_u^\top (W_m x_{i^+} + b_m) - e_u^\top (W_m x_{i^-} + b_m)`, so it would be a
    parameter that never gets a gradient; dropping it changes no loss value), and
    ``reg_weight`` :math:`\cdot \sum_m` BPR of :math:`e_u^\top W_m x_{i^+}` vs
    :math:`e_u^\top W_m x_{i^-}`. ``reg``: ``l2_weight`` times :func:`squared_l2_penalty` of the
    batch's layer-0 ID embeddings. FREEDOM's published configuration regularises only through
    the modality BPR term (``reg_weight``), so ``l2_weight`` defaults to 0; the part is always
    returned so the logged loss parts stay the same.

    **Modality representations** (:meth:`forward_modalities`, for plug-in objectives): the
    projections :math:`W_m x_m` of every item, in the scoring space (the ``mm`` term scores
    them against :math:`e_u`); :meth:`forward` and :meth:`loss` read the same pass.

    Any number of modalities (at least one) is accepted. Without ``modality_weights``, FREEDOM's
    0.1 image / 0.9 text is used for exactly the modalities image and text, weight 1 for a
    single modality; any other modality set needs explicit weights (one per modality).

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: user-item propagation layers :math:`L_{ui}`.
        num_mm_layers: item-item propagation layers :math:`L_{mm}`.
        knn_k: neighbours per item in the kNN graphs.
        modality_weights: :math:`w_m` per modality.
        dropout: fraction :math:`\rho` of train edges pruned per epoch.
        reg_weight: weight of the modality BPR term.
        l2_weight: weight of the squared L2 penalty on the batch's ID embeddings.
    """

    uses_modalities = True

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_mm_layers: int = 1,
        knn_k: int = 10,
        modality_weights: Mapping[str, float] | None = None,
        dropout: float = 0.8,
        reg_weight: float = 1e-4,
        l2_weight: float = 0.0,
    ) -> None:
        super().__init__(data)
        self.reg_weight, self.l2_weight = reg_weight, l2_weight
        features = self.register_item_features(data)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim, bias=False) for m, x in features.items()}
        )

        self.modality_weights = self._weights(modality_weights)
        item_item = mix_modality_graphs(
            {m: knn_adjacency(x, knn_k) for m, x in features.items()},
            self.modality_weights,
            "modality_weights",
        )
        self.register_buffer("item_item", item_item, persistent=False)
        self.register_buffer("item_item_t", csr_transpose(item_item), persistent=False)
        self.mm_propagation = LightPropagation(num_mm_layers, mode="last")

        self.pruning = DegreeSensitiveEdgeDropout(
            self.train_edge_index(data), self.num_users, self.num_items, dropout
        )
        self.ui_propagation = LightPropagation(num_ui_layers, mode="mean", symmetric=True)
        self.reset_parameters()

    def _weights(self, weights: Mapping[str, float] | None) -> dict[str, float]:
        if weights is None:
            if set(self.modalities) == set(DEFAULT_MODALITY_WEIGHTS):
                weights = DEFAULT_MODALITY_WEIGHTS
            elif len(self.modalities) == 1:
                weights = {self.modalities[0]: 1.0}
            else:
                raise ValueError(
                    f"FREEDOM has default modality_weights only for image and text; give one "
                    f"weight per modality {self.modalities}"
                )
        return {m: float(w) for m, w in weights.items()}

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()  # PyTorch's default Linear initialisation

    def on_train_epoch_start(self) -> None:
        self.pruning.resample()

    def forward_modalities(self) -> ModalityOutputs:
        """Final embeddings; the modality representations are the projections
        :math:`W_m x_m` of all items (those the ``mm`` term scores)."""
        h = self.mm_propagation(self.item_embedding.weight, self.item_item, self.item_item_t)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.pruning())
        projected = {m: self.projections[m](getattr(self, f"feat_{m}")) for m in self.modalities}
        return ModalityOutputs(ui[: self.num_users], ui[self.num_users :] + h, projected)

    def forward(self) -> tuple[Tensor, Tensor]:
        out = self.forward_modalities()
        return out.user, out.item

    def loss(self, batch: BPRBatch) -> dict[str, Tensor]:
        user_emb, item_emb, projected = self.forward_modalities()
        pos, neg = pair_scores(user_emb, item_emb, batch)
        users = user_emb[batch.user]
        mm = user_emb.new_zeros(())
        for m in self.modalities:
            mm = mm + bpr_loss(
                (users * projected[m][batch.pos_item]).sum(-1),
                (users * projected[m][batch.neg_item]).sum(-1),
            )
        reg = squared_l2_penalty(
            self.user_embedding(batch.user),
            self.item_embedding(batch.pos_item),
            self.item_embedding(batch.neg_item),
        )
        return {
            "bpr": bpr_loss(pos, neg),
            "mm": self.reg_weight * mm,
            "reg": self.l2_weight * reg,
        }
