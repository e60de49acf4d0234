"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolutional network for multimedia
recommendation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import normalized_adjacency, user_item_matrix
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import AddItemKNNGraphs, DerivedGraph, knn_edge_type
from pyg_dhmrec.models.base import OnDemandEmbeddings, OnDemandRows, Recommender
from pyg_dhmrec.models.validation import (
    check_at_most,
    check_int,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import (
    BehaviorAwareFusion,
    CollaborativeGate,
    FrozenSparse,
    LightPropagation,
    bpr_loss,
    info_nce,
    squared_l2_penalty,
)


@dataclass
class MGCNEmbeddings(OnDemandEmbeddings):
    """:class:`Embeddings` plus the pass's ID view ``id_view`` (``[U + I, d]``) and its fused
    modality view :math:`E_{mul}` as :class:`OnDemandRows` of users (``mm_users``) and items
    (``mm_items``): the fuser (Eq. 6) is a map of each node's own rows, and a training step
    reads only its batch's users and items. Reading ``user``, ``item`` or ``mm_view``
    (``[U + I, d]``) computes every row once, in the same autograd graph."""

    id_view: Tensor | None = None
    mm_users: OnDemandRows | None = field(default=None, repr=False)
    mm_items: OnDemandRows | None = field(default=None, repr=False)
    num_users: int = 0

    def compute_user(self) -> Tensor:
        """Final user embeddings (Eq. 7)."""
        return self.id_view[: self.num_users] + self.mm_users.table()

    def compute_item(self) -> Tensor:
        """Final item embeddings (Eq. 7)."""
        return self.id_view[self.num_users :] + self.mm_items.table()

    @property
    def mm_view(self) -> Tensor:
        """:math:`E_{mul}` of every node, ``[U + I, d]``."""
        return torch.cat([self.mm_users.table(), self.mm_items.table()])


class MGCNBackbone(Recommender):
    """What MGCN and the models built on it (CMDL) share: ID embeddings, the purified
    modality features of MGCN's Eq. (1), the behaviour-aware fuser of Eq. (6), and the frozen
    graphs with their propagations (Eqs. 2-5). See :class:`MGCN` for the equations."""

    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        return [AddItemKNNGraphs(k=settings["knn_k"], weighting="cosine")]

    def build_backbone(
        self,
        data: HeteroData,
        embedding_dim: int,
        num_ui_layers: int,
        num_ii_layers: int,
        knn_k: int,
        finetune_features: bool,
    ) -> None:
        """Checks the shared settings and sets the shared modules, on the kNN graphs of
        ``knn_k`` neighbours (read from ``data`` or built)."""
        check_int("embedding_dim", embedding_dim, 1)
        check_int("num_ui_layers", num_ui_layers, 0)
        check_int("num_ii_layers", num_ii_layers, 0)
        check_int("knn_k", knn_k, 1)
        check_at_most("knn_k", knn_k, self.num_items, "the number of items")
        data = self.with_graphs(data, knn_k=knn_k)
        # The buffers hold the initial features: the frozen input, or the trained copy's reset.
        features = self.register_item_features(data, finetune=finetune_features)
        d = embedding_dim
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), d) for m, x in features.items()}
        )
        self.gates = torch.nn.ModuleDict({m: CollaborativeGate(d) for m in self.modalities})
        self.fusion = BehaviorAwareFusion(d, len(self.modalities))

        # Frozen graphs: data, not model state (moved by .to(), kept out of checkpoints).
        edge_index = self.train_edge_index(data)
        adjacency = normalized_adjacency(edge_index, self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adjacency, symmetric=True)
        self.user_item = FrozenSparse(user_item_matrix(edge_index, self.num_users, self.num_items))
        self.item_item = torch.nn.ModuleDict(
            {m: FrozenSparse(self.item_graph(data, knn_edge_type(m))) for m in self.modalities}
        )
        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean"
        )
        self.ii_propagation = LightPropagation(
            check_int("num_ii_layers", num_ii_layers, 0), mode="last"
        )

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        self.reset_item_features()
        for m in self.modalities:
            self.projections[m].reset_parameters()  # PyTorch's default, as MGCN's code
            self.gates[m].reset_parameters()
        self.fusion.reset_parameters()

    def purify(self, m: str) -> Tensor:
        """Eq. (1): ``[I, d]`` purified features of modality ``m``."""
        projected = self.projections[m](self.input_feature(m))
        return self.gates[m](self.item_embedding.weight, projected)


class MGCN(MGCNBackbone):
    r"""MGCN: purified modality features and ID embeddings are propagated in separate views,
    then fused with behaviour-aware attention and aligned by a contrastive task.

    Equation numbers (1)-(9) are ours, in the order of the paper's method section; details the
    paper leaves open were settled against the authors' release and MMRec's ``MGCN``.

    **(1) Behaviour-guided purifier.** Per modality :math:`m`,
    :math:`\dot{E}_{i,m} = E_{i,id} \odot \sigma(W_m X_m + b_m)`. *Choice*: the affine map is
    parametrised as in the released code, a projection to ``d`` followed by a ``d x d`` gate,
    :math:`\sigma(W^g_m (W^t_m X_m + b^t_m) + b^g_m)`, i.e. :math:`W_m = W^g_m W^t_m`,
    :math:`b_m = W^g_m b^t_m + b^g_m` (the same family of maps); the gate is the shared
    :class:`CollaborativeGate` (:math:`a \odot \sigma(W c + b)` with :math:`a = E_{i,id}`,
    :math:`c = W^t_m X_m + b^t_m`). The raw feature tables are trainable when
    ``finetune_features`` (the released code loads them with ``freeze=False``).

    **(2) User-item view.** LightGCN on the ID embeddings over
    :math:`\hat{A} = D^{-1/2} A D^{-1/2}`: :math:`\bar{E}_{id} = \frac{1}{L+1}\sum_{l=0}^{L}
    \hat{A}^l E_{id}` (mean over layers, :math:`L` = ``num_ui_layers``).

    **(3) Item-item graph.** Per modality, the top-``knn_k`` cosine graph on the raw features
    with the similarities kept as weights, :math:`\ddot{S}_m = D^{-1/2} S_m D^{-1/2}`
    (:func:`cosine_knn_edges`, row degrees; item itself included, as the code's top-k on the
    full similarity matrix does). Built once from the initial features and frozen. *Choice*:
    similarity-weighted, not FREEDOM's binary graph, as MGCN's code builds it.

    **(4) Item-item view.** :math:`\bar{E}_{i,m} = \ddot{S}_m^{L_{mm}} \dot{E}_{i,m}` (last
    layer), and users aggregate their items (**5**):
    :math:`\bar{E}_{u,m} = \sum_{i \in \mathcal{N}_u} \frac{1}{\sqrt{|\mathcal{N}_u|
    |\mathcal{N}_i|}} \bar{E}_{i,m}` (:func:`user_item_matrix`).

    **(6) Behaviour-aware fuser** (:class:`BehaviorAwareFusion`, on users and items together):
    :math:`\alpha_m = \mathrm{softmax}_m(q^\top \tanh(W \bar{E}_m + b))`,
    :math:`E_s = \sum_m \alpha_m \bar{E}_m`, :math:`\tilde{E}_m = \bar{E}_m - E_s`,
    :math:`P_m = \sigma(W^p_m \bar{E}_{id} + b^p_m)`,
    :math:`E_{mul} = \frac{1}{|M|+1}(E_s + \sum_m P_m \odot \tilde{E}_m)`. *Choices*: the
    softmax runs over the modalities (MMRec; the authors' release normalises over the nodes,
    taken as a slip since the weights are meant as relative modality importance); the mean
    over the :math:`|M|+1` parts is the released code's form, generalised from 3 parts.

    **(7) Prediction.** :math:`E = \bar{E}_{id} + E_{mul}`, score :math:`e_u^\top e_i`.

    **(8) Self-supervised task.** ``cl``: ``cl_weight`` times :func:`info_nce` with anchors
    :math:`E_{mul}` and positives :math:`\bar{E}_{id}` (temperature :math:`\tau`) over the
    batch's positive items, plus the same over the batch's users: cosine similarity, in-batch
    negatives, the positive kept in the denominator, exactly MGCN's form. Rows are the
    batch as sampled (repeated users/items kept, as in the code).

    **(9) Loss.** ``bpr`` on the final embeddings; ``reg``: ``reg_weight`` times
    :func:`squared_l2_penalty` of the batch's *final* user, positive and negative embeddings
    (the released code regularises those, not the layer-0 ones).

    **Computation** (issue 17, exact): the fuser (6) is a map of each node's own rows, so a
    training step runs it for its batch's users and items only (:class:`MGCNEmbeddings`);
    the InfoNCE terms (8) work on the distinct ids of the batch with their counts
    (:func:`info_nce` with ``ids``, on the CPU).

    ``Embeddings.modalities`` holds :math:`\bar{E}_{i,m}` per modality (the item-item view
    before fusion, ``[I, d]``). Any number (>= 1) of modalities is accepted; with one, the
    shared part is the view itself and the specific part is zero.

    Args:
        data: graph with train edges and item features.
        embedding_dim: size ``d`` of the embeddings.
        num_ui_layers: LightGCN layers of the user-item view.
        num_ii_layers: propagation layers over each item-item graph.
        knn_k: neighbours per item in the kNN graphs.
        cl_weight: weight :math:`\lambda_c` of the contrastive term.
        temperature: InfoNCE temperature :math:`\tau`.
        reg_weight: weight of the squared L2 term.
        finetune_features: train the raw feature tables too (the released code does).
    """

    loss_parts = ("bpr", "cl", "reg")

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        cl_weight: float = 0.01,
        temperature: float = 0.2,
        reg_weight: float = 1e-4,
        finetune_features: bool = True,
    ) -> None:
        super().__init__(data)
        self.temperature = check_positive("temperature", temperature)
        self.cl_weight = check_nonnegative("cl_weight", cl_weight)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)
        self.build_backbone(
            data, embedding_dim, num_ui_layers, num_ii_layers, knn_k, finetune_features
        )
        self.reset_parameters()

    def forward(self) -> MGCNEmbeddings:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        id_view = self.ui_propagation(ego, self.adjacency)
        id_user, id_item = id_view.split([self.num_users, self.num_items])
        item_views = {
            m: self.ii_propagation(self.purify(m), self.item_item[m]) for m in self.modalities
        }
        items = torch.cat(list(item_views.values()), dim=-1)  # [I, M d]
        users = self.user_item(items)  # Eq. (5), every modality in one product
        d = id_view.size(1)

        def fuser(views: Tensor, behaviour: Tensor) -> OnDemandRows:
            def rows(index: Tensor | None) -> Tensor:
                if index is not None:
                    views_, behaviour_ = views[index], behaviour[index]
                else:
                    views_, behaviour_ = views, behaviour
                return self.fusion(views_.split(d, dim=1), behaviour_)

            return OnDemandRows(rows)

        return MGCNEmbeddings(
            None,
            None,
            item_views,
            id_view=id_view,
            mm_users=fuser(users, id_user),
            mm_items=fuser(items, id_item),
            num_users=self.num_users,
        )

    def contrastive_loss(self, id_view: Tensor, mm_view: Tensor, batch: BPRBatch) -> Tensor:
        """Eq. (8) without its weight: InfoNCE of ``mm_view`` against ``id_view`` (``[U + I, d]``
        each) over the batch's positive items plus over its users."""
        id_user, id_item = id_view.split([self.num_users, self.num_items])
        mm_user, mm_item = mm_view.split([self.num_users, self.num_items])
        items, users = batch.pos_item, batch.user
        return self._contrast(
            (mm_item[items], id_item[items], items), (mm_user[users], id_user[users], users)
        )

    def _contrast(self, *sides: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Sum over ``(anchor rows, positive rows, ids)`` of InfoNCE; the rows repeat with
        their ids (:func:`info_nce` then works on the distinct ones)."""
        return sum(info_nce(a, p, self.temperature, ids=ids) for a, p, ids in sides)

    def loss(self, batch: BPRBatch, out: MGCNEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        id_user, id_item = out.id_view.split([self.num_users, self.num_items])
        items = torch.cat([batch.pos_item, batch.neg_item])
        mm_user = out.mm_users.rows(batch.user)
        mm_pos, mm_neg = out.mm_items.rows(items).chunk(2)
        id_u, id_pos = id_user[batch.user], id_item[batch.pos_item]
        user, pos, neg = id_u + mm_user, id_pos + mm_pos, id_item[batch.neg_item] + mm_neg
        cl = self._contrast((mm_pos, id_pos, batch.pos_item), (mm_user, id_u, batch.user))
        return {
            "bpr": bpr_loss((user * pos).sum(-1), (user * neg).sum(-1)),
            "cl": self.cl_weight * cl,
            "reg": self.reg_weight * squared_l2_penalty(user, pos, neg),
        }
