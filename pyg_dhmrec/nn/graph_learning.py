"""Graph structure learning: a top-k cosine similarity graph whose kept edge values are
differentiable functions of (learned) node features, e.g. LATTICE's latent item graphs."""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_dhmrec.data.graph import cosine_knn_edges


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
