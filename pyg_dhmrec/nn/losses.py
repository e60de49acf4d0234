"""Loss terms shared by the recommenders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from pyg_dhmrec.nn._checks import (
    check_dense,
    check_ids_on_cpu,
    check_index,
    check_not_empty,
    check_same_dtype,
    shape,
)
from pyg_dhmrec.nn.chunked_contrastive import UNSHIFTED_MAX_LOGIT


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""Bayesian personalised ranking: :math:`-\frac{1}{B}\sum \log\sigma(s^+ - s^-)`.

    Computed as ``softplus(s^- - s^+)``, which equals it and never takes ``log(0)``.
    """
    if pos_score.shape != neg_score.shape:
        raise ValueError(
            f"pos_score and neg_score must have one shape, got {list(pos_score.shape)} "
            f"and {list(neg_score.shape)}"
        )
    check_dense("pos_score", pos_score)
    check_dense("neg_score", neg_score)
    check_not_empty("pos_score", pos_score)
    return F.softplus(neg_score - pos_score).mean()


def weighted_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """``values.mean()``, or with ``weight`` (same shape, non-negative, not all zero) the
    ``weight``-ed mean. The weight check runs on CPU tensors only (no host wait on an
    accelerator)."""
    check_dense("values", values)
    check_not_empty("values", values)
    if weight is not None and weight.shape != values.shape:
        raise ValueError(
            f"weight must have the shape of values, {shape(values)}, got {shape(weight)}"
        )
    if weight is None:
        return values.mean()
    total = weight.sum()
    # all-zero weights would give 0 / 0 = NaN; negative ones a mean outside the values' range
    if weight.device.type == "cpu" and not (bool((weight >= 0).all()) and total.item() > 0):
        shown = weight.detach().flatten()[:8].tolist()
        raise ValueError(
            f"weight must be non-negative and not all zero, got {shown}"
            f"{' ...' if weight.numel() > 8 else ''}"
        )
    return (values * weight).sum() / total


def _check_penalty_inputs(embeddings: Sequence[Tensor]) -> None:
    for i, e in enumerate(embeddings):
        check_dense(f"embeddings[{i}]", e)
    # the batch size B divides the sum: B = 0 would give inf or NaN
    if embeddings[-1].dim() == 0 or embeddings[-1].size(0) == 0:
        raise ValueError(
            f"the last tensor sets the batch size B and needs rows, got shape "
            f"{shape(embeddings[-1])}"
        )


def embedding_norm_penalty(*embeddings: Tensor) -> Tensor:
    r"""MMRec's ``EmbLoss``: :math:`\frac{1}{B}\sum_k \lVert E_k \rVert_F` over the batch tensors.

    The Frobenius norm is not squared; ``B`` is the row count of the last tensor. Published
    MMRec numbers (BPR, LightGCN, ...) use this form with their ``reg_weight``.
    """
    if not embeddings:
        raise ValueError("embedding_norm_penalty needs at least one tensor")
    _check_penalty_inputs(embeddings)
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / embeddings[-1].size(0)


def squared_l2_penalty(*embeddings: Tensor) -> Tensor:
    r""":math:`\frac{1}{2B}\sum_k \lVert E_k \rVert_F^2`, the LightGCN paper's regulariser."""
    if not embeddings:
        raise ValueError("squared_l2_penalty needs at least one tensor")
    _check_penalty_inputs(embeddings)
    return sum(e.pow(2).sum() for e in embeddings) / (2 * embeddings[-1].size(0))


#: Score entries per row block of :func:`score_distribution_kl` (2 MB of float32): the block's
#: four ``[rows, I]`` buffers stay in cache instead of streaming ``[B, I]`` ones through memory
#: (TikTok-sized KL, 78 rows a block: 12-13 % faster than 156 in an interleaved micro-benchmark,
#: one CPU thread, a loaded machine).
KL_BLOCK_ENTRIES = 1 << 19
#: Fewest rows of a row block of this module's chunked ``[rows, N]`` products (the KL and
#: :func:`factored_cross_entropy`): with large ``N`` an entry budget leaves a handful of rows (7
#: over Sports-4x's 73,428 items), and matrix products that thin run far below the BLAS peak
#: (DHMRec's step at 8x Sports: 39.5 CPU-s in 3-row KL blocks, 21.8 with 64). 64 rows of 146,856
#: items are four 38 MB buffers of the KL.
MIN_BLOCK_ROWS = 64


class _ScoreDistributionKL(torch.autograd.Function):
    """:func:`score_distribution_kl`, row block by row block, with its closed-form gradient
    computed in the same pass: only the ``[B, d]`` and ``[I, d]`` gradients are kept for the
    backward pass, never a ``[B, I]`` matrix."""

    @staticmethod
    def forward(
        ctx: Any,
        user_p: Tensor,
        item_p: Tensor,
        user_q: Tensor,
        item_q: Tensor,
        weight: Tensor | None,
        with_grad: bool,
        block_rows: int,
        shift: bool,
    ) -> Tensor:
        row_kl = user_p.new_empty(user_p.size(0))
        # The Q side's gradient (two of the six products) only when Q is learned there.
        with_grad_q = with_grad and (user_q.requires_grad or item_q.requires_grad)
        if with_grad:
            grads = [torch.empty_like(user_p), torch.zeros_like(item_p)]
            if with_grad_q:
                grads += [torch.empty_like(user_q), torch.zeros_like(item_q)]
        # Four [rows, I] buffers, reused by every block: no fresh (page-faulting) allocation.
        size = (min(block_rows, user_p.size(0)), item_p.size(0))
        buffers = [user_p.new_empty(size) for _ in range(4)]
        # [d, I] copies: MKL forms the [rows, I] scores faster from them than from views
        item_p_t, item_q_t = item_p.t().contiguous(), item_q.t().contiguous()
        for start in range(0, user_p.size(0), block_rows):
            rows = slice(start, start + block_rows)
            n = user_p[rows].size(0)
            score_p, score_q, p, q = (b[:n] for b in buffers)
            # Scores (shifted by their row maximum unless bounded), then one exp per side and
            # entry; P and Q stay unnormalised (p, q), their row sums z_p, z_q scale the
            # [rows, d] factors.
            torch.mm(user_p[rows], item_p_t, out=score_p)
            torch.mm(user_q[rows], item_q_t, out=score_q)
            if shift:
                score_p.sub_(score_p.amax(dim=-1, keepdim=True))
                score_q.sub_(score_q.amax(dim=-1, keepdim=True))
            torch.exp(score_p, out=p)
            torch.exp(score_q, out=q)
            norm_p, norm_q = p.sum(-1, keepdim=True), q.sum(-1, keepdim=True)
            # log P - log Q = diff - c with diff the shifted score difference and c =
            # log z_p - log z_q; as P sums to 1, KL_u = sum_i P diff - c.
            diff = score_p.sub_(score_q)
            cross = torch.linalg.vecdot(p, diff).unsqueeze(-1).div_(norm_p)
            row_kl[rows] = (cross - (norm_p.log() - norm_q.log())).squeeze(-1)
            if with_grad:
                # d KL_u / d s^p = P (log P/Q - KL_u) = (p / z_p)(diff - cross); d KL_u / d s^q
                # = Q - P = (q - p z_q / z_p) / z_q (s: the scores). 1 / z_p and 1 / z_q
                # multiply the [rows, d] factors instead of the [rows, I] blocks.
                inv_p = norm_p.reciprocal_()
                w = None if weight is None else weight[rows].unsqueeze(-1)
                grad_p = diff.sub_(cross).mul_(p)
                torch.mm(grad_p, item_p, out=grads[0][rows]).mul_(inv_p)
                grads[1].addmm_(grad_p.t(), user_p[rows] * (inv_p if w is None else w * inv_p))
                if with_grad_q:
                    grad_q = q.addcmul_(p, norm_q * inv_p, value=-1)
                    inv_q = norm_q.reciprocal_()
                    torch.mm(grad_q, item_q, out=grads[2][rows]).mul_(inv_q)
                    grads[3].addmm_(grad_q.t(), user_q[rows] * (inv_q if w is None else w * inv_q))
        total = user_p.new_tensor(float(user_p.size(0))) if weight is None else weight.sum()
        if with_grad:
            if weight is not None:  # the user rows' weights (the items' are in the products)
                for g in grads[::2]:
                    g.mul_(weight.unsqueeze(-1))
            ctx.save_for_backward(*grads, total)
        return row_kl.mean() if weight is None else (row_kl * weight).sum() / total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        *grads, total = ctx.saved_tensors
        scale = grad / total
        out = [g * scale for g in grads]
        out += [None] * (4 - len(out))  # Q's two, when Q carried no gradient
        return (*out, None, None, None, None)


def score_distribution_kl(
    user_p: Tensor, item_p: Tensor, user_q: Tensor, item_q: Tensor, weight: Tensor | None = None
) -> Tensor:
    r"""KL between two users-over-items score distributions (DHMRec Eqs. 20-21).

    .. math::
        P = \mathrm{softmax}(E_{u}^{p} (E_{i}^{p})^\top), \quad
        Q = \mathrm{softmax}(E_{u}^{q} (E_{i}^{q})^\top), \quad
        KL(P \,\|\, Q) = \frac{1}{B} \sum_u \sum_i P_{ui} \log \frac{P_{ui}}{Q_{ui}}

    Softmax over all items per user (row); computed from log-softmax (no ``log(0)``): on the
    CPU, when the largest row norms bound every score by ``UNSHIFTED_MAX_LOGIT`` (Cauchy-Schwarz,
    checked once per call), the exponentials are taken without the row-maximum shift (the
    same softmax, two passes fewer per block); on an accelerator always shifted (no host
    wait). Cost
    :math:`O(B |I| d)` for ``B`` user rows, memory :math:`O((B + |I|) d)` plus one block of
    rows. The gradient is closed-form, with :math:`s = E_u E_i^\top`:
    :math:`\partial KL_u / \partial s^p_{ui} = P_{ui}(\log (P_{ui}/Q_{ui}) - KL_u)` and
    :math:`\partial KL_u / \partial s^q_{ui} = Q_{ui} - P_{ui}`; it is computed block by
    block in the forward pass when any input requires grad (not twice differentiable).
    ``weight`` (optional, ``[B]``) weighs the user rows: the mean over the users becomes the
    weighted mean (see :func:`~pyg_dhmrec.models.base.distinct_rows`).
    """
    names = ("user_p", "item_p", "user_q", "item_q")
    for name, t in zip(names, (user_p, item_p, user_q, item_q)):
        check_dense(name, t, dim=2)
    if user_p.size(1) != item_p.size(1) or user_q.size(1) != item_q.size(1):
        raise ValueError(
            f"user and item rows of one side need one width, got user_p {shape(user_p)}, "
            f"item_p {shape(item_p)}, user_q {shape(user_q)}, item_q {shape(item_q)}"
        )
    check_same_dtype(names, (user_p, item_p, user_q, item_q))
    if user_p.size(0) != user_q.size(0) or item_p.size(0) != item_q.size(0):
        raise ValueError(
            f"the P and Q sides need the same users and items, got users "
            f"{user_p.size(0)} / {user_q.size(0)} and items {item_p.size(0)} / {item_q.size(0)}"
        )
    inputs = (user_p, item_p, user_q, item_q)
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    block_rows = max(MIN_BLOCK_ROWS, KL_BLOCK_ENTRIES // max(1, item_p.size(0)))
    if weight is not None and weight.shape != user_p.shape[:1]:
        raise ValueError(f"weight must have shape [{user_p.size(0)}], got {list(weight.shape)}")
    shift = user_p.device.type != "cpu" or not (
        _max_score(user_p, item_p) <= UNSHIFTED_MAX_LOGIT
        and _max_score(user_q, item_q) <= UNSHIFTED_MAX_LOGIT
    )
    return _ScoreDistributionKL.apply(*inputs, weight, with_grad, block_rows, shift)


def _max_score(users: Tensor, items: Tensor) -> float:
    """Cauchy-Schwarz bound on ``|users @ items.T|``: the largest row norms' product."""
    if users.size(0) == 0 or items.size(0) == 0:
        return 0.0
    with torch.no_grad():
        return (users.norm(dim=-1).max() * items.norm(dim=-1).max()).item()


CHUNK_ELEMENTS = 1 << 18  # logits per block: 1 MiB in float32, stays in cache
#: Logits per block for full-width (``d``-dimensional) factors: 4 MiB in float32, about a
#: hundred rows of TikTok's users, which the matrix products need to run at speed.
FULL_WIDTH_ELEMENTS = 1 << 20


class _FactoredCrossEntropy(torch.autograd.Function):
    """Row blocks of ``Q K^T``, each exponentiated once: the forward pass also forms the
    gradients (the loss is a scalar, so backward only scales them), and no ``[B, N]`` tensor
    is ever built."""

    @staticmethod
    def forward(
        ctx,  # noqa: ANN001
        query: Tensor,
        key: Tensor,
        target: Tensor,
        shift: bool,
        elements: int,
        weight: Tensor | None,
    ) -> Tensor:
        rows = max(MIN_BLOCK_ROWS, elements // max(1, key.size(0)))
        # a row's weight scales its softmax and one-hot alike: folded into the row factors
        row_weight = None if weight is None else weight.to(query.dtype).unsqueeze(1)
        key_t = key.t()
        lse = query.new_empty(query.size(0), 1)
        # only the gradients asked for (e.g. a detached query: no P K product per block)
        need_query, need_key = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grads = need_query or need_key
        if need_query:
            grad_query = torch.empty_like(query)
        if need_key:
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
                share = norm.reciprocal()
                if row_weight is not None:
                    share.mul_(row_weight[start : start + rows])
            if need_query:  # K^T P^T, not P K: MKL's [rows, N] x [N, r] with r tiny is ~4x slower
                grad_query[start : start + rows] = (key_t @ block.t()).t().mul_(share)
            if need_key:
                grad_key_t.addmm_((rows_q * share).t(), block)
        positive = key[target]
        if grads:  # the one-hot part of softmax - onehot(target): a gather and a scatter
            weighted = query if row_weight is None else query * row_weight
            if need_query:
                grad_query.sub_(positive if row_weight is None else positive * row_weight)
            ctx.save_for_backward(
                grad_query if need_query else None,
                grad_key_t.t().index_add(0, target, weighted, alpha=-1) if need_key else None,
            )
        terms = lse.squeeze(1) - (query * positive).sum(-1)
        return terms.sum() if weight is None else terms @ row_weight.squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        grad: Tensor,
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        grad_query, grad_key = ctx.saved_tensors
        return (
            None if grad_query is None else grad_query * grad,
            None if grad_key is None else grad_key * grad,
            None,
            None,
            None,
            None,
        )


def factored_cross_entropy(
    query: Tensor,
    key: Tensor,
    target: Tensor,
    max_logit: float | None = None,
    block_elements: int = CHUNK_ELEMENTS,
    weight: Tensor | None = None,
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
        weight: ``[B]`` weight of each row's term (e.g. how often the row occurs), or
            ``None`` (all 1).
        block_elements: logits per block (speed and memory only): the default suits
            low-rank factors; full-width rows (``r`` of tens) need blocks of a hundred rows
            or more for an efficient matrix product.
    """
    if query.dim() != 2 or key.dim() != 2 or query.size(1) != key.size(1):
        raise ValueError(
            f"factored_cross_entropy needs [B, r] query and [N, r] key, got "
            f"{list(query.shape)} and {list(key.shape)}"
        )
    check_dense("query", query)
    check_dense("key", key)
    check_same_dtype(("query", "key"), (query, key))
    check_index("target", target)
    check_ids_on_cpu("target", target, key.size(0))
    if target.shape != (query.size(0),):
        raise ValueError(
            f"target must be [B={query.size(0)}] candidate indices, got {list(target.shape)}"
        )
    shift = True
    if max_logit is not None:
        # the unshifted sums stay finite and non-zero with a margin of e^8 either side
        finfo = torch.finfo(query.dtype)
        headroom = math.log(finfo.max) - math.log(max(1, key.size(0))) - 8.0
        shift = not abs(max_logit) < min(headroom, -math.log(finfo.tiny) - 8.0)
    if (
        isinstance(block_elements, bool)
        or not isinstance(block_elements, int)
        or block_elements < 1
    ):
        raise ValueError(f"block_elements must be a positive int, got {block_elements!r}")
    if weight is not None and weight.shape != target.shape:
        raise ValueError(f"weight must have shape [{query.size(0)}], got {list(weight.shape)}")
    return _FactoredCrossEntropy.apply(query, key, target, shift, block_elements, weight)


def _check_views(
    name: str, what: str, anchor: Tensor, others: Sequence[Tensor], temperature: float
) -> None:
    """The inputs of a contrastive loss: 2-d tensors of one shape (``what``, as the error says
    it), a temperature > 0."""
    check_dense(f"{name}'s first input", anchor)
    if anchor.dim() != 2 or any(t.shape != anchor.shape for t in others):
        shapes = " and ".join(str(list(t.shape)) for t in (anchor, *others))
        raise ValueError(f"{name} needs {what} of one shape, got {shapes}")
    for t in others:
        check_dense(f"{name}'s inputs", t)
        if t.dtype != anchor.dtype:
            raise TypeError(f"{name} needs {what} of one dtype, got {anchor.dtype} and {t.dtype}")
    if anchor.size(0) == 0:
        raise ValueError(f"{name} needs at least one row, got {what} of shape {shape(anchor)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float,
    ids: Tensor | None = None,
    fused: bool = False,
) -> Tensor:
    r"""InfoNCE with in-batch negatives on cosine similarity.

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{i=1}^{B} \log
        \frac{\exp(\hat{a}_i^\top \hat{p}_i / \tau)}
             {\sum_{j=1}^{B} \exp(\hat{a}_i^\top \hat{p}_j / \tau)}

    with :math:`\hat{x} = x / \lVert x \rVert_2`. Row ``i`` of ``anchor`` and ``positive`` form
    the positive pair; every other row of ``positive`` is a negative of anchor ``i``, and the
    positive itself stays in the denominator (the SGL / SimGCL form).

    ``ids`` (optional, ``[B]``) names the node of each row, for rows gathered from tables by a
    batch with repeats: rows with one id must be equal. On the CPU the loss is then computed
    over the :math:`K` distinct ids with their counts :math:`c`, the same value from a
    :math:`K \times K` instead of a :math:`B \times B` matrix: row :math:`u`'s denominator is
    :math:`\sum_v c_v \exp(\hat{a}_u^\top \hat{p}_v / \tau)` and it counts :math:`c_u` times.
    Elsewhere (e.g. CUDA, where the matrix is cheap and ``torch.unique`` would wait for the
    device) ``ids`` is ignored.

    ``fused=True`` (without ``ids``) computes the cross-entropy with
    :func:`factored_cross_entropy` (one exponential per logit, gradients formed in the same
    pass, no ``[B, B]`` autograd tensors; issue 17): the same value and gradients up to float
    rounding, faster. Off by default, so that the fixed-seed runs of the models that use the
    plain form stay bit for bit as they were (rounding can reorder near-tied rankings).
    """
    _check_views("info_nce", "two [B, d] tensors", anchor, [positive], temperature)
    if ids is not None:
        check_index("ids", ids)
    if ids is not None and ids.shape != anchor.shape[:1]:
        raise ValueError(f"ids must have shape [{anchor.size(0)}], got {list(ids.shape)}")
    if ids is not None and ids.device.type == "cpu":
        return _grouped_info_nce(anchor, positive, temperature, ids)
    target = torch.arange(anchor.size(0), device=anchor.device)
    if fused:  # 1/tau on the [B, d] side: every logit is bounded by 1/tau
        query, key = F.normalize(anchor, dim=-1) / temperature, F.normalize(positive, dim=-1)
        return factored_cross_entropy(query, key, target, 1.0 / temperature) / anchor.size(0)
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    return F.cross_entropy(logits, target)


def _grouped_info_nce(anchor: Tensor, positive: Tensor, temperature: float, ids: Tensor) -> Tensor:
    r""":func:`info_nce` over the distinct ``ids``, each weighted by its count :math:`c`:
    :math:`\sum_u c_u (\log \sum_v c_v e^{s_{uv}} - s_{uu})`. The key counts enter as a
    last factor column, :math:`[q_u, 1]^\top [k_v, \log c_v] = s_{uv} + \log c_v`, so
    :func:`factored_cross_entropy` computes it (no ``[K, K]`` autograd tensors); its target
    logit is then :math:`s_{uu} + \log c_u`, so the constant :math:`\sum_u c_u \log c_u` is
    added back."""
    distinct, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    # int64 whatever the ids' dtype: the positions scattered into it are int64 (int32 ids)
    first = torch.full_like(distinct, ids.numel(), dtype=torch.long)
    first = first.scatter_reduce_(0, inverse, positions, "amin")
    weight = counts.to(anchor.dtype)
    log_count = weight.log().unsqueeze(1)
    query = F.normalize(anchor[first], dim=-1) / temperature
    key = F.normalize(positive[first], dim=-1)
    query = torch.cat([query, torch.ones_like(log_count)], dim=1)
    key = torch.cat([key, log_count], dim=1)
    target = torch.arange(distinct.numel(), device=ids.device)
    # cosine logits within 1/tau, the count column adds at most log B
    bound = 1.0 / temperature + math.log(ids.numel())
    loss = factored_cross_entropy(query, key, target, bound, FULL_WIDTH_ELEMENTS, weight=weight)
    return (loss + (weight * log_count.squeeze(1)).sum()) / ids.numel()


def symmetric_info_nce(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    r""":math:`\frac12`[:func:`info_nce` ``(first, second)`` + :func:`info_nce`
    ``(second, first)``] from one similarity matrix: the second direction's logits are the
    transpose of the first's, so its softmax runs down the columns (one ``B x B`` product and
    its backward instead of two)."""
    _check_views("symmetric_info_nce", "two [B, d] tensors", first, [second], temperature)
    query, key = F.normalize(first, dim=-1) / temperature, F.normalize(second, dim=-1)
    if 1.0 / temperature < _unshifted_logit_bound(query.dtype, 2 * first.size(0)):
        return _SymmetricCrossEntropy.apply(query, key)
    # logits too large for unshifted exponentials: each direction shifted by logsumexp
    logits = query @ key.t()
    target = torch.arange(first.size(0), device=first.device)
    columns = torch.logsumexp(logits, dim=0) - logits.diagonal()
    return 0.5 * (F.cross_entropy(logits, target) + columns.mean())


def _unshifted_logit_bound(dtype: torch.dtype, count: int) -> float:
    """The largest logit bound for which ``count`` unshifted exponentials of logits in
    ``[-bound, bound]`` and their sum stay finite and normal, with a margin of e^8 either side
    (:func:`factored_cross_entropy`'s rule)."""
    finfo = torch.finfo(dtype)
    headroom = math.log(finfo.max) - math.log(max(1, count)) - 8.0
    return min(headroom, -math.log(finfo.tiny) - 8.0)


class _SymmetricCrossEntropy(torch.autograd.Function):
    r""":func:`symmetric_info_nce` from one exponentiated ``[B, B]`` logit matrix
    :math:`E = \exp(Q K^\top)` (logits bounded, so unshifted): row sums :math:`r`, column sums
    :math:`c`, loss :math:`\frac{1}{2B}\sum_b (\log r_b + \log c_b) - \frac1B \sum_b
    q_b^\top k_b`. Its gradient with respect to the logits is :math:`G = E \odot (1/r_i +
    1/c_j) / (2B) - I / B`, formed in place of :math:`E` in the forward pass; the gradients
    :math:`G K` and :math:`G^\top Q` are kept and backward only scales them."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor) -> Tensor:  # noqa: ANN001
        n = query.size(0)
        exp = query @ key.t()
        diagonal = exp.diagonal().sum()
        exp.exp_()
        row_sum, col_sum = exp.sum(dim=1), exp.sum(dim=0)
        loss = 0.5 * (row_sum.log().sum() + col_sum.log().sum()) / n - diagonal / n
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            half = 0.5 / n
            exp.mul_((half / row_sum).unsqueeze(1) + (half / col_sum).unsqueeze(0))
            exp.diagonal().sub_(1.0 / n)
            ctx.save_for_backward(exp @ key, exp.t() @ query)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        grad_query, grad_key = ctx.saved_tensors
        return grad_query * grad, grad_key * grad


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
    _check_views("anchor_info_nce", "[B, d] anchor and views", anchor, views, temperature)
    num = anchor.size(0)
    candidates = F.normalize(torch.cat(list(views)), dim=-1)  # [M B, d], view-major
    query = F.normalize(anchor, dim=-1) / temperature
    rows = torch.arange(num, device=anchor.device)
    # The mean over the M positives of (lse_b - q_b.v^m_b) is lse_b - q_b.mean_m(v^m_b): the
    # fused cross-entropy against the first view, corrected by q_b.(v^1_b - mean_m v^m_b).
    positive_mean = candidates.view(len(views), num, -1).mean(dim=0)
    correction = (query * (candidates[:num] - positive_mean)).sum()
    return (factored_cross_entropy(query, candidates, rows, 1.0 / temperature) + correction) / num


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
    Computed by :func:`factored_cross_entropy` with the temperature folded into the ``[B, d]``
    queries and the bound :math:`1/\tau` of cosine logits: blocks of rows, each exponentiated
    once, with the gradients formed in the same pass, so no ``[B, N]`` tensor is built (the
    value and gradient of ``F.cross_entropy`` of the dense logits). On the CPU each distinct
    row of ``index`` is computed once and weighted by its count (a batch's users repeat); on
    other devices, where ``torch.unique`` would wait for the device, every row is.
    """
    _check_views("info_nce_all_negatives", "two [N, d] views", anchor, [positive], temperature)
    check_index("index", index)
    check_not_empty("index", index)
    check_ids_on_cpu("index", index, anchor.size(0))
    counts = None
    rows = index
    if index.device.type == "cpu":  # each distinct row once, weighted by its count
        rows, counts = torch.unique(index, return_counts=True)
    query = F.normalize(anchor[rows], dim=-1) / temperature
    key = F.normalize(positive, dim=-1)
    loss = factored_cross_entropy(
        query, key, rows, 1.0 / temperature, FULL_WIDTH_ELEMENTS, weight=counts
    )
    return loss / index.numel()
