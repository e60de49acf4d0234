"""PyG transforms that add derived graphs to a dataset's ``HeteroData``."""

from __future__ import annotations

from collections.abc import Sequence

from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform

from pyg_dhmrec.data.dataset import item_features
from pyg_dhmrec.data.graph import normalized_knn_edges


class AddItemKNNGraphs(BaseTransform):
    r"""Adds one frozen item-item kNN graph per modality as edge type
    ``('item', 'knn_<modality>', 'item')`` with ``edge_index`` (item -> its top-k cosine
    neighbours) and ``edge_weight``, FREEDOM's normalisation (:func:`normalized_knn_edges`).

    Args:
        k: neighbours per item.
        modalities: which item feature matrices to use (default: every one on the item store).
        chunk_size: rows of the similarity matrix computed at once.
    """

    def __init__(
        self, k: int = 10, modalities: Sequence[str] | None = None, chunk_size: int = 1024
    ) -> None:
        self.k, self.modalities, self.chunk_size = k, modalities, chunk_size

    def forward(self, data: HeteroData) -> HeteroData:
        features = item_features(data)
        for name in self.modalities or list(features):
            if name not in features:
                raise ValueError(
                    f"item features '{name}' not found; the item store has {list(features)}"
                )
            edge_index, weight = normalized_knn_edges(features[name], self.k, self.chunk_size)
            data["item", f"knn_{name}", "item"].edge_index = edge_index
            data["item", f"knn_{name}", "item"].edge_weight = weight
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k}, modalities={self.modalities})"
