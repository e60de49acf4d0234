"""InfoNCE over all nodes in chunks of anchors: memory O(chunk x N) in forward and backward,
with the value and gradient of the dense formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Largest :math:`1/\tau` for which ``exp`` of a cosine logit is taken without a max shift:
#: :math:`e^{\pm 40}` and a sum of millions of them stay finite and normal in float32.
_UNSHIFTED_MAX_LOGIT = 40.0


class _ChunkedInfoNCE(torch.autograd.Function):
    """Sum over anchors of ``logsumexp(row) - positive logit`` over the keys
    ``[positive; anchor]`` (``positive`` alone without in-view negatives), in one pass of
    chunks: each chunk's ``[chunk, K]`` exponentiated logits give its log-denominators and,
    when a gradient is wanted, at once the analytic gradient ``softmax(row) - onehot(positive)``
    of every anchor and key (the softmax's division is applied to the ``[chunk, d]`` factors,
    not to the block). Only the two ``[N, d]`` gradients are kept for backward, which scales
    them: the logits are computed once per call, and one ``[chunk, K]`` buffer serves every
    chunk."""

    @staticmethod
    def forward(ctx, anchor, positive, temperature, intra, chunk_size, want_grad):  # noqa: ANN001, ANN205
        num = anchor.size(0)
        keys = torch.cat([positive, anchor]) if intra else positive  # [K, d]
        grad_rows = torch.zeros_like(anchor) if want_grad else None
        grad_keys = torch.zeros_like(keys) if want_grad else None
        # Cosine logits lie in [-1/tau, 1/tau]: unshifted exp is exact and finite for a
        # moderate 1/tau; otherwise each row is shifted by its max, as logsumexp does.
        shift = 1.0 / temperature > _UNSHIFTED_MAX_LOGIT
        total = anchor.new_zeros(())
        buffer = anchor.new_empty(min(chunk_size, num), keys.size(0))
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            rows = anchor[start:end] / temperature
            logits = torch.mm(rows, keys.t(), out=buffer[: end - start])
            local = torch.arange(end - start, device=anchor.device)
            if intra:  # an anchor is not its own negative: exp(-inf) = 0
                logits[local, local + start + num] = float("-inf")
            positive_logit = logits[local, local + start].clone()
            if shift:
                top = logits.amax(dim=1, keepdim=True)
                logits.sub_(top)
            exp = logits.exp_()  # in place: the buffer now holds the row's exponents
            denominator = exp.sum(dim=1, keepdim=True)
            lse = denominator.log().squeeze(1)
            if shift:
                lse = lse + top.squeeze(1)
            total = total + (lse - positive_logit).sum()
            if want_grad:  # (softmax - onehot) @ keys and its transpose @ rows
                grad_rows[start:end] = (exp @ keys).div_(denominator) - keys[start:end]
                grad_keys.addmm_(exp.t(), rows / denominator)
                grad_keys[start:end] -= rows
        if want_grad:
            grad_anchor = grad_rows.div_(temperature)
            grad_positive = grad_keys[:num]
            if intra:  # a_i . a_j reaches both anchors
                grad_anchor += grad_keys[num:]
            ctx.save_for_backward(grad_anchor, grad_positive)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_anchor, grad_positive = ctx.saved_tensors
        return grad * grad_anchor, grad * grad_positive, None, None, None, None


def chunked_info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float,
    intra_view_negatives: bool = True,
    chunk_size: int = 512,
) -> Tensor:
    r"""InfoNCE over all ``N`` rows, every other row a negative (GRACE's semi-loss, MICRO's
    contrastive modality fusion):

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_{i=1}^{N} \log
        \frac{e^{\theta(a_i, p_i)/\tau}}
             {\sum_{j=1}^{N} e^{\theta(a_i, p_j)/\tau}
              + \sum_{j \ne i} e^{\theta(a_i, a_j)/\tau}}

    with :math:`\theta` the cosine similarity. ``intra_view_negatives=False`` drops the second
    sum (then it is :func:`~pyg_dhmrec.nn.losses.info_nce` over all rows).

    Anchors are processed ``chunk_size`` rows at a time by one autograd function: one
    ``[chunk, 2N]`` block of logits at a time (one product with the keys
    :math:`[p; a]`), from which the anchor's log-denominator and, when a gradient is wanted,
    the analytic gradient (softmax of the row minus the positive's one-hot) are taken at once;
    only the ``[N, d]`` gradients are kept for the backward pass. Peak memory is
    :math:`O(\text{chunk\_size} \cdot N)` instead of the :math:`O(N^2)` that autograd keeps
    for the dense formula, and the logits are computed once (not again in backward); the value
    and gradient are those of the dense formula (sums reassociated only). Computed with a
    per-row max shift (``logsumexp``), so no term overflows. The default chunk keeps the block
    small enough to be reused from the allocator's heap (a block of hundreds of MB is mapped
    afresh, and page-faulted, on every call).

    Args:
        anchor: ``[N, d]`` anchors :math:`a` (e.g. one modality's item representations).
        positive: ``[N, d]`` positives :math:`p` (e.g. the fused item representations).
        temperature: :math:`\tau > 0`.
        intra_view_negatives: include the anchor view's other rows as negatives.
        chunk_size: anchors per chunk (memory and speed only).
    """
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"chunked_info_nce needs two [N, d] tensors of one shape, got "
            f"{list(anchor.shape)} and {list(positive.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    want_grad = torch.is_grad_enabled() and (anchor.requires_grad or positive.requires_grad)
    total = _ChunkedInfoNCE.apply(
        anchor, positive, float(temperature), bool(intra_view_negatives), chunk_size, want_grad
    )
    return total / anchor.size(0)
