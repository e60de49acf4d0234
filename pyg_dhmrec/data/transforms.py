"""Derived graphs as ``HeteroData`` edge types: PyG transforms, cached with the dataset.

A :class:`DerivedGraph` computes one or more edge types from a dataset graph (item kNN graphs
from the modality features, the item co-interaction graph from the train edges, ...). Each
edge store it writes records the transform's settings, so a model can check that ``data``
holds the graph it asks for. :func:`add_derived_graphs` applies transforms once and caches
their output beside the processed dataset, keyed by the settings: a second run with the same
settings loads them; other settings build and cache their own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform
from torch_geometric.typing import EdgeType

from pyg_dhmrec.data.consistent_knn import consistent_knn_edges
from pyg_dhmrec.data.cooccurrence import cooccurrence_edges
from pyg_dhmrec.data.dataset import RATES, item_features
from pyg_dhmrec.data.graph import (
    _check_mixing_weights,
    cosine_knn_edges,
    mix_modality_graphs,
    normalized_knn_edges,
    resolve_modality_weights,
    symmetric_normalize,
    to_csr,
)
from pyg_dhmrec.data.item_cooccurrence import item_cooccurrence_edges
from pyg_dhmrec.data.topological_pruning import self_looped_row_normalize, topological_pruning

log = logging.getLogger(__name__)

__all__ = [
    "AddConsistentItemKNNGraphs",
    "AddItemCooccurrenceGraph",
    "AddItemKNNGraphs",
    "AddTopologicallyPrunedGraph",
    "AddUserCooccurrenceGraph",
    "DerivedGraph",
    "add_derived_graphs",
    "co_interaction_edge_type",
    "consistent_knn_edge_type",
    "knn_edge_type",
    "topology_pruned_edge_type",
    "user_cooccurrence_edge_type",
]

#: Stores are tensors plus these settings attributes.
SETTINGS_ATTR = "settings"


def knn_edge_type(modality: str) -> EdgeType:
    """``('item', 'knn_<modality>', 'item')``."""
    return ("item", f"knn_{modality}", "item")


def consistent_knn_edge_type(modality: str) -> EdgeType:
    """``('item', 'consistent_knn_<modality>', 'item')``."""
    return ("item", f"consistent_knn_{modality}", "item")


def co_interaction_edge_type() -> EdgeType:
    """``('item', 'co_interaction', 'item')``."""
    return ("item", "co_interaction", "item")


def topology_pruned_edge_type() -> EdgeType:
    """``('item', 'topology_pruned', 'item')``."""
    return ("item", "topology_pruned", "item")


def user_cooccurrence_edge_type() -> EdgeType:
    """``('user', 'co_occurrence', 'user')``."""
    return ("user", "co_occurrence", "user")


class DerivedGraph(BaseTransform):
    """A transform that adds derived edge types to a dataset's ``HeteroData``.

    Subclasses implement :meth:`settings` (what the graph depends on besides the dataset,
    JSON-serialisable) and :meth:`compute` (``edge type -> {attribute: tensor}``). Every
    written edge store also holds ``settings``, the transform's settings, which
    :meth:`present` compares.
    """

    #: Bumped when :meth:`compute` gives other graphs for the same settings, so that graphs
    #: cached by an older build are rebuilt (2: cosine rows by division, MMRec's tie-breaking;
    #: 3: feature rows of norm below float32's range or above it rescaled before the cosine).
    build_version: int = 3

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        raise NotImplementedError

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        """The edge types :meth:`compute` writes for ``data``."""
        raise NotImplementedError

    def key(self) -> str:
        """Cache key: the transform's name, its settings and :attr:`build_version`."""
        body = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))
        body += f"|build={self.build_version}"
        digest = hashlib.sha1(body.encode()).hexdigest()[:12]
        return f"{type(self).__name__}-{digest}"

    def present(self, data: HeteroData) -> bool:
        """Whether ``data`` holds every edge type of this transform, built with its settings."""
        for edge_type in self.edge_types(data):
            if edge_type not in data.edge_types:
                return False
            if data[edge_type].get(SETTINGS_ATTR) != self.settings():
                return False
        return True

    def forward(self, data: HeteroData) -> HeteroData:
        return _write(data, self.compute(data), self.settings())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class AddItemKNNGraphs(DerivedGraph):
    r"""One frozen top-:math:`k` cosine kNN item graph per modality, edge type
    ``('item', 'knn_<modality>', 'item')`` with ``edge_index`` (row 0 the item :math:`i`, row 1
    its neighbour :math:`j`, so the operator is :math:`A_{ij}` = ``edge_weight``) and
    ``edge_weight``, normalised :math:`D^{-1/2} S D^{-1/2}` with row degrees.

    ``weighting="binary"``: :math:`S_{ij} = 1` for a kept neighbour (FREEDOM, DHMRec, SIGER;
    :func:`~pyg_dhmrec.data.graph.normalized_knn_edges`); ``"cosine"``: :math:`S_{ij}` is the
    cosine similarity (LATTICE Eqs. 1-3, MGCN; :func:`~pyg_dhmrec.data.graph.cosine_knn_edges`).
    The item itself is always among its :math:`k` neighbours.

    Args:
        k: neighbours per item.
        modalities: item modalities to build graphs for (default: every declared one).
        weighting: ``"binary"`` or ``"cosine"``.
        chunk_size: rows of the similarity matrix computed at once (memory only).
    """

    def __init__(
        self,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        weighting: str = "binary",
        chunk_size: int = 1024,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"knn_k must be a positive int, got {k!r}")
        if weighting not in ("binary", "cosine"):
            raise ValueError(f"kNN weighting must be 'binary' or 'cosine', got {weighting!r}")
        self.k, self.weighting, self.chunk_size = k, weighting, chunk_size
        self.modalities = None if modalities is None else list(modalities)

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "weighting": self.weighting, "modalities": self.modalities}

    def _modalities(self, data: HeteroData) -> list[str]:
        features = item_features(data)
        names = self.modalities if self.modalities is not None else list(features)
        missing = [m for m in names if m not in features]
        if missing:
            raise ValueError(
                f"AddItemKNNGraphs: modalities {missing} not found; the dataset declares "
                f"{list(features)}"
            )
        return names

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        return [knn_edge_type(m) for m in self._modalities(data)]

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        features = item_features(data)
        num_items = int(data["item"].num_nodes)
        out = {}
        for m in self._modalities(data):
            x = features[m].detach().float()
            if self.k > num_items:
                raise ValueError(
                    f"knn_k = {self.k} exceeds the number of items ({num_items}); choose "
                    f"knn_k in [1, {num_items}]"
                )
            with torch.no_grad():
                if self.weighting == "binary":
                    edge_index, weight = normalized_knn_edges(x, self.k, self.chunk_size)
                else:
                    edge_index, weight = cosine_knn_edges(x, self.k, chunk_size=self.chunk_size)
            out[knn_edge_type(m)] = {"edge_index": edge_index, "edge_weight": weight}
        return out


class AddTopologicallyPrunedGraph(DerivedGraph):
    r"""TMLP's topologically pruned item graph, edge type
    ``('item', 'topology_pruned', 'item')``.

    1. Per modality :math:`m` the binary top-``knn_k`` cosine kNN graph, normalised
       :math:`S^m = D^{-1/2} \hat{S}^m D^{-1/2}` (:class:`AddItemKNNGraphs`; read from ``data``
       when it holds them with these settings), mixed :math:`S = \sum_m w_m S^m`
       (:func:`~pyg_dhmrec.data.graph.mix_modality_graphs`). Item :math:`i`'s neighbourhood is
       its row's support :math:`\mathcal{N}_i = \{j : S_{ij} \neq 0\}` (the union of its
       modality neighbourhoods, itself included).
    2. Each item keeps its ``k`` neighbours :math:`j \neq i` of highest topological similarity,
       the mutual information of the neighbourhood indicators
       (:func:`~pyg_dhmrec.data.topological_pruning.topological_pruning`), with their weights
       :math:`S_{ij}`: :math:`S'`.
    3. :math:`\tilde{S} = (D' + I)^{-1} (S' + I)`
       (:func:`~pyg_dhmrec.data.topological_pruning.self_looped_row_normalize`): ``edge_index``
       (row 0 the item, row 1 its neighbour, then the self-loops) and ``edge_weight``.

    Memory: the kNN search and the similarity are chunked (``chunk_size`` rows); no dense
    ``I x I`` matrix is formed.

    Args:
        knn_k: neighbours per item in the modality kNN graphs.
        k: neighbours kept per item by the pruning.
        modality_weights: :math:`w_m` per modality (default:
            :func:`~pyg_dhmrec.data.graph.resolve_modality_weights`'s, 0.1 image / 0.9 text).
        chunk_size: rows processed at once (memory only).
    """

    def __init__(
        self,
        knn_k: int = 10,
        k: int = 10,
        modality_weights: Mapping[str, float] | None = None,
        chunk_size: int = 1024,
    ) -> None:
        self.knn = AddItemKNNGraphs(k=knn_k, chunk_size=chunk_size)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"pruned k must be a positive int, got {k!r}")
        self.k, self.chunk_size = k, chunk_size
        if modality_weights is not None:
            # settings() reads them as floats (the cache key): check them first
            if not isinstance(modality_weights, Mapping):
                raise ValueError(
                    f"modality_weights must be a mapping of modality -> weight, got "
                    f"{modality_weights!r}"
                )
            if modality_weights:  # {}: compute names the modalities that need a weight
                _check_mixing_weights(modality_weights, "modality_weights")
        self.modality_weights = None if modality_weights is None else dict(modality_weights)

    def settings(self) -> dict[str, Any]:
        weights = self.modality_weights
        weights = None if weights is None else {m: float(w) for m, w in sorted(weights.items())}
        return {"knn_k": self.knn.k, "k": self.k, "modality_weights": weights}

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        return [topology_pruned_edge_type()]

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        n = int(data["item"].num_nodes)
        modalities = self.knn._modalities(data)
        if not modalities:
            raise ValueError(f"{type(self).__name__} needs at least one item modality, got none")
        weights = resolve_modality_weights(modalities, self.modality_weights, type(self).__name__)
        if self.knn.present(data):
            knn = {knn_edge_type(m): data[knn_edge_type(m)] for m in modalities}
        else:
            knn = self.knn.compute(data)
        graphs = {
            m: to_csr(
                knn[knn_edge_type(m)]["edge_index"], knn[knn_edge_type(m)]["edge_weight"], n, n
            )
            for m in modalities
        }
        mixed = mix_modality_graphs(graphs, weights, "modality_weights").to_sparse_coo()
        edge_index, weight = mixed.indices(), mixed.values()
        nonzero = weight != 0  # a zero-weighted modality adds no neighbour
        edge_index, weight = edge_index[:, nonzero], weight[nonzero]
        kept, _ = topological_pruning(edge_index, n, self.k, self.chunk_size)
        edge_index, weight = self_looped_row_normalize(edge_index[:, kept], weight[kept], n)
        return {topology_pruned_edge_type(): {"edge_index": edge_index, "edge_weight": weight}}


class AddItemCooccurrenceGraph(DerivedGraph):
    r"""The item co-interaction graph, edge type ``('item', 'co_interaction', 'item')``:
    each item's top-:math:`k` co-interacted items by count :math:`C = R^\top R` on the train
    edges (:func:`~pyg_dhmrec.data.item_cooccurrence.item_cooccurrence_edges`), among the pairs
    with at least ``min_count`` common users, normalised :math:`D^{-1/2} S D^{-1/2}` with row
    degrees of :math:`S`.

    ``weighting="count"``: :math:`S_{ij} = C_{ij}` (SIGER's infusion); ``"binary"``:
    :math:`S_{ij} = 1` for a kept pair, the counts only rank the neighbours (DA-MRS's item-item
    behaviour graph). ``self_loops=True`` adds :math:`S_{ii} = 1` for every item before the
    normalisation (DA-MRS), so an item without a kept pair keeps itself.

    Args:
        k: co-interacted neighbours kept per item.
        chunk_size: items whose rows of :math:`C` are computed at once (memory only).
        min_count: the fewest common users a kept pair has.
        weighting: ``"count"`` or ``"binary"``.
        self_loops: add a unit self-loop to every item.
    """

    def __init__(
        self,
        k: int = 10,
        chunk_size: int = 1024,
        min_count: int = 1,
        weighting: str = "count",
        self_loops: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"co-interaction k must be a positive int, got {k!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"co-interaction min_count must be a positive int, got {min_count!r}")
        if weighting not in ("count", "binary"):
            raise ValueError(
                f"co-interaction weighting must be 'count' or 'binary', got {weighting!r}"
            )
        self.k, self.chunk_size, self.min_count = k, chunk_size, min_count
        self.weighting, self.self_loops = weighting, bool(self_loops)

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"k": self.k}
        # Only non-default options are listed, so SIGER's graph keeps its cache key.
        if self.min_count != 1:
            settings["min_count"] = self.min_count
        if self.weighting != "count":
            settings["weighting"] = self.weighting
        if self.self_loops:
            settings["self_loops"] = True
        return settings

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        return [co_interaction_edge_type()]

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        pairs, counts = item_cooccurrence_edges(
            data[RATES].edge_index, num_users, num_items, self.k, self.chunk_size, self.min_count
        )
        if self.weighting == "binary":
            counts = torch.ones_like(counts)
        if self.self_loops:
            items = torch.arange(num_items, device=pairs.device)
            pairs = torch.cat([torch.stack([items, items]), pairs], dim=1)
            counts = torch.cat([torch.ones(num_items, device=counts.device), counts])
        pairs, weight = symmetric_normalize(pairs, num_items, counts, degree="row")
        return {co_interaction_edge_type(): {"edge_index": pairs, "edge_weight": weight}}


class AddConsistentItemKNNGraphs(DerivedGraph):
    r"""One binary top-:math:`k` cosine kNN item graph per modality, filtered by cross-modal
    consistency, edge type ``('item', 'consistent_knn_<modality>', 'item')`` with
    ``edge_index`` (row 0 the item, row 1 its neighbour) and ``edge_weight``, normalised
    :math:`D^{-1/2} S D^{-1/2}` with row degrees (DA-MRS's denoised item-item graphs).

    :math:`S^m_{ij} = 1` when :math:`j` is among the :math:`k` items most similar to :math:`i`
    in modality :math:`m` *among the pairs every modality finds at least averagely similar*
    (:func:`~pyg_dhmrec.data.consistent_knn.consistent_knn_edges`, which also says what the
    filter does with a single modality). The consistency is checked across ``modalities``.

    Args:
        k: neighbours per item, the item itself included.
        modalities: item modalities to build graphs for and to check consistency across
            (default: every declared one).
        chunk_size: rows of the similarity matrices computed at once (memory only).
    """

    def __init__(
        self, k: int = 10, modalities: Sequence[str] | None = None, chunk_size: int = 1024
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"knn_k must be a positive int, got {k!r}")
        self.k, self.chunk_size = k, chunk_size
        self.modalities = None if modalities is None else list(modalities)

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "modalities": self.modalities}

    def _modalities(self, data: HeteroData) -> list[str]:
        features = item_features(data)
        names = self.modalities if self.modalities is not None else list(features)
        missing = [m for m in names if m not in features]
        if missing or not names:
            raise ValueError(
                f"AddConsistentItemKNNGraphs: modalities {missing or names} not usable; the "
                f"dataset declares {list(features)}"
            )
        return names

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        return [consistent_knn_edge_type(m) for m in self._modalities(data)]

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        features = item_features(data)
        num_items = int(data["item"].num_nodes)
        if self.k > num_items:
            raise ValueError(
                f"knn_k = {self.k} exceeds the number of items ({num_items}); choose "
                f"knn_k in [1, {num_items}]"
            )
        selected = {m: features[m] for m in self._modalities(data)}
        edges = consistent_knn_edges(selected, self.k, self.chunk_size)
        out = {}
        for m, edge_index in edges.items():
            edge_index, weight = symmetric_normalize(edge_index, num_items, degree="row")
            out[consistent_knn_edge_type(m)] = {"edge_index": edge_index, "edge_weight": weight}
        return out


class AddUserCooccurrenceGraph(DerivedGraph):
    r"""The user co-occurrence graph, edge type ``('user', 'co_occurrence', 'user')``: each
    user's top-:math:`k` co-occurring users by the number of train items they share,
    :math:`C = R R^\top` (DualGNN's user-user graph), with ``edge_index`` (row 0 the user,
    row 1 the neighbour, in decreasing count within each user) and ``edge_weight`` the raw
    count :math:`C_{uv}` (float), unnormalised: the model decides how to weigh neighbours.

    Built by :func:`~pyg_dhmrec.data.cooccurrence.cooccurrence_edges`, ``chunk_size`` users at a
    time: memory :math:`O(\text{chunk\_size} \cdot (U + I))`, never a dense ``U x U`` matrix.
    A user who shares no item with anyone has no edge; ties go to the lower user id.

    Args:
        k: co-occurring users kept per user.
        chunk_size: users whose rows of :math:`C` are computed at once (memory only).
    """

    def __init__(self, k: int = 40, chunk_size: int = 4096) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"user co-occurrence k must be a positive int, got {k!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.k, self.chunk_size = k, chunk_size

    def settings(self) -> dict[str, Any]:
        return {"k": self.k}

    def edge_types(self, data: HeteroData) -> list[EdgeType]:
        return [user_cooccurrence_edge_type()]

    def compute(self, data: HeteroData) -> dict[EdgeType, dict[str, Tensor]]:
        num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        pairs, counts = cooccurrence_edges(
            data[RATES].edge_index, num_users, num_items, self.k, self.chunk_size
        )
        return {user_cooccurrence_edge_type(): {"edge_index": pairs, "edge_weight": counts}}


def _write(
    data: HeteroData, stores: Mapping[EdgeType, Mapping[str, Tensor]], settings: dict[str, Any]
) -> HeteroData:
    for edge_type, attrs in stores.items():
        for name, value in attrs.items():
            data[edge_type][name] = value
        data[edge_type][SETTINGS_ATTR] = settings
    return data


def _stores_on(
    stores: Mapping[EdgeType, Mapping[str, Tensor]], device: str | torch.device
) -> dict[EdgeType, dict[str, Tensor]]:
    return {et: {k: v.to(device) for k, v in attrs.items()} for et, attrs in stores.items()}


def on_device(data: HeteroData, device: str | torch.device) -> HeteroData:
    """A copy of ``data`` whose tensors are on ``device``; ``data`` itself stays where it is
    (PyG's ``HeteroData.to`` moves its own stores in place)."""
    return copy.copy(data).to(device)


def add_derived_graphs(
    data: HeteroData,
    transforms: Iterable[DerivedGraph],
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> HeteroData:
    """Add each transform's edge types to ``data`` (in place; returned for chaining).

    Edge types already in ``data`` with the transform's settings are kept as they are. With
    ``cache_dir`` (the loader passes a folder beside the processed dataset, keyed by the raw
    files' fingerprint), a transform's output is loaded from ``<cache_dir>/<key>.pt`` when
    present and written there (atomically) after it is built; every build or load is logged
    with its time. With ``device`` (say ``cuda``), the graphs are built on a copy of ``data``
    on that device and brought back to ``data``'s own device (the item kNN graphs of a large
    catalogue take seconds on a GPU instead of an hour on one CPU core); top-k ties may then
    fall otherwise than on the CPU.
    """
    source = None  # the copy on ``device``, made when a graph is first built
    for transform in transforms:
        if transform.present(data):
            continue
        t0 = time.perf_counter()
        path = Path(cache_dir) / f"{transform.key()}.pt" if cache_dir is not None else None
        stores = _load_cached(path, transform) if path is not None else None
        if stores is not None:
            _write(data, stores, transform.settings())
            if source is not None:
                _write(source, _stores_on(stores, device), transform.settings())
            log.info(
                "derived graph %r: loaded from the cache %s in %.2fs",
                transform,
                path,
                time.perf_counter() - t0,
            )
            continue
        if device is None:
            stores = transform.compute(data)
        else:
            source = on_device(data, device) if source is None else source
            built_there = transform.compute(source)
            _write(source, built_there, transform.settings())  # later transforms may read it
            stores = _stores_on(built_there, data[RATES].edge_index.device)
        _write(data, stores, transform.settings())
        built = time.perf_counter() - t0
        if path is None:
            log.info("derived graph %r: built in %.2fs (not cached)", transform, built)
            continue
        try:
            _save_cached(path, transform, stores)
            log.info("derived graph %r: built in %.2fs, cached in %s", transform, built, path)
        except OSError as e:  # a read-only cache costs a rebuild next time, not the run
            log.warning("derived graph %r: built in %.2fs, not cached (%s)", transform, built, e)
    return data


def _load_cached(path: Path, transform: DerivedGraph) -> dict[EdgeType, dict[str, Tensor]] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["settings"] != json.loads(json.dumps(transform.settings())):
            raise ValueError("settings differ")
        return {tuple(edge_type.split("__")): attrs for edge_type, attrs in payload["stores"]}
    except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
        log.warning("derived graph cache %s unreadable (%s): rebuilding it", path, e)
        return None


def _save_cached(
    path: Path, transform: DerivedGraph, stores: Mapping[EdgeType, Mapping[str, Tensor]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": transform.settings(),
        "stores": [("__".join(et), dict(attrs)) for et, attrs in stores.items()],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves no half-written cache file
