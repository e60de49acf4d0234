"""Tests of the losses, the propagation layers and the BPR / LightGCN recommenders."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import HeteroData

from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.graph import normalized_adjacency
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.models import BPR, LightGCN, Recommender, build_model, model_class
from pyg_dhmrec.models.base import OnDemandEmbeddings, OnDemandRows, distinct_rows
from pyg_dhmrec.nn import (
    FrozenSparse,
    LightConv,
    LightPropagation,
    bpr_loss,
    embedding_norm_penalty,
    squared_l2_penalty,
    symmetric_spmm,
    weighted_mean,
)

R = 1 / math.sqrt(2)


def _graph(num_users: int, num_items: int, pairs: list) -> HeteroData:
    data = HeteroData()
    data["user"].num_nodes = num_users
    data["item"].num_nodes = num_items
    data["item"].modalities = []  # ID-only
    edge_index = torch.tensor(pairs, dtype=torch.long).t().contiguous()
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data


@pytest.fixture
def tiny() -> HeteroData:
    pairs = [(0, 0), (0, 1), (0, 4), (1, 1), (1, 2), (2, 3), (2, 5), (3, 0), (3, 6), (4, 2)]
    return _graph(5, 7, pairs)


def _batch(users: list, pos: list, neg: list) -> BPRBatch:
    return BPRBatch(torch.tensor(users), torch.tensor(pos), torch.tensor(neg))


FIXED_BATCH = ([0, 1, 2, 3, 4, 0], [1, 2, 5, 6, 2, 4], [3, 0, 1, 2, 6, 5])


def _make(name: str, data: HeteroData) -> Recommender:
    torch.manual_seed(0)
    if name == "bpr":
        return BPR(data, embedding_dim=8, reg_weight=1e-3)
    return LightGCN(data, embedding_dim=8, num_ui_layers=2, reg_weight=1e-3)


# ---------------------------------------------------------------- losses


def test_bpr_loss_hand_value() -> None:
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])
    # -log sigmoid(1) = log(1 + e^-1), -log sigmoid(-3) = log(1 + e^3)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(3))) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.6809, abs=1e-4)
    reference = -torch.log(torch.sigmoid(pos - neg)).mean()
    assert bpr_loss(pos, neg).item() == pytest.approx(reference.item(), rel=1e-6)


def test_bpr_loss_is_finite_for_large_differences() -> None:
    pos = torch.tensor([0.0, 1000.0], requires_grad=True)
    neg = torch.tensor([1000.0, 0.0], requires_grad=True)
    loss = bpr_loss(pos, neg)
    # -log sigmoid(-1000) = 1000 (naive: -log(0) = inf); -log sigmoid(1000) = 0
    assert loss.item() == pytest.approx(500.0)
    loss.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert pos.grad.tolist() == pytest.approx([-0.5, 0.0])
    assert neg.grad.tolist() == pytest.approx([0.5, 0.0])


def test_bpr_loss_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"one shape, got \[2\] and \[3\]"):
        bpr_loss(torch.zeros(2), torch.zeros(3))


def test_embedding_norm_penalty_hand_values() -> None:
    penalty = embedding_norm_penalty(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]]))
    assert penalty.item() == pytest.approx(5.0 / 1)
    # Frobenius norms 5 and 1, not squared, divided by B = 2 rows.
    a = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert embedding_norm_penalty(a, b).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="at least one tensor"):
        embedding_norm_penalty()


def test_squared_l2_penalty_hand_value() -> None:
    a = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert squared_l2_penalty(a).item() == pytest.approx(26 / 4)
    assert squared_l2_penalty(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(12.5)


# ---------------------------------------------------------------- propagation


def _csr(dense: torch.Tensor) -> torch.Tensor:
    return dense.to_sparse_csr()


def test_symmetric_spmm_matches_dense_values_and_gradients() -> None:
    torch.manual_seed(0)
    dense = torch.rand(6, 6)
    dense = (dense + dense.t()) * (torch.rand(6, 6) > 0.4)
    dense = torch.triu(dense) + torch.triu(dense, 1).t()  # symmetric with zeros
    assert torch.equal(dense, dense.t())
    x = torch.randn(6, 3, requires_grad=True)
    out = symmetric_spmm(_csr(dense), x)
    assert torch.allclose(out, dense @ x, atol=1e-6)
    upstream = torch.randn(6, 3)
    (out * upstream).sum().backward()
    assert torch.allclose(x.grad, dense.t() @ upstream, atol=1e-6)


def test_frozen_sparse_equals_torch_sparse_mm_bit_for_bit() -> None:
    # the product writes a fresh output instead of torch.sparse.mm's zero-filled one: the same
    # values exactly, forward and backward, whatever the uninitialised output held
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(40, 30, generator=g) * (torch.rand(40, 30, generator=g) > 0.7)
    op = FrozenSparse(_csr(dense))
    for _ in range(3):
        torch.empty(40, 8).fill_(float("nan"))  # garbage a reused allocation may hold
        x = torch.randn(30, 8, generator=g, requires_grad=True)
        out = op(x)
        assert torch.equal(out, torch.sparse.mm(_csr(dense), x.detach()))
        upstream = torch.randn(40, 8, generator=g)
        (grad,) = torch.autograd.grad(out, x, upstream)
        assert torch.equal(grad, torch.sparse.mm(_csr(dense.t().contiguous()), upstream))


def test_symmetric_spmm_gradcheck() -> None:
    torch.manual_seed(1)
    dense = torch.rand(5, 5, dtype=torch.double)
    dense = dense + dense.t()
    dense[0, 3] = dense[3, 0] = 0.0
    adj = _csr(dense)
    x = torch.randn(5, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: symmetric_spmm(adj, t), (x,))


@pytest.mark.parametrize("symmetric", [False, True])
def test_light_conv_matches_dense(symmetric: bool) -> None:
    torch.manual_seed(2)
    dense = torch.rand(4, 4)
    dense = dense + dense.t()
    x = torch.randn(4, 3, requires_grad=True)
    out = LightConv(symmetric=symmetric)(x, _csr(dense))
    assert torch.allclose(out, dense @ x, atol=1e-6)
    out.pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * dense.t() @ (dense @ x.detach()), atol=1e-5)


# A = [[0, 1], [0.5, 0]] and x = [1, 2]: E1 = A x = [2, 0.5], E2 = A E1 = [0.5, 1].
PROPAGATION_CASES = [
    ("mean", 2, [[(1 + 2 + 0.5) / 3], [(2 + 0.5 + 1) / 3]]),
    ("sum", 2, [[3.5], [3.5]]),
    ("last", 2, [[0.5], [1.0]]),
    ("last", 1, [[2.0], [0.5]]),
    ("mean", 1, [[1.5], [1.25]]),
    ("mean", 0, [[1.0], [2.0]]),
    ("sum", 0, [[1.0], [2.0]]),
    ("last", 0, [[1.0], [2.0]]),
]


@pytest.mark.parametrize("mode, layers, expected", PROPAGATION_CASES)
def test_light_propagation_modes(mode: str, layers: int, expected: list) -> None:
    adj = _csr(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    out = LightPropagation(layers, mode=mode)(torch.tensor([[1.0], [2.0]]), adj)
    assert out.shape == (2, 1)
    assert out.view(-1).tolist() == pytest.approx([row[0] for row in expected])


def test_light_propagation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode must be 'mean', 'last' or 'sum', got 'max'"):
        LightPropagation(2, mode="max")
    with pytest.raises(ValueError, match="num_layers must be an int >= 0, got -1"):
        LightPropagation(-1)
    for bad in (2.5, True):  # a float or a bool is not a layer count
        with pytest.raises(ValueError, match=f"num_layers must be an int >= 0, got {bad!r}"):
            LightPropagation(bad)
    assert list(LightPropagation(3).parameters()) == []


# ---------------------------------------------------------------- LightGCN by hand


# 2 users, 3 items: u0-i0, u0-i1, u1-i1, u1-i2. Degrees u0 2, u1 2, i0 1, i1 2, i2 1.
# Node order [u0, u1, i0, i1, i2]; A_hat[u, i] = 1 / sqrt(d_u d_i).
A_HAT = torch.tensor(
    [
        [0.0, 0.0, R, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.5, R],
        [R, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0, 0.0],
        [0.0, R, 0.0, 0.0, 0.0],
    ]
)


def _two_by_three() -> HeteroData:
    return _graph(2, 3, [(0, 0), (0, 1), (1, 1), (1, 2)])


def test_normalized_adjacency_of_hand_graph() -> None:
    data = _two_by_three()
    adj = normalized_adjacency(data[RATES].edge_index, 2, 3)
    assert torch.allclose(adj.to_dense(), A_HAT, atol=1e-6)


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_lightgcn_forward_equals_hand_computation(num_layers: int) -> None:
    model = LightGCN(_two_by_three(), embedding_dim=2, num_ui_layers=num_layers)
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    with torch.no_grad():
        model.user_embedding.weight.copy_(users)
        model.item_embedding.weight.copy_(items)
    e = torch.cat([users, items])
    layers = [e]
    for _ in range(num_layers):
        layers.append(A_HAT @ layers[-1])
    expected = torch.stack(layers).mean(0)
    out = model()
    user_out, item_out = out.user, out.item
    assert user_out.shape == (2, 2) and item_out.shape == (3, 2)
    assert torch.allclose(torch.cat([user_out, item_out]), expected, atol=1e-6)
    if num_layers == 1:
        # u0 after one hop: R * e_i0 + 0.5 * e_i1 = [R + 1, R]; mean with [1, 0].
        assert user_out[0].tolist() == pytest.approx([(1 + R + 1) / 2, R / 2])


# ---------------------------------------------------------------- both models


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_one_step_lowers_the_batch_loss(name: str, tiny: HeteroData) -> None:
    model = _make(name, tiny)
    batch = _batch(*FIXED_BATCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = sum(model.loss(batch).values())
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = sum(model.loss(batch).values())
    assert after.item() < before.item() - 1e-5


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_every_parameter_gets_a_gradient(name: str, tiny: HeteroData) -> None:
    model = _make(name, tiny)
    params = dict(model.named_parameters())
    assert set(params) == {"user_embedding.weight", "item_embedding.weight"}
    parts = model.loss(_batch(*FIXED_BATCH))
    assert set(parts) == {"bpr", "reg"}
    sum(parts.values()).backward()
    for pname, p in params.items():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_lightgcn_gradient_reaches_unbatched_neighbours(tiny: HeteroData) -> None:
    # Only users 0 and 1 in the batch, but LightGCN's propagation reaches more embeddings.
    model = _make("lightgcn", tiny)
    loss = model.loss(_batch([0], [1], [3]))["bpr"]
    loss.backward()
    # User 1 shares item 1 with user 0: it gets a gradient through two hops.
    assert model.user_embedding.weight.grad[1].abs().sum() > 0
    bpr = _make("bpr", tiny)
    bpr.loss(_batch([0], [1], [3]))["bpr"].backward()
    assert bpr.user_embedding.weight.grad[1].abs().sum() == 0


def test_bpr_loss_parts_hand_value() -> None:
    model = BPR(_two_by_three(), embedding_dim=2, reg_weight=0.1)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]]))
    parts = model.loss(_batch([0], [0], [1]))
    # scores 2 and 1: -log sigmoid(1); reg: (|e_u| + |e_i| + |e_j|) / 1 = 1 + 2 + 1
    assert parts["bpr"].item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert parts["reg"].item() == pytest.approx(0.1 * 4)


def test_lightgcn_regulariser_uses_ego_embeddings() -> None:
    model = LightGCN(_two_by_three(), embedding_dim=2, num_ui_layers=2, reg_weight=0.5)
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        model.item_embedding.weight.copy_(torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]))
    parts = model.loss(_batch([0, 1], [0, 1], [2, 2]))
    # users: |[[3,4],[0,1]]| = sqrt(26); pos: |[[0,2],[1,0]]| = sqrt(5); neg: 0; B = 2
    assert parts["reg"].item() == pytest.approx(0.5 * (math.sqrt(26) + math.sqrt(5)) / 2)


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_full_scores(name: str, tiny: HeteroData) -> None:
    model = _make(name, tiny)
    users = torch.tensor([4, 0, 2])
    with pytest.raises(RuntimeError, match=r"call model\.eval\(\) first"):
        model.full_scores(users)
    model.eval()
    scores = model.full_scores(users)
    assert scores.shape == (3, 7)
    assert not scores.requires_grad
    out = model()
    assert torch.allclose(scores, out.user[users] @ out.item.t(), atol=1e-6)
    # The embeddings are computed once in eval mode, again after a round trip through train.
    calls = []
    forward = model.forward

    def counting_forward():
        calls.append(1)
        return forward()

    model.forward = counting_forward
    model.eval()
    for chunk in (users, torch.tensor([1]), torch.arange(5)):
        assert model.full_scores(chunk).shape == (chunk.numel(), 7)
    assert len(calls) == 1
    model.train()
    with pytest.raises(RuntimeError):
        model.full_scores(users)
    model.eval()
    assert torch.allclose(model.full_scores(users), scores, atol=1e-6)
    assert len(calls) == 2


def test_build_model_passes_config_keys(tiny: HeteroData) -> None:
    config = {"embedding_dim": 5, "num_ui_layers": 3, "reg_weight": 0.25, "epochs": 7, "seed": 1}
    model = build_model("lightgcn", tiny, config)
    assert isinstance(model, LightGCN)
    assert model.user_embedding.weight.shape == (5, 5)
    assert model.item_embedding.weight.shape == (7, 5)
    assert model.ui_propagation.num_layers == 3
    assert model.reg_weight == 0.25
    bpr = build_model("bpr", tiny, config)  # num_ui_layers is not a BPR argument: not passed
    assert isinstance(bpr, BPR)
    assert bpr.item_embedding.weight.shape == (7, 5) and bpr.reg_weight == 0.25
    default = build_model("lightgcn", tiny, {})
    assert default.user_embedding.weight.shape[1] == 64 and default.ui_propagation.num_layers == 2
    available = (
        "bm3, bpr, cmdl, damrs, dhmrec, diffmm, dualgnn, freedom, grcn, lattice, layergcn, "
        "lgmrec, lightgcn, mgcn, micro, mmgcn, siger, tmlp, vbpr"
    )
    with pytest.raises(ValueError, match=f"unknown model 'mf'; available: {available}"):
        model_class("mf")


def test_models_train_on_sampler_batches(tiny: HeteroData) -> None:
    # A few epochs of Adam on the tiny graph lower the mean epoch loss of both models.
    for name in ("bpr", "lightgcn"):
        model = _make(name, tiny)
        sampler = BPRSampler(tiny[RATES].edge_index, 5, 7, batch_size=4, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        means = []
        for _ in range(15):
            total = 0.0
            for batch in sampler:
                loss = sum(model.loss(batch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            means.append(total / len(sampler))
        assert means[-1] < means[0] * 0.7, (name, means)


@pytest.mark.parametrize("sync_free", [False, True])
def test_distinct_rows_and_their_weights(sync_free: bool) -> None:
    index = torch.tensor([4, 1, 4, 4, 0, 1, 7])
    rows, weight, inverse = distinct_rows(index, sync_free=sync_free)
    torch.testing.assert_close(rows[inverse], index)
    if sync_free:
        assert torch.equal(rows, index)
        torch.testing.assert_close(weight, torch.tensor([1.0, 1, 0, 0, 1, 0, 1]))
    else:
        assert torch.equal(rows, torch.tensor([0, 1, 4, 7])) and weight is None
    # One value per id: the weighted mean over the rows is the mean over the distinct ids.
    per_id = {4: 10.0, 1: 1.0, 0: 5.0, 7: 3.0}
    values = torch.tensor([per_id[int(i)] for i in rows])
    assert weighted_mean(values, weight).item() == pytest.approx(19.0 / 4)


def test_on_demand_rows_compute_what_is_asked() -> None:
    calls = []
    table = torch.arange(12.0).view(6, 2)

    def compute(index):
        calls.append(index)
        return table if index is None else table[index]

    rows = OnDemandRows(compute)
    torch.testing.assert_close(rows.rows(torch.tensor([3, 1])), table[[3, 1]])
    assert len(calls) == 1 and torch.equal(calls[0], torch.tensor([3, 1]))
    torch.testing.assert_close(rows.table(), table)
    torch.testing.assert_close(rows.rows(torch.tensor([5])), table[[5]])
    rows.table()
    assert len(calls) == 2 and calls[1] is None  # the table once, then rows read from it


def test_on_demand_embeddings_compute_each_missing_table_once() -> None:
    calls = []

    class Doubled(OnDemandEmbeddings):
        def compute_user(self) -> torch.Tensor:
            calls.append("user")
            return 2 * self.item[:2]

    item = torch.arange(6.0).view(3, 2)
    out = Doubled(None, item)
    assert calls == []  # nothing computed before it is read
    assert torch.equal(out.user, 2 * item[:2]) and torch.equal(out.user, 2 * item[:2])
    assert calls == ["user"]  # computed once, then kept
    assert torch.equal(out.user_rows(torch.tensor([1])), 2 * item[1:2])
    out.user = torch.zeros(2, 2)  # a set table is served as it is
    assert torch.equal(out.user, torch.zeros(2, 2)) and calls == ["user"]
    assert out.modalities == {}  # given by the dataclass default, never computed
    with pytest.raises(NotImplementedError, match="Doubled was built without item"):
        _ = Doubled(None, None).item
