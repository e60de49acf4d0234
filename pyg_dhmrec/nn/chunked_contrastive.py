"""InfoNCE over all nodes in chunks of anchors: memory O(chunk x N) in forward and backward,
with the value and gradient of the dense formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_loss(
    anchor: Tensor, positive: Tensor, start: int, end: int, temperature: float, intra: bool
) -> Tensor:
    """Sum of the per-anchor losses of rows ``start:end`` (inputs already normalised)."""
    rows = anchor[start:end]
    local = torch.arange(end - start, device=anchor.device)
    between = rows @ positive.t() / temperature  # [B, N]
    positives = between[local, local + start]
    if intra:
        within = rows @ anchor.t() / temperature  # [B, N]
        within = within.index_put((local, local + start), within.new_tensor(float("-inf")))
        between = torch.cat([between, within], dim=1)
    return (torch.logsumexp(between, dim=1) - positives).sum()


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

    Anchors are processed ``chunk_size`` rows at a time, each chunk under activation
    checkpointing: its ``[chunk, N]`` similarity blocks are freed after the forward pass and
    recomputed in the backward pass, so peak memory is :math:`O(\text{chunk\_size} \cdot N)`
    instead of the :math:`O(N^2)` that autograd keeps for the dense formula (or for a plain
    loop over chunks); the value and gradient are those of the dense formula (the chunk
    sums are reassociated only). Computed with ``logsumexp``, so no term overflows.

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
    num = anchor.size(0)
    total = anchor.new_zeros(())
    needs_grad = torch.is_grad_enabled() and (anchor.requires_grad or positive.requires_grad)
    for start in range(0, num, chunk_size):
        end = min(start + chunk_size, num)
        args = (anchor, positive, start, end, float(temperature), intra_view_negatives)
        if needs_grad:
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total / num
