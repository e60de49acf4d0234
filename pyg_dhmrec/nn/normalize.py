"""Row-wise L2 normalisation with a fused backward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _L2Normalize(torch.autograd.Function):
    """``x / max(||x||, eps)`` by rows; backward ``(g - y (g . y)) / max(||x||, eps)``, the
    projection term dropped on rows clamped at ``eps`` (whose denominator is the constant)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        inv = norm.clamp_min(eps).reciprocal_()
        y = x * inv
        ctx.save_for_backward(y, norm, inv)
        ctx.eps = eps
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, norm, inv = ctx.saved_tensors
        along = torch.linalg.vecdot(grad, y).unsqueeze(-1).masked_fill_(norm < ctx.eps, 0.0)
        return torch.addcmul(grad, y, along, value=-1.0).mul_(inv), None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Rows of ``x`` scaled to unit L2 norm, :math:`x / \max(\lVert x \rVert_2, \epsilon)`:
    the value and gradient of ``F.normalize(x, dim=-1, eps=eps)`` (up to rounding), by one
    autograd function whose backward is three passes over ``x`` instead of autograd's chain of
    broadcast division, multiplication, negation, sum and clamp mask.

    Args:
        x: ``[..., d]`` rows.
        eps: lower bound of the norm (a zero row stays zero).
    """
    if x.dim() == 0:
        raise ValueError("l2_normalize needs rows: a tensor of at least one dimension")
    return _L2Normalize.apply(x, float(eps))
