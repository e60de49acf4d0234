"""FREEDOM (Zhou & Shen, ACM MM 2023): freezing and denoising graph structures for multimodal
recommendation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import (
    DEFAULT_MODALITY_WEIGHTS,
    DegreeSensitiveEdgeDropout,
    mix_modality_graphs,
    resolve_modality_weights,
)
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph, knn_edge_type
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import check_fraction, check_int, check_nonnegative
from pyg_dhmrec.nn import FrozenSparse, LightPropagation, bpr_loss, squared_l2_penalty

__all__ = ["DEFAULT_MODALITY_WEIGHTS", "FREEDOM"]


class FREEDOM(Recommender):
    r"""FREEDOM: a frozen item-item graph plus a degree-sensitively denoised user-item graph.

    **Frozen item-item graph.** Per modality :math:`m`, the edge type
    ``('item', 'knn_<m>', 'item')`` of ``data`` (:class:`AddItemKNNGraphs`, cached with the
    dataset) holds the top-k cosine kNN graph on the raw features, binary and normalised
    :math:`D^{-1/2} S^m D^{-1/2}` (row degrees); the graphs are mixed as
    :math:`\tilde{I} = \sum_m w_m \tilde{I}^m` (:func:`mix_modality_graphs`) into one
    :class:`FrozenSparse` operator, never learned or updated ("freezing"). The item ID
    embeddings propagate over it: :math:`h = \tilde{I}^{L_{ii}} E_I` (last layer only).

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

    **Fine-tuned features** (``finetune_features``, off by default). FREEDOM's code loads the
    raw features as a trainable table (``nn.Embedding.from_pretrained(freeze=False)``), so Adam
    also moves :math:`x_m` through the ``mm`` term (the kNN graphs stay those of the raw
    features); the paper treats them as fixed inputs. ``True`` computes what the code computes
    (``benchmarks/mmrec_transplant.py``). Off by default: on TikTok five seeds gave the same best
    epochs and test metrics either way (the term weighs ``reg_weight`` = 1e-4), and on Baby's
    4096-d image features the trained copy and its Adam state made an epoch 1.8x slower
    (``benchmarks/RESULTS.md``, "Same weights, same batch").

    **Modality representations** (:attr:`Embeddings.modalities`, for plug-in objectives): the
    projections :math:`W_m x_m` of every item, in the scoring space (the ``mm`` term scores
    them against :math:`e_u`).

    Any number of modalities (at least one) is accepted. Without ``modality_weights``, FREEDOM's
    0.1 image / 0.9 text is used for exactly the modalities image and text, weight 1 for a
    single modality; any other modality set needs explicit weights (one per modality).

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: user-item propagation layers :math:`L_{ui}`.
        num_ii_layers: item-item propagation layers :math:`L_{ii}`.
        knn_k: neighbours per item in the kNN graphs.
        modality_weights: :math:`w_m` per modality.
        edge_dropout: fraction :math:`\rho` of train edges pruned per epoch.
        reg_weight: weight of the modality BPR term.
        l2_weight: weight of the squared L2 penalty on the batch's ID embeddings.
        finetune_features: train the raw features :math:`x_m` of the ``mm`` term as parameters.
    """

    loss_parts = ("bpr", "mm", "reg")

    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        return [AddItemKNNGraphs(k=settings["knn_k"])]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        modality_weights: Mapping[str, float] | None = None,
        edge_dropout: float = 0.8,
        reg_weight: float = 1e-4,
        l2_weight: float = 0.0,
        finetune_features: bool = False,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        self.l2_weight = check_nonnegative("l2_weight", l2_weight)
        check_fraction("edge_dropout", edge_dropout, include_1=False)
        data = self.with_graphs(data, knn_k=knn_k)
        features = self.register_item_features(data, finetune=finetune_features)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim, bias=False) for m, x in features.items()}
        )

        self.modality_weights = self._weights(modality_weights)
        item_item = mix_modality_graphs(
            {m: self.knn_graph(data, m) for m in self.modalities},
            self.modality_weights,
            "modality_weights",
        )
        self.item_item = FrozenSparse(item_item)
        self.ii_propagation = LightPropagation(
            check_int("num_ii_layers", num_ii_layers, 0), mode="last"
        )

        self.pruning = DegreeSensitiveEdgeDropout(
            self.train_edge_index(data), self.num_users, self.num_items, edge_dropout
        )
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean", symmetric=True
        )
        self.reset_parameters()

    def knn_graph(self, data: HeteroData, modality: str) -> Tensor:
        """The normalised kNN graph of ``modality`` from ``data``, as ``[I, I]`` CSR."""
        return self.item_graph(data, knn_edge_type(modality))

    def _weights(self, weights: Mapping[str, float] | None) -> dict[str, float]:
        return resolve_modality_weights(self.modalities, weights, type(self).__name__)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()  # PyTorch's default Linear initialisation
        self.reset_item_features()

    def on_train_epoch_start(self) -> None:
        self.pruning.resample()

    def behaviour(self) -> tuple[Tensor, Tensor]:
        """LightGCN on the (pruned, in training) user-item graph: ``(b_u, b_i)``."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.pruning())
        users, items = ui.split([self.num_users, self.num_items])
        return users, items

    def projected_features(self) -> dict[str, Tensor]:
        """:math:`W_m x_m` of every item, per modality."""
        return {m: self.projections[m](self.input_feature(m)) for m in self.modalities}

    def forward(self) -> Embeddings:
        """Final embeddings; the modality representations are the projections
        :math:`W_m x_m` of all items (those the ``mm`` term scores)."""
        h = self.ii_propagation(self.item_embedding.weight, self.item_item)
        user, item = self.behaviour()
        return Embeddings(user, item + h, self.projected_features())

    def modality_bpr(self, out: Embeddings, batch: BPRBatch) -> Tensor:
        r""":math:`\sum_m` BPR of :math:`e_u^\top W_m x_{i^+}` against
        :math:`e_u^\top W_m x_{i^-}`."""
        users = out.user[batch.user]
        mm = out.user.new_zeros(())
        for m in self.modalities:
            projected = out.modalities[m]
            mm = mm + bpr_loss(
                (users * projected[batch.pos_item]).sum(-1),
                (users * projected[batch.neg_item]).sum(-1),
            )
        return mm

    def id_penalty(self, batch: BPRBatch) -> Tensor:
        """:func:`squared_l2_penalty` of the batch's layer-0 ID embeddings."""
        return squared_l2_penalty(
            self.user_embedding(batch.user),
            self.item_embedding(batch.pos_item),
            self.item_embedding(batch.neg_item),
        )

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        return {
            "bpr": bpr_loss(pos, neg),
            "mm": self.reg_weight * self.modality_bpr(out, batch),
            "reg": self.l2_weight * self.id_penalty(batch),
        }
