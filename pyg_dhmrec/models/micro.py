"""MICRO (Zhang et al., IEEE TKDE 2023): latent structure mining with contrastive modality
fusion for multimedia recommendation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph, knn_edge_type
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.nn import (
    FrozenSparse,
    ItemGraph,
    LearnedKNNGraph,
    LightConv,
    LightPropagation,
    ModalityAttention,
    bpr_loss,
    chunked_info_nce,
    constant_item_graph,
    propagate_item_graph,
    skip_connected_graph,
    squared_l2_penalty,
)

#: When the learned item graphs are rebuilt with gradient (as LATTICE's ``graph_update``).
GRAPH_UPDATES = ("epoch", "batch")
#: Anchors per chunk of the all-item contrastive loss (memory only; the authors' 4096).
CONTRASTIVE_CHUNK = 4096


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass
class MICROEmbeddings(Embeddings):
    """:class:`Embeddings` plus each modality's item view :math:`h^m` and the fused view
    :math:`h` before normalisation (what the contrastive loss reads)."""

    modality_views: dict[str, Tensor] = field(default_factory=dict)
    fused_view: Tensor | None = None


class MICRO(Recommender):
    r"""MICRO: LATTICE's latent item graphs per modality, fused by attention, with a
    contrastive loss between each modality view and the fused view.

    Equation numbers are those of the paper (arXiv 2111.00678).

    **Latent item graphs (Eqs. 1-6).** As :class:`~pyg_dhmrec.models.LATTICE`: per modality
    :math:`m`, the frozen weighted cosine top-k graph :math:`\tilde{S}^m` of the raw features
    (edge type ``('item', 'knn_<m>', 'item')``, :class:`AddItemKNNGraphs` with
    ``weighting="cosine"``), the learned graph :math:`\hat{A}^m` on
    :math:`\tilde{e}^m = W_m e^m + b_m` (:class:`LearnedKNNGraph`), and the skip connection
    :math:`\tilde{A}^m = (1-\lambda)\hat{A}^m + \lambda\tilde{S}^m`
    (:func:`skip_connected_graph`, :math:`\lambda` = ``frozen_graph_weight``). The raw
    features stay fixed (*choice*, as in this library's LATTICE). ``graph_update`` as LATTICE:
    ``"epoch"`` (the authors' code) learns the graphs with gradient on the first training
    forward of an epoch and reuses them detached for the rest of it.

    **Modality views (Eq. 7).** Unlike LATTICE, the graphs are not mixed: each modality
    propagates the item ID embeddings over its own graph, :math:`h^m = (\tilde{A}^m)^L E_I`
    (``num_ii_layers``).

    **Attention fusion (Eqs. 8-9).** :math:`\alpha^m_i = \mathrm{softmax}_m\big(q^\top
    \tanh(W h^m_i + b)\big)`, :math:`h_i = \sum_m \alpha^m_i h^m_i`
    (:class:`ModalityAttention`, shared across modalities).

    **Contrastive modality fusion (Eqs. 10-11).** Each modality view against the fused view,
    over all items, with in-view negatives (GRACE's semi-loss):
    :math:`\mathcal{L}_C = \sum_m \frac{1}{N} \sum_i -\log \frac{e^{\theta(h^m_i, h_i)/\tau}}
    {\sum_j e^{\theta(h^m_i, h_j)/\tau} + \sum_{j \ne i} e^{\theta(h^m_i, h^m_j)/\tau}}`,
    :math:`\theta` the cosine similarity, one direction (modality -> fused) and summed over
    modalities as the authors' code. Computed by :func:`chunked_info_nce`: chunks of anchors
    under checkpointing, so memory is :math:`O(\text{chunk} \cdot N)` where the authors' code
    keeps the :math:`N \times N` exponent matrices for backward.

    **Backbone and prediction (Eq. 12).** LightGCN (mean over layers
    :math:`0..L_{ui}`, ``num_ui_layers``) gives :math:`x_u, x_i`;
    :math:`\hat{x}_i = x_i + h_i / \lVert h_i \rVert_2`, score :math:`x_u^\top \hat{x}_i`.

    **Loss (Eq. 13).** ``bpr``; ``reg``: ``reg_weight`` times :func:`squared_l2_penalty` of the
    batch rows of the final embeddings (the code's ``decay``); ``cl``: ``cl_weight`` (the
    code's ``loss_ratio``) times :math:`\mathcal{L}_C`.

    **Per-modality representations** (:attr:`Embeddings.modalities`):
    :math:`h^m / \lVert h^m \rVert_2`, the modality view in the scoring space.

    Any number (:math:`\ge 1`) of modalities is accepted (with one, :math:`\alpha = 1` and
    the contrastive loss pulls :math:`h^1` to itself: its value is constant in the views'
    alignment but still spreads the items apart).

    Args:
        data: graph with train edges and at least one item modality.
        embedding_dim: size ``d`` of the user/item ID embeddings.
        feat_embed_dim: width of the projected features :math:`\tilde{e}^m`.
        num_ui_layers: LightGCN layers :math:`L_{ui}`.
        num_ii_layers: item graph convolution layers :math:`L`, at least 1.
        knn_k: neighbours kept per item, including the item itself.
        frozen_graph_weight: :math:`\lambda \in [0, 1]` of the skip connection.
        cl_weight: weight of the contrastive loss (:math:`\ge 0`).
        temperature: :math:`\tau > 0` of the contrastive loss.
        reg_weight: weight of the squared L2 regulariser (:math:`\ge 0`).
        graph_update: ``"epoch"`` or ``"batch"``.
    """

    loss_parts = ("bpr", "reg", "cl")
    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        return [AddItemKNNGraphs(k=settings["knn_k"], weighting="cosine")]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        feat_embed_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        frozen_graph_weight: float = 0.9,
        cl_weight: float = 0.03,
        temperature: float = 0.5,
        reg_weight: float = 1e-5,
        graph_update: str = "epoch",
    ) -> None:
        super().__init__(data)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 1)
        feat_embed_dim = _check_int("feat_embed_dim", feat_embed_dim, 1)
        num_ui_layers = _check_int("num_ui_layers", num_ui_layers, 0)
        self.num_ii_layers = _check_int("num_ii_layers", num_ii_layers, 1)
        self.knn_k = _check_int("knn_k", knn_k, 1)
        if self.knn_k > self.num_items:
            raise ValueError(
                f"knn_k must be <= the number of items ({self.num_items}), got {knn_k}"
            )
        if not 0.0 <= frozen_graph_weight <= 1.0:  # also rejects NaN
            raise ValueError(f"frozen_graph_weight must be in [0, 1], got {frozen_graph_weight!r}")
        if not cl_weight >= 0:
            raise ValueError(f"cl_weight must be >= 0, got {cl_weight!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not reg_weight >= 0:
            raise ValueError(f"reg_weight must be >= 0, got {reg_weight!r}")
        if graph_update not in GRAPH_UPDATES:
            raise ValueError(f"graph_update must be one of {GRAPH_UPDATES}, got {graph_update!r}")
        self.frozen_graph_weight = float(frozen_graph_weight)
        self.cl_weight, self.temperature = float(cl_weight), float(temperature)
        self.reg_weight, self.graph_update = float(reg_weight), graph_update

        data = self.with_graphs(data, knn_k=self.knn_k)
        features = self.register_item_features(data)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), feat_embed_dim) for m, x in features.items()}
        )
        self.graph_learner = LearnedKNNGraph(self.knn_k)
        for m in self.modalities:  # Eqs. 1-3 on the raw features: built once, frozen
            store = data[knn_edge_type(m)]
            self.register_buffer(f"init_edge_index_{m}", store.edge_index.flip(0), persistent=False)
            self.register_buffer(f"init_weight_{m}", store.edge_weight, persistent=False)
        self.item_conv = LightConv()
        self.attention = ModalityAttention(embedding_dim)
        self.ui_propagation = LightPropagation(num_ui_layers, mode="mean", symmetric=True)
        adj = normalized_adjacency(self.train_edge_index(data), self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adj, symmetric=True)
        self._train_graphs: dict[str, ItemGraph] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()
        self.attention.reset_parameters()
        self._train_graphs = None

    def on_train_epoch_start(self) -> None:
        self._train_graphs = None  # the next training forward learns new graphs

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        self._train_graphs = None  # a cached graph would stay on the old device
        return super()._apply(fn, *args, **kwargs)

    def build_item_graphs(self) -> dict[str, ItemGraph]:
        r"""Per modality :math:`\tilde{A}^m` (Eqs. 4-6) as ``(edge_index, weight)`` in
        (neighbour, item) order, differentiable in :math:`W_m, b_m`."""
        graphs = {}
        for m in self.modalities:
            edge_index, weight = self.graph_learner(self.projections[m](self.feature(m)))
            frozen = (getattr(self, f"init_edge_index_{m}"), getattr(self, f"init_weight_{m}"))
            graphs[m] = skip_connected_graph(
                (edge_index.flip(0), weight), frozen, self.frozen_graph_weight
            )
        return graphs

    def _item_graphs(self) -> dict[str, ItemGraph]:
        epoch_mode = self.training and self.graph_update == "epoch"
        if epoch_mode and self._train_graphs is not None:
            return self._train_graphs
        graphs = self.build_item_graphs()
        if epoch_mode or not torch.is_grad_enabled():
            constant = {m: constant_item_graph(g, self.num_items) for m, g in graphs.items()}
            if epoch_mode:
                self._train_graphs = constant  # later batches of the epoch reuse them
            if not torch.is_grad_enabled():
                return constant
        return graphs

    def forward(self) -> MICROEmbeddings:
        ids = self.item_embedding.weight
        views = {
            m: propagate_item_graph(ids, g, self.num_ii_layers, self.item_conv)
            for m, g in self._item_graphs().items()
        }  # Eq. 7
        fused = self.attention(list(views.values()))  # Eqs. 8-9
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.adjacency)
        user, item = ui.split([self.num_users, self.num_items])
        item = item + F.normalize(fused, dim=1)  # Eq. 12
        return MICROEmbeddings(
            user,
            item,
            {m: F.normalize(v, dim=1) for m, v in views.items()},
            modality_views=views,
            fused_view=fused,
        )

    def contrastive_loss(self, out: MICROEmbeddings) -> Tensor:
        r""":math:`\mathcal{L}_C` (Eqs. 10-11), summed over modalities."""
        return sum(
            chunked_info_nce(view, out.fused_view, self.temperature, chunk_size=CONTRASTIVE_CHUNK)
            for view in out.modality_views.values()
        )

    def loss(self, batch: BPRBatch, out: MICROEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = squared_l2_penalty(
            out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
        )
        parts = {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
        parts["cl"] = self.cl_weight * self.contrastive_loss(out)
        return parts
