"""Tests of DHMRec's building blocks: disentanglement (Eqs. 1-6), pos-neg attention fusion
(Eqs. 15-19), the score-distribution KL (Eqs. 20-21) and the user-item / weighted-sum graphs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.data.graph import normalized_adjacency, user_item_matrix, weighted_sum
from pyg_dhmrec.nn import (
    AttentionFusion,
    CollaborativeGate,
    DimensionAttention,
    DisentangledEncoder,
    centred_projection,
    jensen_shannon_divergence,
    logit_pooling,
    orthogonality_loss,
    score_distribution_kl,
)

R = 1 / math.sqrt(2)


# ---------------------------------------------------------------- logit pooling (Eq. 5)


def _eq5(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The closed form of Eq. 5, evaluated naively."""
    return torch.log(
        (2 * torch.exp(a + b) + torch.exp(a) + torch.exp(b)) / (2 + torch.exp(a) + torch.exp(b))
    )


def test_logit_pooling_equals_eq5_on_moderate_values() -> None:
    torch.manual_seed(0)
    a = torch.empty(6, 5, dtype=torch.double).uniform_(-5, 5)
    b = torch.empty(6, 5, dtype=torch.double).uniform_(-5, 5)
    out = logit_pooling([a, b])
    assert out.shape == (6, 5)
    assert torch.allclose(out, _eq5(a, b), atol=1e-10)
    # One point by hand: a = 0, b = log 3 -> (2*3 + 1 + 3) / (2 + 1 + 3) = 10 / 6.
    point = logit_pooling([torch.tensor([0.0]), torch.tensor([math.log(3.0)])])
    assert point.item() == pytest.approx(math.log(10 / 6), abs=1e-6)
    # ... which is logit((sigmoid(0) + sigmoid(log 3)) / 2) = logit((1/2 + 3/4) / 2) = logit(5/8).
    assert math.log(10 / 6) == pytest.approx(math.log((5 / 8) / (3 / 8)))


def test_logit_pooling_is_finite_and_exact_for_large_logits() -> None:
    a = torch.tensor([50.0, 50.0, -50.0])
    b = torch.tensor([50.0, -50.0, -50.0])
    out = logit_pooling([a, b])
    assert torch.isfinite(out).all()
    # logit(sigmoid(50)) = 50; logit((1 + 0) / 2) = logit(1/2) = 0; logit(sigmoid(-50)) = -50
    assert out.tolist() == pytest.approx([50.0, 0.0, -50.0], abs=1e-4)
    # The closed form of Eq. 5 overflows in float32 there: exp(100) = inf, inf / inf = nan.
    naive = _eq5(torch.tensor([50.0]), torch.tensor([50.0]))
    assert not torch.isfinite(naive).all()


def test_logit_pooling_three_modalities_is_logit_of_mean_sigmoid() -> None:
    torch.manual_seed(1)
    logits = [torch.empty(4, 3, dtype=torch.double).uniform_(-5, 5) for _ in range(3)]
    mean = (torch.sigmoid(logits[0]) + torch.sigmoid(logits[1]) + torch.sigmoid(logits[2])) / 3
    assert torch.allclose(logit_pooling(logits), torch.logit(mean), atol=1e-10)
    # It is not the plain mean of the logits.
    assert not torch.allclose(logit_pooling(logits), sum(logits) / 3, atol=1e-3)


def test_logit_pooling_equals_the_two_logsigmoid_form_with_its_gradient() -> None:
    """One logsigmoid for both sums (log sigmoid(-x) = log sigmoid(x) - x): the value and
    gradient of the form with logsigmoid(-x), from small to saturated logits."""
    torch.manual_seed(2)
    logits = [
        (torch.randn(7, 5, dtype=torch.double) * s).requires_grad_() for s in (1.0, 8.0, 40.0)
    ]
    stacked = torch.stack(logits)
    want = torch.logsumexp(F.logsigmoid(stacked), 0) - torch.logsumexp(F.logsigmoid(-stacked), 0)
    got = logit_pooling(logits)
    torch.testing.assert_close(got, want)
    weight = torch.randn(7, 5, dtype=torch.double)
    for g, w in zip(
        torch.autograd.grad((got * weight).sum(), logits),
        torch.autograd.grad((want * weight).sum(), logits),
    ):
        torch.testing.assert_close(g, w)


def test_logit_pooling_gradient_at_large_logits() -> None:
    a = torch.tensor([50.0, 50.0, -50.0], requires_grad=True)
    b = torch.tensor([50.0, -50.0, -50.0], requires_grad=True)
    logit_pooling([a, b]).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # At a = b: C = logit(sigmoid(a)) = a, and by symmetry dC/da = dC/db = 1/2.
    # At (50, -50): p = 1/2, dC/da = sigmoid'(50) / 2 / (p (1 - p)) = 2 e^-50 ~ 0.
    assert a.grad.tolist() == pytest.approx([0.5, 0.0, 0.5], abs=1e-6)
    assert b.grad.tolist() == pytest.approx([0.5, 0.0, 0.5], abs=1e-6)


def test_logit_pooling_gradcheck_and_one_modality_identity() -> None:
    torch.manual_seed(3)
    for m in (2, 3):
        logits = [(torch.randn(4, 3, dtype=torch.double) * 4).requires_grad_() for _ in range(m)]
        assert torch.autograd.gradcheck(lambda *c: logit_pooling(list(c)), logits)
    # One modality: logit(sigmoid(c)) = c, any magnitude.
    c = torch.tensor([-300.0, -1.5, 0.0, 2.0, 300.0])
    assert torch.equal(logit_pooling([c]), c)


def test_logit_pooling_clamps_codes_beyond_the_normal_range() -> None:
    # float32: sigmoid(-|c|) leaves the normal range near |c| = 87; codes clamp at
    # -log(tiny) - 4 = 83.3, where both modalities agreeing gives C = the clamp bound.
    bound = -math.log(torch.finfo(torch.float32).tiny) - 4.0
    a = torch.tensor([200.0, 80.0, -200.0], requires_grad=True)
    b = torch.tensor([200.0, 80.0, 0.0], requires_grad=True)
    out = logit_pooling([a, b])
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(bound, abs=1e-3)
    assert out[1].item() == pytest.approx(80.0, abs=1e-3)  # inside the bound: exact
    # logit((sigmoid(-200) + sigmoid(0)) / 2) = logit(1/4) = -log 3 (the tail is negligible)
    assert out[2].item() == pytest.approx(-math.log(3.0), abs=1e-6)
    out.sum().backward()
    # the clamped codes get no gradient; 80 agreeing codes share dC = 1/2 each; at b = 0
    # beside a clamped -200: sigmoid(0)^2 (1 / S+ + 1 / S-) = 1/4 (1 / (1/2) + 1 / (3/2)) = 2/3
    assert a.grad.tolist() == pytest.approx([0.0, 0.5, 0.0], abs=1e-6)
    assert b.grad.tolist() == pytest.approx([0.0, 0.5, 2 / 3], abs=1e-6)


def test_logit_pooling_half_precision_is_computed_in_float32() -> None:
    a = torch.tensor([-20.0, 0.5, 9.0])
    b = torch.tensor([-20.0, -1.0, 9.0])
    want = logit_pooling([a, b])
    got = logit_pooling([a.to(torch.bfloat16), b.to(torch.bfloat16)])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_logit_pooling_needs_a_modality() -> None:
    with pytest.raises(ValueError, match="at least one modality"):
        logit_pooling([])


# ---------------------------------------------------------------- Jensen-Shannon (Eq. 4)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_j p_j log(p_j / q_j) over the last dim, mean over rows."""
    return (p * torch.log(p / q)).sum(-1).mean()


def test_jsd_zero_for_equal_inputs_and_symmetric_and_positive() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    assert jensen_shannon_divergence([a, a.clone()]).item() == pytest.approx(0.0, abs=1e-6)
    ab, ba = jensen_shannon_divergence([a, b]), jensen_shannon_divergence([b, a])
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    assert ab.item() > 1e-3


def test_jsd_two_modalities_equals_hand_computation() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(6, 5, dtype=torch.double), torch.randn(6, 5, dtype=torch.double)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    m = (p + q) / 2
    expected = 0.5 * (_kl(p, m) + _kl(q, m))
    assert jensen_shannon_divergence([a, b]).item() == pytest.approx(expected.item(), rel=1e-9)
    # One row by hand: a = [0], b = [log 3]: P = 1/2, Q = 3/4, M = 5/8.
    one = jensen_shannon_divergence([torch.tensor([[0.0]]), torch.tensor([[math.log(3.0)]])])
    hand = 0.5 * (0.5 * math.log(0.5 / (5 / 8)) + 0.75 * math.log(0.75 / (5 / 8)))
    assert one.item() == pytest.approx(hand, rel=1e-5)


def test_jsd_is_finite_for_saturated_logits() -> None:
    a = torch.tensor([[100.0, -100.0]], requires_grad=True)
    b = torch.tensor([[-100.0, 100.0]], requires_grad=True)
    jsd = jensen_shannon_divergence([a, b])
    # P = [1, 0], Q = [0, 1], M = [1/2, 1/2]: KL(P||M) = 1 * log(1 / (1/2)) + 0 = log 2 = KL(Q||M)
    assert jsd.item() == pytest.approx(0.5 * (math.log(2) + math.log(2)), rel=1e-5)
    jsd.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    same = jensen_shannon_divergence([torch.full((2, 3), 100.0), torch.full((2, 3), 100.0)])
    assert torch.isfinite(same) and same.item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_three_modalities_uniform_mixture() -> None:
    torch.manual_seed(4)
    logits = [torch.randn(4, 3, dtype=torch.double) for _ in range(3)]
    p = [torch.sigmoid(c) for c in logits]
    m = (p[0] + p[1] + p[2]) / 3
    expected = (_kl(p[0], m) + _kl(p[1], m) + _kl(p[2], m)) / 3
    assert jensen_shannon_divergence(logits).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("count", [0, 1])
def test_jsd_needs_two_modalities(count: int) -> None:
    with pytest.raises(ValueError, match=f"at least 2 modalities, got {count}"):
        jensen_shannon_divergence([torch.zeros(2, 3)] * count)


# ---------------------------------------------------------------- orthogonality (Eq. 6)


def test_orthogonality_loss_hand_values() -> None:
    orth_c, orth_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 3.0], [-1.0, 0.0]])
    assert orthogonality_loss(orth_c, orth_s).item() == pytest.approx(0.0, abs=1e-7)
    parallel = orthogonality_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]]))
    assert parallel.item() == pytest.approx(1.0, abs=1e-6)
    anti = orthogonality_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, -6.0]]))
    assert anti.item() == pytest.approx(1.0, abs=1e-6)
    # 45 degrees: <[1, 0], [1, 1]> / (1 * sqrt 2) = 1 / sqrt 2
    deg45 = orthogonality_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert deg45.item() == pytest.approx(R, abs=1e-6)
    # Mean over rows: (0 + 1 + |-1| + 1/sqrt 2) / 4
    c = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 2.0], [1.0, 0.0]])
    s = torch.tensor([[0.0, 3.0], [2.0, 4.0], [-3.0, -6.0], [1.0, 1.0]])
    assert orthogonality_loss(c, s).item() == pytest.approx((0 + 1 + 1 + R) / 4, abs=1e-6)


def test_orthogonality_loss_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"one shape, got \[2, 3\] and \[2, 4\]"):
        orthogonality_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------- pos-neg attention (Eqs. 15-18)


def _randomised_attention(channels: int, negative: bool, seed: int = 0) -> DimensionAttention:
    torch.manual_seed(seed)
    att = DimensionAttention(channels, negative=negative)
    with torch.no_grad():
        for norm in (att.inner_norm, att.outer_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        if negative:
            att.alpha_pos.fill_(0.8)
            att.alpha_neg.fill_(-0.3)
    return att


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_attention_map_is_scaled_by_sqrt_n_and_rows_sum_to_one() -> None:
    n, d = 7, 4  # N != d, so scaling by sqrt(d) would be caught
    att = _randomised_attention(d, negative=True)
    torch.manual_seed(10)
    fused, view = torch.randn(n, d), torch.randn(n, d)
    s = att.attention_map(fused, view)
    assert s.shape == (d, d)
    assert torch.allclose(s.sum(-1), torch.ones(d), atol=1e-6)
    q = fused @ att.query.weight.t()  # W_q applied to each node's row
    k = view @ att.key.weight.t()
    manual = torch.softmax(q.t() @ k / math.sqrt(n), dim=-1)
    assert torch.allclose(s, manual, atol=1e-6)
    assert not torch.allclose(s, torch.softmax(q.t() @ k / math.sqrt(d), dim=-1), atol=1e-4)


def test_positive_plus_negative_branch_is_all_ones_product() -> None:
    n, d = 6, 3
    att = _randomised_attention(d, negative=True)
    torch.manual_seed(11)
    fused, view = torch.randn(n, d), torch.randn(n, d)
    s, v = att.attention_map(fused, view), att.value(view)
    o_pos, o_neg = v @ s.t(), v @ (1 - s).t()
    # (S + (1 - S)) V = J V: in rows-per-node form every column of row n is sum_j V[n, j].
    assert torch.allclose(o_pos + o_neg, v.sum(-1, keepdim=True).expand(n, d), atol=1e-5)
    assert torch.allclose(o_pos + o_neg, v @ torch.ones(d, d), atol=1e-5)


def test_dimension_attention_forward_equals_eqs_15_to_18() -> None:
    n, d = 9, 4
    att = _randomised_attention(d, negative=True)
    torch.manual_seed(12)
    fused, view = torch.randn(n, d), torch.randn(n, d)
    q, k, v = fused @ att.query.weight.t(), view @ att.key.weight.t(), view @ att.value.weight.t()
    s = torch.softmax(q.t() @ k / math.sqrt(n), dim=-1)  # Eq. 15-16 map, [d, d]
    o_pos = (s @ v.t()).t()  # Eq. 15 in the paper's d x N layout, transposed back
    o_neg = ((torch.ones(d, d) - s) @ v.t()).t()  # Eq. 16
    o = 0.8 * o_pos + (-0.3) * o_neg  # Eq. 17 with alpha_pos = 0.8, alpha_neg = -0.3
    expected = _layer_norm(
        _layer_norm(o @ att.out.weight.t(), att.inner_norm) + view, att.outer_norm
    )  # Eq. 18
    out = att(fused, view)
    assert out.shape == (n, d)
    assert torch.allclose(out, expected, atol=1e-5)


def test_dimension_attention_without_negative_branch() -> None:
    n, d = 5, 4
    att = _randomised_attention(d, negative=False)
    names = {name for name, _ in att.named_parameters()}
    assert not any("alpha" in name for name in names)
    assert not hasattr(att, "alpha_pos") and not hasattr(att, "alpha_neg")
    assert {"query.weight", "key.weight", "value.weight", "out.weight"} <= names
    torch.manual_seed(13)
    fused, view = torch.randn(n, d), torch.randn(n, d)
    s, v = att.attention_map(fused, view), att.value(view)
    expected = _layer_norm(_layer_norm(att.out(v @ s.t()), att.inner_norm) + view, att.outer_norm)
    assert torch.allclose(att(fused, view), expected, atol=1e-5)


def test_dimension_attention_projections_have_no_bias_and_alphas_start_unequal() -> None:
    att = DimensionAttention(4)
    for layer in (att.query, att.key, att.value, att.out):
        assert layer.bias is None
    # Unequal on purpose: equal alphas cancel the attention map (test below).
    assert att.alpha_pos.item() == 1.0 and att.alpha_neg.item() == 0.0
    assert att.inner_norm is not att.outer_norm


def test_equal_alphas_make_the_attention_map_irrelevant() -> None:
    # With alpha_pos = alpha_neg = a, Eq. 17 gives a S V + a (J - S) V = a J V: the output
    # does not depend on W_q / W_k: why the alphas must not start equal.
    torch.manual_seed(14)
    att = DimensionAttention(4)
    with torch.no_grad():
        att.alpha_pos.fill_(0.5)
        att.alpha_neg.fill_(0.5)
    fused, view = torch.randn(6, 4), torch.randn(6, 4)
    before = att(fused, view)
    with torch.no_grad():
        att.query.weight.normal_()
        att.key.weight.normal_()
    assert torch.allclose(att(fused, view), before, atol=1e-5)
    with torch.no_grad():
        att.alpha_pos.fill_(0.9)
    changed = att(fused, view)
    with torch.no_grad():
        att.query.weight.normal_()
    assert not torch.allclose(att(fused, view), changed, atol=1e-4)


# ---------------------------------------------------------------- attention fusion (Eq. 19)


def test_attention_fusion_shapes_and_sum_of_views() -> None:
    torch.manual_seed(15)
    n, d = 8, 4
    fusion = AttentionFusion(d, num_views=3)
    assert fusion.fuse.in_features == 3 * d and fusion.fuse.out_features == d
    assert fusion.fuse.bias is None
    assert len(fusion.attentions) == 3
    views = [torch.randn(n, d) for _ in range(3)]
    out = fusion(views)
    assert out.shape == (n, d)
    fused = torch.cat(views, dim=-1) @ fusion.fuse.weight.t()  # W_3 [E_1, E_2, E_3]
    expected = sum(att(fused, v) for att, v in zip(fusion.attentions, views))  # Eq. 19
    assert torch.allclose(out, expected, atol=1e-6)
    assert AttentionFusion(5, num_views=2).fuse.in_features == 2 * 5
    standard = AttentionFusion(d, num_views=2, negative=False)
    assert not any("alpha" in name for name, _ in standard.named_parameters())


def test_attention_fusion_rejects_wrong_number_of_views() -> None:
    fusion = AttentionFusion(4, num_views=3)
    with pytest.raises(ValueError, match="expected 3 views, got 2"):
        fusion([torch.randn(5, 4), torch.randn(5, 4)])
    with pytest.raises(ValueError, match="num_views must be >= 1, got 0"):
        AttentionFusion(4, num_views=0)


# ---------------------------------------------------------------- gate and encoder (Eqs. 1-3)


def test_collaborative_gate_saturation_and_hand_value() -> None:
    torch.manual_seed(16)
    gate = CollaborativeGate(3)
    private, item_id = torch.randn(4, 3), torch.randn(4, 3)
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.fill_(-1e4)
    assert torch.allclose(gate(private, item_id), torch.zeros(4, 3), atol=1e-12)
    with torch.no_grad():
        gate.linear.bias.fill_(1e4)
    assert torch.allclose(gate(private, item_id), private, atol=1e-7)
    with torch.no_grad():
        gate.linear.bias.zero_()
    # sigmoid(0 * e + 0) = 1/2
    assert torch.allclose(gate(private, item_id), 0.5 * private, atol=1e-7)
    # A hand value with a non-zero weight: W = I, b = 0 -> P * sigmoid(E).
    with torch.no_grad():
        gate.linear.weight.copy_(torch.eye(3))
    p, e = torch.tensor([[2.0, -1.0, 4.0]]), torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])
    # sigmoid(log 3) = 3/4, sigmoid(-log 3) = 1/4
    assert gate(p, e).tolist()[0] == pytest.approx([2.0 * 0.5, -1.0 * 0.75, 4.0 * 0.25])


def test_disentangled_encoder_shapes_and_linear_maps() -> None:
    torch.manual_seed(17)
    enc = DisentangledEncoder(in_channels=6, out_channels=3)
    assert enc.projection.bias is None
    assert enc.projection.weight.shape == (3, 6)
    assert enc.common.bias is not None and enc.private.bias is not None
    x = torch.randn(5, 6)
    common, private = enc(x)
    assert common.shape == (5, 3) and private.shape == (5, 3)
    z = x @ enc.projection.weight.t()  # Eq. 1, no bias
    assert torch.allclose(common, z @ enc.common.weight.t() + enc.common.bias, atol=1e-6)
    assert torch.allclose(private, z @ enc.private.weight.t() + enc.private.bias, atol=1e-6)
    assert not torch.allclose(common, private)
    # No bias in W_1: the zero row maps to the encoders' biases only.
    zero_common, zero_private = enc(torch.zeros(1, 6))
    assert torch.allclose(zero_common[0], enc.common.bias, atol=1e-7)
    assert torch.allclose(zero_private[0], enc.private.bias, atol=1e-7)


# ---------------------------------------------------------------- score KL (Eqs. 20-21)


def test_score_distribution_kl_zero_for_equal_distributions() -> None:
    torch.manual_seed(18)
    users, items = torch.randn(3, 4), torch.randn(5, 4)
    assert score_distribution_kl(users, items, users, items).item() == pytest.approx(0.0, abs=1e-6)
    # Scores shifted by a per-user constant c_u: append c_u to the users and 1 to the items.
    shift = torch.tensor([[2.0], [-7.0], [30.0]])
    users_q = torch.cat([users, shift], dim=-1)
    items_q = torch.cat([items, torch.ones(5, 1)], dim=-1)
    assert torch.allclose(users_q @ items_q.t(), users @ items.t() + shift, atol=1e-5)
    kl = score_distribution_kl(users, items, users_q, items_q)
    assert kl.item() == pytest.approx(0.0, abs=1e-5)
    other = score_distribution_kl(users, items, torch.randn(3, 4), items)
    assert other.item() > 1e-3


def test_score_distribution_kl_hand_value() -> None:
    # One user, three items: P = softmax([1, 0, -1]), Q = softmax([0, 0, 0]) = 1/3 each.
    user_p, item_p = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    user_q, item_q = torch.tensor([[1.0, 0.0]]), torch.zeros(3, 2)
    z = math.e + 1 + math.exp(-1)
    p = [math.e / z, 1 / z, math.exp(-1) / z]
    expected = sum(pi * math.log(pi / (1 / 3)) for pi in p)
    kl = score_distribution_kl(user_p, item_p, user_q, item_q)
    assert kl.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.2662, abs=1e-4)
    # KL is not symmetric: KL(Q || P) = sum_i 1/3 log((1/3) / p_i)
    reverse = score_distribution_kl(user_q, item_q, user_p, item_p)
    assert reverse.item() == pytest.approx(sum(math.log((1 / 3) / pi) / 3 for pi in p), rel=1e-5)


def test_score_distribution_kl_is_finite_for_large_scores() -> None:
    user = torch.tensor([[1000.0]], requires_grad=True)
    items_p = torch.tensor([[1.0], [0.0], [-1.0]])  # scores [1000, 0, -1000]
    items_q = torch.tensor([[-1.0], [0.0], [1.0]])  # scores [-1000, 0, 1000]
    kl = score_distribution_kl(user, items_p, user, items_q)
    # P ~ one-hot on item 0, log Q_0 = -2000 - log(1 + e^-1000 + ...) ~ -2000: KL ~ 0 + 2000.
    assert torch.isfinite(kl)
    assert kl.item() == pytest.approx(2000.0, rel=1e-4)
    kl.backward()
    assert torch.isfinite(user.grad).all()


# ---------------------------------------------------------------- graphs (Eqs. 12, 14)


# 2 users, 3 items: u0-i0, u0-i1, u1-i1, u1-i2. Degrees u0 2, u1 2, i0 1, i1 2, i2 1.
TWO_BY_THREE = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])


def test_user_item_matrix_hand_values() -> None:
    mat = user_item_matrix(TWO_BY_THREE, 2, 3)
    assert mat.layout == torch.sparse_csr and mat.dtype == torch.float32
    expected = torch.tensor(
        [
            [1 / math.sqrt(2 * 1), 1 / math.sqrt(2 * 2), 0.0],
            [0.0, 1 / math.sqrt(2 * 2), 1 / math.sqrt(2 * 1)],
        ]
    )
    assert torch.allclose(mat.to_dense(), expected, atol=1e-6)
    adj = normalized_adjacency(TWO_BY_THREE, 2, 3).to_dense()
    assert torch.allclose(mat.to_dense(), adj[:2, 2:], atol=1e-7)


def test_user_item_matrix_equals_adjacency_block_on_random_graph() -> None:
    g = torch.Generator().manual_seed(19)
    edges = torch.stack(
        [torch.randint(6, (20,), generator=g), torch.randint(9, (20,), generator=g)]
    )
    edges = torch.unique(edges, dim=1)
    mat = user_item_matrix(edges, 6, 9).to_dense()
    adj = normalized_adjacency(edges, 6, 9).to_dense()
    assert torch.allclose(mat, adj[:6, 6:], atol=1e-6)
    assert torch.allclose(mat.t(), adj[6:, :6], atol=1e-6)


def test_weighted_sum_of_sparse_matrices() -> None:
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    b = torch.tensor([[0.0, 4.0, 1.0], [5.0, 0.0, 0.0]])
    out = weighted_sum([a.to_sparse_csr(), b.to_sparse_csr()], [0.1, 0.9])
    assert out.layout == torch.sparse_csr
    expected = torch.tensor([[0.1 * 1, 0.9 * 4, 0.1 * 2 + 0.9 * 1], [0.9 * 5, 0.0, 0.1 * 3]])
    assert torch.allclose(out.to_dense(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="one weight per matrix"):
        weighted_sum([a.to_sparse_csr()], [0.5, 0.5])
    with pytest.raises(ValueError, match="share one shape"):
        weighted_sum([a.to_sparse_csr(), torch.eye(2).to_sparse_csr()], [1.0, 1.0])


def test_output_scale_sets_the_scale_of_the_fused_views() -> None:
    # Eq. 18 ends in a layer norm: at PyTorch's initial affine (gain 1, bias 0) each output row
    # has mean 0 and per-entry RMS 1, so times s it has RMS s, whatever the scale of the input
    # view (here 1 and 1000).
    torch.manual_seed(3)
    fusion = AttentionFusion(8, num_views=2, output_scale=0.05)
    views = [torch.randn(20, 8), 1000 * torch.randn(20, 8)]
    for att, view in zip(fusion.attentions, views):
        out = att(fusion.fuse(torch.cat(views, dim=-1)), view)
        assert torch.allclose(out.pow(2).mean(-1).sqrt(), torch.full((20,), 0.05), rtol=1e-3)
        assert torch.allclose(out.mean(-1), torch.zeros(20), atol=1e-6)
        # the layer norms keep PyTorch's initial affine; s is a buffer, not a parameter
        for norm in (att.inner_norm, att.outer_norm):
            assert norm.weight.eq(1.0).all() and norm.bias.eq(0.0).all()
        assert "output_scale" in att.state_dict()
        assert all(p is not att.output_scale for p in att.parameters())
    assert DimensionAttention(8).output_scale.item() == 1.0  # default: the paper's layer norm
    fusion.set_output_scale(2.0)
    assert all(att.output_scale.item() == 2.0 for att in fusion.attentions)
    fusion.reset_parameters()  # re-initialising the weights keeps s
    assert all(att.output_scale.item() == 2.0 for att in fusion.attentions)


def test_output_scale_is_the_affine_layer_norm_scaled() -> None:
    # s * LN with affine (g, b) equals LN with affine (s g, s b): the same family as Eq. 18.
    torch.manual_seed(4)
    att = DimensionAttention(6, output_scale=0.2).double()
    with torch.no_grad():
        att.outer_norm.weight.uniform_(0.5, 1.5)
        att.outer_norm.bias.uniform_(-0.5, 0.5)
    fused, view = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    s = att.attention_map(fused, view)
    o = att.value(view) @ (att.alpha_pos * s + att.alpha_neg * (1 - s)).t()  # Eqs. 15-17
    hidden = att.inner_norm(att.out(o))
    expected = torch.nn.functional.layer_norm(
        hidden + view, (6,), 0.2 * att.outer_norm.weight, 0.2 * att.outer_norm.bias
    )
    torch.testing.assert_close(att(fused, view), expected)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_output_scale_raises(scale: float) -> None:
    with pytest.raises(ValueError, match="output_scale must be a finite number > 0"):
        DimensionAttention(4, output_scale=scale)
    with pytest.raises(ValueError, match="output_scale must be a finite number > 0"):
        AttentionFusion(4, 2).set_output_scale(scale)


# ---------------------------------------------------------------- the fast paths, against the
# previous computations (projections of every node, autograd's softmax chain)


def _attention_per_node(att: DimensionAttention, fused: torch.Tensor, view: torch.Tensor):
    """The previous DimensionAttention.forward: Q, K, V of every node, S, O, Eq. 18."""
    q, k, v = att.query(fused), att.key(view), att.value(view)
    attn = torch.softmax(q.t() @ k / math.sqrt(view.size(0)), dim=-1)
    out = v @ attn.t()
    if att.negative:
        out = att.alpha_pos * out + att.alpha_neg * (v.sum(-1, keepdim=True) - out)
    return att.outer_norm(att.inner_norm(att.out(out)) + view) * att.output_scale


@pytest.mark.parametrize("negative", [True, False])
def test_folded_attention_fusion_equals_the_per_node_projections(negative: bool) -> None:
    torch.manual_seed(30)
    n, d, num_views = 23, 5, 3
    fusion = AttentionFusion(d, num_views, negative=negative, output_scale=0.3).double()
    with torch.no_grad():
        for att in fusion.attentions:
            att.inner_norm.weight.uniform_(0.5, 1.5)
            att.outer_norm.bias.uniform_(-0.5, 0.5)
            if negative:
                att.alpha_pos.fill_(0.7)
                att.alpha_neg.fill_(0.4)
    views = [torch.randn(n, d, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    fused = fusion.fuse(torch.cat(views, dim=-1))
    expected = sum(_attention_per_node(a, fused, v) for a, v in zip(fusion.attentions, views))
    out = fusion(views)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    params = [*views, *fusion.parameters()]
    grads = torch.autograd.grad(out, params, g, retain_graph=True)
    for got, want in zip(grads, torch.autograd.grad(expected, params, g)):
        torch.testing.assert_close(got, want)
    # Maps over all nodes from blocks of rows; rows attended in any subset.
    x = torch.cat(views, dim=-1).detach()
    maps = fusion.attention_maps([x[:9], x[9:]])
    for whole, part in zip(fusion.attention_maps(x), maps):
        torch.testing.assert_close(part, whole)
    rows = torch.tensor([4, 0, 17, 4])
    torch.testing.assert_close(fusion.attend(x[rows], maps), expected[rows].detach())
    with pytest.raises(ValueError, match=r"expected \[N, 3 \* d\] concatenated views"):
        fusion.attention_maps(torch.randn(4, 7, dtype=torch.float64))


def _kl_autograd(user_p, item_p, user_q, item_q) -> torch.Tensor:
    """The previous score_distribution_kl: log-softmax, exp, KL through autograd."""
    log_p = torch.log_softmax(user_p @ item_p.t(), dim=-1)
    log_q = torch.log_softmax(user_q @ item_q.t(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@pytest.mark.parametrize("block_entries", [1, 20, 1 << 20])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_block_kl_equals_the_autograd_kl_with_its_gradient(
    monkeypatch, block_entries, scale
) -> None:
    import pyg_dhmrec.nn.losses as losses

    monkeypatch.setattr(losses, "KL_BLOCK_ENTRIES", block_entries)  # 1, 2 or all rows a block
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)
    torch.manual_seed(31)
    inputs = [
        (scale * torch.randn(n, w, dtype=torch.float64)).requires_grad_()
        for n, w in ((5, 3), (9, 3), (5, 4), (9, 4))
    ]
    # scale 0.5: every score within UNSHIFTED_MAX_LOGIT (exps unshifted); 3: shifted rows
    bounded = max(losses._max_score(*inputs[:2]), losses._max_score(*inputs[2:]))
    assert (bounded <= losses.UNSHIFTED_MAX_LOGIT) == (scale < 1)
    kl, expected = score_distribution_kl(*inputs), _kl_autograd(*inputs)
    torch.testing.assert_close(kl, expected)
    for got, want in zip(
        torch.autograd.grad(2.5 * kl, inputs), torch.autograd.grad(2.5 * expected, inputs)
    ):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(score_distribution_kl, inputs)
    with torch.no_grad():  # no gradient wanted: none computed, same value
        torch.testing.assert_close(score_distribution_kl(*inputs), expected.detach())
    detached = [x.detach() for x in inputs]
    assert not score_distribution_kl(*detached).requires_grad
    with pytest.raises(ValueError, match="the P and Q sides need the same users and items"):
        score_distribution_kl(inputs[0], inputs[1], inputs[2][:4], inputs[3])


def test_kl_blocks_keep_a_minimum_of_rows(monkeypatch) -> None:
    """Many items leave the entry budget a handful of rows: the block keeps MIN_BLOCK_ROWS
    (here 3 of 7 users: blocks of 3, 3 and 1) and the value and gradient stay the KL's."""
    import pyg_dhmrec.nn.losses as losses

    monkeypatch.setattr(losses, "KL_BLOCK_ENTRIES", 1)
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 3)
    seen = []
    forward = losses._ScoreDistributionKL.forward

    def spy(ctx, *args):  # noqa: ANN001, ANN202
        seen.append(args[6])  # block_rows
        return forward(ctx, *args)

    monkeypatch.setattr(losses._ScoreDistributionKL, "forward", staticmethod(spy))
    torch.manual_seed(34)
    inputs = [
        torch.randn(n, w, dtype=torch.float64, requires_grad=True)
        for n, w in ((7, 3), (11, 3), (7, 4), (11, 4))
    ]
    got, want = score_distribution_kl(*inputs), _kl_autograd(*inputs)
    assert seen == [3]
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, w)


def test_weighted_kl_is_the_kl_of_the_weighted_rows() -> None:
    """Rows weighted 1 / 0 (an accelerator's repeats): the KL of the rows weighted 1."""
    torch.manual_seed(32)
    users_p, users_q = (
        torch.randn(6, 3, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
    )
    items = [torch.randn(8, w, dtype=torch.float64, requires_grad=True) for w in (3, 4)]
    keep = torch.tensor([0, 2, 3])
    weight = torch.zeros(6, dtype=torch.float64).index_fill_(0, keep, 1.0)
    got = score_distribution_kl(users_p, items[0], users_q, items[1], weight)
    want = _kl_autograd(users_p[keep], items[0], users_q[keep], items[1])
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, items), torch.autograd.grad(want, items)):
        torch.testing.assert_close(g, w)
    with pytest.raises(ValueError, match=r"weight must have shape \[6\]"):
        score_distribution_kl(users_p, items[0], users_q, items[1], weight[:2])


@pytest.mark.parametrize("block_entries", [1, 20, 1 << 20])
@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_real_weighted_block_kl_equals_the_weighted_autograd_kl(
    monkeypatch, block_entries, scale
) -> None:
    """Real-valued row weights, rows in blocks (the last one short), small (unshifted) and
    large scores: value and gradient of every input equal the weighted mean of the autograd KL
    rows."""
    import pyg_dhmrec.nn.losses as losses

    monkeypatch.setattr(losses, "KL_BLOCK_ENTRIES", block_entries)
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)
    torch.manual_seed(33)
    inputs = [
        (scale * torch.randn(n, w, dtype=torch.float64)).requires_grad_()
        for n, w in ((7, 3), (9, 3), (7, 5), (9, 5))
    ]
    weight = torch.rand(7, dtype=torch.float64) + 0.1
    got = score_distribution_kl(*inputs, weight)
    log_p = torch.log_softmax(inputs[0] @ inputs[1].t(), dim=-1)
    log_q = torch.log_softmax(inputs[2] @ inputs[3].t(), dim=-1)
    rows = (log_p.exp() * (log_p - log_q)).sum(-1)
    want = (rows * weight).sum() / weight.sum()
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("block_entries", [1, 1 << 20])
def test_kl_with_a_fixed_target_skips_its_gradient(monkeypatch, block_entries) -> None:
    """Q's inputs need no gradient (DHMRec's ``kl_detach_id``): the P side's gradient is
    still the autograd KL's, with weighted rows in blocks, and the Q side's products are
    skipped (no buffers are saved for it)."""
    import pyg_dhmrec.nn.losses as losses

    monkeypatch.setattr(losses, "KL_BLOCK_ENTRIES", block_entries)
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)
    saved = []
    backward = losses._ScoreDistributionKL.backward

    def spy(ctx, grad):  # noqa: ANN001, ANN202
        saved.append(len(ctx.saved_tensors))
        return backward(ctx, grad)

    monkeypatch.setattr(losses._ScoreDistributionKL, "backward", staticmethod(spy))
    torch.manual_seed(35)
    user_p, item_p = (torch.randn(n, 3, dtype=torch.float64, requires_grad=True) for n in (6, 9))
    user_q, item_q = (2.0 * torch.randn(n, 4, dtype=torch.float64) for n in (6, 9))
    weight = torch.rand(6, dtype=torch.float64) + 0.1
    got = score_distribution_kl(user_p, item_p, user_q, item_q, weight)
    log_p = torch.log_softmax(user_p @ item_p.t(), dim=-1)
    log_q = torch.log_softmax(user_q @ item_q.t(), dim=-1)
    want = ((log_p.exp() * (log_p - log_q)).sum(-1) * weight).sum() / weight.sum()
    torch.testing.assert_close(got, want)
    for g, w in zip(
        torch.autograd.grad(got, (user_p, item_p)), torch.autograd.grad(want, (user_p, item_p))
    ):
        torch.testing.assert_close(g, w)
    assert saved == [3]  # the P side's two gradients and the weight total; none for Q
    both = score_distribution_kl(user_p, item_p, user_q.requires_grad_(), item_q, weight)
    torch.autograd.grad(both, (user_p, user_q))
    assert saved == [3, 5]


def test_centred_projection_by_hand() -> None:
    w = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        w.weight.copy_(torch.tensor([[2.0, -1.0]]))
    x = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    mean = x.mean(0)  # (2, 2): centred rows (-1, -2) and (1, 2)
    assert torch.equal(centred_projection(w, x, mean), torch.tensor([[0.0], [0.0]]))
    x2 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # centred rows (-1, 0), (1, 0): W gives -2, 2
    assert torch.equal(centred_projection(w, x2, x2.mean(0)), torch.tensor([[-2.0], [2.0]]))
    assert torch.equal(centred_projection(w, x2, None), torch.tensor([[2.0], [6.0]]))
    with pytest.raises(ValueError, match="without bias"):
        centred_projection(torch.nn.Linear(2, 1), x, mean)
