"""SIGER (Zhang, Zhou, Zeng, Niyato & Shen, 2025, arXiv 2508.06154): semantic item graph
enhancement for multimodal recommendation, built from the abstract on FREEDOM's backbone."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.graph import to_csr, user_item_matrix, weighted_sum
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import (
    AddItemCooccurrenceGraph,
    DerivedGraph,
    add_derived_graphs,
    co_interaction_edge_type,
)
from pyg_dhmrec.models.base import Embeddings, OnDemandRows, pair_scores
from pyg_dhmrec.models.freedom import FREEDOM
from pyg_dhmrec.models.validation import (
    check_at_most,
    check_bool,
    check_fraction,
    check_nonnegative,
    check_positive,
)
from pyg_dhmrec.nn import (
    FrozenSparse,
    LightPropagation,
    ModulusPerturbation,
    anchor_info_nce,
    bpr_loss,
    info_nce,
    sparse_rows_matmul,
    symmetric_info_nce,
)

#: The loss parts, always all returned (a switched-off mechanism's part is 0).
LOSS_PARTS = ("bpr", "mm", "reg", "cl", "align_anchor", "align_fused")


class FirstHops(NamedTuple):
    """The first hop of the user-item propagation (``ui``, over ``[U + I, d]``) and of each
    modality's semantic propagation (``semantic``): the clean pass and both perturbed views
    of a step start from the same layer-0 embeddings over the same graphs, and the noise
    (6) comes after each hop, so they share these products (``None``: no hop)."""

    ui: Tensor | None
    semantic: dict[str, Tensor | None]


@dataclass
class SIGEREmbeddings(Embeddings):
    """:class:`Embeddings` plus FREEDOM's projections :math:`W_m x_m` of the same pass (as
    :class:`OnDemandRows`: the ``mm`` term reads only the batch's items) and its
    :class:`FirstHops` (reused by the contrastive views of the same step)."""

    projected: dict[str, OnDemandRows] = field(default_factory=dict)
    first_hops: FirstHops | None = None


def _check_infusion_k(infusion_k: Any) -> int:
    if isinstance(infusion_k, bool) or not isinstance(infusion_k, int) or infusion_k < 1:
        raise ValueError(f"infusion_k must be a positive int, got {infusion_k!r}")
    return infusion_k


class SIGER(FREEDOM):
    r"""SIGER: collaborative signal infused into each modality's item semantic graph,
    modulus-guided embedding perturbation, and dual representation alignment.

    Only the paper's abstract is available and no code is public, so the equations below are
    this implementation's (numbered here and in ``docs/siger.md``); each *choice* says what
    the abstract leaves open. The backbone is FREEDOM's (the authors' earlier model), with
    FREEDOM's keys and defaults.

    **Backbone.** Per modality :math:`m`, :func:`knn_adjacency` gives FREEDOM's frozen graph
    :math:`\tilde{S}^m = D^{-1/2} S^m D^{-1/2}` (binary top-``knn_k`` cosine kNN, self
    included, row degrees). The user-item graph is pruned degree-sensitively each epoch
    (:class:`DegreeSensitiveEdgeDropout`, full graph in evaluation) and propagated by
    LightGCN (mean over :math:`0..L_{ui}`), giving the *behaviour* representations
    :math:`b_u, b_i` (1).

    **(2) Semantic representations**, one per modality: :math:`h^m = (\hat{S}^m)^{L_{ii}} E_I`
    (last layer), FREEDOM's propagation of the item ID embeddings, but over each modality's own
    graph :math:`\hat{S}^m` instead of one mixed graph (*choice*: the alignment needs several
    semantic representations). Fused: :math:`h = \sum_m w_m h^m` (3). Prediction:
    :math:`e_u = b_u`, :math:`e_i = b_i + h_i`, score :math:`e_u^\top e_i` (4). Since the hops
    are linear, with :math:`L_{ii} = 1` :math:`\sum_m w_m \tilde{S}^m E_I =
    (\sum_m w_m \tilde{S}^m) E_I` is exactly FREEDOM's mixed graph; with :math:`L_{ii} > 1`
    SIGER propagates :math:`\sum_m w_m (\tilde{S}^m)^L E_I` where FREEDOM propagates
    :math:`(\sum_m w_m \tilde{S}^m)^L E_I`. This is the only difference from FREEDOM when the
    three switches are off.

    **(5) Collaborative-signal infusion** (``use_infusion``). :math:`\tilde{C}` =
    :func:`item_cooccurrence_graph`: co-interaction counts :math:`C = R^\top R` (zero
    diagonal), top-``infusion_k`` per item, normalised :math:`D^{-1/2} C D^{-1/2}` (row
    degrees, as :math:`\tilde{S}^m`). Each modality graph becomes
    :math:`\hat{S}^m = (1 - \beta) \tilde{S}^m + \beta \tilde{C}`, :math:`\beta` =
    ``infusion_weight``; otherwise :math:`\hat{S}^m = \tilde{S}^m`. Built once, frozen.
    *Choice*: a convex mix of the two normalised graphs, not a re-weighting of the semantic
    edges by their collaborative support. Re-weighting can only rescale edges the noisy
    features already chose: on TikTok only 0.2% of the top-10 semantic kNN edges are among
    the top-10 co-interacted pairs, and 20% have any co-interaction, barely above the 18% of
    random item pairs, so re-weighting would leave the graphs almost unchanged; the mix adds
    the missing collaborative edges (each row keeps at most ``knn_k + infusion_k`` entries),
    keeps the operator's scale (a convex combination of two normalised graphs) and is
    FREEDOM's graph at :math:`\beta = 0`. With :math:`\sum_m w_m = 1` and
    :math:`L_{ii} = 1` the fused semantics become :math:`(1 - \beta) \sum_m w_m \tilde{S}^m E_I
    + \beta \tilde{C} E_I`, and every :math:`h^m` shares the collaborative component.

    **(6) Modulus-based personalised perturbation** (``use_perturbation``). Two views are
    propagated as in (1)-(4) on the same pruned graph, with noise added after every hop of
    both the user-item and the semantic propagations (SimGCL's placement, layer 0 clean):
    :math:`\Delta_n = \epsilon \lVert x_n \rVert\, \mathrm{sign}(x_n) \odot \hat{u}_n`
    (:func:`modulus_perturbation`; *choice*: the intensity of node :math:`n` is proportional
    to its own embedding modulus, so every node is rotated by a similar angle whatever its
    scale, unlike SimGCL's constant :math:`\epsilon`; the modulus gets no gradient).
    ``cl`` = ``cl_weight`` :math:`\cdot` [InfoNCE(:math:`e'_u, e''_u`) + InfoNCE(:math:`e'_i,
    e''_i`)] (7) over the batch's distinct users and positive items (:func:`info_nce`, cosine,
    in-batch negatives, temperature ``cl_temperature``); the BPR terms use the clean pass.

    **Dual representation alignment** (``use_alignment``), over the batch's distinct users
    and positive items. Users' semantic representations are aggregated from their train items,
    :math:`h^m_u = \sum_{i \in N_u} h^m_i / \sqrt{|N_u||N_i|}` (*choice*: the abstract aligns
    "representations" without saying which nodes; users have no semantic graph, so they get the
    LightGCN-normalised mean of their items', on the full train graph).
    (8) ``align_anchor`` = ``anchor_align_weight`` :math:`\cdot` :func:`anchor_info_nce` with
    the behaviour representation :math:`b_n` as the anchor and the :math:`M` semantic
    representations :math:`h^m_n` as positives, all modalities of the other nodes as negatives
    (*choice*: a multi-positive InfoNCE whose shared denominator aligns the modalities with
    each other through the anchor; the anchor is detached, so this term moves the semantic
    representations towards behaviour, not behaviour towards each noisy modality).
    (9) ``align_fused`` = ``fused_align_weight`` :math:`\cdot` :math:`\frac12`[InfoNCE(:math:`b,
    h`) + InfoNCE(:math:`h, b`)] with :math:`h` the fused semantics (3) (*choice*: symmetric,
    both sides trained). Both use ``align_temperature``.

    **Loss.** ``bpr`` on (4); ``mm``: FREEDOM's ``reg_weight`` :math:`\cdot \sum_m` BPR of the
    bias-free projections :math:`W_m x_i` against :math:`e_u`; ``reg``: ``l2_weight`` times
    :func:`squared_l2_penalty` of the batch's ID embeddings; then ``cl`` (7),
    ``align_anchor`` (8), ``align_fused`` (9). All six parts are always returned (0 where
    switched off), so ablations log the same parts. Parameters (and their initialisation
    order) are FREEDOM's: none of the three mechanisms adds one.

    **Computation** (issue 17; exact but for the *choice* at the end): the clean pass and
    both views start from the same layer-0 embeddings over the same graphs and add noise
    after each hop, so the first hop of every propagation is computed once per step
    (:class:`FirstHops`); the symmetric InfoNCE of (9) uses one similarity matrix for both
    directions (:func:`symmetric_info_nce`). The views are computed at the batch's rows only
    at their last hop (:func:`sparse_rows_matmul` reads only those rows of the graph), the
    InfoNCE terms (7)-(9) by fused cross-entropies (:func:`factored_cross_entropy`, one
    exponential per logit), the alignment's fusion (3) and the ``mm`` term's projections at
    the batch's rows only. *Choice* (a different random stream, the same distribution): the
    noise after the last hop is drawn for the batch's rows only, since (6) draws every row
    independently; on TikTok this skips about 65% of the uniform draws of a step, which cost
    13% of it.

    **Modality representations** (:attr:`Embeddings.modalities`): :math:`h^m` (2), before the
    fusion (3), in the scoring space.

    Args:
        data: graph with train edges and item features (any number >= 1 of modalities).
        embedding_dim, num_ui_layers, num_ii_layers, knn_k, modality_weights, edge_dropout,
            reg_weight, l2_weight: FREEDOM's (see :class:`~pyg_dhmrec.models.FREEDOM`).
        use_infusion: switch of (5).
        infusion_weight: :math:`\beta \in [0, 1]` of (5).
        infusion_k: co-interacted neighbours per item in :math:`\tilde{C}`.
        use_perturbation: switch of (6)-(7).
        perturbation_eps: relative noise intensity :math:`\epsilon \ge 0`.
        cl_weight: weight of (7).
        cl_temperature: temperature of (7).
        use_alignment: switch of (8)-(9).
        anchor_align_weight: weight of (8).
        fused_align_weight: weight of (9).
        align_temperature: temperature of (8) and (9).
    """

    loss_parts = LOSS_PARTS

    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        transforms = super().graph_transforms(settings)
        if settings.get("use_infusion"):
            # The dataset loader calls this before the constructor: check the key by name.
            transforms.append(AddItemCooccurrenceGraph(k=_check_infusion_k(settings["infusion_k"])))
        return transforms

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
        use_infusion: bool = True,
        infusion_weight: float = 0.5,
        infusion_k: int = 10,
        use_perturbation: bool = True,
        perturbation_eps: float = 0.1,
        cl_weight: float = 1e-3,
        cl_temperature: float = 0.2,
        use_alignment: bool = True,
        anchor_align_weight: float = 1e-3,
        fused_align_weight: float = 1e-3,
        align_temperature: float = 0.2,
    ) -> None:
        for name, value in (
            ("use_infusion", use_infusion),
            ("use_perturbation", use_perturbation),
            ("use_alignment", use_alignment),
        ):
            check_bool(name, value)
        for name, value in (
            ("reg_weight", reg_weight),
            ("l2_weight", l2_weight),
            ("cl_weight", cl_weight),
            ("anchor_align_weight", anchor_align_weight),
            ("fused_align_weight", fused_align_weight),
            ("perturbation_eps", perturbation_eps),
        ):
            check_nonnegative(name, value)
        check_positive("cl_temperature", cl_temperature)
        check_positive("align_temperature", align_temperature)
        check_fraction("infusion_weight", infusion_weight)
        _check_infusion_k(infusion_k)
        if use_infusion:  # co-interacted items among the other items (config.py checks it too)
            num_items = int(data["item"].num_nodes)
            check_at_most("infusion_k", infusion_k, num_items - 1, "the number of other items")
        data = add_derived_graphs(
            data,
            self.graph_transforms(
                {"knn_k": knn_k, "use_infusion": use_infusion, "infusion_k": infusion_k}
            ),
        )
        super().__init__(
            data,
            embedding_dim,
            num_ui_layers,
            num_ii_layers,
            knn_k,
            modality_weights,
            edge_dropout,
            reg_weight,
            l2_weight,
        )
        self.use_infusion, self.infusion_weight = use_infusion, float(infusion_weight)
        self.use_perturbation = use_perturbation
        self.cl_weight, self.cl_temperature = cl_weight, cl_temperature
        self.use_alignment = use_alignment
        self.anchor_align_weight, self.fused_align_weight = anchor_align_weight, fused_align_weight
        self.align_temperature = align_temperature

        # Each modality propagates over its own (infused) graph instead of FREEDOM's mixed one.
        del self.item_item
        collaborative = None
        if use_infusion:
            store = data[co_interaction_edge_type()]
            collaborative = to_csr(
                store.edge_index, store.edge_weight, self.num_items, self.num_items
            )
        graphs = {}
        for m in self.modalities:
            graph = self.knn_graph(data, m)
            if collaborative is not None:
                graph = weighted_sum(
                    [graph, collaborative], [1.0 - infusion_weight, infusion_weight]
                )
            graphs[m] = FrozenSparse(graph)
        self.semantic_graphs = torch.nn.ModuleDict(graphs)
        self.perturbation = ModulusPerturbation(perturbation_eps)
        if use_alignment:
            edge_index = self.train_edge_index(data)
            self.user_item = FrozenSparse(
                user_item_matrix(edge_index, self.num_users, self.num_items)
            )

    def _first_hops(self) -> FirstHops:
        """:class:`FirstHops` of the current (pruned, in training) graphs."""
        items = self.item_embedding.weight
        semantic = {
            m: self.ii_propagation.hop(items, self.semantic_graphs[m])
            if self.ii_propagation.num_layers
            else None
            for m in self.modalities
        }
        ui = None
        if self.ui_propagation.num_layers:
            ego = torch.cat([self.user_embedding.weight, items])
            ui = self.ui_propagation.hop(ego, self.pruning())
        return FirstHops(ui, semantic)

    def _encode(
        self, perturb: bool, first_hops: FirstHops | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Behaviour ``(b_u, b_i)`` (1) and semantic ``{m: h^m}`` (2); with ``perturb`` every
        hop gets the modulus-guided noise (6). ``first_hops``: the step's shared first hops
        (computed here if not given)."""
        hops = self._first_hops() if first_hops is None else first_hops
        items = self.item_embedding.weight
        noise = self.perturbation if perturb else None
        semantic = {}
        for m in self.modalities:
            semantic[m] = self.ii_propagation(
                items, self.semantic_graphs[m], noise, first_hop=hops.semantic[m]
            )
        ego = torch.cat([self.user_embedding.weight, items])
        ui = self.ui_propagation(ego, self.pruning(), noise, first_hop=hops.ui)
        return ui[: self.num_users], ui[self.num_users :], semantic

    def _fuse(self, semantic: Mapping[str, Tensor]) -> Tensor:
        """Eq. (3): :math:`h = \\sum_m w_m h^m`."""
        return sum(self.modality_weights[m] * semantic[m] for m in self.modalities)

    def forward(self) -> SIGEREmbeddings:
        """Eq. (4) embeddings; the modality representations are :math:`h^m` (2), and
        ``projected`` FREEDOM's :math:`W_m x_m` (the ``mm`` term)."""
        first_hops = self._first_hops()
        user, item, semantic = self._encode(perturb=False, first_hops=first_hops)
        projected = {m: OnDemandRows(self._projector(m)) for m in self.modalities}
        return SIGEREmbeddings(user, item + self._fuse(semantic), semantic, projected, first_hops)

    def _projector(self, modality: str) -> Callable[[Tensor | None], Tensor]:
        """:math:`W_m x_m` of the items ``index`` (``None``: every item)."""

        def rows(index: Tensor | None) -> Tensor:
            feature = self.input_feature(modality)
            return self.projections[modality](feature if index is None else feature[index])

        return rows

    def loss(self, batch: BPRBatch, out: SIGEREmbeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        pos, neg = pair_scores(out.user, out.item, batch)
        # FREEDOM's mm term on the projections of the batch's distinct items only
        items, inverse = torch.cat([batch.pos_item, batch.neg_item]).unique(return_inverse=True)
        projected = {m: rows.rows(items) for m, rows in out.projected.items()}
        local = BPRBatch(batch.user, *inverse.split([len(batch), len(batch)]))
        parts = {
            "bpr": bpr_loss(pos, neg),
            "mm": self.reg_weight
            * self.modality_bpr(Embeddings(out.user, out.item, projected), local),
            "reg": self.l2_weight * self.id_penalty(batch),
            "cl": out.user.new_zeros(()),
            "align_anchor": out.user.new_zeros(()),
            "align_fused": out.user.new_zeros(()),
        }
        batch_users, batch_items = batch.user.unique(), batch.pos_item.unique()
        if self.use_perturbation:
            views = self._contrast_views(batch_users, batch_items, out.first_hops)
            parts["cl"] = self.cl_weight * views
        if self.use_alignment:
            fused = self._fuse({m: h[batch_items] for m, h in out.modalities.items()})
            # The behaviour items of Eq. (1) from the same pass: e_i - h_i = b_i (up to rounding).
            behaviour_item = out.item[batch_items] - fused
            anchor, fused_part = self._alignment(
                out.user[batch_users],
                behaviour_item,
                out.modalities,
                fused,
                batch_users,
                batch_items,
            )
            parts["align_anchor"] = self.anchor_align_weight * anchor
            parts["align_fused"] = self.fused_align_weight * fused_part
        return parts

    def _contrast_views(
        self, users: Tensor, items: Tensor, first_hops: FirstHops | None = None
    ) -> Tensor:
        """Eq. (7): InfoNCE between two perturbed views, users plus items (from the step's
        ``first_hops``, if given). Only the rows of ``users`` and ``items`` are computed
        (:meth:`_view_rows`)."""
        hops = self._first_hops() if first_hops is None else first_hops
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        (u1, i1), (u2, i2) = (self._view_rows(users, items, ego, hops) for _ in range(2))
        tau = self.cl_temperature
        return info_nce(u1, u2, tau, fused=True) + info_nce(i1, i2, tau, fused=True)

    def _view_rows(
        self, users: Tensor, items: Tensor, ego: Tensor, hops: FirstHops
    ) -> tuple[Tensor, Tensor]:
        """One perturbed view (6) of Eq. (4), at the rows ``users`` and ``items`` only:
        ``(e'_u[users], e'_i[items])``, the same values and noise draws (in the same order:
        each modality, then the user-item hops) as the full view's rows."""
        semantic = {
            m: self._perturbed_rows(
                self.item_embedding.weight,
                self.semantic_graphs[m],
                self.ii_propagation,
                items,
                hops.semantic[m],
            )
            for m in self.modalities
        }
        rows = torch.cat([users, items + self.num_users])
        ui = self._perturbed_rows(ego, self.pruning(), self.ui_propagation, rows, hops.ui)
        user, item = ui.split([users.numel(), items.numel()])
        return user, item + self._fuse(semantic)

    def _perturbed_rows(
        self,
        x: Tensor,
        adj: Tensor | FrozenSparse,
        propagation: LightPropagation,
        rows: Tensor,
        first_hop: Tensor | None,
    ) -> Tensor:
        """``propagation(x, adj, self.perturbation, first_hop)[rows]`` for distinct ``rows``:
        every hop but the last runs on all nodes (the next reads their neighbours); the last
        hop, its noise and the layer mean only on ``rows``. The rows get the full pass's values
        for the same noise, and their noise the same distribution (fewer draws: the random
        stream differs from the full pass's)."""
        num_layers = propagation.num_layers
        out, total = x, x[rows]
        for layer in range(num_layers):
            last = layer == num_layers - 1
            if layer == 0 and first_hop is not None:
                out = first_hop[rows] if last else first_hop
            else:
                out = self._last_hop(out, adj, rows) if last else propagation.hop(out, adj)
            if last:
                out = self.perturbation(out)
                total = total + out
            else:
                out = self.perturbation(out)
                total = total + out[rows]
        if propagation.mode == "last":
            return total if num_layers == 0 else out
        return total / (num_layers + 1) if propagation.mode == "mean" else total

    @staticmethod
    def _last_hop(x: Tensor, adj: Tensor | FrozenSparse, rows: Tensor) -> Tensor:
        """``(adj @ x)[rows]``, reading only the graph's rows ``rows``."""
        return sparse_rows_matmul(adj.matrix if isinstance(adj, FrozenSparse) else adj, rows, x)

    def _alignment(
        self,
        behaviour_user: Tensor,
        behaviour_item: Tensor,
        semantic: Mapping[str, Tensor],
        fused: Tensor,
        users: Tensor,
        items: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Eqs. (8) and (9), each summed over users and items; ``behaviour_user``,
        ``behaviour_item`` and ``fused`` are the rows of ``users`` and ``items``, ``semantic``
        the full :math:`h^m`."""
        tau = self.align_temperature
        # Users' semantic representations: their items', LightGCN-normalised.
        user_semantic = [self.user_item(semantic[m])[users] for m in self.modalities]
        item_semantic = [semantic[m][items] for m in self.modalities]
        anchor = anchor_info_nce(behaviour_user.detach(), user_semantic, tau) + anchor_info_nce(
            behaviour_item.detach(), item_semantic, tau
        )
        user_fused = sum(
            self.modality_weights[m] * s for m, s in zip(self.modalities, user_semantic)
        )
        pairs = ((behaviour_user, user_fused), (behaviour_item, fused))
        fused_part = sum(symmetric_info_nce(b, h, tau) for b, h in pairs)
        return anchor, fused_part
