"""Item kNN graphs filtered by cross-modal consistency (DA-MRS's denoised item-item graphs):
an item pair can be an edge of a modality's graph only where every modality finds the pair
similar. Built in chunks of rows, never as a dense ``items x items`` matrix."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from pyg_dhmrec.data.graph import _check_positive, unit_rows

__all__ = ["consistent_knn_edges", "mean_cosine_similarity"]


def _unit_rows(x: Tensor) -> Tensor:
    """Float32 rows scaled to unit norm (see :func:`~pyg_dhmrec.data.graph.unit_rows`)."""
    return unit_rows(x.detach().float())


def mean_cosine_similarity(features: Tensor) -> Tensor:
    r"""The mean cosine similarity over all :math:`n^2` ordered item pairs, the diagonal
    included,

    .. math::
        \bar{s} = \frac{1}{n^2} \sum_{i, j} \hat{x}_i^\top \hat{x}_j
        = \frac{1}{n^2} \Big\lVert \sum_i \hat{x}_i \Big\rVert_2^2,
        \qquad \hat{x}_i = x_i / \lVert x_i \rVert_2,

    computed exactly in :math:`O(n f)` from the right-hand form, without the
    :math:`n \times n` similarity matrix. Zero rows count as similarity 0.
    """
    unit = _unit_rows(features)
    total = unit.sum(0)
    return (total @ total) / float(unit.size(0)) ** 2


def consistent_knn_edges(
    features: Mapping[str, Tensor], k: int = 10, chunk_size: int = 1024
) -> dict[str, Tensor]:
    r"""Per modality, the top-:math:`k` cosine neighbours of every item among the items that
    *every* modality finds similar to it.

    With :math:`s^m_{ij}` the cosine similarity in modality :math:`m` and :math:`\bar{s}^m`
    its mean over all pairs (:func:`mean_cosine_similarity`), the pair :math:`(i, j)` is
    *consistent* when :math:`s^{m'}_{ij} \ge \bar{s}^{m'}` for all modalities :math:`m'`;
    modality :math:`m`'s graph links :math:`i` to the :math:`\min(k, c_i)` consistent items of
    largest :math:`s^m_{ij}`, where :math:`c_i` is the number of items consistent with
    :math:`i`. So an edge that one modality would draw is dropped when another modality finds
    the pair less similar than its average pair; every modality keeps the same number of
    neighbours per item. The item itself is always its first neighbour (as in
    :func:`~pyg_dhmrec.data.graph.item_knn_graph`).

    With one modality the filter only thresholds at that modality's mean similarity: the
    graph is the plain top-:math:`k` graph except for items with fewer than :math:`k`
    above-average neighbours, which keep fewer.

    Memory: one ``[chunk_size, n]`` similarity block per modality at a time, never
    ``[n, n]``; time :math:`O(n^2 \sum_m f_m)`.

    Args:
        features: modality name -> ``[n, f_m]`` item features (at least one; one row per
            item in every modality).
        k: neighbours kept per item, the item itself included.
        chunk_size: rows of the similarity matrices computed at once (memory only).

    Returns:
        modality name -> ``[2, E]`` long edge index: row 0 the item, row 1 its neighbours in
        decreasing similarity of that modality. ``E`` is the same for every modality.
    """
    if not features:
        raise ValueError("consistent_knn_edges needs at least one modality, got none")
    names = list(features)
    sizes = {m: tuple(x.shape) for m, x in features.items()}
    if any(len(s) != 2 for s in sizes.values()):
        raise ValueError(f"features must be 2-D [n, f] per modality, got {sizes}")
    n = next(iter(sizes.values()))[0]
    if any(s[0] != n for s in sizes.values()):
        raise ValueError(f"every modality needs one row per item, got row counts {sizes}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] for {n} items, got {k!r}")
    _check_positive("chunk_size", chunk_size)
    for m, x in features.items():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"features of modality '{m}' contain NaN or inf values")

    unit = {m: _unit_rows(x) for m, x in features.items()}
    means = {m: mean_cosine_similarity(features[m]) for m in names}
    device = unit[names[0]].device
    rows: list[Tensor] = []
    cols: dict[str, list[Tensor]] = {m: [] for m in names}
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            local = torch.arange(end - start, device=device)
            sims = {m: unit[m][start:end] @ unit[m].t() for m in names}
            consistent = torch.ones(end - start, n, dtype=torch.bool, device=device)
            for m in names:
                consistent &= sims[m] >= means[m]
            consistent[local, local + start] = True  # the item itself always stays
            count = consistent.sum(1).clamp(max=k)
            keep = torch.arange(k, device=device) < count.unsqueeze(1)  # [chunk, k]
            rows.append((local + start).unsqueeze(1).expand(-1, k)[keep])
            for m in names:
                masked = sims[m].masked_fill_(~consistent, float("-inf"))
                masked[local, local + start] = float("inf")
                cols[m].append(masked.topk(k, dim=1).indices[keep])
    row = torch.cat(rows)
    return {m: torch.stack([row, torch.cat(cols[m])]) for m in names}
