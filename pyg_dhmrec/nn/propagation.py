"""Multi-layer linear propagation over a pre-normalised sparse adjacency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch_geometric.nn import LGConv

from pyg_dhmrec.data.graph import csr_row_positions, csr_transpose
from pyg_dhmrec.nn._checks import check_dense, check_index, shape


def _check_operand(adj: Tensor, x: Tensor, name: str = "x", adj_name: str = "adj") -> None:
    """``x`` fits the sparse product ``adj @ x``: a dense ``[adj.size(1), d]`` tensor of the
    matrix's dtype (the fused CSR kernel neither promotes nor broadcasts)."""
    check_dense(name, x, dim=2)
    if x.size(0) != adj.size(1):
        raise ValueError(
            f"{name} must have {adj.size(1)} rows to multiply the {shape(adj)} {adj_name}, "
            f"got shape {shape(x)}"
        )
    if x.dtype != adj.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {adj_name} {adj.dtype}; convert one of them "
            f"(e.g. FrozenSparse(...).to({x.dtype}) or x.to({adj.dtype}))"
        )


def _check_sparse(name: str, adj: object) -> None:
    if not isinstance(adj, Tensor) or adj.layout not in (torch.sparse_csr, torch.sparse_coo):
        what = adj.layout if isinstance(adj, Tensor) else type(adj).__name__
        raise TypeError(f"{name} must be a sparse (torch.sparse_csr) matrix, got {what}")


def _spmm(adj: Tensor, x: Tensor) -> Tensor:
    """``adj @ x`` written straight into a fresh output: ``torch.sparse.mm`` zero-fills a tensor
    and copies it into its output before the product, two passes over ``[N, d]`` more (the
    same values; ``beta=0`` never reads the uninitialised output)."""
    return x.new_empty(adj.size(0), x.size(1)).addmm_(adj, x, beta=0)


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
        return _spmm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, _spmm(ctx.adj_t, grad)


def constant_spmm(adj: Tensor, x: Tensor, adj_t: Tensor) -> Tensor:
    """Sparse-dense product with a constant ``adj`` (no gradient to it); ``adj_t`` is its
    transpose as ``torch.sparse_csr``."""
    _check_sparse("adj", adj)
    _check_sparse("adj_t", adj_t)
    if adj_t.shape != adj.shape[::-1]:
        raise ValueError(f"adj_t must be the {shape(adj)} adj transposed, got {shape(adj_t)}")
    _check_operand(adj, x)
    return _ConstantSpmm.apply(adj, adj_t, x)


def sparse_rows_matmul(adj: Tensor, rows: Tensor, x: Tensor) -> Tensor:
    r"""``(adj @ x)[rows]`` for a constant ``torch.sparse_csr`` ``adj``, differentiable in ``x``.

    .. math::
        y_r = \sum_{j} A_{\text{rows}_r, j}\, x_j

    Only the entries of ``rows`` are read: :math:`O(\mathrm{nnz}(A_{rows})\, d)` work instead
    of the :math:`O(\mathrm{nnz}(A)\, d + N d)` of the full product, for a step that needs a
    last hop at a batch's rows only. The same values as the full product up to the order of
    the floating-point sums.
    """
    if adj.layout != torch.sparse_csr:
        raise ValueError(f"sparse_rows_matmul needs a sparse CSR matrix, got {adj.layout}")
    check_index("rows", rows)
    check_dense("x", x, dim=2)
    if x.size(0) != adj.size(1):
        raise ValueError(f"x must have {adj.size(1)} rows for the {shape(adj)} adj, got {shape(x)}")
    # An id past the last row would read the next row's entries or fail deep in an index;
    # the gather below waits for the device anyway (repeat_interleave sizes its output).
    if rows.numel() and not bool(((rows >= 0) & (rows < adj.size(0))).all()):
        raise ValueError(f"rows must be row ids in [0, {adj.size(0)})")
    out_row, position = csr_row_positions(adj.crow_indices(), rows)
    value = adj.values()[position].unsqueeze(-1).to(x.dtype)
    messages = x[adj.col_indices()[position]] * value
    return x.new_zeros(rows.numel(), x.size(1)).index_add(0, out_row, messages)


class FrozenSparse(torch.nn.Module):
    r"""A constant sparse operator :math:`A` (a normalised adjacency, a kNN graph, ...):
    ``op(x)`` (or ``op @ x``) is :math:`A x`, with the fast backward :math:`A^\top g` of
    :func:`constant_spmm`.

    :math:`A` and, unless ``symmetric``, its transpose are ``torch.sparse_csr`` buffers, so the
    operator moves with ``.to(device)``; they are graph data, not model state, and stay out of
    ``state_dict``. ``symmetric=True`` declares :math:`A = A^\top` (e.g. the normalised
    user-item graph) and keeps one matrix.
    """

    matrix: Tensor
    matrix_t: Tensor

    def __init__(self, matrix: Tensor, symmetric: bool = False) -> None:
        super().__init__()
        if not isinstance(matrix, Tensor) or matrix.dim() != 2:
            raise ValueError("FrozenSparse needs a 2-D sparse matrix")
        if matrix.layout != torch.sparse_csr:
            matrix = matrix.to_sparse_csr()
        self.symmetric = symmetric
        self.register_buffer("matrix", matrix.detach(), persistent=False)
        if not symmetric:
            self.register_buffer("matrix_t", csr_transpose(matrix).detach(), persistent=False)

    @property
    def shape(self) -> torch.Size:
        return self.matrix.shape

    @property
    def transpose(self) -> Tensor:
        """:math:`A^\top` as ``torch.sparse_csr``."""
        return self.matrix if self.symmetric else self.matrix_t

    def forward(self, x: Tensor) -> Tensor:
        _check_operand(self.matrix, x, adj_name="FrozenSparse matrix")
        return _ConstantSpmm.apply(self.matrix, self.transpose, x)

    def apply_transpose(self, x: Tensor) -> Tensor:
        r""":math:`A^\top x` (backward :math:`A g`), without transposing anything per call."""
        _check_operand(self.transpose, x, adj_name="FrozenSparse transpose")
        return _ConstantSpmm.apply(self.transpose, self.matrix, x)

    def __matmul__(self, x: Tensor) -> Tensor:
        return self(x)

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}, nnz={self.matrix._nnz()}, symmetric={self.symmetric}"


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    """Sparse-dense product with a symmetric, constant ``adj`` (no gradient to ``adj``)."""
    _check_sparse("adj", adj)
    if adj.size(0) != adj.size(1):
        raise ValueError(f"symmetric_spmm needs a square adj, got {shape(adj)}")
    _check_operand(adj, x)
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


def _check_num_layers(num_layers: int) -> None:
    # A float or a bool is not a layer count, although range() or a comparison would take some.
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")


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
        _check_num_layers(num_layers)
        if mode not in ("mean", "last", "sum"):
            raise ValueError(f"mode must be 'mean', 'last' or 'sum', got {mode!r}")
        self.num_layers, self.mode = num_layers, mode
        self.conv = LightConv(symmetric=symmetric)

    def reset_parameters(self) -> None:
        pass  # parameter-free

    def hop(self, x: Tensor, adj: Tensor | FrozenSparse) -> Tensor:
        r"""One hop, :math:`\hat{A} x`."""
        return adj(x) if isinstance(adj, FrozenSparse) else self.conv(x, adj)

    def forward(
        self,
        x: Tensor,
        adj: Tensor | FrozenSparse,
        perturb: Callable[[Tensor], Tensor] | None = None,
        first_hop: Tensor | None = None,
    ) -> Tensor:
        r"""``adj``: a normalised ``torch.sparse_csr`` matrix, or a :class:`FrozenSparse`
        operator (a constant graph with its transpose, for a fast backward). ``perturb``, if
        given, is applied after every hop (SimGCL's placement; layer 0 stays clean),
        :math:`E^{(l+1)} = \mathrm{perturb}(\hat{A} E^{(l)})`. ``first_hop``, if given, is
        :math:`\hat{A} x` already computed (:meth:`hop`), e.g. shared by several passes that
        differ only in their noise."""
        if isinstance(adj, FrozenSparse):
            _check_operand(adj.matrix, x, adj_name="adj")
        elif isinstance(adj, Tensor) and adj.layout != torch.strided:
            _check_operand(adj, x)
        elif isinstance(adj, Tensor) and adj.is_floating_point():
            raise TypeError(
                f"adj must be a sparse (torch.sparse_csr) matrix or a FrozenSparse, got a dense "
                f"{shape(adj)} tensor (adj.to_sparse_csr() converts it)"
            )
        if first_hop is not None and first_hop.shape != x.shape:
            raise ValueError(
                f"first_hop must have the shape of x, {shape(x)}, got {shape(first_hop)}"
            )
        out = total = x
        for layer in range(self.num_layers):
            if layer == 0 and first_hop is not None:
                out = first_hop
            else:
                out = self.hop(out, adj)
            if perturb is not None:
                out = perturb(out)
            total = total + out
        if self.mode == "last":
            return out
        return total / (self.num_layers + 1) if self.mode == "mean" else total

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_layers={self.num_layers}, mode={self.mode}, "
            f"symmetric={self.conv.symmetric})"
        )


def item_seeded_propagation(
    items: Tensor, user_item: FrozenSparse, num_layers: int, with_users: bool = True
) -> tuple[Tensor | None, Tensor]:
    r"""LightGCN's layer mean on a user-item graph whose users start as their items' aggregate.

    On the bipartite graph :math:`\hat{A} = \begin{pmatrix} 0 & \tilde{R} \\ \tilde{R}^\top
    & 0 \end{pmatrix}` (:func:`~pyg_dhmrec.data.graph.normalized_adjacency`, whose user-item
    block is ``user_item`` :math:`= \tilde{R}`), with layer 0 :math:`i_0 = X` and
    :math:`u_0 = \tilde{R} X`, the layers are :math:`u_{l+1} = \tilde{R} i_l` and
    :math:`i_{l+1} = \tilde{R}^\top u_l`. Then :math:`u_1 = \tilde{R} i_0 = u_0`, and by
    induction :math:`u_{2k+1} = u_{2k}` and :math:`i_{2k+2} = i_{2k+1}`: every second layer
    repeats the previous one. So the chain :math:`c_0 = X`, :math:`c_{k+1} = \tilde{R} c_k`
    (:math:`k` even) or :math:`\tilde{R}^\top c_k` (:math:`k` odd) holds every layer,
    :math:`i_l = c_{2\lceil l/2 \rceil}` and :math:`u_l = c_{2\lfloor l/2 \rfloor + 1}`, and
    the mean over layers :math:`0..L` of :class:`LightPropagation` over
    :math:`[\tilde{R}X; X]` costs :math:`L` or :math:`L + 1` half products (items, users)
    instead of :math:`2L + 1` (for :math:`L = 2`: two instead of five when only the items
    are needed, as in DHMRec's Eq. 13 input).

    Args:
        items: ``[I, d]`` layer-0 item embeddings :math:`X`.
        user_item: :math:`\tilde{R}` as ``[U, I]`` :class:`FrozenSparse`.
        num_layers: :math:`L \ge 0`.
        with_users: also return the users' mean (``None`` otherwise).

    Returns:
        ``(users [U, d] or None, items [I, d])``, the means over layers :math:`0..L`.
    """
    _check_num_layers(num_layers)
    if not isinstance(user_item, FrozenSparse):
        raise TypeError(f"user_item must be a FrozenSparse, got {type(user_item).__name__}")
    _check_operand(user_item.matrix, items, name="items", adj_name="user_item")
    # c_k (k >= 1) is u_{k-1} = u_k (k odd) or i_{k-1} = i_k (k even): needed up to k = L + 1.
    last = num_layers + 1 if with_users or num_layers % 2 else num_layers
    item_sum, user_sum, chain = items, None, items
    for k in range(1, last + 1):
        chain = user_item(chain) if k % 2 else user_item.apply_transpose(chain)
        if k % 2 == 0 or with_users:  # the users' sums only when asked for
            term = chain if k > num_layers else 2 * chain  # layer k - 1 always, k if <= L
            if k % 2 == 0:
                item_sum = item_sum + term
            else:
                user_sum = term if user_sum is None else user_sum + term
    layers = num_layers + 1
    return (user_sum / layers if with_users else None), item_sum / layers
