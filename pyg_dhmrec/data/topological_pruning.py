r"""Topological pruning of a graph (TMLP's topological pruning strategy): each node keeps the
neighbours whose own neighbourhoods share the most information with its neighbourhood.

The topological similarity is the mutual information of neighbourhood indicators of N2N's
topology-aware positive sampling (Dong et al., CVPR 2022, arXiv 2203.12265), which TMLP's
released pruning script implements. Everything is computed sparse, ``chunk_size`` rows at a
time, never as a dense ``N x N`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_dhmrec.data.graph import _check_edge_index, _check_positive, _check_range, to_csr

__all__ = ["neighbourhood_mutual_information", "self_looped_row_normalize", "topological_pruning"]


def _check_graph(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``edge_index`` checked (ids in range, no repeated pair), as long."""
    _check_edge_index(edge_index)
    _check_positive("num_nodes", num_nodes)
    edge_index = edge_index.long()
    _check_range(edge_index[0], num_nodes, "node")
    _check_range(edge_index[1], num_nodes, "node")
    key = edge_index[0] * num_nodes + edge_index[1]
    if torch.unique(key).numel() != key.numel():
        raise ValueError(
            "edge_index holds a repeated (node, neighbour) pair; neighbourhoods are sets, give "
            "each pair once"
        )
    return edge_index


def neighbourhood_mutual_information(
    edge_index: Tensor, num_nodes: int, chunk_size: int = 1024
) -> Tensor:
    r"""The mutual information of the neighbourhood indicators of both ends of every listed
    pair :math:`(i, j)`.

    Node :math:`i`'s neighbourhood :math:`\mathcal{N}_i = \{j : (i, j) \in` ``edge_index``
    :math:`\}` (row 0 the node, row 1 its neighbour; a node may list itself) is read as the
    binary random variable :math:`X_i = \mathbb{1}[v \in \mathcal{N}_i]` of a node :math:`v`
    drawn uniformly from the :math:`N` nodes. With :math:`d_i = |\mathcal{N}_i|` and
    :math:`c_{ij} = |\mathcal{N}_i \cap \mathcal{N}_j|`, the joint distribution has
    :math:`p(1, 1) = c_{ij} / N`, :math:`p(1, 0) = (d_i - c_{ij}) / N`,
    :math:`p(0, 1) = (d_j - c_{ij}) / N`, :math:`p(0, 0) = (N - d_i - d_j + c_{ij}) / N`, the
    marginals :math:`p(X_i = 1) = d_i / N`, and

    .. math::
        I_{ij} = \sum_{x, y \in \{0, 1\}} p(x, y) \log \frac{p(x, y)}{p(X_i = x)\, p(X_j = y)}

    with :math:`0 \log 0 = 0`. :math:`c_{ij}` is :math:`(A A^\top)_{ij}` of the binary
    adjacency, computed ``chunk_size`` rows at a time as a sparse-sparse product (memory
    :math:`O(\text{nnz}((A A^\top)_{chunk}))`); the information is computed in float64.

    Args:
        edge_index: ``[2, E]`` (node, neighbour) pairs, each at most once.
        num_nodes: number of nodes ``N``.
        chunk_size: rows of :math:`A A^\top` computed at once (memory only).

    Returns:
        ``[E]`` float64 :math:`I_{ij}`, in the order of ``edge_index``.
    """
    edge_index = _check_graph(edge_index, num_nodes)
    _check_positive("chunk_size", chunk_size)
    device = edge_index.device
    row, col = edge_index
    order = torch.argsort(row * num_nodes + col)  # edges by row: each chunk is one range
    row, col = row[order], col[order]
    adjacency_t = to_csr(torch.stack([col, row]), None, num_nodes, num_nodes)  # A^T
    bounds = torch.searchsorted(
        row, torch.arange(0, num_nodes + chunk_size, chunk_size, device=device)
    )
    shared = torch.zeros(row.numel(), dtype=torch.float64, device=device)
    for chunk, start in enumerate(range(0, num_nodes, chunk_size)):
        end = min(start + chunk_size, num_nodes)
        lo, hi = int(bounds[chunk]), int(bounds[chunk + 1])
        if lo == hi:
            continue
        block = to_csr(torch.stack([row[lo:hi] - start, col[lo:hi]]), None, end - start, num_nodes)
        product = torch.sparse.mm(block, adjacency_t)  # (A A^T)_chunk, sparse [chunk, N]
        crow = product.crow_indices()
        product_row = torch.repeat_interleave(
            torch.arange(end - start, device=device), crow[1:] - crow[:-1]
        )
        # A CSR product's columns need not be sorted within a row: sort the keys.
        keys, by_key = torch.sort(product_row * num_nodes + product.col_indices())
        counts = product.values()[by_key]
        wanted = (row[lo:hi] - start) * num_nodes + col[lo:hi]
        if keys.numel():  # a pair absent from the product shares no neighbour
            at = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
            shared[lo:hi] = torch.where(keys[at] == wanted, counts[at].double(), 0.0)
    degree = torch.bincount(edge_index[0], minlength=num_nodes).double()
    n = float(num_nodes)
    d_i, d_j, c = degree[row], degree[col], shared
    information = torch.zeros_like(c)
    for joint, marginal_i, marginal_j in (
        (c, d_i, d_j),
        (d_i - c, d_i, n - d_j),
        (d_j - c, n - d_i, d_j),
        (n - d_i - d_j + c, n - d_i, n - d_j),
    ):
        # A cell with joint count > 0 has both marginal counts > 0; empty cells add 0.
        ratio = n * joint / (marginal_i * marginal_j).clamp_min(1.0)
        information += torch.where(joint > 0, joint / n * torch.log(ratio.clamp_min(1e-300)), 0.0)
    out = torch.empty_like(information)
    out[order] = information
    return out


def topological_pruning(
    edge_index: Tensor, num_nodes: int, k: int, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    r"""Each node's :math:`k` neighbours of highest topological similarity.

    Node :math:`i` ranks its neighbours :math:`j \in \mathcal{N}_i \setminus \{i\}` by
    :math:`I_{ij}` (:func:`neighbourhood_mutual_information`) and keeps the first :math:`k`
    (all of them when it has fewer; ties go to the lower neighbour id). Ranking by the
    normalised similarity :math:`\exp(I_{ij}) / \sum_{l \in \mathcal{N}_i \setminus \{i\}}
    \exp(I_{il})` keeps the same neighbours (it is monotone in :math:`I_{ij}` within a row).
    A node is never kept as its own neighbour.

    Args:
        edge_index: ``[2, E]`` (node, neighbour) pairs, each at most once.
        num_nodes: number of nodes ``N``.
        k: neighbours kept per node.
        chunk_size: rows computed at once (memory only).

    Returns:
        ``(kept [E'], information [E'])``: the columns of ``edge_index`` kept, by node and then
        in decreasing :math:`I_{ij}` within each node, and their :math:`I_{ij}` (float64).
    """
    _check_positive("k", k)
    information = neighbourhood_mutual_information(edge_index, num_nodes, chunk_size)
    row, col = edge_index.long()
    candidates = (row != col).nonzero().squeeze(1)
    # Stable sorts, least significant key first: neighbour id, then -I, then node.
    order = candidates[torch.argsort(col[candidates], stable=True)]
    order = order[torch.argsort(-information[order], stable=True)]
    order = order[torch.argsort(row[order], stable=True)]
    ranked_rows = row[order]
    rank = torch.arange(order.numel(), device=order.device) - torch.searchsorted(
        ranked_rows, ranked_rows
    )
    kept = order[rank < k]
    return kept, information[kept]


def self_looped_row_normalize(
    edge_index: Tensor, edge_weight: Tensor, num_nodes: int
) -> tuple[Tensor, Tensor]:
    r""":math:`\tilde{A} = (D + I)^{-1} (A + I)`, :math:`D = \mathrm{diag}(A \mathbf{1})`: a unit
    self-loop added to every node and each row divided by its sum, so
    :math:`\tilde{A}_{ij} = w_{ij} / (1 + d_i)` and :math:`\tilde{A}_{ii} = 1 / (1 + d_i)`.

    ``edge_index`` must hold no self-loop (the unit one is added). Returns the edges followed
    by the ``num_nodes`` self-loops, with their weights.
    """
    edge_index = _check_graph(edge_index, num_nodes)
    if bool((edge_index[0] == edge_index[1]).any()):
        raise ValueError("self_looped_row_normalize adds the self-loops: edge_index has one")
    if edge_weight.dim() != 1 or edge_weight.numel() != edge_index.size(1):
        raise ValueError(
            f"edge_weight must have shape [E] = [{edge_index.size(1)}], "
            f"got {list(edge_weight.shape)}"
        )
    weight = edge_weight.float()
    nodes = torch.arange(num_nodes, device=edge_index.device)
    row_sum = torch.ones(num_nodes, device=weight.device).index_add_(0, edge_index[0], weight)
    if bool((row_sum <= 0).any()):
        raise ValueError("a row of A + I sums to <= 0: edge weights must keep 1 + d_i > 0")
    loops = torch.stack([nodes, nodes])
    return (
        torch.cat([edge_index, loops], 1),
        torch.cat([weight / row_sum[edge_index[0]], 1.0 / row_sum]),
    )
