"""InfoNCE over all nodes in chunks of anchors: memory O(chunk x N) in forward and backward,
with the value and gradient of the dense formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _chunk_logits(
    anchor: Tensor, positive: Tensor, start: int, end: int, temperature: float, intra: bool
) -> Tensor:
    """``[B, N]`` (or ``[B, 2N]`` with the in-view block) logits of anchors ``start:end``;
    the anchor's similarity to itself is ``-inf`` (not a negative)."""
    rows = anchor[start:end] / temperature
    logits = rows @ positive.t()
    if intra:
        within = rows @ anchor.t()
        local = torch.arange(end - start, device=anchor.device)
        within[local, local + start] = float("-inf")
        logits = torch.cat([logits, within], dim=1)
    return logits


class _ChunkedInfoNCE(torch.autograd.Function):
    """Sum over anchors of ``logsumexp(row) - positive logit``, forward and backward in chunks:
    the backward recomputes each chunk's logits and applies the analytic gradient
    ``softmax(row) - onehot(positive)``, so only one ``[chunk, 2N]`` block lives at a time."""

    @staticmethod
    def forward(ctx, anchor, positive, temperature, intra, chunk_size):  # noqa: ANN001, ANN205
        num = anchor.size(0)
        lse = anchor.new_empty(num)
        total = anchor.new_zeros(())
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            logits = _chunk_logits(anchor, positive, start, end, temperature, intra)
            lse[start:end] = torch.logsumexp(logits, dim=1)
            local = torch.arange(end - start, device=anchor.device)
            total = total + (lse[start:end] - logits[local, local + start]).sum()
        ctx.save_for_backward(anchor, positive, lse)
        ctx.settings = (temperature, intra, chunk_size)
        return total

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        anchor, positive, lse = ctx.saved_tensors
        temperature, intra, chunk_size = ctx.settings
        num = anchor.size(0)
        grad_anchor, grad_positive = torch.zeros_like(anchor), torch.zeros_like(positive)
        scale = grad / temperature
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            logits = _chunk_logits(anchor, positive, start, end, temperature, intra)
            probs = logits.sub_(lse[start:end].unsqueeze(1)).exp_()  # softmax of each row
            local = torch.arange(end - start, device=anchor.device)
            probs[local, local + start] -= 1.0  # minus the positive's one-hot
            probs.mul_(scale)
            between = probs[:, :num]
            grad_anchor[start:end] += between @ positive
            grad_positive += between.t() @ anchor[start:end]
            if intra:  # a_i . a_j reaches both anchors
                within = probs[:, num:]
                grad_anchor[start:end] += within @ anchor
                grad_anchor += within.t() @ anchor[start:end]
        return grad_anchor, grad_positive, None, None, None


def chunked_info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float,
    intra_view_negatives: bool = True,
    chunk_size: int = 4096,
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

    Anchors are processed ``chunk_size`` rows at a time by one autograd function: the forward
    pass keeps only each anchor's log-denominator, the backward pass recomputes one chunk's
    ``[chunk, N]`` similarity blocks at a time and applies the analytic gradient (softmax of
    the row minus the positive's one-hot), so peak memory is
    :math:`O(\text{chunk\_size} \cdot N)` instead of the :math:`O(N^2)` that autograd keeps
    for the dense formula (or for a plain loop over chunks); the value and gradient are those
    of the dense formula (sums reassociated only). Computed with ``logsumexp``, so no term
    overflows.

    Args:
        anchor: ``[N, d]`` anchors :math:`a` (e.g. one modality's item representations).
        positive: ``[N, d]`` positives :math:`p` (e.g. the fused item representations).
        temperature: :math:`\tau > 0`.
        intra_view_negatives: include the anchor view's other rows as negatives.
        chunk_size: anchors per chunk (memory only).
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
    total = _ChunkedInfoNCE.apply(
        anchor, positive, float(temperature), bool(intra_view_negatives), chunk_size
    )
    return total / anchor.size(0)
