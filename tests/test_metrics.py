from math import log2

import pytest
import torch
from torch_geometric.metrics import LinkPredMAP, LinkPredNDCG, LinkPredPrecision, LinkPredRecall

from pyg_dhmrec.metrics import METRICS, FullRankEvaluator, ranking_metrics


def _close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def test_ranking_metrics_hand_computed():
    hits = torch.tensor(
        [
            [1, 0, 1, 1, 0],  # |GT| = 5 > K = 3
            [0, 1, 0, 0, 1],  # |GT| = 2 < K = 3
            [0, 0, 0, 0, 0],  # no hits
        ],
        dtype=torch.bool,
    )
    num_gt = torch.tensor([5, 2, 1])
    out = ranking_metrics(hits, num_gt, ks=[1, 3, 5])
    assert set(out) == {f"{m}@{k}" for m in METRICS for k in (1, 3, 5)}

    _close(out["recall@1"], [1 / 5, 0, 0])
    _close(out["precision@1"], [1 / 1, 0, 0])
    _close(out["ndcg@1"], [1.0, 0, 0])
    _close(out["map@1"], [(1 / 1) / 1, 0, 0])

    # recall is not capped at K: user 0 can at most reach 3/5 at K = 3
    _close(out["recall@3"], [2 / 5, 1 / 2, 0])
    _close(out["precision@3"], [2 / 3, 1 / 3, 0])
    _close(
        out["ndcg@3"],
        [
            (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4)),
            (1 / log2(3)) / (1 / log2(2) + 1 / log2(3)),
            0,
        ],
    )
    _close(out["map@3"], [(1 / 1 + 2 / 3) / 3, (1 / 2) / 2, 0])

    _close(out["recall@5"], [3 / 5, 2 / 2, 0])
    _close(out["precision@5"], [3 / 5, 2 / 5, 0])
    idcg5 = sum(1 / log2(r + 1) for r in range(1, 6))
    _close(
        out["ndcg@5"],
        [
            (1 / log2(2) + 1 / log2(4) + 1 / log2(5)) / idcg5,
            (1 / log2(3) + 1 / log2(6)) / (1 / log2(2) + 1 / log2(3)),
            0,
        ],
    )
    _close(out["map@5"], [(1 / 1 + 2 / 3 + 3 / 4) / 5, (1 / 2 + 2 / 5) / 2, 0])


def test_ranking_metrics_float_hits_and_subset():
    hits = torch.tensor([[0.0, 1.0, 1.0]])
    out = ranking_metrics(hits, torch.tensor([2]), ks=(2,), metrics=("ndcg", "map"))
    assert list(out) == ["ndcg@2", "map@2"]
    _close(out["ndcg@2"], [(1 / log2(3)) / (1 / log2(2) + 1 / log2(3))])
    _close(out["map@2"], [(1 / 2) / 2])


def test_ranking_metrics_errors():
    hits = torch.zeros(2, 3, dtype=torch.bool)
    num_gt = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="Unknown metric 'hit'.*recall, ndcg, precision, map"):
        ranking_metrics(hits, num_gt, ks=[1], metrics=["recall", "hit"])
    with pytest.raises(ValueError, match="exceeds"):
        ranking_metrics(hits, num_gt, ks=[1, 4])
    with pytest.raises(ValueError, match=">= 1"):
        ranking_metrics(hits, num_gt, ks=[0])
    with pytest.raises(ValueError, match="num_ground_truth"):
        ranking_metrics(hits, torch.tensor([1, 2, 3]), ks=[1])
    with pytest.raises(ValueError, match="hits"):
        ranking_metrics(hits.view(-1), num_gt, ks=[1])


# User 2 has no ground truth and must be excluded; train items get the highest scores.
TRAIN = torch.tensor([[0, 1, 1, 2], [0, 2, 3, 1]])  # u0: {0}, u1: {2, 3}, u2: {1}
EVAL = torch.tensor([[0, 0, 1, 3], [1, 2, 0, 5]])  # u0: {1, 2}, u1: {0}, u3: {5}
SCORES = torch.tensor(
    [
        [10.0, 8.0, 6.0, 9.0, 7.0, 5.0],  # masked ranking: 3, 1, 4, 2, 5
        [8.0, 1.0, 10.0, 9.0, 3.0, 2.0],  # masked ranking: 0, 4, 5, 1
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # item 5 ranked last
    ]
)


def _tiny_evaluator(**kwargs) -> FullRankEvaluator:
    return FullRankEvaluator(TRAIN, EVAL, num_users=4, num_items=6, ks=(1, 3), **kwargs)


def test_evaluator_tiny():
    evaluator = _tiny_evaluator()
    assert evaluator.num_users_evaluated == 3
    assert evaluator.users.tolist() == [0, 1, 3]

    seen = []

    def score_fn(users: torch.Tensor) -> torch.Tensor:
        seen.extend(users.tolist())
        return SCORES[users]

    means, per_user = evaluator.evaluate(score_fn, per_user=True)
    assert seen == [0, 1, 3]

    # u1's train items 2, 3 outscore its ground truth 0; unmasked, recall@1 would be 0
    _close(per_user["recall@1"], [0, 1, 0])
    _close(per_user["recall@3"], [1 / 2, 1, 0])
    _close(per_user["precision@3"], [1 / 3, 1 / 3, 0])
    _close(per_user["ndcg@3"], [(1 / log2(3)) / (1 / log2(2) + 1 / log2(3)), 1, 0])
    _close(per_user["map@3"], [(1 / 2) / 2, 1, 0])

    # averaged over the 3 evaluated users, not the 4 users
    assert means["recall@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert means["recall@3"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert means["map@3"] == pytest.approx(((1 / 2) / 2 + 1 + 0) / 3)
    assert set(means) == set(per_user)
    for key, value in per_user.items():
        assert value.shape == (3,)
        assert means[key] == pytest.approx(value.mean().item())

    assert evaluator.evaluate(score_fn) == pytest.approx(means)


def test_evaluator_train_item_never_ranked():
    # u0's train item 0 has the top score and is also (inconsistently) ground truth
    train = torch.tensor([[0], [0]])
    gt = torch.tensor([[0, 0], [0, 1]])
    scores = torch.tensor([[5.0, 1.0, 0.0]])
    evaluator = FullRankEvaluator(train, gt, num_users=1, num_items=3, ks=(1,))
    out = evaluator.evaluate(lambda users: scores[users])
    assert out["recall@1"] == pytest.approx(1 / 2)  # item 1 at rank 1, item 0 masked


def test_evaluator_masked_items_filling_top_k_are_no_hits():
    # only item 2 is rankable; masked items 0, 1 (1 is also ground truth) fill ranks 2-3
    train = torch.tensor([[0, 0], [0, 1]])
    gt = torch.tensor([[0, 0], [1, 2]])
    evaluator = FullRankEvaluator(train, gt, num_users=1, num_items=3, ks=(3,))
    out = evaluator.evaluate(lambda users: torch.ones(users.numel(), 3))
    assert out["recall@3"] == pytest.approx(1 / 2)
    assert out["precision@3"] == pytest.approx(1 / 3)


def test_evaluator_duplicate_edges_count_once():
    train = torch.tensor([[0, 0], [0, 0]])
    gt = torch.tensor([[0, 0, 0], [1, 1, 1]])
    evaluator = FullRankEvaluator(train, gt, num_users=1, num_items=3, ks=(1,))
    out = evaluator.evaluate(lambda users: torch.tensor([[0.0, 2.0, 1.0]]))
    assert out["recall@1"] == pytest.approx(1 / 1)  # |GT| = 1 despite 3 copies


def test_evaluator_does_not_modify_scores():
    evaluator = _tiny_evaluator(user_batch_size=1)
    scores = SCORES.clone()
    # score_fn returns views (basic slicing) of a cached score matrix
    evaluator.evaluate(lambda users: scores[int(users[0]) : int(users[0]) + 1])
    assert torch.equal(scores, SCORES)


def _random_split(seed: int, num_users: int, num_items: int, density: float = 0.15):
    gen = torch.Generator().manual_seed(seed)
    rand = torch.rand(num_users, num_items, generator=gen)
    train = torch.nonzero(rand < density).t()
    test = torch.nonzero((rand >= density) & (rand < 2 * density)).t()
    scores = torch.randn(num_users, num_items, generator=gen)
    return train, test, scores


@pytest.mark.parametrize("user_batch_size", [1, 2, 7])
@pytest.mark.parametrize("data", ["tiny", "random"])
def test_evaluator_chunked_equals_unchunked(user_batch_size, data):
    if data == "tiny":
        train, test, scores, num_users, num_items = TRAIN, EVAL, SCORES, 4, 6
    else:
        train, test, scores = _random_split(0, num_users=30, num_items=40)
        num_users, num_items = 30, 40
    kwargs = dict(num_users=num_users, num_items=num_items, ks=(1, 3, 5))
    full = FullRankEvaluator(train, test, **kwargs)
    chunked = FullRankEvaluator(train, test, user_batch_size=user_batch_size, **kwargs)
    means, per_user = full.evaluate(lambda users: scores[users], per_user=True)
    c_means, c_per_user = chunked.evaluate(lambda users: scores[users], per_user=True)
    assert c_means == pytest.approx(means)
    assert c_per_user.keys() == per_user.keys()
    for key in per_user:
        torch.testing.assert_close(c_per_user[key], per_user[key])


# torch_geometric's binary LinkPred{Recall, Precision, NDCG, MAP} (2.8) use the same definitions
# as MMRec: recall divides by |GT| (uncapped), NDCG's IDCG runs over min(|GT|, K) ranks, and MAP
# divides by min(|GT|, K); all four are averaged over users with >= 1 label. They differ only in
# what they see: they take item ids, not scores, so they would count a masked (-inf) item that
# fills up a short ranking as a hit, and their weighted variants use graded relevance.
PYG_METRICS = {
    "recall": LinkPredRecall,
    "precision": LinkPredPrecision,
    "ndcg": LinkPredNDCG,
    "map": LinkPredMAP,
}


def _pyg_means(pred_index_mat: torch.Tensor, label_index: torch.Tensor, ks) -> dict:
    out = {}
    for name, cls in PYG_METRICS.items():
        for k in ks:
            metric = cls(k)
            metric.update(pred_index_mat, label_index)
            out[f"{name}@{k}"] = metric.compute().item()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_torch_geometric(seed):
    gen = torch.Generator().manual_seed(seed)
    num_users, num_items, ks = 64, 30, (1, 5, 10, 20)
    pred = torch.rand(num_users, num_items, generator=gen).argsort(dim=1)[:, : max(ks)]
    gt_mask = torch.rand(num_users, num_items, generator=gen) < 0.2
    gt_mask[torch.arange(num_users), torch.randint(num_items, (num_users,), generator=gen)] = True
    gt_mask[:4] = torch.rand(4, num_items, generator=gen) < 0.9  # some users with |GT| > K

    hits = torch.tensor([[bool(gt_mask[u, i]) for i in row] for u, row in enumerate(pred.tolist())])
    out = ranking_metrics(hits, gt_mask.sum(dim=1), ks)
    expected = _pyg_means(pred, torch.nonzero(gt_mask).t(), ks)
    assert {key: value.mean().item() for key, value in out.items()} == pytest.approx(expected)


def test_evaluator_matches_torch_geometric():
    num_users, num_items, ks = 40, 60, (5, 10, 20)
    train, test, scores = _random_split(3, num_users, num_items)
    evaluator = FullRankEvaluator(train, test, num_users, num_items, ks=ks, user_batch_size=16)
    means = evaluator.evaluate(lambda users: scores[users])

    masked = scores.clone()
    masked[train[0], train[1]] = float("-inf")
    users = evaluator.users
    pred = masked[users].topk(max(ks), dim=1).indices
    assert bool(masked[users].gather(1, pred).isfinite().all())  # no masked item in any top-k
    row = torch.searchsorted(users, test[0])  # every test user is evaluated
    expected = _pyg_means(pred, torch.stack([row, test[1]]), ks)
    assert means == pytest.approx(expected)


def test_evaluator_cutoff_above_item_count_ranks_all_items():
    evaluator = FullRankEvaluator(TRAIN, EVAL, num_users=4, num_items=6, ks=(6, 9))
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    means = evaluator.evaluate(lambda users: scores[users])
    assert means["recall@9"] == means["recall@6"] == pytest.approx(1.0)  # every item ranked
    for metric in ("ndcg", "map"):  # positions 7-9 hold no item and add nothing
        assert means[f"{metric}@9"] == pytest.approx(means[f"{metric}@6"])
    assert means["precision@9"] == pytest.approx(means["precision@6"] * 6 / 9)


def test_evaluator_errors():
    with pytest.raises(ValueError, match="Item ids in 'eval_edge_index'"):
        FullRankEvaluator(TRAIN, torch.tensor([[0], [6]]), num_users=4, num_items=6, ks=(1,))
    with pytest.raises(ValueError, match="Item ids in 'train_edge_index'"):
        FullRankEvaluator(torch.tensor([[0], [-1]]), EVAL, num_users=4, num_items=6, ks=(1,))
    with pytest.raises(ValueError, match="User ids in 'eval_edge_index'"):
        FullRankEvaluator(TRAIN, torch.tensor([[4], [0]]), num_users=4, num_items=6, ks=(1,))
    with pytest.raises(ValueError, match="Unknown metric 'mrr'"):
        _tiny_evaluator(metrics=("recall", "mrr"))
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        FullRankEvaluator(TRAIN.t(), EVAL, num_users=4, num_items=6, ks=(1,))
    with pytest.raises(ValueError, match="score_fn"):
        _tiny_evaluator().evaluate(lambda users: SCORES[users, :5])


def test_evaluator_no_eval_users():
    evaluator = _tiny_evaluator()
    empty = FullRankEvaluator(TRAIN, EVAL[:, :0], num_users=4, num_items=6, ks=(1, 3))
    assert evaluator.num_users_evaluated == 3
    assert empty.num_users_evaluated == 0
    means = empty.evaluate(lambda users: SCORES[users])
    assert means == {f"{m}@{k}": 0.0 for m in METRICS for k in (1, 3)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_evaluator_cuda_scores():
    train, test, scores = _random_split(4, num_users=20, num_items=30)
    evaluator = FullRankEvaluator(train, test, 20, 30, ks=(5, 10), user_batch_size=8)
    expected = evaluator.evaluate(lambda users: scores[users])
    cuda_scores = scores.cuda()
    out = evaluator.evaluate(lambda users: cuda_scores[users.cuda()])
    assert out == pytest.approx(expected)


def _dense_reference(evaluator: FullRankEvaluator, scores: torch.Tensor) -> dict:
    """Per-user values by the evaluator's former formula: an out-of-place masked copy of the
    scores and a dense users x items ground-truth mask."""
    users, max_k = evaluator.users, max(evaluator.ks)
    train = torch.zeros(evaluator.num_users, evaluator.num_items, dtype=torch.bool)
    gt = torch.zeros_like(train)
    for rowptr, col, mask in (
        (evaluator.train_rowptr, evaluator.train_col, train),
        (evaluator.eval_rowptr, evaluator.eval_col, gt),
    ):
        row = torch.repeat_interleave(torch.arange(evaluator.num_users), rowptr.diff())
        mask[row, col] = True
    masked = scores[users].masked_fill(train[users], float("-inf"))
    top_scores, top_items = masked.topk(min(max_k, evaluator.num_items), dim=1)
    hits = gt[users].gather(1, top_items) & (top_scores > float("-inf"))
    hits = torch.nn.functional.pad(hits, (0, max_k - hits.size(1)))
    return ranking_metrics(hits, evaluator.num_ground_truth, evaluator.ks)


@pytest.mark.parametrize("user_batch_size", [1, 5, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluator_equals_the_dense_mask_formula(user_batch_size, seed):
    train, test, scores = _random_split(seed, num_users=33, num_items=25, density=0.3)
    evaluator = FullRankEvaluator(
        train, test, 33, 25, ks=(1, 5, 30), user_batch_size=user_batch_size
    )
    kept = scores.clone()
    _, per_user = evaluator.evaluate(lambda users: scores[users], per_user=True)
    expected = _dense_reference(evaluator, scores)
    assert per_user.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(per_user[key], expected[key], rtol=0, atol=0)
    assert torch.equal(scores, kept)


def test_a_cut_off_far_above_the_items_needs_no_matrix_of_its_width():
    # k = 10**9 on 25 items: as k = 30 (every item ranked, the rest misses), precision over k;
    # a [B, k] hit matrix would need gigabytes
    train, test, scores = _random_split(0, num_users=33, num_items=25, density=0.3)
    far = FullRankEvaluator(train, test, 33, 25, ks=(5, 10**9))
    near = FullRankEvaluator(train, test, 33, 25, ks=(5, 30))
    _, got = far.evaluate(lambda users: scores[users], per_user=True)
    _, expected = near.evaluate(lambda users: scores[users], per_user=True)
    for metric in ("recall", "ndcg", "map"):
        torch.testing.assert_close(got[f"{metric}@{10**9}"], expected[f"{metric}@30"])
    torch.testing.assert_close(
        got[f"precision@{10**9}"], expected["precision@30"] * 30 / 10**9, rtol=1e-6, atol=0
    )
    assert got["recall@5"].equal(expected["recall@5"])
