"""Graph construction utilities for multimodal recommendation.

Provides the normalised user-item bipartite adjacency used by LightGCN/NGCF, the frozen
item-item kNN graph of FREEDOM/LATTICE and FREEDOM's degree-sensitive edge pruning.
All sparse outputs are ``torch.sparse_csr`` float32 tensors on the device of the inputs.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import degree, scatter, to_torch_csr_tensor

__all__ = [
    "symmetric_normalize",
    "to_csr",
    "normalized_adjacency",
    "unit_rows",
    "item_knn_graph",
    "knn_adjacency",
    "cosine_knn_edges",
    "DegreeSensitiveEdgeDropout",
    "DEFAULT_MODALITY_WEIGHTS",
    "resolve_modality_weights",
    "submatrix_entries",
]


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _check_edge_index(edge_index: Tensor) -> None:
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {_shape(edge_index)}")
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise ValueError(f"edge_index must be an integer tensor, got dtype {edge_index.dtype}")


def _check_edge_weight(edge_weight: Optional[Tensor], num_edges: int) -> None:
    if edge_weight is None:
        return
    if not isinstance(edge_weight, Tensor) or edge_weight.layout != torch.strided:
        what = edge_weight.layout if isinstance(edge_weight, Tensor) else type(edge_weight).__name__
        raise TypeError(f"edge_weight must be a dense torch.Tensor, got {what}")
    if edge_weight.dim() != 1 or edge_weight.numel() != num_edges:
        raise ValueError(
            f"edge_weight must have shape [E] = [{num_edges}], got {_shape(edge_weight)}"
        )
    if edge_weight.is_complex() or edge_weight.dtype == torch.bool:
        raise TypeError(f"edge_weight must be real numbers, got dtype {edge_weight.dtype}")
    # A NaN or inf weight would spread through the degrees into every entry of its rows;
    # graphs are built once, so this one pass is cheap.
    if edge_weight.is_floating_point() and not bool(torch.isfinite(edge_weight).all()):
        bad = int((~torch.isfinite(edge_weight)).nonzero()[0])
        raise ValueError(f"edge_weight holds a NaN or inf value, first at edge {bad}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_range(ids: Tensor, upper: int, what: str) -> None:
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= upper)
    if bool(bad.any()):
        first = int(ids[bad][0])
        raise ValueError(f"{what} id {first} out of range [0, {upper})")


def _check_bipartite(edge_index: Tensor, num_users: int, num_items: int) -> None:
    _check_positive("num_users", num_users)
    _check_positive("num_items", num_items)
    _check_edge_index(edge_index)
    _check_range(edge_index[0], num_users, "user")
    _check_range(edge_index[1], num_items, "item")


def _inv_sqrt(deg: Tensor) -> Tensor:
    # Isolated (or non-positive degree) nodes get 0 instead of inf/NaN.
    return torch.where(deg > 0, deg.clamp_min(torch.finfo(deg.dtype).tiny).rsqrt(), 0.0)


def symmetric_normalize(
    edge_index: Tensor,
    num_nodes: int,
    edge_weight: Optional[Tensor] = None,
    degree: str = "row",
) -> tuple[Tensor, Tensor]:
    r"""Symmetrically normalises edge weights, :math:`\hat{w}_{ij} = w_{ij} / \sqrt{d_i d_j}`:
    PyG's :func:`~torch_geometric.nn.conv.gcn_conv.gcn_norm` without self-loops, with the
    inputs checked so that a bad graph gets a clear error.

    With ``degree="row"``, :math:`d_i = \sum_j w_{ij}` (row sums, ``flow="target_to_source"``),
    :math:`D^{-1/2} A D^{-1/2}` as FREEDOM/LATTICE normalise the (asymmetric) kNN item graph;
    with ``degree="col"`` the column sums (PyG's default flow). For a symmetric graph both
    give the same weights. Nodes of zero degree yield weight 0, and so do nodes of negative
    degree (signed weights: a cosine kNN row whose kept similarities sum below 0, as a ``k``
    near the node count gives), where ``gcn_norm``'s :math:`d^{-1/2}` is NaN; the gradient
    stays finite there too.

    Args:
        edge_index: ``[2, E]`` (row, col) indices.
        num_nodes: number of nodes ``N``.
        edge_weight: optional ``[E]`` weights (default all ones).
        degree: ``"row"`` or ``"col"``.

    Returns:
        ``(edge_index, normalised_weight)``; ``edge_index`` is returned unchanged.
    """
    _check_edge_index(edge_index)
    _check_positive("num_nodes", num_nodes)
    _check_edge_weight(edge_weight, edge_index.size(1))
    if degree not in ("row", "col"):
        raise ValueError(f"degree must be 'row' or 'col', got {degree!r}")
    _check_range(edge_index[0], num_nodes, "node")
    _check_range(edge_index[1], num_nodes, "node")
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), device=edge_index.device)
    row, col = edge_index.long()
    weight = edge_weight.float()
    deg = scatter(weight, row if degree == "row" else col, dim=0, dim_size=num_nodes, reduce="sum")
    positive = deg > 0
    # the power of a stand-in 1 where deg <= 0: no NaN, also not in the gradient torch.where drops
    inv_sqrt = torch.where(positive, deg, torch.ones_like(deg)).pow(-0.5)
    inv_sqrt = torch.where(positive, inv_sqrt, torch.zeros_like(inv_sqrt))
    return edge_index, inv_sqrt[row] * weight * inv_sqrt[col]


def to_csr(
    edge_index: Tensor,
    edge_weight: Optional[Tensor],
    num_rows: int,
    num_cols: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""The ``[num_rows, num_cols]`` float32 (or ``dtype``) ``torch.sparse_csr`` matrix
    :math:`M_{ij} = \sum_{e:(i,j)} w_e` (duplicate entries are summed): PyG's
    :func:`~torch_geometric.utils.to_torch_csr_tensor` with the indices checked first.

    Args:
        edge_index: ``[2, E]`` (row, col) indices.
        edge_weight: ``[E]`` values, or ``None`` for all ones.
        num_rows: number of rows.
        num_cols: number of columns.
        dtype: the values' floating dtype.
    """
    _check_edge_index(edge_index)
    _check_edge_weight(edge_weight, edge_index.size(1))
    if num_rows < 0 or num_cols < 0:
        raise ValueError(f"num_rows and num_cols must be >= 0, got {num_rows}, {num_cols}")
    _check_range(edge_index[0], num_rows, "row")
    _check_range(edge_index[1], num_cols, "column")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    values = None if edge_weight is None else edge_weight.to(dtype)
    with warnings.catch_warnings():
        # Ranges were validated above, so sparse invariant checks are skipped on purpose.
        warnings.filterwarnings("ignore", message=".*Sparse invariant checks.*")
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return to_torch_csr_tensor(edge_index.long(), values, (num_rows, num_cols))


def normalized_adjacency(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    edge_weight: Optional[Tensor] = None,
) -> Tensor:
    r"""LightGCN/NGCF normalised bipartite adjacency
    :math:`\hat{A} = D^{-1/2} A D^{-1/2}`, with
    :math:`A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}` of size
    :math:`(U + I) \times (U + I)` and :math:`D = \mathrm{rowsum}(A)`,
    i.e. :math:`\hat{A}_{u,U+i} = r_{ui} / \sqrt{d_u d_i}`.

    Args:
        edge_index: ``[2, E]`` user->item train edges (row 0 users, row 1 items).
        num_users: number of users ``U``.
        num_items: number of items ``I``; item ``i`` becomes node ``U + i``.
        edge_weight: optional ``[E]`` interaction weights (default all ones).

    Returns:
        ``torch.sparse_csr`` float32 tensor of shape ``[U + I, U + I]``.
    """
    _check_bipartite(edge_index, num_users, num_items)
    _check_edge_weight(edge_weight, edge_index.size(1))
    users = edge_index[0].long()
    items = edge_index[1].long() + num_users
    full = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
    weight = None if edge_weight is None else torch.cat([edge_weight, edge_weight])
    num_nodes = num_users + num_items
    full, weight = symmetric_normalize(full, num_nodes, weight)
    return to_csr(full, weight, num_nodes, num_nodes)


def user_item_matrix(edge_index: Tensor, num_users: int, num_items: int) -> Tensor:
    r"""The user-item block of :func:`normalized_adjacency`,
    :math:`\tilde{R}_{ui} = 1 / \sqrt{|\mathcal{N}_u| |\mathcal{N}_i|}` for train pairs.

    :math:`\tilde{R} E_I` aggregates item embeddings into users (e.g. DHMRec Eq. 14).

    Returns:
        ``torch.sparse_csr`` float32 tensor of shape ``[U, I]``.
    """
    _check_bipartite(edge_index, num_users, num_items)
    edge_index = edge_index.long()
    deg_u = degree(edge_index[0], num_users)
    deg_i = degree(edge_index[1], num_items)
    weight = _inv_sqrt(deg_u)[edge_index[0]] * _inv_sqrt(deg_i)[edge_index[1]]
    return to_csr(edge_index, weight, num_users, num_items)


def csr_transpose(matrix: Tensor) -> Tensor:
    """The transpose of a sparse matrix, as ``torch.sparse_csr``."""
    return matrix.t().to_sparse_csr()


def mix_modality_graphs(
    graphs: Mapping[str, Tensor], weights: Mapping[str, float], key: str = "weights"
) -> Tensor:
    r""":math:`\sum_m w_m \tilde{I}^m` of per-modality item graphs (FREEDOM, DHMRec Eq. 12).

    ``weights`` must name exactly the modalities of ``graphs``; ``key`` names the config key in
    the error.
    """
    if set(weights) != set(graphs):
        raise ValueError(_weights_per_modality_message(key, list(graphs), weights))
    _check_mixing_weights(weights, key)
    return weighted_sum(list(graphs.values()), [float(weights[m]) for m in graphs])


def _weights_per_modality_message(
    key: str, modalities: Sequence[str], weights: Mapping[str, float]
) -> str:
    # The models' YAML defaults name image and text: a dataset with other modalities needs its own.
    equal = ", ".join(f"{m}: {1 / len(modalities):.3g}" for m in modalities)
    return (
        f"{key} must give one weight per modality {list(modalities)}, got {dict(weights)}; set "
        f"them for this dataset, e.g. --{key} '{{{equal}}}' (or in the model's per_dataset entry)"
    )


def _check_mixing_weights(weights: Mapping[str, float], key: str) -> None:
    # A negative, NaN or all-zero mix is no graph of item neighbours: refused, not propagated.
    numbers = [
        v for v in weights.values() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if (
        len(numbers) != len(weights)
        or not all(math.isfinite(v) and v >= 0 for v in numbers)
        or not sum(numbers) > 0
    ):
        raise ValueError(
            f"{key} must be finite numbers >= 0 with a positive sum, got {dict(weights)}"
        )


#: FREEDOM's published mixing weights of the image and text kNN graphs (also TMLP's
#: ``mm_image_weight`` 0.1).
DEFAULT_MODALITY_WEIGHTS = {"image": 0.1, "text": 0.9}


def resolve_modality_weights(
    modalities: Sequence[str], weights: Optional[Mapping[str, float]], owner: str
) -> dict[str, float]:
    """One mixing weight per modality, in the order of ``modalities``.

    Without ``weights``: :data:`DEFAULT_MODALITY_WEIGHTS` for exactly the modalities image and
    text, weight 1 for a single modality; any other modality set needs explicit weights.
    ``owner`` names the model or transform in the error.
    """
    if weights is None:
        if set(modalities) == set(DEFAULT_MODALITY_WEIGHTS):
            weights = DEFAULT_MODALITY_WEIGHTS
        elif len(modalities) == 1:
            weights = {modalities[0]: 1.0}
        else:
            raise ValueError(
                f"{owner} has default modality_weights only for image and text; give one "
                f"weight per modality {list(modalities)}"
            )
    if set(weights) != set(modalities):
        raise ValueError(_weights_per_modality_message("modality_weights", modalities, weights))
    _check_mixing_weights(weights, "modality_weights")
    return {m: float(weights[m]) for m in modalities}


def csr_row_positions(row_pointer: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The stored entries of the CSR rows ``rows`` (``row_pointer``: the crow indices), row after
    row: each entry's local row (an index into ``rows``) and its position in the column and
    value arrays."""
    start = row_pointer[rows]
    count = row_pointer[rows + 1] - start
    local = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    first = torch.cumsum(count, 0) - count  # each row's first entry in the output
    offset = torch.arange(local.numel(), device=rows.device) - first[local]
    return local, start[local] + offset


def submatrix_entries(matrix: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The stored entries of :math:`A_{[index, index]}`, the ``[P, P]`` submatrix of a sparse
    ``[N, N]`` CSR matrix :math:`A` on the rows and columns ``index`` (``[P]``, repeats allowed).

    Returns ``(rows, cols, values)``: every pair of positions :math:`(a, b)` with
    :math:`A_{index_a, index_b}` stored, and that value. Cost
    :math:`O(\sum_a \text{nnz}(A_{index_a}) \cdot r + P \log P)` with :math:`r` the largest
    repeat count of an id in ``index``: never a dense ``[N, N]`` (or ``[P, N]``) block.
    """
    if matrix.layout != torch.sparse_csr or matrix.dim() != 2 or matrix.size(0) != matrix.size(1):
        raise ValueError("submatrix_entries needs a square torch.sparse_csr matrix")
    index = index.long()
    _check_range(index, matrix.size(0), "index")
    # Row entries of each position: (a, column, value).
    a, entry = csr_row_positions(matrix.crow_indices(), index)
    column, kept = matrix.col_indices()[entry], matrix.values()[entry]
    # The positions b holding each column id: a range of the positions sorted by id.
    order = torch.argsort(index, stable=True)
    sorted_ids = index[order]
    lo = torch.searchsorted(sorted_ids, column)
    matches = torch.searchsorted(sorted_ids, column, right=True) - lo
    pair = torch.repeat_interleave(torch.arange(column.numel(), device=index.device), matches)
    within = (
        torch.arange(pair.numel(), device=index.device) - (torch.cumsum(matches, 0) - matches)[pair]
    )
    return a[pair], order[lo[pair] + within], kept[pair]


def weighted_sum(matrices: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r""":math:`\sum_m \beta_m M_m` of equally shaped sparse matrices, as ``torch.sparse_csr``."""
    if len(matrices) != len(weights) or not matrices:
        raise ValueError(
            f"need one weight per matrix, got {len(matrices)} matrices, {len(weights)} weights"
        )
    shape = matrices[0].shape
    indices, values = [], []
    for matrix, weight in zip(matrices, weights):
        if matrix.shape != shape:
            raise ValueError(f"matrices must share one shape, got {shape} and {matrix.shape}")
        coo = matrix.to_sparse_coo().coalesce()
        indices.append(coo.indices())
        values.append(coo.values() * weight)
    return to_csr(torch.cat(indices, 1), torch.cat(values), shape[0], shape[1])


def _rescale_extreme_rows(x: Tensor, floor: float) -> Tensor:
    """``x`` with each nonzero row whose norm is at most ``floor`` or inf divided by its largest
    ``|entry|``; other rows are divided by 1 (exact), so there is no host wait on a GPU (LATTICE
    may learn its graph every step)."""
    if x.size(1) == 0:  # no entries: nothing to rescale (amax needs one)
        return x
    norm = torch.linalg.vector_norm(x.detach(), dim=1, keepdim=True)
    largest = x.detach().abs().amax(dim=1, keepdim=True)
    off = ((norm <= floor) | torch.isinf(norm)) & (largest > 0)  # zero rows stay as they are
    return x / torch.where(off, largest, torch.ones_like(largest))


def unit_rows(x: Tensor) -> Tensor:
    r"""Rows scaled to unit length, :math:`\hat{x}_i = x_i / \lVert x_i \rVert_2`; zero rows stay
    zero (cosine 0 to everything, not NaN).

    A division, not a product with the reciprocal: it rounds as MMRec's ``build_sim`` does, so
    the kNN graphs built from it keep the same one of two tied neighbours as MMRec's (on
    TikTok's audio features the reciprocal changed 2 of 6,710 rows).
    """
    # float32's sum of squares underflows to 0 for entries below about 1e-19 and overflows to
    # inf above about 1e19: such finite rows would read as zero rows, so they are first divided
    # by their largest |entry| (cosine is scale-free)
    x = _rescale_extreme_rows(x, 0.0)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def item_knn_graph(
    features: Tensor,
    k: int = 10,
    chunk_size: int = 1024,
    include_self: bool = True,
) -> Tensor:
    r"""Top-:math:`k` cosine neighbours of every item,
    :math:`\mathcal{N}_k(i) = \operatorname{top-}k_j\, \frac{x_i^\top x_j}{\|x_i\| \|x_j\|}`.

    Similarities are computed ``chunk_size`` rows at a time, so peak memory is
    :math:`O(\text{chunk\_size} \cdot n + n k)`. Rows with zero norm have similarity 0 to
    everything. With ``include_self=True`` the item itself is always kept (as its first
    neighbour, :math:`\cos(i, i) = 1`), as in FREEDOM/LATTICE; otherwise the diagonal is
    excluded.

    Args:
        features: ``[n, f]`` item features.
        k: neighbours per item.
        chunk_size: rows of the similarity matrix computed at once.
        include_self: whether item ``i`` counts among its own neighbours.

    Returns:
        ``[2, n * k]`` long edge index; row 0 is the item, row 1 its neighbours in
        decreasing similarity.
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = _shape(features) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D tensor [n, f], got {shape}")
    if features.layout != torch.strided:
        raise TypeError(f"features must be a dense tensor, got layout {features.layout}")
    n = features.size(0)
    max_k = n if include_self else n - 1
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > max_k:
        raise ValueError(
            f"k must be an int in [1, {max_k}] for {n} items "
            f"(include_self={include_self}), got {k!r}"
        )
    _check_positive("chunk_size", chunk_size)
    x = features.detach()
    if not x.is_floating_point():
        x = x.float()
    bad_rows = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
    if bad_rows.numel():
        # Reached in training when learned features (LATTICE's, MICRO's projections) diverge.
        raise ValueError(
            f"item_knn_graph: features contain NaN or inf in {bad_rows.numel()} of {n} row(s), "
            f"first at row {int(bad_rows[0])}"
        )

    x = unit_rows(x)
    diag_value = float("inf") if include_self else float("-inf")

    neighbours = torch.empty(n, k, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            sim = x[start:end] @ x.t()
            local = torch.arange(end - start, device=x.device)
            sim[local, local + start] = diag_value
            neighbours[start:end] = sim.topk(k, dim=1).indices
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([rows, neighbours.reshape(-1)])


def normalized_knn_edges(
    features: Tensor,
    k: int = 10,
    chunk_size: int = 1024,
    include_self: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""FREEDOM's frozen item-item graph as ``(edge_index, edge_weight)``:
    :math:`\hat{S} = D^{-1/2} S D^{-1/2}`, where :math:`S_{ij} = 1` iff
    :math:`j \in \mathcal{N}_k(i)` (see :func:`item_knn_graph`) and :math:`D = \mathrm{rowsum}(S)`.
    """
    edge_index = item_knn_graph(features, k, chunk_size, include_self)
    return symmetric_normalize(edge_index, features.size(0), degree="row")


def cosine_knn_edges(
    features: Tensor,
    k: int = 10,
    normalize: bool = True,
    include_self: bool = True,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    r"""The top-:math:`k` cosine graph of ``features`` with its similarity values as weights.

    .. math::
        S_{ij} = \frac{x_i^\top x_j}{\lVert x_i \rVert \lVert x_j \rVert}, \qquad
        \hat{S}_{ij} = S_{ij} \ \text{if}\ j \in \operatorname{top-}k_{j'}\, S_{ij'},
        \ \text{else}\ 0, \qquad
        \tilde{S} = D^{-1/2} \hat{S} D^{-1/2},\ D = \mathrm{diag}(\hat{S}\mathbf{1})

    (LATTICE Eqs. 1-3 and 5). The neighbour *sets* come from :func:`item_knn_graph` (chunked,
    no gradient: top-k selection is piecewise constant); the kept *values* :math:`S_{ij}` are
    recomputed edge by edge from the features, so gradients reach ``features`` (and whatever
    produced them) through every kept entry and through the degrees of the normalisation. Unlike
    the binary graph of :func:`~pyg_dhmrec.data.graph.knn_adjacency`, entries keep their cosine
    value. A kept value can be negative (when fewer than ``k`` items are positively similar);
    rows whose degree is not positive get weight 0 instead of NaN. Zero feature rows have
    similarity 0 to everything.

    Memory: the neighbour search holds one ``chunk_size x n`` block of similarities at a time
    and the result is ``O(n k)``; the values are computed ``chunk_size`` rows at a time, so
    without gradient the transient cost is ``O(chunk_size * k * f)``. With gradient, autograd
    keeps the gathered endpoint features of every kept edge for the backward pass,
    ``2 * n * k * f`` floats (for projected 64-d features of 10^4 items and k = 10: 51 MB).
    No dense ``n x n`` matrix is ever formed.

    Args:
        features: ``[n, f]`` node features (may require grad).
        k: neighbours kept per row.
        normalize: apply :math:`D^{-1/2} \hat{S} D^{-1/2}` (row degrees on both sides, as in
            LATTICE); otherwise return the raw kept similarities :math:`\hat{S}_{ij}`.
        include_self: node ``i`` always keeps itself (:math:`S_{ii} = 1`), as LATTICE's top-k
            over a row that contains the diagonal does (but robust to ties).
        chunk_size: rows processed at once.

    Returns:
        ``(edge_index [2, n * k], edge_weight [n * k])``; row 0 of ``edge_index`` is node ``i``,
        row 1 its neighbour ``j`` (so :math:`(\tilde{S} X)_i = \sum_j \tilde{S}_{ij} x_j`
        aggregates along ``j -> i``; flip it for PyG's source-to-target message passing).
    """
    edge_index = item_knn_graph(features, k, chunk_size, include_self)
    if not features.is_floating_point():
        features = features.float()
    # eps keeps zero rows at 0 (cosine 0) instead of NaN; rows of norm below it (or inf) are
    # rescaled first, else an item's cosine to itself read about norm / 1e-12 (or 0), not 1.
    unit = F.normalize(_rescale_extreme_rows(features, 1e-12), dim=1)
    row, col = edge_index
    step = chunk_size * k  # edges of chunk_size consecutive rows
    values = torch.cat(
        [
            (unit[row[s : s + step]] * unit[col[s : s + step]]).sum(-1)
            for s in range(0, row.numel(), step)
        ]
    )
    if normalize:
        _, values = symmetric_normalize(edge_index, features.size(0), values, degree="row")
    return edge_index, values


def knn_adjacency(
    features: Tensor,
    k: int = 10,
    chunk_size: int = 1024,
    include_self: bool = True,
) -> Tensor:
    """:func:`normalized_knn_edges` as an ``[n, n]`` ``torch.sparse_csr`` float32 matrix."""
    edge_index, weight = normalized_knn_edges(features, k, chunk_size, include_self)
    n = features.size(0)
    return to_csr(edge_index, weight, n, n)


class DegreeSensitiveEdgeDropout(torch.nn.Module):
    r"""FREEDOM's degree-sensitive edge pruning (Zhou & Shen, MM 2023).

    Every train edge :math:`(u, i)` gets the weight :math:`p_{ui} = 1 / \sqrt{d_u d_i}`
    (degrees of the full train graph). :meth:`resample` draws
    :math:`\lfloor E (1 - \rho) \rfloor` edges without replacement with probability
    proportional to :math:`p_{ui}` and caches :math:`D'^{-1/2} A' D'^{-1/2}` of the kept graph
    :math:`A'` (re-normalised on the kept degrees :math:`D'`). Call :meth:`resample` once per
    epoch. In training mode (with :math:`\rho > 0`) :meth:`forward` returns the cached pruned
    adjacency; in evaluation mode (or :math:`\rho = 0`) it returns the full normalised
    adjacency :math:`D^{-1/2} A D^{-1/2}`.

    Args:
        edge_index: ``[2, E]`` user->item train edges.
        num_users: number of users ``U``.
        num_items: number of items ``I``.
        dropout: fraction :math:`\rho \in [0, 1)` of edges to drop.
    """

    edge_index: Tensor
    edge_weight: Tensor

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int, dropout: float):
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _check_bipartite(edge_index, num_users, num_items)
        self.num_users = num_users
        self.num_items = num_items
        self.dropout = float(dropout)
        edge_index = edge_index.long()
        num_edges = edge_index.size(1)
        self.num_keep = int(num_edges * (1.0 - self.dropout))

        deg_u = degree(edge_index[0], num_users)
        deg_i = degree(edge_index[1], num_items)
        weight = (deg_u[edge_index[0]] * deg_i[edge_index[1]]).rsqrt()
        # Graph data, not model state: moved by .to() but kept out of checkpoints.
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.register_buffer("edge_weight", weight, persistent=False)

        self._full_adj: Optional[Tensor] = normalized_adjacency(edge_index, num_users, num_items)
        self._pruned_adj: Optional[Tensor] = None
        self.kept_edge_index: Optional[Tensor] = None

    def sample(self) -> Tensor:
        r"""Draws :math:`\lfloor E (1 - \rho) \rfloor` distinct edges with
        :math:`P(u, i) \propto 1 / \sqrt{d_u d_i}`; returns them as a ``[2, E']`` edge index
        (in original edge order)."""
        if self.num_keep == 0:
            return self.edge_index[:, :0]
        idx = torch.multinomial(self.edge_weight.float(), self.num_keep, replacement=False)
        # Sorting keeps the original edge order, which makes outputs easier to compare.
        return self.edge_index[:, idx.sort().values]

    def resample(self) -> None:
        """Samples a new pruned graph and caches its normalised adjacency."""
        kept = self.sample()
        self.kept_edge_index = kept
        adj = normalized_adjacency(kept, self.num_users, self.num_items)
        self._pruned_adj = adj.to(self.edge_weight.dtype)

    @property
    def full_adjacency(self) -> Tensor:
        """Normalised adjacency of the full train graph."""
        if not self._current(self._full_adj):
            adj = normalized_adjacency(self.edge_index, self.num_users, self.num_items)
            self._full_adj = adj.to(self.edge_weight.device, self.edge_weight.dtype)
        return self._full_adj

    def _current(self, adj: Optional[Tensor]) -> bool:
        """Whether a cached adjacency has the buffers' device and dtype (``.to()``,
        ``.double()`` move the buffers; the CSR caches follow on use)."""
        weight = self.edge_weight
        return adj is not None and adj.device == weight.device and adj.dtype == weight.dtype

    def forward(self) -> Tensor:
        """Pruned adjacency in training mode (``dropout > 0``), full adjacency otherwise."""
        if not self.training or self.dropout == 0.0:
            return self.full_adjacency
        if not self._current(self._pruned_adj):
            self.resample()
        assert self._pruned_adj is not None
        return self._pruned_adj

    def _apply(self, fn: Callable[[Tensor], Tensor], *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # CSR caches are plain attributes: they follow the float buffer's device and dtype.
        device, dtype = self.edge_weight.device, self.edge_weight.dtype
        if self._full_adj is not None:
            self._full_adj = self._full_adj.to(device, dtype)
        if self._pruned_adj is not None:
            self._pruned_adj = self._pruned_adj.to(device, dtype)
        if self.kept_edge_index is not None:
            self.kept_edge_index = self.kept_edge_index.to(device)
        return self

    def extra_repr(self) -> str:
        return (
            f"num_users={self.num_users}, num_items={self.num_items}, "
            f"num_edges={self.edge_index.size(1)}, dropout={self.dropout}"
        )
