"""LATTICE (Zhang et al., ACM MM 2021): mining latent item-item structures from multimodal
features for recommendation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph, knn_edge_type
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import (
    MAX_WIDTH,
    check_at_most,
    check_choice,
    check_fraction,
    check_int,
    check_nonnegative,
)
from pyg_dhmrec.nn import (
    FrozenSparse,
    LearnedKNNGraph,
    LightConv,
    LightPropagation,
    bpr_loss,
    constant_item_graph,
    propagate_item_graph,
    skip_connected_graph,
    squared_l2_penalty,
)

#: When the learned item graph is rebuilt with gradient (see the class docstring).
GRAPH_UPDATES = ("epoch", "batch")

# An item graph: (edge_index [2, E] as (neighbour j, item i), weight [E]), or a constant
# (adj, adj_t) pair of torch.sparse_csr matrices.
Graph = tuple[Tensor, Tensor]


class LATTICE(Recommender):
    r"""LATTICE: learned modality-aware item-item graphs on top of a LightGCN backbone.

    Equation numbers are those of the paper (arXiv 2104.09036).

    **Initial graphs (Eqs. 1-3), frozen.** Per modality :math:`m`, the cosine similarity
    :math:`S^m_{ij}` of the raw features, top-k sparsified *keeping the cosine values*
    (Eq. 2, a weighted graph, not FREEDOM's binary one) and normalised
    :math:`\tilde{S}^m = D^{-1/2} \hat{S}^m D^{-1/2}` (row degrees). Built once with
    :class:`LearnedKNNGraph` under ``no_grad`` on the raw features and stored as non-persistent
    buffers. The raw features stay fixed (*choice*: the original code and MMRec wrap them in a
    trainable ``Embedding``; the paper learns only :math:`W_m, b_m`).

    **Learned graphs (Eqs. 4-6).** :math:`\tilde{e}^m_i = W_m e^m_i + b_m` (a biased
    ``Linear`` to ``feat_embed_dim``; the bias matters because cosine is not shift-invariant),
    then the same cosine / top-k / normalisation on :math:`\tilde{e}^m` gives
    :math:`\hat{A}^m` (:class:`LearnedKNNGraph`: neighbour sets without gradient, the kept
    values and the degrees with gradient to :math:`W_m, b_m`). Skip connection to the initial
    graph (Eq. 6): :math:`\tilde{A}^m = (1 - \lambda) \hat{A}^m + \lambda \tilde{S}^m`,
    :math:`\lambda` = ``frozen_graph_weight``.

    **Aggregation (Eq. 7).** :math:`A = \sum_m \alpha_m \tilde{A}^m` with
    :math:`\alpha = \mathrm{softmax}(w)` over learnable logits :math:`w` (initialised equal,
    i.e. uniform weights, as MMRec's ``[0.5, 0.5]``). *Choice*: the paper's order (normalise each
    modality, then mix). The original code and MMRec mix the *unnormalised* learned top-k graphs
    with :math:`\alpha` and normalise the sum, then add :math:`\lambda \sum_m \alpha_m
    \tilde{S}^m`; both orders coincide for a single modality.

    **Item graph convolution (Eq. 8).** :math:`H^{(l)} = A H^{(l-1)}`, :math:`H^{(0)} = E_I`
    (the item ID embeddings, the backbone's layer 0), :math:`h = H^{(L)}` with
    :math:`L` = ``num_ii_layers``; each hop is one :class:`LightConv` over the weighted edges, so
    gradients reach :math:`A`'s values. Where no gradient reaches :math:`A` (later batches of an
    epoch, evaluation), :math:`A` is a constant CSR matrix and each hop one
    :func:`constant_spmm` (on TikTok about 10x faster than edge-wise messages).

    **Backbone and prediction (Eqs. 9-10).** LightGCN on the symmetric-normalised train graph
    (mean over layers :math:`0..L_{ui}`, ``num_ui_layers``) gives :math:`x_u, x_i`;
    :math:`\hat{x}_i = x_i + h_i / \lVert h_i \rVert_2`, score :math:`x_u^\top \hat{x}_i`.
    *Choice*: LightGCN's :math:`D^{-1/2} A D^{-1/2}` as in the paper; the original code and MMRec
    propagate with the NGCF-style :math:`D^{-1}(A + I)` instead.

    **When the graph is learned** (``graph_update``). ``"epoch"`` (default, the original code
    and MMRec): the first training forward of an epoch (after :meth:`on_train_epoch_start`)
    rebuilds :math:`A` from the current parameters with gradient, so :math:`W_m, b_m, w` are
    updated once per epoch; the later batches of the epoch reuse that :math:`A` detached (the
    ID embeddings still get gradients through it). ``"batch"``: rebuilt with gradient on every
    training forward (end-to-end, as the paper's description reads; slower). Evaluation always
    rebuilds :math:`A` from the current parameters (as the original code does before testing);
    the eval cache of :class:`Recommender` makes that once per evaluation.

    **Loss (Eq. 11).** ``bpr``: BPR on the scores. ``reg``: ``reg_weight`` times
    :func:`squared_l2_penalty` of the batch rows of the *final* embeddings
    :math:`x_u, \hat{x}_{i^+}, \hat{x}_{i^-}` (the original code's and MMRec's regulariser,
    :math:`\frac{1}{2B}\sum \lVert\cdot\rVert^2`).

    **Per-modality representations** (:attr:`Embeddings.modalities`): *choice*: modality
    :math:`m`'s item representation is its structural part alone,
    :math:`h^m / \lVert h^m \rVert_2` with :math:`h^m = (\tilde{A}^m)^L E_I` (the item ID
    embeddings propagated over that modality's graph only), in the scoring space (width ``d``);
    the fused item is :math:`x_i + h_i / \lVert h_i \rVert_2` with :math:`h` from the
    :math:`\alpha`-mixed graph.

    Any number (:math:`\ge 1`) of modalities is accepted; with one, :math:`\alpha = 1`.

    Args:
        data: graph with train edges and at least one item modality.
        embedding_dim: size ``d`` of the user/item ID embeddings.
        feat_embed_dim: width of the projected features :math:`\tilde{e}^m` (Eq. 4).
        num_ui_layers: LightGCN layers :math:`L_{ui}` of the backbone.
        num_ii_layers: item-item graph convolution layers :math:`L` (Eq. 8), at least 1.
        knn_k: neighbours kept per item (Eq. 2), including the item itself.
        frozen_graph_weight: :math:`\lambda \in [0, 1]`, weight of the initial (frozen)
            graph in the skip connection (Eq. 6).
        reg_weight: weight of the squared L2 regulariser (:math:`\ge 0`).
        graph_update: ``"epoch"`` or ``"batch"``, see above.
    """

    loss_parts = ("bpr", "reg")

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
        reg_weight: float = 1e-5,
        graph_update: str = "epoch",
    ) -> None:
        super().__init__(data)
        embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        feat_embed_dim = check_int("feat_embed_dim", feat_embed_dim, 1, MAX_WIDTH)
        num_ui_layers = check_int("num_ui_layers", num_ui_layers, 0)
        self.num_ii_layers = check_int("num_ii_layers", num_ii_layers, 1)
        self.knn_k = check_int("knn_k", knn_k, 1)
        check_at_most("knn_k", self.knn_k, self.num_items, "the number of items")
        self.frozen_graph_weight = check_fraction("frozen_graph_weight", frozen_graph_weight)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        self.graph_update = check_choice("graph_update", graph_update, GRAPH_UPDATES)

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
        self.build_modality_fusion(embedding_dim)
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean", symmetric=True
        )
        adj = normalized_adjacency(self.train_edge_index(data), self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adj, symmetric=True)

        # The training graphs of the current epoch as CSR constants (graph_update="epoch").
        self._train_graph: tuple[Graph | None, dict[str, Graph]] | None = None
        self.reset_parameters()

    def build_modality_fusion(self, embedding_dim: int) -> None:
        """The parameters that combine the modalities: the logits :math:`w` of Eq. 7."""
        self.modality_logits = torch.nn.Parameter(torch.zeros(len(self.modalities)))

    def reset_modality_fusion(self) -> None:
        torch.nn.init.zeros_(self.modality_logits)  # equal logits: uniform alpha

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()  # PyTorch's default Linear initialisation, as MMRec
        self.reset_modality_fusion()
        self._train_graph = None

    def on_train_epoch_start(self) -> None:
        self._train_graph = None  # the next training forward learns a new graph

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        self._train_graph = None  # a cached graph would stay on the old device
        return super()._apply(fn, *args, **kwargs)

    def modality_weights(self) -> Tensor:
        r""":math:`\alpha = \mathrm{softmax}(w)`, one weight per modality (Eq. 7)."""
        return torch.softmax(self.modality_logits, dim=0)

    def build_item_graphs(self) -> dict[str, Graph]:
        r"""Per modality :math:`\tilde{A}^m = (1-\lambda)\hat{A}^m + \lambda\tilde{S}^m` (Eqs. 4-6)
        as ``(edge_index, weight)`` with ``edge_index`` in (neighbour, item) order,
        differentiable in :math:`W_m, b_m`."""
        graphs = {}
        for m in self.modalities:
            projected = self.projections[m](self.feature(m))  # Eq. 4
            edge_index, weight = self.graph_learner(projected)  # Eqs. 5 and 2-3
            frozen = (getattr(self, f"init_edge_index_{m}"), getattr(self, f"init_weight_{m}"))
            graphs[m] = skip_connected_graph(
                (edge_index.flip(0), weight), frozen, self.frozen_graph_weight
            )  # Eq. 6
        return graphs

    def mix_item_graphs(self, graphs: dict[str, Graph]) -> Graph | None:
        r"""The fused graph :math:`A = \sum_m \alpha_m \tilde{A}^m` (Eq. 7), differentiable in
        :math:`w` too."""
        alpha = self.modality_weights()
        return (
            torch.cat([ei for ei, _ in graphs.values()], dim=1),
            torch.cat([a * w for a, (_, w) in zip(alpha, graphs.values())]),
        )

    def _item_operators(self) -> tuple[Graph | None, dict[str, Graph]]:
        r"""The fused graph :math:`A` (``None`` where :meth:`mix_item_graphs` mixes none) and
        each :math:`\tilde{A}^m`, either as differentiable ``(edge_index, weight)`` or, when no
        gradient reaches them, as constant ``(adj, adj_t)`` CSR pairs (fused sparse products,
        several times faster on CPU)."""
        epoch_mode = self.training and self.graph_update == "epoch"
        if epoch_mode and self._train_graph is not None:
            return self._train_graph
        graphs = self.build_item_graphs()
        fused = self.mix_item_graphs(graphs)
        weights = [w for _, w in graphs.values()] + ([] if fused is None else [fused[1]])
        differentiable = any(w.requires_grad for w in weights)
        constant = None
        if epoch_mode or not differentiable:
            constant = (
                None if fused is None else self._constant(fused),
                {m: self._constant(g) for m, g in graphs.items()},
            )
        if epoch_mode:
            self._train_graph = constant  # later batches of the epoch reuse it, detached
        return (fused, graphs) if differentiable else constant

    def _constant(self, graph: Graph) -> Graph:
        return constant_item_graph(graph, self.num_items)

    def _propagate(self, graph: Graph) -> Tensor:
        return propagate_item_graph(
            self.item_embedding.weight, graph, self.num_ii_layers, self.item_conv
        )  # Eq. 8

    def forward(self) -> Embeddings:
        fused, graphs = self._item_operators()
        h = F.normalize(self._propagate(fused), dim=1)
        per_modality = {m: F.normalize(self._propagate(g), dim=1) for m, g in graphs.items()}
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.adjacency)
        users, items = ui.split([self.num_users, self.num_items])
        return Embeddings(users, items + h, per_modality)  # Eq. 9

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = squared_l2_penalty(
            out.user[batch.user], out.item[batch.pos_item], out.item[batch.neg_item]
        )
        return {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
