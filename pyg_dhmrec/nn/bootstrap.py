"""Negative-free (bootstrap) self-supervision: stop-gradient target views and the cosine loss
that pulls an online representation towards them (BYOL / SimSiam / BM3 style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dropout_view(x: Tensor, p: float) -> Tensor:
    r"""A stop-gradient target view of ``x`` by dropout:
    :math:`\dot{x} = \mathrm{sg}(x) \odot m / (1 - p)`, :math:`m_{jk} \sim \mathrm{Bernoulli}(1-p)`.

    Every entry is zeroed independently with probability ``p`` (always, in train and eval mode:
    the view is part of an objective, not a layer), the kept ones are scaled by
    :math:`1/(1-p)`. The result carries no gradient back to ``x``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.layout != torch.strided:
        what = f"{x.dtype} {x.layout}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a dense floating-point tensor, got {what}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    return F.dropout(x.detach(), p, training=True)


def cosine_alignment_loss(online: Tensor, target: Tensor) -> Tensor:
    r""":math:`1 - \frac{1}{B}\sum_{b} \cos(o_b, \mathrm{sg}(t_b))`, row-wise cosine.

    The target is detached, so only ``online`` is pulled towards it. Equals the negative cosine
    similarity :math:`C(o, t) = -\frac{o^\top t}{\lVert o \rVert \lVert t \rVert}` plus 1 (so the
    value lies in ``[0, 2]`` and is 0 for aligned pairs); the constant changes no gradient.
    A zero row has cosine 0 (``F.cosine_similarity``'s epsilon).
    """
    if online.dim() != 2 or online.shape != target.shape:
        raise ValueError(
            f"cosine_alignment_loss needs two [B, d] tensors of one shape, got "
            f"{list(online.shape)} and {list(target.shape)}"
        )
    for name, t in (("online", online), ("target", target)):
        if not t.is_floating_point() or t.layout != torch.strided:
            raise TypeError(
                f"{name} must be a dense floating-point tensor, got {t.dtype} {t.layout}"
            )
    if online.size(0) == 0:  # a mean over no rows is NaN
        raise ValueError("cosine_alignment_loss needs at least one row, got shape [0, d]")
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()
