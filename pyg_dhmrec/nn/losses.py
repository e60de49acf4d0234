"""Loss terms shared by the recommenders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""Bayesian personalised ranking: :math:`-\frac{1}{B}\sum \log\sigma(s^+ - s^-)`.

    Computed as ``softplus(s^- - s^+)``, which equals it and never takes ``log(0)``.
    """
    if pos_score.shape != neg_score.shape:
        raise ValueError(
            f"pos_score and neg_score must have one shape, got {list(pos_score.shape)} "
            f"and {list(neg_score.shape)}"
        )
    return F.softplus(neg_score - pos_score).mean()


def embedding_norm_penalty(*embeddings: Tensor) -> Tensor:
    r"""MMRec's ``EmbLoss``: :math:`\frac{1}{B}\sum_k \lVert E_k \rVert_F` over the batch tensors.

    The Frobenius norm is not squared; ``B`` is the row count of the last tensor. Published
    MMRec numbers (BPR, LightGCN, ...) use this form with their ``reg_weight``.
    """
    if not embeddings:
        raise ValueError("embedding_norm_penalty needs at least one tensor")
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / embeddings[-1].size(0)


def squared_l2_penalty(*embeddings: Tensor) -> Tensor:
    r""":math:`\frac{1}{2B}\sum_k \lVert E_k \rVert_F^2`, the LightGCN paper's regulariser."""
    if not embeddings:
        raise ValueError("squared_l2_penalty needs at least one tensor")
    return sum(e.pow(2).sum() for e in embeddings) / (2 * embeddings[-1].size(0))


def score_distribution_kl(user_p: Tensor, item_p: Tensor, user_q: Tensor, item_q: Tensor) -> Tensor:
    r"""KL between two users-over-items score distributions (DHMRec Eqs. 20-21).

    .. math::
        P = \mathrm{softmax}(E_{u}^{p} (E_{i}^{p})^\top), \quad
        Q = \mathrm{softmax}(E_{u}^{q} (E_{i}^{q})^\top), \quad
        KL(P \,\|\, Q) = \frac{1}{B} \sum_u \sum_i P_{ui} \log \frac{P_{ui}}{Q_{ui}}

    Softmax over all items per user (row); computed from ``log_softmax`` (no ``log(0)``).
    Cost :math:`O(B |I| d)` for ``B`` user rows.
    """
    log_p = torch.log_softmax(user_p @ item_p.t(), dim=-1)
    log_q = torch.log_softmax(user_q @ item_q.t(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def info_nce(anchor: Tensor, positive: Tensor, temperature: float) -> Tensor:
    r"""InfoNCE with in-batch negatives on cosine similarity.

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{i=1}^{B} \log
        \frac{\exp(\hat{a}_i^\top \hat{p}_i / \tau)}
             {\sum_{j=1}^{B} \exp(\hat{a}_i^\top \hat{p}_j / \tau)}

    with :math:`\hat{x} = x / \lVert x \rVert_2`. Row ``i`` of ``anchor`` and ``positive`` form
    the positive pair; every other row of ``positive`` is a negative of anchor ``i``, and the
    positive itself stays in the denominator (the SGL / SimGCL form).
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"info_nce needs two [B, d] tensors of one shape, got {list(anchor.shape)} "
            f"and {list(positive.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    target = torch.arange(anchor.size(0), device=anchor.device)
    return F.cross_entropy(logits, target)


def anchor_info_nce(anchor: Tensor, views: list[Tensor], temperature: float) -> Tensor:
    r"""Anchor-based InfoNCE: several views of each node pulled to one anchor, contrasted in one
    shared candidate set (SIGER's semantic alignment; a multi-positive InfoNCE).

    .. math::
        \mathcal{L} = -\frac{1}{BM} \sum_{i=1}^{B} \sum_{m=1}^{M} \log
        \frac{\exp(\hat{a}_i^\top \hat{v}^m_i / \tau)}
             {\sum_{j=1}^{B} \sum_{m'=1}^{M} \exp(\hat{a}_i^\top \hat{v}^{m'}_j / \tau)}

    with :math:`\hat{x} = x / \lVert x \rVert_2`. Anchor :math:`a_i` is the query; every view
    :math:`v^m_i` of node :math:`i` is a positive and the views of the other rows, of every
    view kind, are negatives. Because the :math:`M` views compete in one denominator, they are
    aligned with each other through the shared anchor, not only each with the anchor: a view
    kind that drifts from the others (e.g. a noisy modality) raises the loss of all. The
    minimum is :math:`\log M` (the positives share the mass); with :math:`M = 1` it is
    :func:`info_nce`.
    """
    if isinstance(views, Tensor) or len(views) == 0:
        raise ValueError("views must be a non-empty sequence of [B, d] tensors")
    if anchor.dim() != 2 or any(v.shape != anchor.shape for v in views):
        raise ValueError(
            f"anchor_info_nce needs [B, d] anchor and views of one shape, got "
            f"{list(anchor.shape)} and {[list(v.shape) for v in views]}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    candidates = F.normalize(torch.cat(list(views)), dim=-1)  # [M B, d], view-major
    logits = F.normalize(anchor, dim=-1) @ candidates.t() / temperature  # [B, M B]
    rows = torch.arange(anchor.size(0), device=anchor.device)
    positives = torch.stack([logits[rows, m * anchor.size(0) + rows] for m in range(len(views))])
    return (torch.logsumexp(logits, dim=-1) - positives).mean()


def symmetric_bernoulli_kl(logit_p: Tensor, logit_q: Tensor) -> Tensor:
    r"""Elementwise :math:`KL(p \,\|\, q) + KL(q \,\|\, p)` of Bernoulli distributions with
    :math:`p = \sigma(a)`, :math:`q = \sigma(b)` given by their logits :math:`a, b`:

    .. math::
        KL(p \,\|\, q) + KL(q \,\|\, p)
        = (p - q) \Big(\log \frac{p}{1 - p} - \log \frac{q}{1 - q}\Big) = (p - q)(a - b),

    the two KLs' :math:`p \log p` and :math:`(1-p)\log(1-p)` terms cancelling. The right-hand
    form takes no logarithm, so saturated probabilities (:math:`\sigma(a)` rounding to 0 or 1)
    give finite values where :math:`\log \sigma` would give ``inf - inf``.
    """
    if logit_p.shape != logit_q.shape:
        raise ValueError(
            f"logit_p and logit_q must have one shape, got {list(logit_p.shape)} and "
            f"{list(logit_q.shape)}"
        )
    return (torch.sigmoid(logit_p) - torch.sigmoid(logit_q)) * (logit_p - logit_q)


def info_nce_all_negatives(
    anchor: Tensor, positive: Tensor, index: Tensor, temperature: float
) -> Tensor:
    r"""InfoNCE of the rows ``index`` of two views against every row of the second view, on
    cosine similarity (DiffMM Eqs. 18-19, HCCF / SGL with full-graph negatives):

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{b=1}^{B} \log
        \frac{\exp(\hat{a}_{i_b}^\top \hat{p}_{i_b} / \tau)}
             {\sum_{j=1}^{N} \exp(\hat{a}_{i_b}^\top \hat{p}_j / \tau)}

    with :math:`\hat{x} = x / \lVert x \rVert_2`, ``anchor`` and ``positive`` two ``[N, d]``
    views of the same ``N`` nodes and ``index`` the ``B`` anchor rows (repeats count again).
    Memory :math:`O(B N)`: one ``[B, N]`` logit block.
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"info_nce_all_negatives needs two [N, d] views of one shape, got "
            f"{list(anchor.shape)} and {list(positive.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = F.normalize(anchor[index], dim=-1)
    logits = rows @ F.normalize(positive, dim=-1).t() / temperature
    return F.cross_entropy(logits, index)
