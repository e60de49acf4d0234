"""Graph structure learning: a top-k cosine similarity graph whose kept edge values are
differentiable functions of (learned) node features, e.g. LATTICE's latent item graphs."""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_dhmrec.data.graph import cosine_knn_edges, to_csr
from pyg_dhmrec.nn.propagation import _check_num_layers, constant_spmm


class LearnedKNNGraph(torch.nn.Module):
    r"""Module form of :func:`cosine_knn_edges`: ``features [n, f]`` ->
    ``(edge_index [2, n * k], edge_weight [n * k])`` of the normalised top-k cosine graph.

    Parameter-free: the learnable part is whatever maps raw inputs to ``features`` (e.g. a
    per-modality ``Linear`` in LATTICE, Eq. 4), which receives gradients through the kept
    similarity values. Call it under :func:`torch.no_grad` on raw features for a frozen
    weighted kNN graph (LATTICE's initial graph, Eqs. 1-3).

    Args:
        k: neighbours kept per row.
        normalize: apply :math:`D^{-1/2} \hat{S} D^{-1/2}`.
        include_self: every node keeps itself among its ``k`` neighbours.
        chunk_size: rows of the similarity matrix processed at once (memory, see
            :func:`cosine_knn_edges`).
    """

    def __init__(
        self,
        k: int = 10,
        normalize: bool = True,
        include_self: bool = True,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.k, self.normalize = k, bool(normalize)
        self.include_self, self.chunk_size = bool(include_self), chunk_size

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return cosine_knn_edges(
            features, self.k, self.normalize, self.include_self, self.chunk_size
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, normalize={self.normalize}, include_self={self.include_self}"


#: An item graph as ``(edge_index [2, E] in (neighbour j, item i) order, weight [E])``, or as
#: a constant ``(A, A^T)`` pair of ``torch.sparse_csr`` matrices (rows: items).
ItemGraph = tuple[Tensor, Tensor]


def skip_connected_graph(
    learned: ItemGraph, frozen: ItemGraph, frozen_graph_weight: float
) -> ItemGraph:
    r"""LATTICE's skip connection (LATTICE Eq. 6, MICRO):
    :math:`\tilde{A} = (1 - \lambda) \hat{A} + \lambda \tilde{S}` of a learned and a frozen
    graph given as ``(edge_index, weight)``; the edges are concatenated (a pair in both sums),
    the learned weights keep their gradient."""
    if not 0.0 <= frozen_graph_weight <= 1.0:  # also rejects NaN
        raise ValueError(f"frozen_graph_weight must be in [0, 1], got {frozen_graph_weight!r}")
    for name, (edge_index, weight) in (("learned", learned), ("frozen", frozen)):
        if edge_index.dim() != 2 or edge_index.size(0) != 2 or weight.shape != edge_index.shape[1:]:
            raise ValueError(
                f"{name} must be (edge_index [2, E], weight [E]), got {list(edge_index.shape)} "
                f"and {list(weight.shape)}"
            )
    return (
        torch.cat([learned[0], frozen[0]], dim=1),
        torch.cat([(1.0 - frozen_graph_weight) * learned[1], frozen_graph_weight * frozen[1]]),
    )


def constant_item_graph(graph: ItemGraph, num_items: int) -> ItemGraph:
    """``(edge_index, weight)`` as the constant ``(A, A^T)`` CSR pair (weights detached, in
    their dtype): one fused sparse product per hop, several times faster on CPU than edge-wise
    messages."""
    edge_index, weight = graph[0], graph[1].detach()
    n = num_items
    # built in the weights' dtype: float64 weights are not rounded through float32
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    pair = to_csr(edge_index.flip(0), weight, n, n, dtype), to_csr(edge_index, weight, n, n, dtype)
    return pair[0], pair[1]


def propagate_item_graph(
    x: Tensor, graph: ItemGraph, num_layers: int, conv: torch.nn.Module
) -> Tensor:
    r""":math:`A^L x` over an :data:`ItemGraph`: by ``conv`` (a
    :class:`~pyg_dhmrec.nn.propagation.LightConv`, so gradients reach the edge weights) for
    ``(edge_index, weight)``, by :func:`~pyg_dhmrec.nn.propagation.constant_spmm` for a
    constant CSR pair."""
    _check_num_layers(num_layers)
    first, second = graph
    for _ in range(num_layers):
        if first.layout == torch.sparse_csr:
            x = constant_spmm(first, x, second)
        else:
            x = conv(x, first, second)
    return x
