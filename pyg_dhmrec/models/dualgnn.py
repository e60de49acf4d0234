"""DualGNN (Wang et al., IEEE TMM 2023): dual graph neural network for multimedia
recommendation, a user-item graph per modality plus a user co-occurrence graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.cooccurrence import resample_to_k_neighbours
from pyg_dhmrec.data.graph import csr_transpose, normalized_adjacency, to_csr
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import (
    AddUserCooccurrenceGraph,
    DerivedGraph,
    user_cooccurrence_edge_type,
)
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import check_choice, check_int, check_nonnegative
from pyg_dhmrec.nn import FrozenSparse, LightPropagation, bpr_loss, constant_spmm
from pyg_dhmrec.nn.normalize import l2_normalize

#: How the per-modality user representations are fused (Section III-C of the paper).
FUSIONS = ("weighted_sum", "mean", "max", "concat")
#: The paper's and the authors' code's ``user_graph_k`` (``--sampling 40``).
PUBLISHED_USER_GRAPH_K = 40
#: How a user's sampled neighbours are weighted in the user graph aggregation.
USER_GRAPH_WEIGHTINGS = ("softmax", "mean")


class DualGNN(Recommender):
    r"""DualGNN: per-modality graph convolution on the user-item graph, a per-user fusion of
    the modalities, and a user co-occurrence graph over the fused user representations.

    **Single-modal representations.** Per modality :math:`m`, users have a learned preference
    :math:`p^m_u \in \mathbb{R}^d` and items their projected features
    :math:`f^m_i = W^m_2\, \mathrm{LeakyReLU}(W^m_1 x^m_i + b^m_1) + b^m_2` (a two-layer MLP
    through width :math:`4d`, as the authors' code; *choice*: always projected, whatever the
    feature width). The layer-0 nodes are L2-normalised,
    :math:`h^{m,(0)} = \mathrm{normalize}([p^m; f^m])`, and propagated on the
    symmetric-normalised train graph :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (no self-loops):
    :math:`h^{m,(l)} = \hat{A} h^{m,(l-1)}`,
    :math:`\hat{h}^m = \sum_{l=0}^{L} h^{m,(l)}` (the authors' code sums layers 0, 1, 2:
    ``num_ui_layers`` = 2). Items have no ID embedding (as in the paper's code).

    **Multi-modal fusion of users** (``fusion``; the paper compares several, its default and
    the authors' is the first):

    * ``"weighted_sum"``: :math:`u_u = \sum_m w_{u,m} \hat{h}^m_u` with a learned weight per
      user and modality, initialised to :math:`\mathrm{softmax}_m` of small Gaussian noise
      (about :math:`1/M`) and then trained freely (the code does not re-normalise);
    * ``"mean"``: :math:`u_u = \frac{1}{M} \sum_m \hat{h}^m_u`;
    * ``"max"``: :math:`u_u = \max_m w_{u,m} \hat{h}^m_u` element-wise;
    * ``"concat"``: :math:`u_u = W [w_{u,1} \hat{h}^1_u; \dots; w_{u,M} \hat{h}^M_u] + b`.

    Items are the plain sum :math:`i_i = \sum_m \hat{h}^m_i` (as the code; its per-item weights
    are regularised but never used, so they are left out). MMRec's port differs for
    ``"weighted_sum"``: its ``representation += t_rep`` adds in place to the tensor that is
    ``v_rep``, which it then fuses, so its users are
    :math:`w_{u,v} (\hat{h}^v_u + \hat{h}^t_u) + w_{u,t} \hat{h}^t_u`; the authors' code
    sums into a new tensor, as here.

    **User co-occurrence graph.** Users linked by the number of train items they share,
    :math:`C = R R^\top`, each keeping its top-``user_graph_k`` co-occurring users: the edge
    type ``('user', 'co_occurrence', 'user')`` of :class:`AddUserCooccurrenceGraph`, built
    sparse and in chunks and cached with the dataset (the authors precompute it in a separate
    script with a dense :math:`U \times U` matrix). Every epoch
    (:meth:`on_train_epoch_start`) each user's ``user_graph_k`` neighbour slots are drawn
    (:func:`resample_to_k_neighbours`: the top-k as ranked, and a user with fewer neighbours
    pads its slots by drawing among the earlier ones, as the authors' sampler), and weighted
    :math:`\alpha_{uv} = \mathrm{softmax}_{v \in \text{slots}(u)}(C_{uv})` (``"softmax"``,
    the code's default; ``"mean"``: :math:`1/k`). Then
    :math:`\bar{u}_u = u_u + \sum_{v \in \text{slots}(u)} \alpha_{uv} u_v`; a user who shares
    no item with anyone keeps :math:`u_u`. Evaluation uses the last drawn slots.

    **Prediction and loss.** Score :math:`\bar{u}_u^\top i_i`. ``bpr``: BPR (natural log;
    *choice*: the authors' code takes :math:`\log_2`, i.e. its BPR is :math:`1/\ln 2` times
    larger, equivalent to a ``reg_weight`` :math:`\ln 2` times smaller). ``reg``:
    ``reg_weight`` times the mean square of the batch users' preferences
    :math:`\sum_m \overline{(p^m_u)^2}` plus the mean square of the fusion weights
    :math:`\overline{w^2}` (and of :math:`W` for ``"concat"``), as the code.

    **Per-modality representations** (:attr:`Embeddings.modalities`): :math:`\hat{h}^m_i`, the
    modality's summand of the item representation (scoring space, width ``d``).

    Any number (:math:`\ge 1`) of modalities is accepted.

    Args:
        data: graph with train edges and at least one item modality.
        embedding_dim: width ``d`` of the preferences and projected features.
        num_ui_layers: propagation layers :math:`L` on the user-item graph.
        user_graph_k: co-occurring users sampled per user (paper/code: 40); above 40, at most
            the number of users - 1.
        fusion: one of :data:`FUSIONS`, see above.
        user_graph_weighting: ``"softmax"`` or ``"mean"``, see above.
        reg_weight: weight of the mean-square regulariser (:math:`\ge 0`).
    """

    loss_parts = ("bpr", "reg")
    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        # The dataset loader calls this before the constructor: check the key here, by name.
        return [AddUserCooccurrenceGraph(k=check_int("user_graph_k", settings["user_graph_k"], 1))]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        user_graph_k: int = 40,
        fusion: str = "weighted_sum",
        user_graph_weighting: str = "softmax",
        reg_weight: float = 0.1,
    ) -> None:
        super().__init__(data)
        embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        num_ui_layers = check_int("num_ui_layers", num_ui_layers, 0)
        self.user_graph_k = check_int("user_graph_k", user_graph_k, 1)
        # Each epoch draws [users, user_graph_k] slots among the other users (padded by
        # redrawing where a user has fewer): the published k always runs, a larger one must not
        # exceed the other users (1000 slots among 39 users is a slip, 10**12 never allocates).
        bound = max(self.num_users - 1, PUBLISHED_USER_GRAPH_K)
        if self.user_graph_k > bound:
            raise ValueError(
                f"user_graph_k must be <= {bound} (the larger of the number of other users, "
                f"{self.num_users - 1}, and the published {PUBLISHED_USER_GRAPH_K}), got "
                f"{user_graph_k!r}"
            )
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        self.user_graph_weighting = check_choice(
            "user_graph_weighting", user_graph_weighting, USER_GRAPH_WEIGHTINGS
        )
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)

        data = self.with_graphs(data, user_graph_k=self.user_graph_k)
        features = self.register_item_features(data)
        num_modalities = len(self.modalities)

        self.preferences = torch.nn.ParameterDict(
            {m: torch.nn.Parameter(torch.empty(self.num_users, embedding_dim)) for m in features}
        )
        self.projections = torch.nn.ModuleDict(
            {
                m: torch.nn.Sequential(
                    torch.nn.Linear(x.size(1), 4 * embedding_dim),
                    torch.nn.LeakyReLU(),
                    torch.nn.Linear(4 * embedding_dim, embedding_dim),
                )
                for m, x in features.items()
            }
        )
        self.fusion_weights = (
            torch.nn.Parameter(torch.empty(self.num_users, num_modalities))
            if fusion != "mean"
            else None
        )
        self.fusion_layer = (
            torch.nn.Linear(num_modalities * embedding_dim, embedding_dim)
            if fusion == "concat"
            else None
        )
        self.propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="sum", symmetric=True
        )
        adj = normalized_adjacency(self.train_edge_index(data), self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adj, symmetric=True)

        store = data[user_cooccurrence_edge_type()]
        self.register_buffer("user_graph_edge_index", store.edge_index.long(), persistent=False)
        self.register_buffer("user_graph_count", store.edge_weight.float(), persistent=False)
        self._user_aggregation: tuple[Tensor, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for preference in self.preferences.values():
            torch.nn.init.xavier_normal_(preference)
        for projection in self.projections.values():
            for layer in projection:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()  # PyTorch's default Linear init, as the code
        if self.fusion_weights is not None:
            with torch.no_grad():  # softmax of small noise: about 1/M per modality
                torch.nn.init.xavier_normal_(self.fusion_weights)
                self.fusion_weights.copy_(torch.softmax(self.fusion_weights, dim=1))
        if self.fusion_layer is not None:
            self.fusion_layer.reset_parameters()
        self.sample_user_graph()

    def on_train_epoch_start(self) -> None:
        self.sample_user_graph()

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        out = super()._apply(fn, *args, **kwargs)
        if self._user_aggregation is not None:  # keep the drawn slots, on the new device
            self._user_aggregation = tuple(fn(t) for t in self._user_aggregation)
        return out

    @torch.no_grad()
    def sample_user_graph(self) -> None:
        r"""Draw every user's neighbour slots and store the aggregation
        :math:`\alpha` as a constant ``[U, U]`` sparse matrix (duplicate slots summed)."""
        edge_index, count = self.user_graph_edge_index, self.user_graph_count
        users, slots, slot_edge = resample_to_k_neighbours(
            edge_index, self.num_users, self.user_graph_k
        )
        if self.user_graph_weighting == "softmax":
            weight = torch.softmax(count[slot_edge], dim=1)
        else:
            weight = torch.full(slots.shape, 1.0 / self.user_graph_k).to(count)
        rows = users.unsqueeze(1).expand_as(slots)
        matrix = to_csr(
            torch.stack([rows.reshape(-1), slots.reshape(-1)]),
            weight.reshape(-1),
            self.num_users,
            self.num_users,
        ).to(count.dtype)  # the buffers' dtype: float64 after .double()
        self._user_aggregation = (matrix, csr_transpose(matrix))

    def modality_representations(self) -> dict[str, Tensor]:
        r""":math:`\hat{h}^m` of every modality, ``[U + I, d]``."""
        out = {}
        for m in self.modalities:
            nodes = torch.cat([self.preferences[m], self.projections[m](self.feature(m))])
            out[m] = self.propagation(l2_normalize(nodes), self.adjacency)
        return out

    def fuse_users(self, users: list[Tensor]) -> Tensor:
        """The fused user representation from the per-modality ``[U, d]`` ones."""
        if self.fusion == "mean":
            return torch.stack(users).mean(0)
        weighted = [w.unsqueeze(1) * u for w, u in zip(self.fusion_weights.unbind(1), users)]
        if self.fusion == "weighted_sum":
            return torch.stack(weighted).sum(0)
        if self.fusion == "max":
            return torch.stack(weighted).max(0).values
        return self.fusion_layer(torch.cat(weighted, dim=1))

    def forward(self) -> Embeddings:
        reps = self.modality_representations()
        parts = {m: r.split([self.num_users, self.num_items]) for m, r in reps.items()}
        user = self.fuse_users([users for users, _ in parts.values()])
        items = {m: items for m, (_, items) in parts.items()}
        matrix, matrix_t = self._user_aggregation
        user = user + constant_spmm(matrix, user, matrix_t)
        return Embeddings(user, torch.stack(list(items.values())).sum(0), items)

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        reg = sum(self.preferences[m][batch.user].pow(2).mean() for m in self.modalities)
        if self.fusion_weights is not None:
            reg = reg + self.fusion_weights.pow(2).mean()
        if self.fusion_layer is not None:
            reg = reg + self.fusion_layer.weight.pow(2).mean()
        return {"bpr": bpr_loss(pos, neg), "reg": self.reg_weight * reg}
