"""Loss terms shared by the recommenders."""

from __future__ import annotations

import math

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


CHUNK_ELEMENTS = 1 << 18  # logits per block: 1 MiB in float32, stays in cache


class _FactoredCrossEntropy(torch.autograd.Function):
    """Row blocks of ``Q K^T``, each exponentiated once: the forward pass also forms the
    gradients (the loss is a scalar, so backward only scales them), and no ``[B, N]`` tensor
    is ever built."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, target: Tensor, shift: bool) -> Tensor:  # noqa: ANN001
        rows = max(1, CHUNK_ELEMENTS // max(1, key.size(0)))
        key_t = key.t()
        lse = query.new_empty(query.size(0), 1)
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if grads:
            grad_query = torch.empty_like(query)
            grad_key_t = query.new_zeros(key_t.shape)  # accumulated as Q^T P, not P^T Q
        for start in range(0, query.size(0), rows):
            rows_q = query[start : start + rows]
            block = rows_q @ key_t
            if shift:  # by the row maximum, so that no exponential overflows
                row_max = block.amax(dim=-1, keepdim=True)
                block.sub_(row_max)
            block.exp_()
            norm = block.sum(dim=-1, keepdim=True)
            lse[start : start + rows] = norm.log() + row_max if shift else norm.log()
            if grads:  # softmax = block / norm, the division folded into the [rows, r] factors
                # K^T P^T, not P K: MKL's [rows, N] x [N, r] with r tiny is ~4x slower
                grad_query[start : start + rows] = (key_t @ block.t()).t().div_(norm)
                grad_key_t.addmm_((rows_q / norm).t(), block)
        if grads:  # the one-hot part of softmax - onehot(target): a gather and a scatter
            grad_query.sub_(key[target])
            ctx.save_for_backward(grad_query, grad_key_t.t().index_add(0, target, query, alpha=-1))
        return lse.sum() - (query * key[target]).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:  # noqa: ANN001
        grad_query, grad_key = ctx.saved_tensors
        return grad_query * grad, grad_key * grad, None, None


def factored_cross_entropy(
    query: Tensor, key: Tensor, target: Tensor, max_logit: float | None = None
) -> Tensor:
    r"""Softmax cross-entropy of the logits :math:`Q K^\top` against target columns, summed
    over the rows:

    .. math::
        \mathcal{L} = \sum_{b=1}^{B} \Big( \log \sum_{n=1}^{N} e^{q_b^\top k_n}
        - q_b^\top k_{t_b} \Big)

    the value and gradients of ``F.cross_entropy(query @ key.T, target, reduction="sum")``,
    computed by one autograd function in blocks of rows (about 260,000 logits each). Each
    block's logits are exponentiated once, in the forward pass, which also accumulates the
    gradients ``(P - Y) K`` and ``(P - Y)^\top Q`` (``P`` the softmax, the one-hot ``Y`` a
    gather) when an input requires them; as the loss is a scalar, the backward pass only
    scales them. No ``[B, N]`` tensor is built, so memory is :math:`O((B + N) r)` beyond the
    inputs and each block stays in cache (a fresh ``[B, N]`` tensor per step also pays for its
    page faults on CPU). Low-rank factors (``query`` ``[B, r]``, ``key`` ``[N, r]`` with
    small ``r``) make the products cost :math:`O(B N r)`. Each row is shifted by its maximum
    before the exponential, unless ``max_logit`` bounds every :math:`|q_b^\top k_n|` so
    tightly that no exponential or row sum can overflow or vanish (cosine logits at
    temperature :math:`\tau`: :math:`1 / \tau`); then two passes over each block are saved.

    Args:
        query: ``[B, r]`` rows :math:`q_b`.
        key: ``[N, r]`` candidates :math:`k_n`.
        target: ``[B]`` index of each row's positive candidate :math:`t_b`.
        max_logit: a bound of the logits' absolute values, or ``None``.
    """
    if query.dim() != 2 or key.dim() != 2 or query.size(1) != key.size(1):
        raise ValueError(
            f"factored_cross_entropy needs [B, r] query and [N, r] key, got "
            f"{list(query.shape)} and {list(key.shape)}"
        )
    if target.shape != (query.size(0),):
        raise ValueError(
            f"target must be [B={query.size(0)}] candidate indices, got {list(target.shape)}"
        )
    shift = max_logit is None or needs_shift(max_logit, key.size(0), query.dtype)
    return _FactoredCrossEntropy.apply(query, key, target, shift)


def needs_shift(max_logit: float, count: int, dtype: torch.dtype) -> bool:
    """Whether a softmax over ``count`` logits bounded by ``|max_logit|`` must subtract each
    row's maximum: unshifted, its exponentials and row sums must stay finite and non-zero (with
    a margin of :math:`e^8` either side) in ``dtype``."""
    finfo = torch.finfo(dtype)
    headroom = math.log(finfo.max) - math.log(max(1, count)) - 8.0
    return not abs(max_logit) < min(headroom, -math.log(finfo.tiny) - 8.0)


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
