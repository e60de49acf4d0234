"""Co-occurrence graphs of one side of a bipartite graph: nodes linked by the neighbours they
share (items co-interacted by users, SIGER; users sharing items, DualGNN), built sparse and in
chunks of rows, never as a dense ``N x N`` matrix."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from pyg_dhmrec.data.graph import _check_bipartite, _check_positive

__all__ = ["cooccurrence_edges", "resample_to_k_neighbours"]


def cooccurrence_edges(
    edge_index: Tensor,
    num_nodes: int,
    num_shared: int,
    k: int = 10,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    r"""The top-:math:`k` co-occurring nodes of every node of one side of a bipartite graph,
    with their counts.

    With the binary incidence :math:`B \in \{0, 1\}^{N \times S}` (``edge_index`` row 0 the
    node, row 1 the shared neighbour; a repeated pair counts once),

    .. math::
        C = B B^\top, \quad C_{ij} = |\mathcal{N}_i \cap \mathcal{N}_j|, \quad C_{ii} := 0,

    and row :math:`i` keeps its :math:`k` largest entries with :math:`C_{ij} > 0` (fewer when
    it co-occurs with fewer nodes; ties go to the lower node id). :math:`C` is computed
    ``chunk_size`` rows at a time as the sparse-sparse product :math:`B_{chunk} B^\top` (a
    ``[chunk_size, N]`` sparse block holding only the co-occurring pairs, which comes out
    sorted by row and column), and each row's top :math:`k` is taken by one stable sort of the
    block's entries by (row, count) on a small integer key (the column order breaks ties):
    memory is :math:`O(\text{nnz}(C_{chunk}))`, never a dense ``[N, N]`` (nor
    ``[chunk_size, N]``) matrix.

    Users sharing items: ``edge_index`` = the user->item train edges, ``num_shared`` = items.
    Items co-interacted by users: the flipped edges, ``num_shared`` = users.

    Args:
        edge_index: ``[2, E]`` (node, shared neighbour) pairs.
        num_nodes: number of nodes ``N`` (the side the graph is built on).
        num_shared: number of shared neighbours ``S`` (the other side).
        k: co-occurring nodes kept per node.
        chunk_size: rows of :math:`C` computed at once (memory only).

    Returns:
        ``(edge_index [2, E'], count [E'])``: row 0 the node, row 1 its co-occurring node, in
        decreasing count within each node; ``count`` float32.
    """
    _check_bipartite(edge_index, num_nodes, num_shared)
    _check_positive("k", k)
    _check_positive("chunk_size", chunk_size)
    device = edge_index.device
    key = torch.unique(edge_index[0].long() * num_shared + edge_index[1].long())
    pairs = torch.stack([key // num_shared, key % num_shared])  # binary B: repeats count once
    incidence_t = _coo(pairs.flip(0), num_shared, num_nodes).coalesce()  # B^T, [S, N]
    # unique() sorted the pairs by node: each chunk's pairs are one contiguous range.
    starts = torch.arange(0, num_nodes + chunk_size, chunk_size, device=device)
    bounds = torch.searchsorted(pairs[0], starts)

    rows, cols, counts = [], [], []
    for chunk, start in enumerate(range(0, num_nodes, chunk_size)):
        end = min(start + chunk_size, num_nodes)
        lo, hi = int(bounds[chunk]), int(bounds[chunk + 1])
        local = torch.stack([pairs[0, lo:hi] - start, pairs[1, lo:hi]])
        block = _coo(local, end - start, num_shared, is_coalesced=True)  # B_chunk, [chunk, S]
        with warnings.catch_warnings():  # the product goes through CSR internally
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            product = torch.sparse.mm(block, incidence_t)  # C[chunk, :], sparse [chunk, N]
        if not product.is_coalesced():
            product = product.coalesce()
        (row, col), count = product.indices(), product.values().long()  # exact small integers
        if row.numel() == 0:
            continue
        # Entries come sorted by (row, column). A node's own entry C_ii = |N_i| is at least
        # every C_ij; raised above them it sorts first in its row and is skipped below.
        top = int(count.max()) + 1
        count[col == row + start] = top
        # A stable sort by (row, count descending) keeps the column order among equal counts.
        rank_key = row * (top + 1) + (top - count)
        if int(rank_key.max()) < 2**31:
            rank_key = rank_key.int()  # a faster sort
        order = torch.argsort(rank_key, stable=True)
        # The sort keeps rows in place: each entry's rank is its offset in the row.
        row_start = torch.cumsum(torch.bincount(row, minlength=end - start), 0)
        row_start = torch.cat([row_start.new_zeros(1), row_start[:-1]])
        rank = torch.arange(row.numel(), device=device) - row_start[row]
        keep = (rank >= 1) & (rank <= k)  # rank 0: the node itself
        kept = order[keep]
        rows.append(row[keep] + start)
        cols.append(col[kept])
        counts.append(count[kept].float())
    if not rows:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return torch.stack([empty, empty]), torch.empty(0, device=device)
    return torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(counts)


def _coo(edge_index: Tensor, num_rows: int, num_cols: int, is_coalesced: bool = False) -> Tensor:
    """The binary sparse COO ``[num_rows, num_cols]`` matrix of distinct ``edge_index`` pairs
    (``is_coalesced``: already sorted by row, then column). The product of two coalesced ones
    comes out coalesced: sorted by row, then column."""
    values = torch.ones(edge_index.size(1), device=edge_index.device)
    with warnings.catch_warnings():
        # Ranges were validated by the caller, so sparse invariant checks are skipped on purpose.
        warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
        return torch.sparse_coo_tensor(
            edge_index, values, (num_rows, num_cols), is_coalesced=is_coalesced
        )


def resample_to_k_neighbours(
    edge_index: Tensor,
    num_nodes: int,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Exactly :math:`k` neighbour slots per node from a top-:math:`k` neighbour list
    (DualGNN's per-epoch neighbour sampling).

    A node with :math:`n \ge k` listed neighbours keeps its first :math:`k`; one with
    :math:`0 < n < k` fills slots :math:`n, \dots, k-1` one after another, slot :math:`p`
    copying a uniformly drawn earlier slot :math:`r \in [0, p)` (so a neighbour drawn once is
    likelier to be drawn again, as in the authors' sampler); a node without neighbours gets no
    slots.

    Args:
        edge_index: ``[2, E]`` (node, neighbour) pairs, each node's neighbours contiguous and in
            rank order (as :func:`cooccurrence_edges` returns them).
        num_nodes: number of nodes.
        k: slots per node.
        generator: random source of the draws (``None``: the global one).

    Returns:
        ``(nodes [M], slots [M, k], slot_edge [M, k])`` for the ``M`` nodes with a neighbour,
        in increasing id: ``slots`` the neighbour ids; ``slot_edge`` the column of
        ``edge_index`` each slot copies, so edge attributes (counts) can be gathered.
    """
    _check_positive("k", k)
    nodes = edge_index[0].long()
    if nodes.numel() > 1 and bool((nodes[1:] < nodes[:-1]).any()):
        raise ValueError("resample_to_k_neighbours needs edge_index sorted by node (row 0)")
    device = nodes.device
    degree = torch.bincount(nodes, minlength=num_nodes)
    has = degree > 0
    start = torch.cumsum(degree, 0) - degree
    n = degree[has].clamp(max=k)  # [M]
    slot = torch.arange(k, device=device).expand(n.numel(), k)
    offset = torch.where(slot < n.unsqueeze(1), slot, torch.zeros_like(slot)).clone()
    for p in range(int(n.min()) if n.numel() else k, k):
        short = n <= p  # nodes whose slot p is a padding slot
        if not bool(short.any()):
            continue
        draw = torch.rand(int(short.sum()), generator=generator, device=device)
        earlier = (draw * p).long().clamp(max=p - 1)  # uniform over the slots 0..p-1
        rows = short.nonzero().squeeze(1)
        offset[rows, p] = offset[rows, earlier]
    slot_edge = start[has].unsqueeze(1) + offset
    return has.nonzero().squeeze(1), edge_index[1].long()[slot_edge], slot_edge
