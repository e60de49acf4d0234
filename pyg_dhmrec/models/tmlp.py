"""TMLP (Huang et al., AAAI 2025, arXiv 2412.11747): multimodal recommendation with
topology-aware MLPs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import MLP

from pyg_dhmrec.data.graph import normalized_adjacency, submatrix_entries
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import (
    AddTopologicallyPrunedGraph,
    DerivedGraph,
    topology_pruned_edge_type,
)
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import (
    MAX_LAYERS,
    MAX_WIDTH,
    check_at_most,
    check_choice,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import FrozenSparse, LightPropagation, bpr_loss, neighbour_contrastive_loss

__all__ = ["TMLP", "ModalityMLP"]

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "elu", "selu", "softplus")


class ModalityMLP(torch.nn.Module):
    r"""One modality's item encoder: a two-layer projection of the raw features followed by the
    MLP of the intra-modality learning,

    .. math::
        z = W_2\, \mathrm{LeakyReLU}(W_1 x + b_1) + b_2, \qquad
        h^{(l)} = \mathrm{Dropout}(\mathrm{LN}(\sigma(W^{(l)} h^{(l-1)} + b^{(l)}))),
        \ h^{(0)} = z,

    for the hidden layers :math:`l < L` and a plain linear last layer :math:`l = L` (PyG's
    :class:`~torch_geometric.nn.MLP` with ``act_first=True``, per-row layer norm).
    ``f -> 2 d_f -> d_f -> hidden -> ... -> hidden -> d``.
    """

    def __init__(
        self,
        in_dim: int,
        feat_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.project_in = torch.nn.Linear(in_dim, 2 * feat_dim)
        self.project_out = torch.nn.Linear(2 * feat_dim, feat_dim)
        channels = [feat_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.mlp = MLP(
            channels,
            act=activation,
            act_first=True,
            norm="layer_norm",
            norm_kwargs={"mode": "node", "eps": 1e-6},
            dropout=dropout,
            plain_last=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.project_in.reset_parameters()  # PyTorch's default, as the reference
        self.project_out.reset_parameters()
        self.mlp.reset_parameters()
        for linear in self.mlp.lins:
            torch.nn.init.xavier_uniform_(linear.weight)
            torch.nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.project_out(F.leaky_relu(self.project_in(x))))


class TMLP(Recommender):
    r"""Topology-aware MLPs: item-item relations enter through a contrastive loss over a
    topologically pruned item graph, not through message passing.

    **Sources.** The paper's method section (arXiv 2412.11747, Sec. 3) could not be read where
    this was written (only its abstract and third-party summaries were at hand), so its
    equation numbers are not cited. The mechanisms follow the paper as summarised there
    (topological pruning strategy, intra/inter-modality learning with MLPs, a neighbourhood
    alignment loss, collaborative filtering on the user-item graph) and every detail follows
    the authors' released code (github.com/jessicahuang0163/TMLP: ``models/TMLP.py``,
    ``utils/tps.py``, ``utils/tools.py``, ``utils/graphmlp.py``, the released configuration
    and logs); the topological similarity is that of N2N (Dong et al., CVPR 2022, arXiv
    2203.12265), which the released pruning script implements and its README cites.

    **Topological pruning** (precomputed once, cached with the dataset:
    :class:`~pyg_dhmrec.data.transforms.AddTopologicallyPrunedGraph`). Per modality the binary
    top-``knn_k`` cosine kNN graph, normalised, mixed with ``modality_weights`` into
    :math:`S`; each item keeps the ``pruned_k`` neighbours :math:`j \neq i` whose
    neighbourhood indicators share the most mutual information with its own
    (:func:`~pyg_dhmrec.data.topological_pruning.neighbourhood_mutual_information`); the kept
    graph gets unit self-loops and is row-normalised,
    :math:`\Gamma = (D' + I)^{-1} (S' + I)`.

    **Intra-modality learning.** Each modality :math:`m` is encoded by its own
    :class:`ModalityMLP`, :math:`h_i^m = \mathrm{MLP}_m(x_i^m)` (no message passing between
    items). **Inter-modality**: the item representation is the concatenation
    :math:`e_i = [h_i^1; \dots; h_i^M; e_i^{id}]`, width :math:`(M + 1) d`; users have a free
    embedding :math:`e_u` of the same width.

    **Collaborative filtering.** Rows are L2-normalised, :math:`E^{(0)} = \mathrm{norm}([E_U;
    E_I])`, propagated over the symmetric-normalised user-item train graph,
    :math:`E^{(l+1)} = D^{-1/2} A D^{-1/2} E^{(l)}`, and summed over layers
    :math:`0..L_{ui}` (the reference's sum, not LightGCN's mean); score
    :math:`\hat{y}_{ui} = e_u^\top e_i`.

    **Loss.** ``bpr`` on the scores, plus ``na`` = ``na_weight`` times the neighbourhood
    alignment (:func:`~pyg_dhmrec.nn.neighbour_contrastive_loss`, Graph-MLP's NContrast) of
    the final item representations at the batch's :math:`P = 2B` item positions
    (positives then negatives, as in the reference), with :math:`w_{ab} =
    \Gamma_{\mathrm{item}_a \mathrm{item}_b}` gathered sparse
    (:func:`~pyg_dhmrec.data.graph.submatrix_entries`) and temperature :math:`\tau`.

    *Where the reference code differs, and what is followed:*

    * The reference densifies the whole ``I x I`` :math:`\Gamma` every step
      (``adj_tensor.to_dense()``) to read its ``P x P`` batch block; here the block is
      gathered from the sparse graph (same values).
    * Its pruning script builds the mutual information with a dense ``I``-long row per pair in a
      Python loop, and reads the marginals :math:`p(X_i = 1)` from the *weighted* row sums of
      the mixed normalised graph (about 1 for every item) while the joint counts use the
      binary supports. Here both come from the binary neighbourhoods, N2N's definition
      (:math:`p(X_i = 1) = |\mathcal{N}_i| / N`), sparse and in chunks. It also adds
      :math:`10^{-10}` inside each logarithm; we use :math:`0 \log 0 = 0` exactly. Its
      cumulative-probability stop (``ratio``) is released at 1, where it keeps the top
      :math:`K` as here; its ties go to the lower id (a stable sort), as here.
    * Its contrastive logits are :math:`\tau \cdot s` (a Graph-MLP code detail) where
      Graph-MLP's paper writes :math:`s / \tau`; the published :math:`\tau = 1` makes them equal.
      We divide. It adds :math:`10^{-8}` inside the log; we do not (the self term keeps every
      ratio positive).
    * Its MLP shares one layer norm between the hidden layers; here each hidden layer has its
      own (PyG's MLP).
    * Its ``reg_weight`` multiplies preferences that are always ``None``: no regulariser acts,
      so none is exposed. Its configuration asks for AdamW with weight decay, but its trainer
      has no AdamW branch and falls back to Adam without weight decay: the protocol's Adam.

    **Modality representations** (:attr:`Embeddings.modalities`): the final item
    representation restricted to modality :math:`m`'s block (zeros elsewhere), i.e. the
    propagated :math:`h^m`; with the ID block they sum to :math:`e_i`, so
    :math:`e_u^\top` of a block is that modality's share of the score.

    **Cost per step**: the MLPs over all items (as the reference) and the contrastive loss over
    the :math:`2B` positions, with an analytic gradient taken in one pass over half the
    symmetric ``P x P`` similarities (no ``P x P`` autograd graph).

    Args:
        data: graph with train edges and at least one item modality (any number).
        embedding_dim: ``d``, the width of each block.
        feat_embed_dim: ``d_f``, the width of the features' two-layer projection.
        hidden_dim: hidden width of the MLPs.
        num_mlp_layers: linear layers :math:`L \ge 1` of each MLP.
        activation: :math:`\sigma` of the MLPs (one of :data:`ACTIVATIONS`).
        mlp_dropout: dropout after each hidden layer of the MLPs.
        num_ui_layers: propagation layers on the user-item graph.
        knn_k: neighbours per item in the modality kNN graphs.
        pruned_k: neighbours kept per item by the topological pruning (at most the number of
            items - 1; at or above an item's neighbourhood size it keeps all of it).
        modality_weights: mixing weight per modality of the kNN graphs.
        na_weight: weight of the neighbourhood alignment loss.
        temperature: :math:`\tau` of the neighbourhood alignment loss.
    """

    loss_parts = ("bpr", "na")

    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        return [
            # The dataset loader calls this before the constructor: check the keys by name.
            AddTopologicallyPrunedGraph(
                knn_k=settings["knn_k"],
                k=check_int("pruned_k", settings["pruned_k"], 1),
                modality_weights=settings.get("modality_weights"),
            )
        ]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        feat_embed_dim: int = 64,
        hidden_dim: int = 512,
        num_mlp_layers: int = 3,
        activation: str = "tanh",
        mlp_dropout: float = 0.0,
        num_ui_layers: int = 2,
        knn_k: int = 10,
        pruned_k: int = 9,
        modality_weights: Mapping[str, float] | None = None,
        na_weight: float = 0.6,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_int("feat_embed_dim", feat_embed_dim, 1, MAX_WIDTH)
        check_int("hidden_dim", hidden_dim, 1, MAX_WIDTH)
        check_int("num_mlp_layers", num_mlp_layers, 1, MAX_LAYERS)
        check_choice("activation", activation, ACTIVATIONS)
        check_fraction("mlp_dropout", mlp_dropout, include_1=False)
        self.na_weight = check_nonnegative("na_weight", na_weight)
        self.temperature = check_positive("temperature", temperature)
        check_int("pruned_k", pruned_k, 1)
        # neighbours among the other items: pruned_k at or above an item's neighbourhood keeps
        # all of it, more than the other items is a slip
        check_at_most("pruned_k", pruned_k, self.num_items - 1, "the number of other items")
        features = self.register_item_features(data)
        data = self.with_graphs(
            data, knn_k=knn_k, pruned_k=pruned_k, modality_weights=modality_weights
        )
        self.embedding_dim = embedding_dim
        width = (len(self.modalities) + 1) * embedding_dim

        self.encoders = torch.nn.ModuleDict(
            {
                m: ModalityMLP(
                    x.size(1),
                    feat_embed_dim,
                    hidden_dim,
                    embedding_dim,
                    num_mlp_layers,
                    activation,
                    mlp_dropout,
                )
                for m, x in features.items()
            }
        )
        self.user_embedding = torch.nn.Embedding(self.num_users, width)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)

        adjacency = normalized_adjacency(
            self.train_edge_index(data), self.num_users, self.num_items
        )
        self.adjacency = FrozenSparse(adjacency, symmetric=True)
        self.propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="sum", symmetric=True
        )
        pruned = self.item_graph(data, topology_pruned_edge_type())
        self.register_buffer("pruned_graph", pruned, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for encoder in self.encoders.values():
            encoder.reset_parameters()

    def forward(self) -> Embeddings:
        blocks = [self.encoders[m](self.feature(m)) for m in self.modalities]
        items = torch.cat([*blocks, self.item_embedding.weight], dim=1)
        ego = F.normalize(torch.cat([self.user_embedding.weight, items]), dim=1)
        out = self.propagation(ego, self.adjacency)
        user, item = out[: self.num_users], out[self.num_users :]
        d = self.embedding_dim
        modalities = {}
        for b, m in enumerate(self.modalities):
            rep = torch.zeros_like(item)
            rep[:, b * d : (b + 1) * d] = item[:, b * d : (b + 1) * d]
            modalities[m] = rep
        return Embeddings(user, item, modalities)

    def neighbour_weights(self, items: Tensor) -> Tensor:
        r"""The block :math:`\Gamma_{[items, items]}` of the pruned graph, a sparse COO
        ``[P, P]`` tensor."""
        rows, cols, values = submatrix_entries(self.pruned_graph, items)
        size = (items.numel(), items.numel())
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, size)

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        na = out.item.new_zeros(())
        if self.na_weight > 0:
            items = torch.cat([batch.pos_item, batch.neg_item])
            na = neighbour_contrastive_loss(
                out.item[items], self.neighbour_weights(items), self.temperature
            )
        return {"bpr": bpr_loss(pos, neg), "na": self.na_weight * na}
