"""Multi-layer linear propagation over a pre-normalised sparse adjacency."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.nn import LGConv


class _ConstantSpmm(torch.autograd.Function):
    """``adj @ x`` for a constant sparse ``adj`` whose transpose ``adj_t`` is precomputed.

    The backward pass is ``adj_t @ grad``, a row-parallel CSR product. Autograd would instead
    transpose ``adj`` on every backward pass, which is slower (on a Baby-sized graph, 64-d:
    10 ms instead of 25 ms per hop forward + backward on 2 CPU cores) and, with several CPU
    threads, not bit-for-bit reproducible.
    """

    @staticmethod
    def forward(ctx: Any, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def constant_spmm(adj: Tensor, x: Tensor, adj_t: Tensor) -> Tensor:
    """Sparse-dense product with a constant ``adj`` (no gradient to it); ``adj_t`` is its
    transpose as ``torch.sparse_csr`` (see :func:`~pyg_dhmrec.data.graph.csr_transpose`)."""
    return _ConstantSpmm.apply(adj, adj_t, x)


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    """Sparse-dense product with a symmetric, constant ``adj`` (no gradient to ``adj``)."""
    return _ConstantSpmm.apply(adj, adj, x)


class LightConv(LGConv):
    r"""PyG's :class:`~torch_geometric.nn.conv.LGConv` on a pre-normalised sparse adjacency.

    .. math::
        \mathbf{X}' = \hat{A}\, \mathbf{X}

    Normalisation is done once by the caller, never per call. With ``symmetric=True`` the
    adjacency must be symmetric and constant, and the fused product uses
    :func:`symmetric_spmm` for its backward pass.
    """

    def __init__(self, symmetric: bool = False) -> None:
        super().__init__(normalize=False)
        self.symmetric = symmetric

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        if self.symmetric and isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr:
            return symmetric_spmm(adj_t, x)
        return super().message_and_aggregate(adj_t, x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(symmetric={self.symmetric})"


class LightPropagation(torch.nn.Module):
    r"""``num_layers`` parameter-free LightGCN hops, :math:`E^{(l+1)} = \hat{A} E^{(l)}`.

    ``\hat{A}`` is normalised once by the caller (e.g. :func:`normalized_adjacency`) and passed as
    a ``torch.sparse_csr`` matrix, so each hop is one fused sparse-dense product (PyG's
    ``message_and_aggregate`` path).

    ``mode="mean"`` returns :math:`\frac{1}{L+1}\sum_{l=0}^{L} E^{(l)}` (LightGCN Eq. 4 with
    uniform :math:`\alpha_l`); ``mode="last"`` returns :math:`E^{(L)}`; ``mode="sum"`` the sum.
    ``symmetric=True`` declares :math:`\hat{A}` symmetric (true of the user-item graph, not of
    a kNN graph normalised by row degree), which speeds up the backward pass.
    """

    def __init__(self, num_layers: int, mode: str = "mean", symmetric: bool = False) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if mode not in ("mean", "last", "sum"):
            raise ValueError(f"mode must be 'mean', 'last' or 'sum', got {mode!r}")
        self.num_layers, self.mode = num_layers, mode
        self.conv = LightConv(symmetric=symmetric)

    def reset_parameters(self) -> None:
        pass  # parameter-free

    def forward(self, x: Tensor, adj: Tensor, adj_t: Tensor | None = None) -> Tensor:
        """``adj_t``: the transpose of a non-symmetric constant ``adj``, for a fast backward."""
        out = total = x
        for _ in range(self.num_layers):
            out = self.conv(out, adj) if adj_t is None else constant_spmm(adj, out, adj_t)
            total = total + out
        if self.mode == "last":
            return out
        return total / (self.num_layers + 1) if self.mode == "mean" else total

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_layers={self.num_layers}, mode={self.mode}, "
            f"symmetric={self.conv.symmetric})"
        )
