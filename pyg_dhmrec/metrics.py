"""Top-K ranking metrics and full-ranking evaluation (MMRec protocol).

Every evaluated user is ranked against *all* items; only the user's training items are
masked out. Metrics are computed per user (in float64, as MMRec's numpy code) and averaged
over the users that have at least one ground-truth item in the evaluated split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.index import index2ptr

from pyg_dhmrec.data.graph import csr_row_positions

METRICS = ("recall", "ndcg", "precision", "map")

#: The score a user's training item gets before the top-k: MMRec's ``-1e10`` (not ``-inf``),
#: so that items the model itself scores ``-inf`` or below ``-1e10`` rank as in MMRec.
MASKED_SCORE = -1e10


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):  # a bare string would otherwise be split into characters
        metrics = [metrics]
    if len(metrics) == 0:
        raise ValueError(f"'metrics' must not be empty (valid metrics: {', '.join(METRICS)})")
    out = []
    for name in metrics:
        key = str(name).lower()
        if key not in METRICS:
            raise ValueError(f"Unknown metric '{name}' (valid metrics: {', '.join(METRICS)})")
        if key not in out:
            out.append(key)
    return out


def _check_ks(ks: Sequence[int], max_k: int | None = None) -> list[int]:
    if isinstance(ks, int):
        ks = [ks]
    if len(ks) == 0:
        raise ValueError("'ks' must contain at least one cut-off")
    out = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k:
            raise ValueError(f"Cut-offs in 'ks' must be integers (got {k!r})")
        k = int(k)
        if k < 1:
            raise ValueError(f"Cut-offs in 'ks' must be >= 1 (got {k})")
        if max_k is not None and k > max_k:
            raise ValueError(f"Cut-off k={k} exceeds the number of ranked positions ({max_k})")
        if k not in out:
            out.append(k)
    return out


def ranking_metrics(
    hits: Tensor,
    num_ground_truth: Tensor,
    ks: Sequence[int],
    metrics: Sequence[str] = METRICS,
) -> dict[str, Tensor]:
    r"""Computes per-user top-:math:`K` ranking metrics from a hit matrix.

    With :math:`h_r \in \{0, 1\}` the hit at rank :math:`r` and :math:`G` the ground truth:

    .. math::
        \mathrm{Recall@K} &= \frac{1}{|G|} \sum_{r=1}^{K} h_r, \qquad
        \mathrm{Precision@K} = \frac{1}{K} \sum_{r=1}^{K} h_r, \\
        \mathrm{NDCG@K} &= \frac{\sum_{r=1}^{K} h_r / \log_2(r + 1)}
                               {\sum_{r=1}^{\min(|G|, K)} 1 / \log_2(r + 1)}, \qquad
        \mathrm{MAP@K} = \frac{1}{\min(|G|, K)} \sum_{r=1}^{K} h_r \, \mathrm{Precision@r}.

    Recall is deliberately not capped at :math:`K` (MMRec convention).

    Args:
        hits (torch.Tensor): Bool or float matrix of shape :obj:`[B, K_max]` where
            :obj:`hits[u, r]` is :obj:`1` if the item ranked :obj:`r + 1` for user :obj:`u`
            is a ground-truth item. Bool hits give float64 values (MMRec computes in
            float64: a float32 mean can land on the other side of a 4th-decimal rounding);
            float hits keep their dtype.
        num_ground_truth (torch.Tensor): Number of ground-truth items per user, shape
            :obj:`[B]`, every entry :obj:`>= 1`.
        ks (Sequence[int]): Cut-offs, each in :obj:`[1, K_max]`.
        metrics (Sequence[str]): Subset of :obj:`METRICS`. (default: :obj:`METRICS`)

    Returns:
        Dict mapping :obj:`"<metric>@<k>"` (e.g. :obj:`"recall@20"`) to a :obj:`[B]` tensor.
    """
    metrics = _check_metrics(metrics)
    if hits.dim() != 2:
        raise ValueError(f"'hits' must have shape [B, K_max] (got {tuple(hits.shape)})")
    if num_ground_truth.dim() != 1 or num_ground_truth.size(0) != hits.size(0):
        raise ValueError(
            f"'num_ground_truth' must have shape [{hits.size(0)}] to match 'hits' "
            f"(got {tuple(num_ground_truth.shape)})"
        )
    ks = _check_ks(ks, max_k=hits.size(1))
    if num_ground_truth.numel() > 0 and bool((num_ground_truth < 1).any()):
        raise ValueError("'num_ground_truth' must be >= 1 for every user")

    dtype = hits.dtype if hits.is_floating_point() else torch.float64
    hits = hits.to(dtype)
    num_gt = num_ground_truth.to(device=hits.device, dtype=torch.long)
    max_k = max(ks)
    hits = hits[:, :max_k]

    rank = torch.arange(1, max_k + 1, device=hits.device, dtype=dtype)
    discount = 1.0 / torch.log2(rank + 1.0)
    num_hits = hits.cumsum(dim=1)  # num_hits[:, k - 1] = hits within the top-k
    dcg = (hits * discount).cumsum(dim=1)
    idcg = discount.cumsum(dim=0)  # idcg[n - 1] = DCG of n ideal hits
    ap = (hits * num_hits / rank).cumsum(dim=1)  # running sum of precision@r at hit ranks

    out: dict[str, Tensor] = {}
    for metric in metrics:
        for k in ks:
            n_ideal = num_gt.clamp(max=k)
            if metric == "recall":
                value = num_hits[:, k - 1] / num_gt.to(dtype)
            elif metric == "precision":
                value = num_hits[:, k - 1] / k
            elif metric == "ndcg":
                value = dcg[:, k - 1] / idcg[n_ideal - 1]
            else:
                value = ap[:, k - 1] / n_ideal.to(dtype)
            out[f"{metric}@{k}"] = value
    return out


def _beyond_the_items(
    values: dict[str, Tensor], hits: Tensor, ks: Sequence[int], metrics: Sequence[str]
) -> dict[str, Tensor]:
    """Per-user values at every cut-off of ``ks`` from those at ``min(k, ranked)`` (``ranked``
    = ``hits``' width, every item): past the last item every position is a miss, so only
    precision changes, the hit count over ``k`` (no ``[B, k]`` hit matrix for a cut-off far
    above the item count)."""
    ranked = hits.size(1)
    out = {}
    for metric in metrics:
        for k in ks:
            value = values[f"{metric}@{min(k, ranked)}"]
            if metric == "precision" and k > ranked:
                value = hits.sum(1).to(value.dtype) / k
            out[f"{metric}@{k}"] = value
    return out


def _to_csr(edge_index: Tensor, num_users: int, num_items: int, name: str) -> tuple[Tensor, Tensor]:
    """Validates a ``[2, E]`` (user, item) edge index and returns a de-duplicated CSR
    ``(rowptr, col)`` with users as rows."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index)
        raise ValueError(f"'{name}' must be a [2, E] tensor of (user, item) pairs (got {shape})")
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise ValueError(f"'{name}' must hold integer ids (got dtype {edge_index.dtype})")
    edge_index = edge_index.detach().to("cpu", torch.long)
    user, item = edge_index[0], edge_index[1]
    if user.numel() > 0:
        if int(user.min()) < 0 or int(user.max()) >= num_users:
            raise ValueError(
                f"User ids in '{name}' must lie in [0, {num_users - 1}] "
                f"(got range [{int(user.min())}, {int(user.max())}])"
            )
        if int(item.min()) < 0 or int(item.max()) >= num_items:
            raise ValueError(
                f"Item ids in '{name}' must lie in [0, {num_items - 1}] "
                f"(got range [{int(item.min())}, {int(item.max())}])"
            )
    # duplicate interactions would inflate |GT| and hence deflate recall
    key = torch.unique(user * num_items + item, sorted=True)
    row, col = key // num_items, key % num_items
    return index2ptr(row, num_users), col


def _gather_rows(rowptr: Tensor, col: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Returns the COO entries ``(local_row, col)`` of the CSR rows ``rows``, where
    ``local_row`` indexes into ``rows``."""
    local_row, position = csr_row_positions(rowptr, rows)
    return local_row, col[position]


class FullRankEvaluator:
    r"""Full-ranking top-:math:`K` evaluator following the MMRec protocol.

    For each user with at least one ground-truth item in :obj:`eval_edge_index`, all items
    are scored, the user's training items are set to :obj:`MASKED_SCORE` (:math:`-10^{10}`,
    as in MMRec), the top
    :math:`\max(K)` items are retrieved and :func:`ranking_metrics` is computed. Per-user
    values are averaged over the evaluated users (users without ground truth in the split
    are left out, as in MMRec, whose evaluated users are those of the split).

    Given the same scores this equals MMRec's ``Trainer.evaluate`` and ``TopKEvaluator``
    (before their rounding to 4 decimals), ties included: both take :obj:`torch.topk` of
    :math:`\max(K)` items per user, so equal scores are ordered as :obj:`torch.topk` orders
    them on that device (not necessarily by item id). A NaN score ranks first and a score
    of :math:`-\infty` or below :math:`-10^{10}` after the masked items, as there. Where
    the two differ, by choice:

    * a cut-off above :obj:`num_items` (MMRec's :obj:`torch.topk` fails) ranks all items,
      the positions past the last item counting as misses;
    * a (user, item) pair repeated in an edge index counts once (MMRec counts a repeated
      ground-truth row twice in :math:`|G|`); the dataset loader keeps such rows once, too;
    * an item in both the user's training and ground-truth sets is masked and never a hit,
      even when a cut-off above the user's unmasked items ranks it (MMRec then counts it if
      its tie among the masked items ranks it in). The dataset loader never gives a pair
      to two splits, so this arises only for a graph built by hand.

    Per chunk of users the work is the score product (in :obj:`score_fn`), the train mask
    (written in place, then restored), the top-:math:`K` and a binary search of the ranked
    items among the users' ground truth: no other ``users x items`` tensor is built.

    Args:
        train_edge_index (torch.Tensor): Training (user, item) pairs, shape :obj:`[2, E]`.
            These items are masked out of the ranking.
        eval_edge_index (torch.Tensor): Ground-truth (user, item) pairs of the evaluated
            split, shape :obj:`[2, E']`.
        num_users (int): Number of users.
        num_items (int): Number of items.
        ks (Sequence[int]): Cut-offs. A cut-off above :obj:`num_items` ranks all items, the
            positions past the last item counting as misses (Precision@K still divides by
            :math:`K`). (default: :obj:`(10, 20, 50)`)
        metrics (Sequence[str]): Subset of :obj:`METRICS`. (default: :obj:`METRICS`)
        user_batch_size (int): Users scored per :obj:`score_fn` call; peak memory is
            :math:`O(\text{user\_batch\_size} \cdot \text{num\_items})`. (default: :obj:`2048`)
    """

    def __init__(
        self,
        train_edge_index: Tensor,
        eval_edge_index: Tensor,
        num_users: int,
        num_items: int,
        ks: Sequence[int] = (10, 20, 50),
        metrics: Sequence[str] = METRICS,
        user_batch_size: int = 2048,
    ) -> None:
        if num_users < 1 or num_items < 1:
            raise ValueError(
                f"'num_users' and 'num_items' must be >= 1 (got {num_users}, {num_items})"
            )
        if user_batch_size < 1:
            raise ValueError(f"'user_batch_size' must be >= 1 (got {user_batch_size})")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.ks = _check_ks(ks)
        self.metrics = _check_metrics(metrics)
        self.user_batch_size = int(user_batch_size)

        self.train_rowptr, self.train_col = _to_csr(
            train_edge_index, self.num_users, self.num_items, "train_edge_index"
        )
        self.eval_rowptr, self.eval_col = _to_csr(
            eval_edge_index, self.num_users, self.num_items, "eval_edge_index"
        )
        num_gt = self.eval_rowptr[1:] - self.eval_rowptr[:-1]
        self.users: Tensor = torch.nonzero(num_gt > 0).view(-1)
        self.num_ground_truth: Tensor = num_gt[self.users]

    @property
    def num_users_evaluated(self) -> int:
        r"""Number of users with at least one ground-truth item."""
        return int(self.users.numel())

    @torch.no_grad()
    def evaluate(
        self,
        score_fn: Callable[[Tensor], Tensor],
        per_user: bool = False,
    ) -> dict[str, float] | tuple[dict[str, float], dict[str, Tensor]]:
        r"""Ranks all items for every evaluated user and averages the metrics.

        Args:
            score_fn (Callable): Maps a CPU :obj:`LongTensor` of user ids to a
                :obj:`[len(user_ids), num_items]` float score tensor on any device. The
                train mask is written into that tensor and its entries restored after the
                top-k, so it may be a view of a cached score matrix (not one read meanwhile).
            per_user (bool): If :obj:`True`, additionally returns the per-user values
                (CPU tensors aligned with :obj:`self.users`). (default: :obj:`False`)

        Returns:
            Dict of mean metric values (:obj:`0.0` when no user is evaluated), or a tuple
            :obj:`(means, per_user_values)` if :obj:`per_user=True`.
        """
        values = self.evaluate_chunks(score_fn, range(self.num_chunks))
        return self.summarize(values, per_user=per_user)

    @property
    def num_chunks(self) -> int:
        """Number of :obj:`user_batch_size` chunks of the evaluated users."""
        return -(-self.num_users_evaluated // self.user_batch_size)

    @torch.no_grad()
    def evaluate_chunks(
        self, score_fn: Callable[[Tensor], Tensor], chunks: Iterable[int]
    ) -> dict[int, dict[str, Tensor]]:
        r"""Per-user metric values (CPU) of the user chunks :obj:`chunks` (indices below
        :obj:`num_chunks`), by chunk: the part of :meth:`evaluate` that ranks, so that
        processes can share the chunks and :meth:`summarize` the gathered values."""
        ranked = min(max(self.ks), self.num_items)  # a cut-off above the item count ranks all
        within = sorted({min(k, ranked) for k in self.ks})
        out: dict[int, dict[str, Tensor]] = {}
        for chunk in chunks:
            start = chunk * self.user_batch_size
            users = self.users[start : start + self.user_batch_size]
            scores = score_fn(users)
            if not isinstance(scores, Tensor) or scores.shape != (users.numel(), self.num_items):
                shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)
                raise ValueError(
                    f"'score_fn' must return a [{users.numel()}, {self.num_items}] tensor "
                    f"(got {shape})"
                )
            if not scores.is_floating_point():
                raise ValueError(f"'score_fn' must return float scores (got {scores.dtype})")
            num_gt = self.num_ground_truth[start : start + self.user_batch_size]
            top_items = self._masked_topk(scores, users, ranked)
            del scores
            # a hit: a ground-truth item that is not masked. Masked items reach the top-k past
            # the user's unmasked ones; telling them by membership, not by their score, leaves
            # an unmasked item the model itself scores NaN, -inf or -1e10 a hit, as in MMRec.
            hits = self._member(self.eval_rowptr, self.eval_col, users, top_items)
            hits &= ~self._member(self.train_rowptr, self.train_col, users, top_items)
            hits = hits.cpu()  # [B, max K] bools: the metrics in float64 on the host
            values = ranking_metrics(hits, num_gt, within, self.metrics)
            values = _beyond_the_items(values, hits, self.ks, self.metrics)
            stacked = torch.stack(list(values.values()))
            out[chunk] = dict(zip(values, stacked.unbind(0)))
        return out

    def _masked_topk(self, scores: Tensor, users: Tensor, ranked: int) -> Tensor:
        """Item ids of the top-``ranked`` of ``scores`` with the users' train items at
        ``MASKED_SCORE``: written in place and restored afterwards (``scores`` may be a view of a
        cached score matrix), which costs two passes over the train entries instead of a copy
        of ``scores``."""
        row, col = _gather_rows(self.train_rowptr, self.train_col, users)
        index = (row.to(scores.device), col.to(scores.device))
        kept = scores[index]
        scores.index_put_(index, scores.new_full((), MASKED_SCORE))
        try:
            return torch.topk(scores, ranked, dim=1).indices
        finally:
            scores.index_put_(index, kept)

    def _member(self, rowptr: Tensor, cols: Tensor, users: Tensor, top_items: Tensor) -> Tensor:
        """Whether each ranked item is in its user's CSR row (ground truth or train items): a
        binary search of ``row * num_items + item`` in the users' sorted keys (no dense
        users x items mask)."""
        row, col = _gather_rows(rowptr, cols, users)
        keys = (row * self.num_items + col).to(top_items.device)  # sorted: CSR rows, sorted cols
        local = torch.arange(users.numel(), device=top_items.device).unsqueeze(1)
        ranked = local * self.num_items + top_items
        found = torch.searchsorted(keys, ranked).clamp_(max=max(keys.numel() - 1, 0))
        return keys[found] == ranked if keys.numel() else torch.zeros_like(ranked, dtype=torch.bool)

    def summarize(
        self, chunks: Mapping[int, Mapping[str, Tensor]], per_user: bool = False
    ) -> dict[str, float] | tuple[dict[str, float], dict[str, Tensor]]:
        r"""The means (and, with :obj:`per_user`, the per-user values aligned with
        :obj:`self.users`) of the values of :meth:`evaluate_chunks` for every chunk."""
        missing = set(range(self.num_chunks)) - set(chunks)
        if missing:
            raise ValueError(f"user chunk(s) {sorted(missing)} were not evaluated")
        per_user_values: dict[str, Tensor] = {}
        for metric in self.metrics:
            for k in self.ks:
                key = f"{metric}@{k}"
                parts = [chunks[c][key] for c in range(self.num_chunks)]
                parts = parts or [torch.empty(0, dtype=torch.float64)]
                per_user_values[key] = torch.cat(parts)
        means = {
            key: float(value.double().mean()) if value.numel() > 0 else 0.0
            for key, value in per_user_values.items()
        }
        if per_user:
            return means, per_user_values
        return means

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_users={self.num_users}, "
            f"num_items={self.num_items}, num_users_evaluated={self.num_users_evaluated}, "
            f"ks={tuple(self.ks)}, metrics={tuple(self.metrics)})"
        )
