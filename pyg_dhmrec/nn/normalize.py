"""Row-wise L2 normalisation with a fused backward pass, and linear maps of normalised rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["l2_normalize", "normalized_projection_maps"]


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
    if not x.is_floating_point() or x.layout != torch.strided:
        raise TypeError(f"l2_normalize needs a dense floating-point x, got {x.dtype} {x.layout}")
    # a norm clamped at eps <= 0 divides by zero on a zero row
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return _L2Normalize.apply(x, float(eps))


def normalized_projection_maps(
    x: Tensor,
    projection: torch.nn.Linear,
    maps: Sequence[torch.nn.Linear],
    eps: float = 1e-12,
) -> list[Tensor]:
    r"""Linear maps of L2-normalised projected rows, :math:`W_j\, \bar{y} + c_j` with
    :math:`y = P x + b` (``projection``) and :math:`\bar{y} = y / \max(\lVert y \rVert_2,
    \epsilon)` (:func:`l2_normalize`), one output per ``maps[j]`` (:math:`W_j`, :math:`c_j`).

    When the projection widens its input (:math:`f` = ``in_features`` < :math:`k` =
    ``out_features``) the products are re-associated: :math:`W_j \bar{y} = (W_j P\, x + W_j
    b) / \max(\lVert y \rVert, \epsilon)` with :math:`\lVert y \rVert^2 = x^\top P^\top P x +
    2\, b^\top P x + b^\top b`, so no ``[n, k]`` matrix is formed and every row costs
    :math:`f (f + \sum_j o_j)` multiply-adds instead of :math:`k (f + \sum_j o_j)`. The same
    values (to float rounding) and gradients as the direct formula, which runs otherwise.
    """
    if not maps:
        raise ValueError("normalized_projection_maps needs at least one map")
    if projection.in_features >= projection.out_features:
        y = l2_normalize(projection(x), eps)
        return [linear(y) for linear in maps]
    weight, bias = projection.weight, projection.bias
    gram = weight.t() @ weight
    squared = ((x @ gram) * x).sum(-1)
    if bias is not None:
        squared = squared + 2.0 * (x @ (weight.t() @ bias)) + bias.pow(2).sum()
    inverse = squared.clamp_min(eps * eps).rsqrt().unsqueeze(-1)
    out = []
    for linear in maps:
        folded = F.linear(x, linear.weight @ weight)
        if bias is not None:
            folded = folded + linear.weight @ bias
        folded = folded * inverse
        out.append(folded if linear.bias is None else folded + linear.bias)
    return out
