"""DA-MRS (Xu et al., KDD 2024, arXiv 2406.12501): denoising and aligning multi-modal content
and user feedback, on its main backbone LightGCN (DA-MRS+LightGCN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.dataset import item_features
from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.data.transforms import (
    AddConsistentItemKNNGraphs,
    AddItemCooccurrenceGraph,
    DerivedGraph,
    co_interaction_edge_type,
    consistent_knn_edge_type,
)
from pyg_dhmrec.models.base import Embeddings, Recommender, pair_scores
from pyg_dhmrec.models.validation import check_int, check_nonnegative, check_positive
from pyg_dhmrec.nn import FrozenSparse, LightPropagation, symmetric_bernoulli_kl

#: Anchors per chunk of the all-item neighbour-discrimination loss (memory only).
CONTRASTIVE_CHUNK = 1024


def denoised_bpr_weights(
    pos_probs: Tensor, neg_probs: Tensor, alpha: float = 1.0, beta: float = 2.0, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    r"""DA-MRS's feedback weights from each view's preference probabilities (no gradient).

    ``pos_probs`` / ``neg_probs`` ``[V, B]`` hold :math:`p^v_{ui} = \sigma(e_u^\top \hat{h}^v_i)`
    of every view :math:`v` for the batch's positive / negative pairs. With the mean
    :math:`\mu_{ui}`, the variance :math:`s^2_{ui}` (unbiased, over the :math:`V` views) and the
    maximum :math:`p^{\max}_{ui}` of a positive's probabilities, and :math:`\bar{n}` the mean
    of all negatives' probabilities (over the batch and the views),

    .. math::
        w^+_{ui} = \mu_{ui}^{\alpha}\, \big(e^{-s^2_{ui}}\big)^{\beta}, \qquad
        w^-_{ui} = \mathbb{1}[\mu_{ui} < \bar{n}]\;
        \mathrm{clip}_{[0, 1]}\big(p^{\max}_{ui} - \bar{n}\big)^{\gamma}:

    an observed interaction whose content every view likes, consistently, keeps its weight
    (:math:`w^+ \to 1`); one the views like less than a random item is a likely false positive
    and also gets the reversed ranking term, weighted :math:`w^-`.
    """
    if pos_probs.dim() != 2 or neg_probs.shape != pos_probs.shape or pos_probs.size(0) < 2:
        raise ValueError(
            "denoised_bpr_weights needs [V, B] pos_probs and neg_probs of one shape with "
            f"V >= 2 views, got {list(pos_probs.shape)} and {list(neg_probs.shape)}"
        )
    with torch.no_grad():
        mean, var = pos_probs.mean(0), pos_probs.var(0)
        top = pos_probs.max(0).values
        neg_mean = neg_probs.mean()
        w_pos = mean.pow(alpha) * torch.exp(-var).pow(beta)
        suspicious = mean < neg_mean
        w_neg = torch.where(suspicious, (top - neg_mean).clamp(0.0, 1.0).pow(gamma), 0.0)
    return w_pos, w_neg


def denoised_bpr_loss(pos: Tensor, neg: Tensor, w_pos: Tensor, w_neg: Tensor) -> Tensor:
    r""":math:`-\frac{1}{B}\sum \big(w^+ \log\sigma(s^+ - s^-) + w^- \log\sigma(s^- - s^+)\big)`,
    computed with ``logsigmoid`` (never ``log(0)``)."""
    return -(w_pos * F.logsigmoid(pos - neg) + w_neg * F.logsigmoid(neg - pos)).mean()


def _chunk_labels(probs: Sequence[Tensor], num_positives: int) -> list[tuple[Tensor, Tensor]]:
    """Per target view, the chunk's multi-modal and single-modal positives from every view's
    row-softmax ``probs`` (see :func:`graded_positives`)."""
    total = torch.stack(list(probs)).sum(0)
    out = []
    for p in probs:
        mm = (total + p).topk(num_positives, dim=1).indices
        single = p.scatter(1, mm, float("-inf")).topk(num_positives, dim=1).indices
        out.append((mm, single))
    return out


@torch.no_grad()
def graded_positives(
    views: Sequence[Tensor], anchors: Tensor, num_positives: int, chunk_size: int = 1024
) -> list[tuple[Tensor, Tensor]]:
    r"""Per target view :math:`v`, each anchor's multi-modal and single-modal positives
    ``(mm [A, K], single [A, K])`` (item ids), as DA-MRS's pseudo-labels.

    :math:`P^w_{ij} = \mathrm{softmax}_j \cos(h^w_i, h^w_j)` over all items in every view
    :math:`w`; the multi-modal positives of :math:`i` in view :math:`v` are the :math:`K` items
    of largest :math:`\sum_w P^w_{ij} + P^v_{ij}` (all views, the target counted twice), the
    single-modal ones the next :math:`K` items of largest :math:`P^v_{ij}` alone. Computed
    ``chunk_size`` anchors at a time: memory :math:`O(V \cdot \text{chunk} \cdot I)`.
    (:func:`graded_neighbour_discrimination` selects the same positives in its own pass.)
    """
    units = [F.normalize(h, dim=-1) for h in views]
    parts: list[list[tuple[Tensor, Tensor]]] = []
    for start in range(0, anchors.numel(), chunk_size):
        rows = anchors[start : start + chunk_size]
        parts.append(
            _chunk_labels([torch.softmax(u[rows] @ u.t(), 1) for u in units], num_positives)
        )
    return [
        (torch.cat([p[v][0] for p in parts]), torch.cat([p[v][1] for p in parts]))
        for v in range(len(units))
    ]


class _GradedDenominators(torch.autograd.Function):
    """Per view and anchor, the log-sums of :math:`e^{c_{ij}}` over all items and over the
    items outside the multi-modal positives, with the positives themselves (selected in the
    same pass, no gradient). Forward and backward run in chunks of anchors; the backward pass
    recomputes one chunk's ``[chunk, I]`` logits per view and applies the analytic gradient
    (the softmax over all items, and over the items outside the positives), so no
    ``[anchors, I]`` block is kept between the passes."""

    @staticmethod
    def forward(ctx, anchors, num_positives, temperature, chunk_size, *units):  # noqa: ANN001, ANN205
        num_views, num_anchors = len(units), anchors.numel()
        log_all = units[0].new_empty(num_views, num_anchors)
        log_rest = torch.empty_like(log_all)
        shape = (num_views, num_anchors, num_positives)
        mm = torch.empty(shape, dtype=torch.long, device=anchors.device)
        single = torch.empty_like(mm)
        for start in range(0, num_anchors, chunk_size):
            end = min(start + chunk_size, num_anchors)
            rows = anchors[start:end]
            cosines = [u[rows] @ u.t() for u in units]
            labels = _chunk_labels([torch.softmax(c, 1) for c in cosines], num_positives)
            for v, (c, (pos_mm, pos_single)) in enumerate(zip(cosines, labels)):
                mm[v, start:end], single[v, start:end] = pos_mm, pos_single
                logits = c.div_(temperature)
                top = logits.max(1, keepdim=True).values
                e = logits.sub_(top).exp_()
                total = e.sum(1)
                # sum over items outside mm; it is at least the sum over the single positives
                rest = (total - e.gather(1, pos_mm).sum(1)).clamp_min(
                    e.gather(1, pos_single).sum(1)
                )
                log_all[v, start:end] = top.squeeze(1) + total.log()
                log_rest[v, start:end] = top.squeeze(1) + rest.log()
        ctx.save_for_backward(anchors, log_all, log_rest, mm, *units)
        ctx.settings = (temperature, chunk_size)
        ctx.mark_non_differentiable(mm, single)
        return log_all, log_rest, mm, single

    @staticmethod
    def backward(ctx, grad_all, grad_rest, _mm, _single):  # noqa: ANN001, ANN205
        anchors, log_all, log_rest, mm, *units = ctx.saved_tensors
        temperature, chunk_size = ctx.settings
        grad_all = torch.zeros_like(log_all) if grad_all is None else grad_all
        grad_rest = torch.zeros_like(log_rest) if grad_rest is None else grad_rest
        grads = [torch.zeros_like(u) for u in units]
        for start in range(0, anchors.numel(), chunk_size):
            end = min(start + chunk_size, anchors.numel())
            rows = anchors[start:end]
            for v, unit in enumerate(units):
                logits = unit[rows] @ unit.t() / temperature
                # d log-sum / d logit = that sum's softmax; the rest's excludes the positives
                soft_rest = (logits - log_rest[v, start:end, None]).exp_()
                soft_rest.scatter_(1, mm[v, start:end], 0.0)
                d = logits.sub_(log_all[v, start:end, None]).exp_()
                d.mul_(grad_all[v, start:end, None]).add_(
                    soft_rest.mul_(grad_rest[v, start:end, None])
                )
                d.div_(temperature)
                grads[v].index_add_(0, rows, d @ unit)
                grads[v] += d.t() @ unit[rows]
        return None, None, None, None, *grads


def graded_neighbour_discrimination(
    views: Sequence[Tensor],
    anchors: Tensor,
    num_positives: int,
    temperature: float = 0.2,
    chunk_size: int = 1024,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    r"""DA-MRS's graded neighbour-discrimination loss of every view, mean over the anchors.

    With :math:`c_{ij} = \cos(h^v_i, h^v_j) / \tau` in view :math:`v` and :math:`\mathcal{M}_i`,
    :math:`\mathcal{S}_i` the anchor's multi-modal and single-modal positives in that view
    (:func:`graded_positives`),

    .. math::
        \ell^v_i = -\log \frac{\sum_{j \in \mathcal{M}_i} e^{c_{ij}}}{\sum_{j} e^{c_{ij}}}
        - \log \frac{\sum_{j \in \mathcal{S}_i} e^{c_{ij}}}
        {\sum_{j} e^{c_{ij}} - \sum_{j \in \mathcal{M}_i} e^{c_{ij}}}:

    multi-modal neighbours above all other items, single-modal neighbours above all but the
    multi-modal ones. The sums over all items :math:`j` come from one autograd function that
    selects the positives and computes them in the same pass, ``chunk_size`` anchors at a time,
    and recomputes one ``[chunk, I]`` block per view in the backward pass: memory
    :math:`O(V \cdot \text{chunk} \cdot I)`, never ``[anchors, I]`` per view for autograd. Sums
    of exponentials are taken after subtracting the row maximum (no overflow); the denominator
    :math:`\sum_j - \sum_{\mathcal{M}}` is floored at :math:`\sum_{\mathcal{S}}`, which it
    exceeds exactly, so float rounding cannot make it zero.

    Returns:
        ``(losses [V], positives)``: the per-view losses and each view's ``(mm, single)``.
    """
    units = [F.normalize(h, dim=-1) for h in views]
    log_all, log_rest, mm, single = _GradedDenominators.apply(
        anchors, num_positives, float(temperature), chunk_size, *units
    )
    losses = []
    for v, unit in enumerate(units):
        rows = unit[anchors].unsqueeze(1)
        numerators = [
            torch.logsumexp((rows * unit[positives[v]]).sum(-1) / temperature, 1)
            for positives in (mm, single)
        ]
        loss = log_all[v] - numerators[0] + log_rest[v] - numerators[1]
        losses.append(loss.mean())
    return torch.stack(losses), [(mm[v], single[v]) for v in range(len(units))]


@dataclass
class DAMRSEmbeddings(Embeddings):
    """:class:`Embeddings` plus the LightGCN item output before the item-graph views are added
    (``id_item``, what the ID-based preference of :math:`\\mathcal{L}_{AU}` reads) and the
    behaviour view ``behaviour`` (:attr:`modalities` holds the modality views)."""

    id_item: Tensor | None = None
    behaviour: Tensor | None = None

    def views(self) -> list[Tensor]:
        """The item-graph views :math:`h^v`: each modality's, then the behaviour view."""
        return [*self.modalities.values(), self.behaviour]


class DAMRS(Recommender):
    r"""DA-MRS on LightGCN: denoised item-item graphs, a denoised BPR loss, and alignment of
    content and feedback guided by user preference (:math:`\mathcal{L}_{AU}`) and by graded
    item relations (:math:`\mathcal{L}_{AI}`).

    *Sources.* The paper's components and their names (DIIG, the item-item behaviour graph,
    the denoised BPR loss, :math:`\mathcal{L}_{AU}`, :math:`\mathcal{L}_{AI}`) and its main
    setting, DA-MRS+LightGCN (its best backbone on every dataset in the authors' logs and the
    only one run on TikTok), with the authors' released code (github.com/XMUDM/DA-MRS, read,
    not copied) for the exact forms. The paper's text was not at hand offline, so equation
    numbers are not cited: each formula below is named by the component it implements, and
    the forms follow the authors' Amazon code (``src/models/lightgcn.py``) where they could
    not be checked against the paper.

    **Denoised item-item graphs (DIIG).** Per modality :math:`m`, the binary top-:math:`k`
    cosine graph of the raw features restricted to cross-modally consistent pairs: the pair
    :math:`(i, j)` is a candidate only if in *every* modality its similarity is at least that
    modality's mean similarity over all pairs; :math:`k` = ``knn_k`` neighbours, the item
    itself included, :math:`\hat{A}^m = D^{-1/2} A^m D^{-1/2}` with row degrees (edge type
    ``('item', 'consistent_knn_<m>', 'item')``, :class:`AddConsistentItemKNNGraphs`, built in
    chunks and cached with the dataset). With one modality the filter is a threshold at that
    modality's mean similarity (see
    :func:`~pyg_dhmrec.data.consistent_knn.consistent_knn_edges`).

    **Item-item behaviour graph.** Items linked by co-interaction: each item's ``behaviour_k``
    items with the most common users among those with at least ``behaviour_min_count``,
    binary, plus a self-loop per item, normalised as above (edge type
    ``('item', 'co_interaction', 'item')``, :class:`AddItemCooccurrenceGraph` with
    ``weighting="binary"``, ``self_loops=True``; sparse and chunked).

    **Views and prediction.** Each graph :math:`v` (the modalities' and the behaviour graph)
    propagates the item ID embeddings, :math:`h^v = (\hat{A}^v)^{L} E_I` (``num_ii_layers``,
    last layer). LightGCN on the user-item graph (mean over layers :math:`0..L_{ui}`) gives
    :math:`\bar{e}_u, \bar{e}_i`; the item representation is
    :math:`e_i = \bar{e}_i + \frac{1}{V} \sum_v h^v_i` over the :math:`V = |M| + 1` views, the
    score :math:`\bar{e}_u^\top e_i`.

    **Denoised BPR** (part ``bpr``). :math:`p^v_{ui} = \sigma(\bar{e}_u^\top h^v_i / \lVert
    h^v_i \rVert)` in each view; an interaction the views like little and inconsistently is a
    likely false positive: weights :math:`w^+, w^-` (:func:`denoised_bpr_weights`,
    exponents ``alpha``, ``beta``, ``gamma``, no gradient) in
    :math:`-\frac{1}{B}\sum w^+ \log\sigma(s^+ - s^-) + w^- \log\sigma(s^- - s^+)`
    (:func:`denoised_bpr_loss`).

    **Alignment guided by user preference** (:math:`\mathcal{L}_{AU}`, part ``au``). For the
    batch's distinct users :math:`U_b` and distinct (positive or negative) items :math:`I_b`,
    the ID-based preference :math:`p_{ui} = \sigma(\bar{e}_u^\top \bar{e}_i / \lVert
    \bar{e}_i \rVert)` and the multi-modal one :math:`q_{ui} = \sigma(\bar{e}_u^\top h_i /
    \lVert h_i \rVert)`, :math:`h_i = \frac{1}{V}\sum_v h^v_i`, are aligned by the symmetric
    Bernoulli KL, mean over :math:`U_b \times I_b`:
    :math:`\mathcal{L}_{AU} = \mathrm{mean}\big(KL(p\|q) + KL(q\|p)\big)`
    (:func:`~pyg_dhmrec.nn.symmetric_bernoulli_kl`), times ``au_weight``.

    **Alignment guided by graded item relations** (:math:`\mathcal{L}_{AI}`, part ``ai``). In
    each view, every distinct batch item has ``num_positives`` multi-modal positives (the
    items most similar across all views) and as many single-modal ones (most similar in this
    view only) (:func:`graded_positives`, no gradient), and the graded contrastive loss
    :func:`graded_neighbour_discrimination` (temperature :math:`\tau` = ``temperature``, all
    items as candidates, chunked) ranks them in that order; mean over the views, times
    ``ai_weight``.
    The anchor item is its own first multi-modal positive (its cosine to itself is 1), as in
    the authors' code.

    *Where the authors' code differs.* Their preprocessing builds dense ``items x items``
    similarity matrices and loops over items (and, for the behaviour graph, over item pairs)
    in Python; here both graphs are built sparse, in chunks, and cached with the dataset,
    with the same edges up to ties (ties go to the lower item id). Their behaviour graph loads
    the co-interaction counts but normalises with ones (a binary graph), which we follow.
    Items with a zero feature row get NaN similarities there and similarity 0 here. They
    zero the filtered similarities and take the top-:math:`k` of the whole row, so where a
    modality's mean similarity is negative a filtered pair (0) can outrank a consistent pair of
    negative similarity; here only consistent pairs are candidates. Their
    :math:`\mathcal{L}_{AI}` holds ``[batch items, I]`` blocks for autograd and adds
    :math:`10^{-9}` inside the logarithms; ours is exact (log-sum-exp) and chunked. Their
    losses take ``log(sigmoid(x))``; ours ``logsigmoid`` (equal where theirs is finite). Their
    :math:`w^-` raises a possibly negative difference to :math:`\gamma` before clipping (NaN for
    a fractional :math:`\gamma`); ours clips first (the same for their :math:`\gamma = 1`).
    Their Amazon code reads exactly image and text (the TikTok code image, text and audio, and
    as released calls its pseudo-label function with a wrong argument count and halves
    :math:`\mathcal{L}_{AI}`); any number :math:`\ge 1` of modalities works here, with
    :math:`\sum_w P^w + P^v` generalising the Amazon code's pseudo-label score. They train
    with batch 4096 on TikTok and select settings on test; here the protocol's batch 2048 and
    selection on valid.

    Args:
        data: graph with train edges and at least one item modality.
        embedding_dim: size ``d`` of the user/item ID embeddings.
        num_ui_layers: LightGCN layers :math:`L_{ui}`.
        num_ii_layers: item-graph propagation layers :math:`L \ge 1`.
        knn_k: neighbours per item in the denoised modality graphs (the item included).
        behaviour_k: co-interacted neighbours per item in the behaviour graph.
        behaviour_min_count: the fewest common users of a behaviour-graph pair.
        au_weight: weight of :math:`\mathcal{L}_{AU}` (the authors' ``kl_weight``).
        ai_weight: weight of :math:`\mathcal{L}_{AI}` (the authors' ``neighbor_weight``).
        num_positives: multi-modal (and single-modal) positives :math:`K` per anchor.
        temperature: :math:`\tau > 0` of :math:`\mathcal{L}_{AI}`.
        alpha: exponent of the mean in :math:`w^+`.
        beta: exponent of :math:`e^{-s^2}` in :math:`w^+`.
        gamma: exponent of :math:`w^-`.
    """

    loss_parts = ("bpr", "au", "ai")
    uses_modalities = True
    exposes_modalities = True

    @classmethod
    def graph_transforms(cls, settings: Mapping[str, Any]) -> list[DerivedGraph]:
        return [
            AddConsistentItemKNNGraphs(k=settings["knn_k"]),
            AddItemCooccurrenceGraph(
                k=settings["behaviour_k"],
                min_count=settings["behaviour_min_count"],
                weighting="binary",
                self_loops=True,
            ),
        ]

    def __init__(
        self,
        data: HeteroData,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        behaviour_k: int = 2,
        behaviour_min_count: int = 2,
        au_weight: float = 1.0,
        ai_weight: float = 0.001,
        num_positives: int = 10,
        temperature: float = 0.2,
        alpha: float = 1.0,
        beta: float = 2.0,
        gamma: float = 1.0,
    ) -> None:
        super().__init__(data)
        check_int("embedding_dim", embedding_dim, 1)
        check_int("num_ui_layers", num_ui_layers, 0)
        check_int("num_ii_layers", num_ii_layers, 1)
        self.num_positives = check_int("num_positives", num_positives, 1)
        if 2 * num_positives > self.num_items:
            raise ValueError(
                f"num_positives = {num_positives} needs at least {2 * num_positives} items "
                f"(as many multi-modal as single-modal positives), the dataset has "
                f"{self.num_items}"
            )
        self.au_weight = check_nonnegative("au_weight", au_weight)
        self.ai_weight = check_nonnegative("ai_weight", ai_weight)
        self.alpha = check_nonnegative("alpha", alpha)
        self.beta = check_nonnegative("beta", beta)
        self.gamma = check_nonnegative("gamma", gamma)
        self.temperature = check_positive("temperature", temperature)
        self.modalities = list(item_features(data))
        if not self.modalities:
            raise ValueError("DAMRS needs at least one item modality, the dataset has none")
        data = self.with_graphs(
            data,
            knn_k=knn_k,
            behaviour_k=behaviour_k,
            behaviour_min_count=behaviour_min_count,
        )

        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        adjacency = normalized_adjacency(
            self.train_edge_index(data), self.num_users, self.num_items
        )
        self.adjacency = FrozenSparse(adjacency, symmetric=True)
        self.ui_propagation = LightPropagation(num_ui_layers, mode="mean", symmetric=True)
        self.modality_graphs = torch.nn.ModuleDict(
            {m: self._item_graph(data, consistent_knn_edge_type(m)) for m in self.modalities}
        )
        self.behaviour_graph = self._item_graph(data, co_interaction_edge_type())
        self.ii_propagation = LightPropagation(num_ii_layers, mode="last")
        self.reset_parameters()

    def _item_graph(self, data: HeteroData, edge_type: tuple[str, str, str]) -> FrozenSparse:
        return FrozenSparse(self.item_graph(data, edge_type))

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def forward(self) -> DAMRSEmbeddings:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        ui = self.ui_propagation(ego, self.adjacency)
        user, id_item = ui[: self.num_users], ui[self.num_users :]
        ids = self.item_embedding.weight
        modalities = {m: self.ii_propagation(ids, g) for m, g in self.modality_graphs.items()}
        behaviour = self.ii_propagation(ids, self.behaviour_graph)
        views = [*modalities.values(), behaviour]
        item = id_item + torch.stack(views).mean(0)
        return DAMRSEmbeddings(user, item, modalities, id_item=id_item, behaviour=behaviour)

    def feedback_weights(self, out: DAMRSEmbeddings, batch: BPRBatch) -> tuple[Tensor, Tensor]:
        """:func:`denoised_bpr_weights` of the batch from every view's preference."""
        users = out.user[batch.user]
        probs = []
        for items in (batch.pos_item, batch.neg_item):
            scores = [(users * F.normalize(h[items], dim=-1)).sum(-1) for h in out.views()]
            probs.append(torch.sigmoid(torch.stack(scores)))
        return denoised_bpr_weights(*probs, self.alpha, self.beta, self.gamma)

    def preference_alignment(self, out: DAMRSEmbeddings, batch: BPRBatch) -> Tensor:
        r""":math:`\mathcal{L}_{AU}` (unweighted) over the batch's distinct users and items."""
        users = out.user[torch.unique(batch.user)]
        items = torch.unique(torch.cat([batch.pos_item, batch.neg_item]))
        fused = torch.stack([h[items] for h in out.views()]).mean(0)
        id_logits = users @ F.normalize(out.id_item[items], dim=-1).t()
        mm_logits = users @ F.normalize(fused, dim=-1).t()
        return symmetric_bernoulli_kl(id_logits, mm_logits).mean()

    def relation_alignment(self, out: DAMRSEmbeddings, batch: BPRBatch) -> Tensor:
        r""":math:`\mathcal{L}_{AI}` (unweighted): :func:`graded_neighbour_discrimination` of
        every view on the batch's distinct items, mean over the views."""
        anchors = torch.unique(torch.cat([batch.pos_item, batch.neg_item]))
        losses, _ = graded_neighbour_discrimination(
            out.views(), anchors, self.num_positives, self.temperature, CONTRASTIVE_CHUNK
        )
        return losses.mean()

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, Tensor]:
        out = self() if out is None else out
        if not isinstance(out, DAMRSEmbeddings):
            raise TypeError(f"DAMRS.loss needs DAMRSEmbeddings, got {type(out).__name__}")
        pos, neg = pair_scores(out.user, out.item, batch)
        w_pos, w_neg = self.feedback_weights(out, batch)
        zero = out.user.new_zeros(())
        au = self.preference_alignment(out, batch) if self.au_weight else zero
        ai = self.relation_alignment(out, batch) if self.ai_weight else zero
        return {
            "bpr": denoised_bpr_loss(pos, neg, w_pos, w_neg),
            "au": self.au_weight * au,
            "ai": self.ai_weight * ai,
        }
