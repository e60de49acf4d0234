"""DA-MRS: its denoised item graphs, denoised BPR weights, KL alignment and graded neighbour
discrimination on hand-built cases and against dense formulas (the shared contract in
test_model_contract.py)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.data.graph import item_knn_graph
from pyg_dhmrec.data.transforms import co_interaction_edge_type, consistent_knn_edge_type
from pyg_dhmrec.models import DAMRS, build_model
from pyg_dhmrec.models.damrs import (
    denoised_bpr_loss,
    denoised_bpr_weights,
    graded_neighbour_discrimination,
    graded_positives,
)
from pyg_dhmrec.nn import symmetric_bernoulli_kl

MODALITIES = {"image": 6, "text": 4}
SMALL = {"embedding_dim": 8, "knn_k": 3, "num_positives": 3}


@pytest.fixture(scope="module")
def data():
    return toy_graph(24, 20, 110, MODALITIES, seed=1)


@pytest.fixture(scope="module")
def model(data) -> DAMRS:
    torch.manual_seed(0)
    return build_model("damrs", data, SMALL).train()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_consistency_filter_drops_an_edge_one_modality_disagrees_with() -> None:
    # Item 1 is item 0's twin in image but its opposite in text: the image graph alone would
    # link 0 -> 1; DA-MRS drops it. Item 2 is close to item 0 in both: 0 -> 2 is kept.
    data = toy_graph(6, 4, 14, {"image": 2, "text": 2}, seed=0)
    data["item"].image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    data["item"].text = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    plain = item_knn_graph(data["item"].image, k=2)
    assert [0, 1] in plain.t().tolist()
    model = DAMRS(data, embedding_dim=4, knn_k=2, num_positives=1)
    for m in ("image", "text"):
        kept = data[consistent_knn_edge_type(m)].edge_index.t().tolist()
        assert [0, 1] not in kept and [0, 2] in kept, m
        dense = model.modality_graphs[m].matrix.to_dense()
        assert dense[0, 1] == 0 and dense[0, 2] > 0, m
    # Means: image 0.213, text 0.150. Item 3 is below the image mean with everyone but itself.
    assert data[consistent_knn_edge_type("image")].edge_index[:, -1].tolist() == [3, 3]


def test_denoised_bpr_weights_by_hand() -> None:
    # Two positive pairs seen by three views: A liked consistently, B disliked but for one view.
    pos_probs = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.7, 0.1]])
    neg_probs = torch.tensor([[0.5, 0.5], [0.4, 0.6], [0.5, 0.5]])  # mean 0.5
    w_pos, w_neg = denoised_bpr_weights(pos_probs, neg_probs, alpha=1.0, beta=2.0, gamma=1.0)
    # A: mean 0.8, variance (0.01 + 0 + 0.01) / 2; B: mean 0.3, variance (0.04 + 0.16 + 0.04) / 2.
    expected_pos = [0.8 * math.exp(-0.01) ** 2, 0.3 * math.exp(-0.12) ** 2]
    torch.testing.assert_close(w_pos, torch.tensor(expected_pos))
    # A's mean beats the negatives' 0.5: no reversed term; B's is below: max 0.7 - 0.5.
    torch.testing.assert_close(w_neg, torch.tensor([0.0, 0.2]))
    w_pos, w_neg = denoised_bpr_weights(pos_probs, neg_probs, alpha=2.0, beta=1.0, gamma=2.0)
    expected_pos = [0.64 * math.exp(-0.01), 0.09 * math.exp(-0.12)]
    torch.testing.assert_close(w_pos, torch.tensor(expected_pos))
    torch.testing.assert_close(w_neg, torch.tensor([0.0, 0.04]))
    # The loss: -(w+ log sigma(s+ - s-) + w- log sigma(s- - s+)), mean over pairs.
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    loss = denoised_bpr_loss(pos, neg, w_pos, w_neg)
    expected = -(
        expected_pos[0] * math.log(_sigmoid(1.5))
        + expected_pos[1] * math.log(_sigmoid(-2.0))
        + 0.04 * math.log(_sigmoid(2.0))
    )
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_weights_carry_no_gradient_and_need_two_views() -> None:
    probs = torch.rand(3, 5, requires_grad=True)
    w_pos, w_neg = denoised_bpr_weights(probs, torch.rand(3, 5))
    assert not w_pos.requires_grad and not w_neg.requires_grad
    with pytest.raises(ValueError, match="V >= 2 views"):
        denoised_bpr_weights(torch.rand(1, 5), torch.rand(1, 5))


def test_model_bpr_part_equals_the_weights_computed_pair_by_pair(model, data) -> None:
    batch = first_batch(data, batch_size=16)
    out = model()
    views = [out.modalities["image"], out.modalities["text"], out.behaviour]

    def probs(u: int, i: int) -> list[float]:
        user = out.user[u]
        return [_sigmoid(float(user @ (h[i] / h[i].norm()))) for h in views]

    negatives = [p for u, j in zip(batch.user, batch.neg_item) for p in probs(int(u), int(j))]
    neg_mean = statistics.fmean(negatives)
    total = 0.0
    for u, i, j in zip(batch.user.tolist(), batch.pos_item.tolist(), batch.neg_item.tolist()):
        p = probs(u, i)
        mean, var = statistics.fmean(p), statistics.variance(p)
        w_pos = mean * math.exp(-var) ** 2
        w_neg = min(max(max(p) - neg_mean, 0.0), 1.0) if mean < neg_mean else 0.0
        diff = float(out.user[u] @ out.item[i] - out.user[u] @ out.item[j])
        total -= w_pos * math.log(_sigmoid(diff)) + w_neg * math.log(_sigmoid(-diff))
    got = model.loss(batch, out)["bpr"].item()
    assert got == pytest.approx(total / len(batch.user), rel=1e-5)


def test_symmetric_bernoulli_kl_by_hand() -> None:
    a, b = torch.tensor([0.5, 3.0, -2.0]), torch.tensor([-1.0, 3.0, 1.0])
    expected = [
        _bernoulli_kl(_sigmoid(x), _sigmoid(y)) + _bernoulli_kl(_sigmoid(y), _sigmoid(x))
        for x, y in zip(a.tolist(), b.tolist())
    ]
    torch.testing.assert_close(symmetric_bernoulli_kl(a, b), torch.tensor(expected))
    assert expected[1] == 0.0
    # Saturated probabilities stay finite (log sigma would give inf - inf).
    assert torch.isfinite(symmetric_bernoulli_kl(torch.tensor([200.0]), torch.tensor([-200.0])))


def test_au_part_is_the_kl_of_id_and_multimodal_preferences(model, data) -> None:
    batch = first_batch(data, batch_size=16)
    out = model()
    users = sorted(set(batch.user.tolist()))
    items = sorted(set(batch.pos_item.tolist()) | set(batch.neg_item.tolist()))
    fused = (out.modalities["image"] + out.modalities["text"] + out.behaviour) / 3
    values = []
    for u in users:
        for i in items:
            p = _sigmoid(float(out.user[u] @ F.normalize(out.id_item[i], dim=0)))
            q = _sigmoid(float(out.user[u] @ F.normalize(fused[i], dim=0)))
            values.append(_bernoulli_kl(p, q) + _bernoulli_kl(q, p))
    expected = model.au_weight * statistics.fmean(values)
    assert model.loss(batch, out)["au"].item() == pytest.approx(expected, rel=1e-4, abs=1e-9)


def _dense_positives(views, anchors, k):
    """Brute force: per view, the top-k of sum_w P^w + P^v, then the top-k of P^v among the
    rest (P^w = row softmax of cosine similarities)."""
    probs = [torch.softmax(F.normalize(h, dim=1) @ F.normalize(h, dim=1).t(), 1) for h in views]
    out = []
    for p in probs:
        score = sum(probs) + p
        mm, single = [], []
        for a in anchors.tolist():
            first = sorted(range(p.size(1)), key=lambda j: -float(score[a, j]))[:k]
            rest = [
                j for j in sorted(range(p.size(1)), key=lambda j: -float(p[a, j])) if j not in first
            ]
            mm.append(sorted(first))
            single.append(sorted(rest[:k]))
        out.append((mm, single))
    return out


def test_graded_positives_equal_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(15, 4, generator=g) for _ in range(3)]
    anchors = torch.tensor([0, 4, 7, 14])
    for chunk in (1, 3, 100):
        got = graded_positives(views, anchors, 3, chunk)
        for (mm, single), (e_mm, e_single) in zip(got, _dense_positives(views, anchors, 3)):
            assert mm.sort(1).values.tolist() == e_mm
            assert single.sort(1).values.tolist() == e_single
            assert not set(map(tuple, mm.tolist())) & set(map(tuple, single.tolist()))


@pytest.mark.parametrize("temperature", [0.2, 0.05, 0.02])  # 0.02: max-shifted exponentials
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_neighbour_discrimination_equals_the_dense_formula(chunk: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(4)
    views = [torch.randn(12, 5, generator=g, requires_grad=True) for _ in range(3)]
    anchors = torch.tensor([1, 2, 5, 11, 6])
    losses, positives = graded_neighbour_discrimination(views, anchors, 2, temperature, chunk)
    grads = torch.autograd.grad(losses @ torch.tensor([1.0, 0.5, 2.0]), views)
    labels = graded_positives([h.detach() for h in views], anchors, 2)
    brute = _dense_positives([h.detach() for h in views], anchors, 2)
    with torch.no_grad():  # no gradient formed: the same values
        no_grad, _ = graded_neighbour_discrimination(views, anchors, 2, temperature, chunk)
    torch.testing.assert_close(no_grad, losses.detach())
    dense = [h.detach().clone().requires_grad_(True) for h in views]
    expected = []
    for h, (mm, single), (e_mm, e_single), (b_mm, b_single) in zip(dense, positives, labels, brute):
        torch.testing.assert_close(mm, e_mm)  # the same positives as graded_positives
        torch.testing.assert_close(single, e_single)
        assert mm.sort(1).values.tolist() == b_mm  # and as the brute-force selection
        assert single.sort(1).values.tolist() == b_single
        # Dense: -log(sum_mm / sum_all) - log(sum_single / (sum_all - sum_mm)) of exp(cos / tau),
        # in float64 so that exp(cos / 0.02) is exact enough
        unit = F.normalize(h.double(), dim=1)
        e = torch.exp(unit[anchors] @ unit.t() / temperature)
        s_mm, s_single = e.gather(1, mm).sum(1), e.gather(1, single).sum(1)
        s_rest = e.scatter(1, mm, 0.0).sum(1)  # sum_all - sum_mm, without the cancellation
        s_all = s_rest + s_mm
        expected.append((-torch.log(s_mm / s_all) - torch.log(s_single / s_rest)).mean())
    expected = torch.stack(expected)
    expected_grads = torch.autograd.grad(
        expected @ torch.tensor([1.0, 0.5, 2.0], dtype=torch.double), dense
    )
    torch.testing.assert_close(losses, expected.float())
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_forward_adds_the_mean_of_the_item_graph_views(model, data) -> None:
    out = model()
    ids = model.item_embedding.weight
    dense = {}
    for name, edge_type in (
        ("image", consistent_knn_edge_type("image")),
        ("text", consistent_knn_edge_type("text")),
        ("behaviour", co_interaction_edge_type()),
    ):
        store = data[edge_type]
        matrix = torch.zeros(20, 20)
        matrix[store.edge_index[0], store.edge_index[1]] = store.edge_weight
        dense[name] = matrix @ ids  # one layer
    torch.testing.assert_close(out.modalities["image"], dense["image"])
    torch.testing.assert_close(out.behaviour, dense["behaviour"])
    fused = (dense["image"] + dense["text"] + dense["behaviour"]) / 3
    torch.testing.assert_close(out.item, out.id_item + fused)


def test_one_modality_trains() -> None:
    data = toy_graph(24, 20, 110, {"audio": 5}, seed=2)
    torch.manual_seed(0)
    model = DAMRS(data, embedding_dim=8, knn_k=3, num_positives=3).train()
    batch = first_batch(data, batch_size=32)
    parts = model.loss(batch)
    assert set(parts) == {"bpr", "au", "ai"} and all(torch.isfinite(v) for v in parts.values())
    sum(parts.values()).backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    assert list(model().modalities) == ["audio"]


def test_bad_settings_get_clear_errors(data) -> None:
    with pytest.raises(ValueError, match=r"num_positives = 11 needs at least 22 items"):
        DAMRS(data, knn_k=3, num_positives=11)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DAMRS(data, knn_k=3, num_positives=3, temperature=0.0)
    with pytest.raises(ValueError, match="au_weight must be >= 0, got -1.0"):
        DAMRS(data, knn_k=3, num_positives=3, au_weight=-1.0)
    with pytest.raises(ValueError, match="num_ii_layers must be an int >= 1, got 0"):
        DAMRS(data, knn_k=3, num_positives=3, num_ii_layers=0)
    with pytest.raises(ValueError, match="at least one item modality"):
        DAMRS(toy_graph(24, 20, 110), knn_k=3, num_positives=3)
