"""Item-item collaborative graph from co-interaction counts (e.g. SIGER's infusion, issue 5).

Outputs follow :mod:`pyg_dhmrec.data.graph`: ``torch.sparse_csr`` float32 on the input's device.
"""

from __future__ import annotations

from torch import Tensor

from pyg_dhmrec.data.cooccurrence import cooccurrence_edges
from pyg_dhmrec.data.graph import _check_bipartite, symmetric_normalize, to_csr

__all__ = ["item_cooccurrence_edges", "item_cooccurrence_graph"]


def item_cooccurrence_edges(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    k: int = 10,
    chunk_size: int = 1024,
    min_count: int = 1,
) -> tuple[Tensor, Tensor]:
    r"""The top-:math:`k` co-interacted items of every item, with their counts.

    .. math::
        C = R^\top R, \quad C_{ij} = |\mathcal{N}_i \cap \mathcal{N}_j|
        \ (\text{users who interacted with both } i \text{ and } j), \quad C_{ii} := 0,

    and row :math:`i` keeps its :math:`k` largest entries with
    :math:`C_{ij} \ge \max(1, \text{min\_count})` (an item co-interacted that often with fewer
    than :math:`k` others keeps fewer; ties go to the lower item id).
    :math:`R` is binary: a repeated (user, item) pair counts once. :math:`C` is computed
    ``chunk_size`` items at a time as the sparse-dense product :math:`R^\top R_{:, chunk}`, so
    the dense blocks are ``[U, chunk_size]`` and ``[chunk_size, I]``, never ``[I, I]``
    (:func:`~pyg_dhmrec.data.cooccurrence.cooccurrence_edges` on the flipped edges).

    Args:
        edge_index: ``[2, E]`` user->item train interactions.
        num_users: number of users ``U``.
        num_items: number of items ``I``.
        k: co-interacted neighbours kept per item.
        chunk_size: items whose rows of :math:`C` are computed at once.
        min_count: the fewest common users a kept pair has.

    Returns:
        ``(edge_index [2, E'], count [E'])``: row 0 the item, row 1 its neighbour, in
        decreasing count within each item; ``count`` float32.
    """
    _check_bipartite(edge_index, num_users, num_items)
    return cooccurrence_edges(edge_index.flip(0), num_items, num_users, k, chunk_size, min_count)


def item_cooccurrence_graph(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    k: int = 10,
    chunk_size: int = 1024,
) -> Tensor:
    r"""The normalised top-:math:`k` co-interaction graph
    :math:`\tilde{C} = D^{-1/2} C_k D^{-1/2}`, :math:`D = \mathrm{rowsum}(C_k)`, i.e.
    :math:`\tilde{C}_{ij} = C_{ij} / \sqrt{d_i d_j}`.

    :math:`C_k` is :func:`item_cooccurrence_edges` (counts kept as weights, so a pair that
    co-occurs more often weighs more). The row degree is used on both sides, as for the
    (equally asymmetric) kNN graph of :func:`~pyg_dhmrec.data.graph.knn_adjacency`, so the
    two graphs live on one scale and can be mixed. Items without co-interactions get an empty
    row.

    Returns:
        ``[I, I]`` ``torch.sparse_csr`` float32 matrix.
    """
    pairs, counts = item_cooccurrence_edges(edge_index, num_users, num_items, k, chunk_size)
    pairs, weight = symmetric_normalize(pairs, num_items, counts, degree="row")
    return to_csr(pairs, weight, num_items, num_items)
