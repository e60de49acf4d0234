"""The row-normalised (mean-aggregation) user-item adjacency :math:`D^{-1} A`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import degree

from pyg_dhmrec.data.graph import _check_bipartite, to_csr

__all__ = ["row_normalized_adjacency"]


def row_normalized_adjacency(edge_index: Tensor, num_users: int, num_items: int) -> Tensor:
    r"""The ``[U + I, U + I]`` bipartite adjacency normalised by row degree,
    :math:`\hat{A} = D^{-1} A` with
    :math:`A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}`.

    Row :math:`v` of :math:`\hat{A} X` is the mean of :math:`X` over the neighbours of node
    :math:`v` (GraphSAGE's / MMGCN's mean aggregator); isolated nodes get a zero row. Users are
    nodes ``0 .. U-1``, items ``U .. U+I-1``. Duplicate (user, item) pairs count once. Returns
    a ``torch.sparse_csr`` float32 matrix on the device of ``edge_index``; it is not symmetric.

    Args:
        edge_index: ``[2, E]`` (user, item) train interactions.
        num_users: ``U``.
        num_items: ``I``.
    """
    _check_bipartite(edge_index, num_users, num_items)
    n = num_users + num_items
    users, items = edge_index[0].long(), edge_index[1].long() + num_users
    pairs = torch.unique(users * n + items)  # one entry per distinct (user, item)
    users, items = pairs // n, pairs % n
    src, dst = torch.cat([users, items]), torch.cat([items, users])
    deg = degree(src, n, dtype=torch.float32)
    value = 1.0 / deg[src]
    return to_csr(torch.stack([src, dst]), value, n, n)
