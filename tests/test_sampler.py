"""Tests of the BPR triple sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler

# A dense graph: 4 users, 6 items, users train on 2..5 of the 6 items, so a uniform draw hits a
# train item of its user most of the time and the rejection loop must work.
DENSE = {0: [0, 1, 2, 3, 4], 1: [1, 3], 2: [0, 2, 4, 5], 3: [5, 4, 3]}
NUM_USERS, NUM_ITEMS = 4, 6


def _edge_index(adjacency: dict) -> torch.Tensor:
    pairs = [(u, i) for u, items in adjacency.items() for i in items]
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def _sampler(batch_size: int = 3, seed: int = 0, adjacency: dict = DENSE) -> BPRSampler:
    return BPRSampler(_edge_index(adjacency), NUM_USERS, NUM_ITEMS, batch_size, seed=seed)


def _epoch(sampler: BPRSampler) -> list:
    return [(b.user.clone(), b.pos_item.clone(), b.neg_item.clone()) for b in sampler]


def test_each_epoch_yields_every_interaction_once() -> None:
    edge_index = _edge_index(DENSE)
    expected = Counter(zip(edge_index[0].tolist(), edge_index[1].tolist()))
    sampler = _sampler(batch_size=4)
    orders = set()
    for _ in range(5):
        seen = Counter()
        order = []
        for batch in sampler:
            assert isinstance(batch, BPRBatch)
            assert batch.user.dtype == batch.pos_item.dtype == batch.neg_item.dtype == torch.long
            assert batch.user.shape == batch.pos_item.shape == batch.neg_item.shape
            pairs = list(zip(batch.user.tolist(), batch.pos_item.tolist()))
            seen.update(pairs)
            order.extend(pairs)
        assert seen == expected
        orders.add(tuple(order))
    assert len(orders) > 1  # shuffled anew each epoch


def test_duplicate_interactions_are_yielded_as_often_as_given() -> None:
    edge_index = torch.tensor([[0, 0, 1], [1, 1, 2]])
    sampler = BPRSampler(edge_index, 2, 4, batch_size=2, seed=1)
    seen = Counter()
    for batch in sampler:
        seen.update(zip(batch.user.tolist(), batch.pos_item.tolist()))
    assert seen == Counter({(0, 1): 2, (1, 2): 1})


def test_negatives_never_train_items() -> None:
    sampler = _sampler(batch_size=5)
    for _ in range(200):
        for batch in sampler:
            for u, j in zip(batch.user.tolist(), batch.neg_item.tolist()):
                assert 0 <= j < NUM_ITEMS
                assert j not in DENSE[u], (u, j)


def test_user_with_one_free_item_always_gets_it() -> None:
    sampler = _sampler()
    negatives = sampler.sample_negatives(torch.zeros(1000, dtype=torch.long))
    assert negatives.unique().tolist() == [5]  # user 0 trains on 0..4


def test_is_train() -> None:
    sampler = _sampler()
    users = torch.tensor([0, 0, 1, 1, 3, 3, 2])
    items = torch.tensor([4, 5, 3, 0, 5, 0, 5])
    assert sampler.is_train(users, items).tolist() == [True, False, True, False, True, False, True]


def test_negatives_roughly_uniform_over_non_train_items() -> None:
    # User 1 trains on items 1 and 3: its negatives are uniform over {0, 2, 4, 5}.
    sampler = _sampler(batch_size=16, seed=3)
    counts = Counter()
    for _ in range(400):  # 2 positives of user 1 per epoch -> 800 draws
        for batch in sampler:
            mask = batch.user == 1
            counts.update(batch.neg_item[mask].tolist())
    assert set(counts) == {0, 2, 4, 5}
    total = sum(counts.values())
    assert total == 800
    expected = total / 4
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001


def test_negatives_uniform_for_every_user_large_draw() -> None:
    sampler = _sampler(seed=11)
    for user, items in DENSE.items():
        free = [i for i in range(NUM_ITEMS) if i not in items]
        draws = sampler.sample_negatives(torch.full((4000,), user, dtype=torch.long))
        counts = torch.bincount(draws, minlength=NUM_ITEMS)
        assert counts[items].sum() == 0
        expected = 4000 / len(free)
        chi2 = float(((counts[free].double() - expected) ** 2 / expected).sum())
        # p = 0.001 quantiles of chi-square with len(free) - 1 = 0..3 degrees of freedom
        assert chi2 < [1e-9, 10.83, 13.82, 16.27][len(free) - 1], (user, counts.tolist())


def test_same_seed_same_batches_other_seed_differs() -> None:
    a, b, c = _sampler(seed=7), _sampler(seed=7), _sampler(seed=8)
    for _ in range(3):
        ea, eb, ec = _epoch(a), _epoch(b), _epoch(c)
        assert len(ea) == len(eb)
        for x, y in zip(ea, eb):
            assert all(torch.equal(s, t) for s, t in zip(x, y))
    flat = lambda epoch: torch.cat([torch.cat(t) for t in epoch])  # noqa: E731
    assert not torch.equal(flat(ea), flat(ec))


def test_sampler_stream_independent_of_global_seed() -> None:
    torch.manual_seed(0)
    first = _epoch(_sampler(seed=5))
    torch.manual_seed(123)
    torch.rand(10)
    second = _epoch(_sampler(seed=5))
    for x, y in zip(first, second):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_state_dict_resumes_the_stream() -> None:
    sampler = _sampler(seed=2)
    _epoch(sampler)
    state = sampler.state_dict()
    following = [_epoch(sampler) for _ in range(2)]

    resumed = _sampler(seed=99)  # another seed: the state overrides it
    resumed.load_state_dict(state)
    replay = [_epoch(resumed) for _ in range(2)]
    for epoch_a, epoch_b in zip(following, replay):
        assert len(epoch_a) == len(epoch_b)
        for x, y in zip(epoch_a, epoch_b):
            assert all(torch.equal(s, t) for s, t in zip(x, y))

    # The saved state is a snapshot, not a live view of the generator.
    sampler.load_state_dict(state)
    again = _epoch(sampler)
    for x, y in zip(following[0], again):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_error_when_a_user_trained_on_every_item() -> None:
    adjacency = {0: [0], 1: [0, 1, 2, 3, 4, 5], 2: [2]}
    with pytest.raises(ValueError, match="user 1 trained on every one of the 6 items"):
        BPRSampler(_edge_index(adjacency), 3, NUM_ITEMS, batch_size=2)


def test_train_item_negatives_are_uniform_over_trained_items_only() -> None:
    """``negative_items="train"`` (MMRec's sampler): items 6 and 7 have no train interaction
    and are never drawn; user 1 (items 1, 3) draws uniformly from {0, 2, 4, 5}."""
    sampler = BPRSampler(_edge_index(DENSE), NUM_USERS, 8, 3, seed=5, negative_items="train")
    draws = sampler.sample_negatives(torch.full((4000,), 1, dtype=torch.long))
    counts = torch.bincount(draws, minlength=8)
    assert counts[[1, 3, 6, 7]].sum() == 0
    chi2 = float(((counts[[0, 2, 4, 5]].double() - 1000) ** 2 / 1000).sum())
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001
    every = BPRSampler(_edge_index(DENSE), NUM_USERS, 8, 3, seed=5)  # the default: all items
    assert set(every.sample_negatives(torch.full((4000,), 1, dtype=torch.long)).tolist()) == {
        0,
        2,
        4,
        5,
        6,
        7,
    }


def test_train_item_pool_counts_for_the_every_item_check() -> None:
    # user 1 trained on all 3 trained items of 5: no negative among the trained items
    adjacency = {0: [0], 1: [0, 1, 2], 2: [2]}
    BPRSampler(_edge_index(adjacency), 3, 5, batch_size=2)  # items 3, 4 remain
    with pytest.raises(ValueError, match="every one of the 3 items .*negative_items 'train'"):
        BPRSampler(_edge_index(adjacency), 3, 5, batch_size=2, negative_items="train")
    with pytest.raises(ValueError, match="negative_items must be one of all, train"):
        BPRSampler(_edge_index(adjacency), 3, 5, batch_size=2, negative_items="cold")


@pytest.mark.parametrize("edge_index", [torch.zeros(3, 4, dtype=torch.long), torch.zeros(4)])
def test_bad_edge_index_shape(edge_index: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        BPRSampler(edge_index, 2, 2, batch_size=2)


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        _sampler(batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 13, 14, 100])
def test_batch_count_is_ceil(batch_size: int) -> None:
    sampler = _sampler(batch_size=batch_size)
    num_edges = sum(len(v) for v in DENSE.values())
    assert num_edges == 14
    sizes = [len(b) for b in sampler]
    assert len(sampler) == len(sizes) == math.ceil(num_edges / batch_size)
    assert sum(sizes) == num_edges
    assert all(s == batch_size for s in sizes[:-1])
    assert sizes[-1] == num_edges - batch_size * (len(sizes) - 1)


def test_batch_to_device_keeps_values() -> None:
    batch = next(iter(_sampler()))
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.user, batch.user) and torch.equal(moved.neg_item, batch.neg_item)
    assert len(moved) == 3
