"""LGMRec (Guo et al., AAAI 2024): local and global graph learning for multimodal
recommendation."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import reduce
from operator import add

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import degree

from pyg_dhmrec.data.graph import normalized_adjacency, to_csr
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_rows
from pyg_dhmrec.models.validation import (
    MAX_LAYERS,
    MAX_WIDTH,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import (
    FrozenSparse,
    HypergraphPropagation,
    LightPropagation,
    bpr_loss,
    embedding_norm_penalty,
    hypergraph_contrastive_loss,
    l2_normalize,
    relaxed_dependencies,
)


@dataclass
class LGMRecEmbeddings(Embeddings):
    """:class:`Embeddings` that also carries, in ``global_views``, each modality's global
    hypergraph embeddings ``(users [U, d], items [I, d])`` of the same pass (for the HCL loss),
    and in ``global_factors`` their factors ``(H_u [U, A], H_i [I, A], M [A, d])`` after
    dropout, ``users = H_u @ M`` and ``items = H_i @ M`` (the HCL's rank-A logits)."""

    global_views: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    global_factors: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


class LGMRec(Recommender):
    r"""Decoupled local graph embeddings plus global hypergraph embeddings.

    Equation numbers are those of the paper (arXiv 2312.16400). :math:`R \in \{0,1\}^{U \times I}`
    is the train interaction matrix and :math:`\hat{A} = D^{-1/2} A D^{-1/2}` the normalised
    user-item graph (:func:`normalized_adjacency`).

    **Collaborative graph embedding (CGE, Eqs. 1-2).** LightGCN on the ID embeddings,
    :math:`E^{(l+1)} = \hat{A} E^{(l)}`, read out as the mean over layers
    :math:`0..L_{ui}`: :math:`E_c`.

    **Modality graph embedding (MGE, Eqs. 3-5).** Per modality :math:`m`, items start from
    their projected features :math:`\tilde{e}_i^m = T_m x_i^m` (Eq. 3; :math:`T_m` has no bias,
    Xavier uniform), users from the *mean of their items'* projected features,
    :math:`\tilde{e}_u^m = \frac{1}{|N_u|}\sum_{i \in N_u} \tilde{e}_i^m` (Eq. 4; no user ID
    embedding enters, which decouples the two signals; a user without train items starts at 0).
    They propagate over the same :math:`\hat{A}` for their own layer count :math:`L_{mm}`
    (``num_mm_layers``), and the *last* layer is the output :math:`E_m` (Eq. 5; a plain
    :math:`\hat{A}^{L_{mm}}`, as the authors' code does). The map is linear in the features:
    :math:`E_m = \hat{A}^{L_{mm}} [D_u^{-1} R X_m; X_m]\, T_m^\top`, so for features at most
    ``precompute_width_ratio`` (2) times ``d`` wide the propagated features
    :math:`\hat{A}^{L_{mm}} [D_u^{-1} R X_m; X_m]` are computed once, at construction, and
    each pass multiplies them by :math:`T_m^\top` (the same values up to float rounding; on
    TikTok's 128-d features it replaces three sparse products per modality and step, and their
    backward, by one dense one). Local embeddings (Eq. 6):
    :math:`E_{lge} = E_c + \sum_m \mathrm{NORM}(E_m)`, NORM the row-wise L2 normalisation.

    **Global hypergraph embedding (GHE, Eqs. 7-10).** Each modality has :math:`A` learnable
    hyperedge embeddings :math:`V_m \in \mathbb{R}^{A \times d_m}` in the raw feature space.
    Item-hyperedge dependencies :math:`H_i^m = X_m V_m^\top` (Eq. 7) and user-hyperedge
    dependencies through the interactions, :math:`H_u^m = R\, H_i^m` (Eq. 7; :math:`R` binary,
    a sum, as the paper writes it), both made row distributions by the Gumbel-softmax of
    :func:`relaxed_dependencies` at temperature :math:`\tau` (Eq. 8). *Choices*: the
    relaxation noise (the paper's :math:`\log\delta - \log(1-\delta)`; MMRec's code draws
    standard Gumbel noise instead) is added in training only, evaluation uses the noiseless
    softmax so rankings are deterministic (MMRec's code also samples noise when ranking).
    Dropout with keep probability ``keep_rate`` (inverted scaling, training only) is applied
    to the dependency matrices, one mask per matrix per forward pass, shared by :math:`H` and
    :math:`H^\top` and by all hypergraph layers, as in the authors' code. Message passing
    (Eq. 9, :class:`HypergraphPropagation`), for :math:`h = 0..H-1`:

    .. math::
        E_i^{m,h+1} = \tilde{H}_i^m (\tilde{H}_i^{m\top} E_i^{m,h}), \qquad
        E_u^{m,H} = \tilde{H}_u^m (\tilde{H}_i^{m\top} E_i^{m,H-1}),

    starting from the item part of the collaborative embedding,
    :math:`E_i^{m,0} = E_{c,I}` (*choice*, the authors' code). Global embeddings (Eq. 10):
    :math:`E_{ghe} = \sum_m [E_u^{m,H}; E_i^{m,H}]`.

    **Fusion and prediction (Eqs. 12-13).**
    :math:`E^* = E_{lge} + \alpha\, \mathrm{NORM}(E_{ghe})`, score :math:`e_u^{*\top} e_i^*`.

    **Loss (Eqs. 11, 14-15).** ``bpr``: BPR on :math:`E^*`. ``hcl``: ``cl_weight`` times the
    hypergraph contrastive loss (Eq. 11, :func:`hypergraph_contrastive_loss`, cosine
    similarity at temperature :math:`\tau`): for the batch users, modality :math:`a`'s global
    user embedding is pulled to modality :math:`b`'s of the same user against all users'; the
    same for the batch's positive items (*choice*: the positive items, as the authors' code).
    It is summed over the batch, not averaged (the paper sums; ``cl_weight = 1e-4`` is tuned to
    that scale). The paper contrasts its two modalities (visual anchor, textual candidates);
    with :math:`M` modalities every pair :math:`a < b` in the dataset's modality order is
    contrasted and the terms added (exactly the paper's for :math:`M = 2`; 0 for
    :math:`M = 1`, where nothing can be contrasted). One :math:`\tau` serves Eq. 8 and Eq. 11,
    as in the authors' code (0.2). ``reg``: ``reg_weight`` times MMRec's
    :func:`embedding_norm_penalty` (not squared) of the batch rows of :math:`E^*`, the form the
    published ``reg_weight`` was tuned with, for the paper's :math:`\lambda_2 \lVert\Theta\rVert^2`.

    **Modality outputs.** :attr:`Embeddings.modalities` gives modality :math:`m`'s item
    representation as :math:`\mathrm{NORM}(E_{m,I}) + \alpha\, \mathrm{NORM}(E_i^{m,H})`, its
    local and global part as each enters the fusion (*choice*: the global part is normalised
    on its own, since Eq. 12 normalises only the modalities' sum).

    Args:
        data: graph with train edges and at least one item modality (any number).
        embedding_dim: size ``d`` of the ID embeddings and of :math:`T_m x^m`.
        num_ui_layers: CGE layers :math:`L_{ui}` (mean readout).
        num_mm_layers: MGE layers :math:`L_{mm}` (last-layer readout).
        num_hyper_layers: hypergraph layers :math:`H \ge 1`.
        num_hyperedges: hyperedges :math:`A` per modality.
        keep_rate: keep probability of the dependency dropout, in (0, 1].
        alpha: weight :math:`\alpha` of the global embeddings.
        cl_weight: weight :math:`\lambda_1` of the hypergraph contrastive loss.
        reg_weight: weight :math:`\lambda_2` of the embedding-norm penalty.
        temperature: :math:`\tau` of the Gumbel-softmax and of the contrastive loss.
    """

    loss_parts = ("bpr", "hcl", "reg")

    uses_modalities = True
    exposes_modalities = True
    #: Modalities at most this many times ``embedding_dim`` wide get their MGE propagation
    #: precomputed (see the class docstring).
    precompute_width_ratio: float = 2.0

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_mm_layers: int = 2,
        num_hyper_layers: int = 1,
        num_hyperedges: int = 4,
        keep_rate: float = 0.5,
        alpha: float = 0.3,
        cl_weight: float = 1e-4,
        reg_weight: float = 1e-6,
        temperature: float = 0.2,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_int("num_hyper_layers", num_hyper_layers, 1, MAX_LAYERS)
        check_int("num_hyperedges", num_hyperedges, 1, MAX_WIDTH)
        check_fraction("keep_rate", keep_rate, include_0=False)
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_nonnegative("alpha", alpha)
        self.cl_weight = check_nonnegative("cl_weight", cl_weight)
        self.reg_weight = check_nonnegative("reg_weight", reg_weight)

        features = self.register_item_features(data)

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.projections = torch.nn.ModuleDict(
            {m: torch.nn.Linear(x.size(1), embedding_dim, bias=False) for m, x in features.items()}
        )
        self.hyperedges = torch.nn.ParameterDict(
            {
                m: torch.nn.Parameter(torch.empty(num_hyperedges, x.size(1)))
                for m, x in features.items()
            }
        )

        edge_index = self.train_edge_index(data)
        adj = normalized_adjacency(edge_index, self.num_users, self.num_items)
        self.adjacency = FrozenSparse(adj, symmetric=True)
        self.interactions = FrozenSparse(to_csr(edge_index, None, self.num_users, self.num_items))
        user_degree = degree(edge_index[0], self.num_users)
        self.register_buffer("inv_user_degree", 1.0 / user_degree.clamp_min(1.0), persistent=False)

        self.ui_propagation = LightPropagation(
            check_int("num_ui_layers", num_ui_layers, 0), mode="mean"
        )
        self.mm_propagation = LightPropagation(
            check_int("num_mm_layers", num_mm_layers, 0), mode="last"
        )
        self.hyper_propagation = HypergraphPropagation(num_hyper_layers)
        self.dependency_dropout = torch.nn.Dropout(p=1.0 - keep_rate)
        # Eqs. 3-5 are linear in the features: the last MGE layer is the fixed graph operator
        # applied to X_m, times T_m. Narrow features are propagated once here (a dense product
        # per step instead of 2 L_mm + 1 sparse ones and their backward); wide ones, projected
        # first, cost fewer operations each step
        for m, x in features.items():
            if x.size(1) <= self.precompute_width_ratio * embedding_dim:
                with torch.no_grad():
                    basis = self._propagate_modality(x)
                self.register_buffer(f"mge_basis_{m}", basis, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for m in self.modalities:
            torch.nn.init.xavier_uniform_(self.projections[m].weight)
            torch.nn.init.xavier_uniform_(self.hyperedges[m])

    def _to_users(self, item_rows: Tensor) -> Tensor:
        """:math:`R X`: every user sums the rows of its train items."""
        return self.interactions(item_rows)

    def dependencies(self, modality: str) -> tuple[Tensor, Tensor]:
        """Eqs. 7-8: ``(H_i [I, A], H_u [U, A])`` of ``modality``, rows distributions, before
        dropout; relaxation noise in training mode only."""
        logits = self.feature(modality) @ self.hyperedges[modality].t()
        noise = self.training
        return (
            relaxed_dependencies(logits, self.temperature, noise),
            relaxed_dependencies(self._to_users(logits), self.temperature, noise),
        )

    def _propagate_modality(self, items: Tensor) -> Tensor:
        """Eqs. 4-5 from item rows ``items`` (users start at the mean of their items'): the
        ``[U + I, *]`` last layer."""
        users = self._to_users(items) * self.inv_user_degree.unsqueeze(-1)
        return self.mm_propagation(torch.cat([users, items]), self.adjacency)

    def _modality_graph_embedding(self, modality: str) -> Tensor:
        """Eqs. 3-5: the ``[U + I, d]`` last MGE layer of ``modality``, from the propagated
        features when they were precomputed (the same linear map, applied in the other order)."""
        basis = self._buffers.get(f"mge_basis_{modality}")
        if basis is not None:
            return self.projections[modality](basis)
        return self._propagate_modality(self.projections[modality](self.feature(modality)))

    def forward(self) -> LGMRecEmbeddings:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        collab = self.ui_propagation(ego, self.adjacency)  # Eqs. 1-2
        local, hyper_users, hyper_items = collab, [], []
        representations, global_views, global_factors = {}, {}, {}
        for m in self.modalities:
            mge = l2_normalize(self._modality_graph_embedding(m))
            local = local + mge  # Eq. 6
            item_dep, user_dep = self.dependencies(m)
            item_dep, user_dep = (
                self.dependency_dropout(item_dep),
                self.dependency_dropout(user_dep),
            )
            items, users, messages = self.hyper_propagation(
                collab[self.num_users :], item_dep, user_dep, return_messages=True
            )  # Eq. 9
            global_views[m] = (users, items)
            global_factors[m] = (user_dep, item_dep, messages)
            hyper_users.append(users)
            hyper_items.append(items)
            representations[m] = mge[self.num_users :] + self.alpha * l2_normalize(items)
        # Eq. 10: the users' and the items' sums over modalities, then one [U + I, d] tensor
        global_sum = torch.cat([reduce(add, hyper_users), reduce(add, hyper_items)])
        final = torch.add(local, l2_normalize(global_sum), alpha=self.alpha)  # Eq. 12
        return LGMRecEmbeddings(
            *final.split([self.num_users, self.num_items]),
            representations,
            global_views,
            global_factors,
        )

    def hypergraph_contrastive(self, out: LGMRecEmbeddings, batch: BPRBatch) -> Tensor:
        """Eq. 11 over every modality pair, for the batch's users and positive items; the
        candidates' logits in the rank-A space of their hypergraph factors (same values)."""
        hcl = out.user.new_zeros(())
        for a, b in itertools.combinations(self.modalities, 2):
            (user_a, item_a), (user_b, item_b) = out.global_views[a], out.global_views[b]
            user_dep, item_dep, messages = out.global_factors[b]
            hcl = hcl + hypergraph_contrastive_loss(
                user_a, user_b, batch.user, self.temperature, (user_dep, messages)
            )
            hcl = hcl + hypergraph_contrastive_loss(
                item_a, item_b, batch.pos_item, self.temperature, (item_dep, messages)
            )
        return hcl

    def loss(self, batch: BPRBatch, out: LGMRecEmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        user, pos, neg = pair_rows(out.user, out.item, batch)  # read by bpr and reg
        reg = embedding_norm_penalty(user, pos, neg)
        return {
            "bpr": bpr_loss((user * pos).sum(-1), (user * neg).sum(-1)),
            "hcl": self.cl_weight * self.hypergraph_contrastive(out, batch),
            "reg": self.reg_weight * reg,
        }
