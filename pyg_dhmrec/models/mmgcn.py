"""MMGCN (Wei et al., ACM MM 2019): one graph convolution network per modality."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.mean_adjacency import row_normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import (
    MAX_WIDTH,
    check_int,
    check_nonnegative,
)
from pyg_dhmrec.nn import FrozenSparse, bpr_loss
from pyg_dhmrec.nn.normalize import l2_normalize, normalized_projection_maps


class ModalityGraphLayer(torch.nn.Module):
    r"""One MMGCN layer of one modality: mean aggregation of the neighbours plus a
    combination with the node's own representation and its ID embedding,

    .. math::
        h_v = \frac{1}{|\mathcal{N}(v)|} \sum_{j \in \mathcal{N}(v)} g(W_1 x_j)
        \quad\text{(aggregation, mean)}, \qquad
        \hat{x}_v = g(W_2 x_v + b_2) + e_v^{id}, \qquad
        x'_v = g(W_3 h_v + b_3 + \hat{x}_v) \quad\text{(combination, element-wise add)},

    with :math:`g` = LeakyReLU. ``in_dim`` -> ``out_dim`` (the ID width). Where ``in_dim`` >
    ``out_dim``, :math:`W_3` runs before the mean (:math:`W_3 D^{-1} A Z = D^{-1} A (Z
    W_3^\top)`, exact), so the sparse product is ``out_dim`` wide.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.aggregation = torch.nn.Linear(in_dim, in_dim, bias=False)  # W_1
        self.self_transform = torch.nn.Linear(in_dim, out_dim)  # W_2, b_2
        self.neighbour_transform = torch.nn.Linear(in_dim, out_dim)  # W_3, b_3
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.aggregation, self.self_transform, self.neighbour_transform):
            torch.nn.init.xavier_normal_(linear.weight)
            if linear.bias is not None:
                torch.nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, mean_adjacency: FrozenSparse, id_embedding: Tensor) -> Tensor:
        return self.combine(
            self.aggregation(x), self.self_transform(x), mean_adjacency, id_embedding
        )

    def combine(
        self,
        aggregated: Tensor,
        own: Tensor,
        mean_adjacency: FrozenSparse,
        id_embedding: Tensor,
    ) -> Tensor:
        """The layer from its two input maps, ``aggregated`` :math:`= W_1 x` and ``own``
        :math:`= W_2 x + b_2` (computed elsewhere when that is cheaper)."""
        neighbours = F.leaky_relu(aggregated)
        transform = self.neighbour_transform
        if transform.in_features > transform.out_features:
            h = mean_adjacency(F.linear(neighbours, transform.weight)) + transform.bias
        else:
            h = transform(mean_adjacency(neighbours))
        return F.leaky_relu(h + F.leaky_relu(own) + id_embedding)


class MMGCN(Recommender):
    r"""Multi-modal graph convolution network: for every modality :math:`m` a GCN on the
    user-item graph whose layer-0 nodes are the user's preference vector :math:`u_m` and the
    item's projected feature :math:`P_m f_i^m`; every layer (:class:`ModalityGraphLayer`)
    adds the shared ID embeddings. The final representations are summed over modalities and
    scored by inner product (the paper's prediction layer),

    .. math::
        u^* = \sum_m u_m^{(L)}, \qquad i^* = \sum_m i_m^{(L)}, \qquad
        \hat{y}_{ui} = {u^*}^\top i^* .

    :attr:`Embeddings.modalities` holds :math:`i_m^{(L)}`, which sum to :math:`i^*`.

    *Choices*:

    * The ID embeddings and the preference vectors are parameters and are trained, as in the
      paper. The authors' / MMRec code keeps both as plain tensors that never receive a
      gradient (only the linear maps learn there).
    * Sum over modalities (the paper's prediction layer); MMRec averages, which rescales every
      score by :math:`1/M^2` (same ranking, a flatter BPR sigmoid).
    * Each modality's features are projected to ``feature_dim`` (MMRec's visual branch: 256)
      by a linear map :math:`P_m` with bias, and the layer-0 node vectors
      :math:`[u_m; P_m f_i^m]` are L2-normalised (MMRec), for every modality alike. The
      modalities named in ``raw_modalities`` skip the projection: :math:`[u_m; f_i^m]` at the
      features' own width. The authors' code projects only its visual features (to 256) and
      feeds acoustic and textual features raw; MMRec keeps that for its second modality (on
      TikTok, ``raw_modalities: [audio]`` is MMRec's model).
    * Mean aggregator :math:`D^{-1} A` over the user-item graph without self-loops (the
      paper's :math:`f_{avg}`); LeakyReLU inside the mean, on each neighbour (the paper's
      aggregation; MMRec applies it after the mean); :math:`W_1` has no
      bias (MMRec's convolution).
    * Combination by element-wise addition, :math:`x'_v = g(W_3 h_v + b_3 + \hat{x}_v)`
      (:class:`ModalityGraphLayer`). The authors' code and MMRec concatenate,
      :math:`x'_v = g(W_3 [h_v; \hat{x}_v] + b_3)` (a map of :math:`\hat{x}_v` too): their
      ``concate`` flag is the string ``'False'``, which Python reads as true.
    * Loss: BPR plus ``reg_weight`` times the mean squared entry of the batch's ID embeddings
      (users, positives, negatives) and of the batch users' preference vectors of every
      modality (a form of the paper's :math:`\lambda \lVert\Theta\rVert^2`). MMRec's ID
      term is the same; its preference term is the mean square of *all* users' preferences of
      its first (visual) modality only, and since it trains neither its ID embeddings nor its
      preferences, its whole penalty is a constant there.
    * Xavier-normal initialisation of every weight and embedding (MMRec), zero biases.

    Args:
        data: graph with train edges and at least one item modality (any number).
        embedding_dim: width ``d`` of the ID embeddings and of every layer's output.
        feature_dim: width of the preference vectors and projected features (layer 0).
        num_ui_layers: :math:`L \ge 1` layers per modality.
        reg_weight: weight of the squared penalty (:math:`\ge 0`).
        raw_modalities: modalities whose layer-0 nodes are the raw features (no projection;
            their preference vectors as wide as the features).
    """

    loss_parts = ("bpr", "reg")
    uses_modalities = True
    exposes_modalities = True

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        feature_dim: int = 256,
        num_ui_layers: int = 3,
        reg_weight: float = 1e-3,
        raw_modalities: Sequence[str] = (),
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_int("feature_dim", feature_dim, 1, MAX_WIDTH)
        check_int("num_ui_layers", num_ui_layers, 1)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        features = self.register_item_features(data)
        if not isinstance(raw_modalities, (list, tuple)) or not all(
            isinstance(m, str) for m in raw_modalities
        ):
            raise ValueError(
                f"raw_modalities must be a list of modality names, got {raw_modalities!r}"
            )
        unknown = sorted(set(raw_modalities) - set(features))
        if unknown:
            raise ValueError(
                f"raw_modalities {unknown}: not modalities of this dataset, which has "
                f"{sorted(features)}"
            )
        width = {m: x.size(1) if m in raw_modalities else feature_dim for m, x in features.items()}
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.preferences = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(self.num_users, width[m])) for m in features}
        )
        self.projections = torch.nn.ModuleDict(
            {
                m: torch.nn.Linear(x.size(1), feature_dim)
                for m, x in features.items()
                if m not in raw_modalities
            }
        )
        self.layers = torch.nn.ModuleDict(
            {
                m: torch.nn.ModuleList(
                    ModalityGraphLayer(width[m] if layer == 0 else embedding_dim, embedding_dim)
                    for layer in range(num_ui_layers)
                )
                for m in features
            }
        )
        adjacency = row_normalized_adjacency(
            self.train_edge_index(data), self.num_users, self.num_items
        )
        self.mean_adjacency = FrozenSparse(adjacency)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_embedding.weight)
        torch.nn.init.xavier_normal_(self.item_embedding.weight)
        for m in self.modalities:
            torch.nn.init.xavier_normal_(self.preferences[m])
            if m in self.projections:
                torch.nn.init.xavier_normal_(self.projections[m].weight)
                torch.nn.init.zeros_(self.projections[m].bias)
            for layer in self.layers[m]:
                layer.reset_parameters()

    def modality_representation(self, modality: str, id_embedding: Tensor) -> Tensor:
        """The ``[U + I, d]`` output of modality ``modality``'s GCN."""
        layers = self.layers[modality]
        if modality in self.projections:
            # Layer 0's maps of the normalised projected items without the projected matrix
            # where the projection widens the features (TikTok's 128 -> 256).
            first = layers[0]
            users = l2_normalize(self.preferences[modality])
            items = normalized_projection_maps(
                self.feature(modality),
                self.projections[modality],
                [first.aggregation, first.self_transform],
            )
            x = first.combine(
                torch.cat([first.aggregation(users), items[0]]),
                torch.cat([first.self_transform(users), items[1]]),
                self.mean_adjacency,
                id_embedding,
            )
            layers = layers[1:]
        else:
            x = l2_normalize(torch.cat([self.preferences[modality], self.feature(modality)]))
        for layer in layers:
            x = layer(x, self.mean_adjacency, id_embedding)
        return x

    def forward(self) -> Embeddings:
        ids = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        reps = {m: self.modality_representation(m, ids) for m in self.modalities}
        total = torch.stack(list(reps.values())).sum(0)
        modalities = {m: rep[self.num_users :] for m, rep in reps.items()}
        return Embeddings(*total.split([self.num_users, self.num_items]), modalities)

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        items = torch.cat([batch.pos_item, batch.neg_item])
        reg = self.user_embedding(batch.user).pow(2).mean()
        reg = reg + self.item_embedding(items).pow(2).mean()
        for preference in self.preferences.values():
            reg = reg + preference[batch.user].pow(2).mean()
        return {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
