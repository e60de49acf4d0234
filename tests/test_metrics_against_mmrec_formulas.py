"""The evaluator, the saved per-user values, ``compare``, ``recommend`` and ``export`` against
references written here in plain numpy: MMRec's evaluation (``Trainer.evaluate``: train items
at -1e10, ``torch.topk`` of max(K); ``TopKEvaluator`` and ``utils/metrics.py``: recall over
|GT|, NDCG's ideal DCG over min(|GT|, K), precision over K, MAP over min(|GT|, K), in float64),
re-derived so that the test needs no MMRec checkout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ttest_rel
from torch_geometric.data import HeteroData

from pyg_dhmrec.cli import main
from pyg_dhmrec.experiment import (
    ExperimentError,
    compare_runs,
    export_embeddings,
    load_per_user,
    load_run,
    recommend,
)
from pyg_dhmrec.metrics import METRICS, FullRankEvaluator

TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


# ----- MMRec's evaluation, re-derived in numpy -----


def mmrec_hits(scores, train, test, max_k):
    """MMRec's ``Trainer.evaluate`` + ``TopKEvaluator.evaluate``: the evaluated users (those of
    the split, in order of first appearance), their hit matrix and |GT| (rows as listed)."""
    users = list(dict.fromkeys(int(u) for u in test[0]))
    masked = torch.tensor(scores)[users].clone()
    for row, u in enumerate(users):
        masked[row, torch.as_tensor(train[1][train[0] == u])] = -1e10
    top = torch.topk(masked, max_k, dim=-1).indices.numpy()
    gt = [set(test[1][test[0] == u].tolist()) for u in users]
    pos_len = np.array([int((test[0] == u).sum()) for u in users])
    hits = np.array([[int(i) in g for i in row] for g, row in zip(gt, top)])
    return users, hits, pos_len


def mmrec_per_user(hits, pos_len, k):
    """``utils/metrics.py``'s recall_, ndcg_, precision_ and map_ at cut-off k, per user."""
    h = hits[:, :k].astype(np.float64)
    rank = np.arange(1, k + 1)
    disc = 1.0 / np.log2(rank + 1)
    n_ideal = np.minimum(pos_len, k)
    idcg = np.array([disc[:n].sum() for n in n_ideal])
    precision_at_r = np.cumsum(h, axis=1) / rank
    return {
        f"recall@{k}": h.sum(1) / pos_len,
        f"ndcg@{k}": (h * disc).sum(1) / idcg,
        f"precision@{k}": h.sum(1) / k,
        f"map@{k}": (precision_at_r * h).sum(1) / n_ideal,
    }


def random_case(seed, num_users=25, num_items=30, scores="normal"):
    """Splits with users whose test items are fewer and more than K, users whose every
    non-train item is in test, users without test items and items never trained on."""
    rng = np.random.default_rng(seed)
    tr_u, tr_i, te_u, te_i = [], [], [], []
    for u in range(num_users):
        perm = rng.permutation(num_items - 3)  # items num_items-3.. are never trained on
        n_train = int(rng.integers(1, num_items - 4))
        rest = np.concatenate([perm[n_train:], np.arange(num_items - 3, num_items)])
        n_test = len(rest) if u % 5 == 0 else int(rng.integers(0, len(rest) + 1)) * (u % 7 != 1)
        tr_u += [u] * n_train
        tr_i += perm[:n_train].tolist()
        te_u += [u] * n_test
        te_i += rng.permutation(rest)[:n_test].tolist()
    order = rng.permutation(len(te_u))  # MMRec takes the users in order of appearance
    train = np.array([tr_u, tr_i])
    test = np.array([te_u, te_i])[:, order]
    if scores == "normal":
        s = rng.standard_normal((num_users, num_items))
    elif scores == "ties":
        s = rng.integers(0, 3, (num_users, num_items))
    elif scores == "constant":
        s = np.zeros((num_users, num_items))
    else:  # non-finite model scores
        s = rng.standard_normal((num_users, num_items))
        s[rng.random(s.shape) < 0.1] = np.nan
        s[rng.random(s.shape) < 0.1] = -np.inf
        s[rng.random(s.shape) < 0.05] = -1e12  # below MMRec's mask
    return train, test, s.astype(np.float32)


def evaluate(train, test, scores, ks, user_batch_size=7):
    num_users, num_items = scores.shape
    evaluator = FullRankEvaluator(
        torch.tensor(train),
        torch.tensor(test),
        num_users,
        num_items,
        ks=ks,
        user_batch_size=user_batch_size,
    )
    s = torch.tensor(scores)
    means, per_user = evaluator.evaluate(lambda users: s[users].clone(), per_user=True)
    return evaluator, means, per_user


# ----- the evaluator -----


def test_hand_computed_mmrec_denominators():
    # 1 user, 6 items, train {0}; scores rank 1,2,3,4,5; test {2, 4, 5} (|GT| = 3)
    train = np.array([[0], [0]])
    test = np.array([[0, 0, 0], [2, 4, 5]])
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    _, means, _ = evaluate(train, test, scores, ks=(2, 5))
    # ranking 1, 2, 3, 4, 5: hits at ranks 2, 4, 5
    assert means["recall@2"] == pytest.approx(1 / 3)  # over |GT| = 3, not min(|GT|, K) = 2
    assert means["precision@2"] == pytest.approx(1 / 2)
    assert means["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert means["map@2"] == pytest.approx((1 / 2) / 2)  # over min(|GT|, K) = 2
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    dcg5 = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    assert means["ndcg@5"] == pytest.approx(dcg5 / idcg3)  # ideal DCG over min(3, 5) hits
    assert means["map@5"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert means["recall@5"] == 1.0 and means["precision@5"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("kind", ["normal", "ties", "constant", "nonfinite"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluator_equals_mmrec(kind, seed):
    train, test, scores = random_case(seed, scores=kind)
    ks = (1, 3, 10, 20, 30)  # 30 = every item; users with every non-train item in test
    evaluator, means, per_user = evaluate(train, test, scores, ks)
    users, hits, pos_len = mmrec_hits(scores, train, test, max(ks))
    # users without test items are left out, as in MMRec; the rest are evaluated
    assert evaluator.users.tolist() == sorted(users)
    assert len(users) < scores.shape[0]
    row_of = {u: r for r, u in enumerate(users)}
    rows = [row_of[u] for u in evaluator.users.tolist()]
    for k in ks:
        expected = mmrec_per_user(hits, pos_len, k)
        for key, value in expected.items():
            np.testing.assert_allclose(per_user[key].numpy(), value[rows], rtol=0, atol=1e-12)
            # means in float64, as MMRec's: no float32 noise that could flip a 4th decimal
            assert abs(means[key] - value.mean()) < 1e-12, key


def test_cold_items_are_ranked_and_can_hit():
    # item 2 has no train interaction at all; it scores highest for user 0 and is in test
    train = np.array([[0, 1], [0, 1]])
    test = np.array([[0], [2]])
    scores = np.array([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]], np.float32)
    _, means, _ = evaluate(train, test, scores, ks=(1,))
    assert means["recall@1"] == 1.0


def test_per_user_values_and_means_are_float64():
    # MMRec computes in float64: 1/3 per user must not come back as float32's 0.33333334
    # (a float32 mean, e.g. 0.9062500074505806 for 29/32, can round to another 4th decimal)
    train = np.array([[0, 1, 2], [9, 9, 9]])
    test = np.array([[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2, 0, 1, 2, 0, 1, 2]])
    scores = np.tile(np.arange(10, 0, -1, dtype=np.float32), (3, 1))  # item 0 first
    _, means, per_user = evaluate(train, test, scores, ks=(1, 2))
    for key in per_user:
        assert per_user[key].dtype == torch.float64
    assert means["recall@1"] == pytest.approx(1 / 3, abs=1e-15)
    assert means["map@2"] == pytest.approx(1.0, abs=1e-15)
    assert means["ndcg@2"] == 1.0 and means["precision@1"] == 1.0


def test_masked_item_also_in_ground_truth_is_never_a_hit():
    # documented choice: train item 1 is also (inconsistently) ground truth; with k = every
    # item it is ranked after the unmasked items but counts as a miss (MMRec might count it)
    train = np.array([[0, 0], [0, 1]])
    test = np.array([[0, 0], [1, 2]])
    _, means, _ = evaluate(train, test, np.ones((1, 3), np.float32), ks=(3,))
    assert means["recall@3"] == pytest.approx(1 / 2)
    assert means["precision@3"] == pytest.approx(1 / 3)


# ----- run outputs: per-user values, compare, recommend, export -----


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mmrec_formulas")
    out = {}
    for model in ("lightgcn", "bpr"):
        folder = root / model
        argv = [
            *("--model", model, "--dataset", "synthetic", "--data-root", str(root)),
            *("--synthetic", TINY, "--epochs", "2", "--quiet", "--topk", "[5,10,20]"),
            *("--device", "cpu", "--output", str(folder), "--baseline", "null"),
        ]
        assert main(argv) == 0
        out[model] = folder
    return out


def test_saved_test_metrics_equal_mmrec_on_the_model_scores(runs):
    for folder in runs.values():
        model, data, config = load_run(folder)
        store = data["user", "rates", "item"]
        train, test = store.edge_index.numpy(), store.test_edge_index.numpy()
        scores = model.full_scores(torch.arange(model.num_users)).detach().numpy()
        users, hits, pos_len = mmrec_hits(scores, train, test, 20)
        results = json.loads((folder / "results.json").read_text())["test"]
        per_user = load_per_user(folder)
        assert per_user["users"].tolist() == sorted(users)
        rows = np.argsort(users)
        assert set(results) == {f"{m}@{k}" for m in METRICS for k in (5, 10, 20)}
        for k in (5, 10, 20):
            for key, value in mmrec_per_user(hits, pos_len, k).items():
                assert results[key] == pytest.approx(value.mean(), abs=1e-12)
                np.testing.assert_allclose(per_user[key].numpy(), value[rows], atol=1e-12)
                assert float(per_user[key].double().mean()) == pytest.approx(results[key])


def test_compare_is_scipy_ttest_rel_of_the_per_user_values(runs):
    for metric in ("recall@20", "ndcg@10"):
        out = compare_runs(runs["lightgcn"], runs["bpr"], metric)
        a = load_per_user(runs["lightgcn"])[metric].double().numpy()
        b = load_per_user(runs["bpr"])[metric].double().numpy()
        expected = ttest_rel(a, b)
        assert out["users"] == a.size
        assert out["t"] == pytest.approx(float(expected.statistic))
        assert out["p"] == pytest.approx(float(expected.pvalue))
        assert out["difference"] == pytest.approx(a.mean() - b.mean())


def brute_force(scores, seen, k):
    """Unseen items by score, highest first, NaN first, ties by the smaller item id."""
    unseen = [i for i in range(len(scores)) if i not in seen]
    key = lambda i: (0, 0.0, i) if np.isnan(scores[i]) else (1, -scores[i], i)  # noqa: E731
    return sorted(unseen, key=key)[:k], len(unseen)


def test_recommend_equals_brute_force_ranking(runs):
    model, data, _ = load_run(runs["lightgcn"])
    train = data["user", "rates", "item"].edge_index
    users = [0, 7, 59, 7]
    scores = model.full_scores(torch.tensor(users)).detach().float().numpy()
    for k in (1, 5, 40):
        for row, u, s in zip(recommend(model, data, users, k), users, scores):
            seen = set(train[1, train[0] == u].tolist())
            items, unseen = brute_force(s, seen, k)
            assert row["user"] == u and row["items"] == items
            assert [np.float32(x) for x in row["scores"]] == [s[i] for i in items]  # exact
            assert row.get("unseen_items") == (unseen if unseen < k else None)


class FixedScores(torch.nn.Module):
    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = torch.nn.Parameter(torch.tensor(scores))
        self.num_users, self.num_items = scores.shape

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users] * 1.0


def test_recommend_ties_and_non_finite_scores():
    data = HeteroData()
    data["user", "rates", "item"].edge_index = torch.tensor([[0, 0, 1], [0, 1, 4]])
    scores = np.array([[9, 9, 1, -np.inf, 1, 1, np.nan, 1], [5, 1, 1, 1, 7, 1, 1, 1]], np.float32)
    model = FixedScores(scores)
    out = recommend(model, data, [0, 1], 8)
    assert out[0]["items"] == [6, 2, 4, 5, 7, 3]  # NaN first, ties by id, -inf still unseen
    assert out[0]["unseen_items"] == 6
    assert out[1]["items"] == [0, 1, 2, 3, 5, 6, 7] and out[1]["unseen_items"] == 7
    assert recommend(model, data, [0], 2)[0]["items"] == [6, 2]
    small = FixedScores(np.array([[1.234e-7, 1.236e-7, 1.235e-7]], np.float32))
    empty = HeteroData()
    empty["user", "rates", "item"].edge_index = torch.zeros(2, 0, dtype=torch.long)
    row = recommend(small, empty, [0], 3)[0]
    assert row["items"] == [1, 2, 0] and row["scores"] == [1.236e-7, 1.235e-7, 1.234e-7]


def test_recommend_refuses_bad_ids(runs):
    model, data, _ = load_run(runs["bpr"])
    for users, message in (
        ([60], r"user id\(s\) \[60\] out of range"),
        ([-1], r"user id\(s\) \[-1\] out of range"),
        ([1.5], "user ids must be integers"),
        ([True], "user ids must be integers"),
    ):
        with pytest.raises(ExperimentError, match=message):
            recommend(model, data, users, 3)
    for k in (0, 41):
        with pytest.raises(ExperimentError, match=r"--k must be in 1\.\.40"):
            recommend(model, data, [0], k)
    assert recommend(model, data, [np.int64(3)], 2)[0]["user"] == 3


def test_export_is_the_scoring_embeddings(runs, tmp_path):
    for folder in runs.values():
        model, _, _ = load_run(folder)
        paths = export_embeddings(model, tmp_path / folder.name)
        assert [p.name for p in paths] == ["user_embeddings.npy", "item_embeddings.npy"]
        users, items = (np.load(p) for p in paths)
        assert users.dtype == items.dtype == np.float32
        assert users.shape == (60, 64) and items.shape == (40, 64)
        out = model()
        np.testing.assert_array_equal(users, out.user.detach().numpy())
        np.testing.assert_array_equal(items, out.item.detach().numpy())
        expected = model.full_scores(torch.arange(60)).detach().double().numpy()
        np.testing.assert_allclose(users.astype(np.float64) @ items.T, expected, atol=1e-6)
