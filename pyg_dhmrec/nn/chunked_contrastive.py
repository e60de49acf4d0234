"""InfoNCE over all nodes in chunks of anchors: memory O(chunk x N) in forward and backward,
with the value and gradient of the dense formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_dhmrec.nn.losses import needs_shift


class _ChunkedInfoNCE(torch.autograd.Function):
    """Sum over anchors of ``logsumexp(row) - positive logit``, one chunk of anchors at a time:
    each chunk's logits are exponentiated once, in the forward pass, which also accumulates the
    analytic gradient ``softmax(row) - onehot(positive)`` (the loss is a scalar, so backward
    only scales it); one ``[chunk, N]`` block per view lives at a time."""

    @staticmethod
    def forward(ctx, anchor, positive, temperature, intra, chunk_size, shift):  # noqa: ANN001, ANN205
        num = anchor.size(0)
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if grads:
            grad_anchor, grad_positive = torch.zeros_like(anchor), torch.zeros_like(positive)
        total = anchor.new_zeros(())
        for start in range(0, num, chunk_size):
            end = min(start + chunk_size, num)
            rows = anchor[start:end]
            local = torch.arange(end - start, device=anchor.device)
            between = (rows / temperature) @ positive.t()
            positive_logit = between[local, local + start]
            blocks = [between]
            if intra:  # the anchor's similarity to itself is not a negative
                within = (rows / temperature) @ anchor.t()
                within[local, local + start] = float("-inf")
                blocks.append(within)
            if shift:  # by the row maximum, so that no exponential overflows
                row_max = torch.stack([b.amax(dim=1) for b in blocks]).amax(dim=0).unsqueeze(1)
            norm = 0
            for block in blocks:
                (block.sub_(row_max) if shift else block).exp_()
                norm = norm + block.sum(dim=1, keepdim=True)
            lse = norm.log() + row_max if shift else norm.log()
            total = total + (lse.squeeze(1) - positive_logit).sum()
            if grads:  # (softmax - onehot) / tau, the softmax's division folded into the scale
                scale = (norm * temperature).reciprocal_()
                between.mul_(scale)[local, local + start] -= 1.0 / temperature
                grad_anchor[start:end] += between @ positive
                grad_positive.addmm_(between.t(), rows)
                if intra:  # a_i . a_j reaches both anchors
                    within.mul_(scale)
                    grad_anchor[start:end] += within @ anchor
                    grad_anchor.addmm_(within.t(), rows)
        if grads:
            ctx.save_for_backward(grad_anchor, grad_positive)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_anchor, grad_positive = ctx.saved_tensors
        return grad_anchor * grad, grad_positive * grad, None, None, None, None


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

    Anchors are processed ``chunk_size`` rows at a time by one autograd function whose forward
    pass also accumulates the analytic gradient (softmax of the row minus the positive's
    one-hot; the loss is a scalar, so the backward pass only scales it): each ``[chunk, N]``
    similarity block is computed and exponentiated once, and peak memory is
    :math:`O(\text{chunk\_size} \cdot N)` instead of the :math:`O(N^2)` that autograd keeps
    for the dense formula (or for a plain loop over chunks); the value and gradient are those
    of the dense formula (sums reassociated only). The exponentials are shifted by each row's
    maximum unless the cosine logits' bound :math:`1/\tau` rules out overflow
    (:func:`~pyg_dhmrec.nn.losses.needs_shift`).

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
    # cosine logits at temperature tau are bounded by 1 / tau
    count = anchor.size(0) * (2 if intra_view_negatives else 1)
    shift = needs_shift(1.0 / temperature, count, anchor.dtype)
    total = _ChunkedInfoNCE.apply(
        anchor, positive, float(temperature), bool(intra_view_negatives), chunk_size, shift
    )
    return total / anchor.size(0)
