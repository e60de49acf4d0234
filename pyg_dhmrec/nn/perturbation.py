"""Embedding perturbation for contrastive views (SimGCL-style noise, modulus-scaled)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def modulus_perturbation(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Noise whose norm is a fixed fraction of each row's own norm (modulus).

    .. math::
        \Delta_i = \epsilon \, \lVert x_i \rVert_2 \,
        \frac{\mathrm{sign}(x_i) \odot u_i}{\lVert u_i \rVert_2}, \quad
        u_i \sim \mathcal{U}(0, 1)^d

    The direction is SimGCL's: random, but inside the hyperoctant of :math:`x_i`, so the noise
    never flips a coordinate's sign by itself. SimGCL's norm is a constant :math:`\epsilon`;
    here it is :math:`\epsilon \lVert x_i \rVert`, so every row is perturbed by the same
    *relative* amount: large-norm rows are not left almost untouched and small-norm rows are
    not swamped. Under cosine similarity the angle between :math:`x_i` and
    :math:`x_i + \Delta_i` therefore depends on :math:`\epsilon` and the random direction
    only, not on the scale of :math:`x_i`. :math:`\lVert \Delta_i \rVert = \epsilon \lVert x_i
    \rVert` exactly when :math:`x_i` has no zero coordinate (a zero coordinate gets no noise).
    The modulus is detached: it sets the noise's size and gets no gradient (the noise is a
    random input, as in SimGCL, where ``sign`` passes no gradient either).

    Args:
        x: ``[N, d]`` embeddings.
        eps: relative intensity :math:`\epsilon \ge 0`; 0 gives zero noise.
        generator: optional random generator for :math:`u`.

    Returns:
        The noise :math:`\Delta`, ``[N, d]`` (add it to ``x``).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [N, d], got shape {list(x.shape)}")
    if not x.is_floating_point() or x.layout != torch.strided:
        raise TypeError(f"x must be a dense floating-point tensor, got {x.dtype} {x.layout}")
    _check_eps(eps)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _modulus_noise(x, u, eps)


def _check_eps(eps: float) -> None:
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not math.isfinite(eps)
        or eps < 0
    ):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _modulus_noise(x: Tensor, u: Tensor, eps: float) -> Tensor:
    """:func:`modulus_perturbation`'s noise for the uniform draw ``u`` (same shape as ``x``)."""
    return torch.sign(x.detach()).mul_(u).mul_(_row_scale(x, u, eps))


def _row_scale(x: Tensor, u: Tensor, eps: float) -> Tensor:
    r""":math:`\epsilon \lVert x_i \rVert / \lVert u_i \rVert` per row, ``[N, 1]``
    (``F.normalize``'s floor on :math:`\lVert u_i \rVert`): one multiplication of the
    ``[N, d]`` direction instead of a division and two multiplications."""
    modulus = torch.linalg.vector_norm(x.detach(), dim=-1, keepdim=True)
    return modulus.mul_(eps).div_(
        torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-12)
    )


class ModulusPerturbation(torch.nn.Module):
    r""":math:`x + \Delta` with :func:`modulus_perturbation`'s noise of relative intensity
    ``eps``; parameter-free. Applied whenever called (a model calls it for its contrastive
    views only)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        _check_eps(eps)
        self.eps = float(eps)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return x + modulus_perturbation(x, self.eps, generator)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
