"""Shared loss terms checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.nn import (
    anchor_info_nce,
    factored_cross_entropy,
    info_nce,
    info_nce_all_negatives,
    symmetric_info_nce,
)


def test_info_nce_hand_value() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosines: a0.p0 = 1, a0.p1 = 1/sqrt2, a1.p0 = 0, a1.p1 = 1/sqrt2
    c = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    l1 = -math.log(math.exp(c / tau) / (math.exp(0.0) + math.exp(c / tau)))
    assert info_nce(anchor, positive, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_lower_for_matched_than_shuffled_pairs() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    matched = info_nce(x, x + 0.01 * torch.randn_like(x), 0.2)
    shuffled = info_nce(x, x[torch.randperm(64)], 0.2)
    assert matched < shuffled
    assert matched >= 0


def test_info_nce_is_scale_invariant() -> None:
    torch.manual_seed(1)
    a, p = torch.randn(8, 4), torch.randn(8, 4)
    assert torch.allclose(info_nce(a, p, 0.3), info_nce(5 * a, 0.1 * p, 0.3))


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one shape"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), 0.0)


def test_info_nce_all_negatives_hand_value() -> None:
    anchor = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positive = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 0.5]])
    index = torch.tensor([0, 2, 0])  # rows 0 and 2 as anchors, row 0 twice
    # row 0: cosines to the positives [1, 1, 0]; row 2: [1/sqrt2] * 3 (its positive is row 2)
    expected = (2 * (math.log(2 * math.e + 1) - 1) + math.log(3)) / 3
    got = info_nce_all_negatives(anchor, positive, index, temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    half = info_nce_all_negatives(anchor, positive, index, temperature=0.5)
    assert half.item() == pytest.approx(
        (2 * (math.log(2 * math.e**2 + 1) - 2) + math.log(3)) / 3, rel=1e-6
    )
    with pytest.raises(ValueError, match="two \\[N, d\\] views of one shape"):
        info_nce_all_negatives(anchor, positive[:2], index, 1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce_all_negatives(anchor, positive, index, 0.0)


@pytest.mark.parametrize("temperature", [0.5, 0.01])  # unshifted and max-shifted exponentials
def test_info_nce_all_negatives_is_the_dense_formula_in_value_and_gradient(
    temperature: float,
) -> None:
    g = torch.Generator().manual_seed(3)
    anchor = torch.randn(40, 5, dtype=torch.double, generator=g, requires_grad=True)
    positive = torch.randn(40, 5, dtype=torch.double, generator=g, requires_grad=True)
    index = torch.randint(0, 40, (23,), generator=g)  # with repeats
    got = info_nce_all_negatives(anchor, positive, index, temperature)
    grads = torch.autograd.grad(got, (anchor, positive))
    # the former implementation: the dense [B, N] logits and cross_entropy
    logits = F.normalize(anchor[index], dim=-1) @ F.normalize(positive, dim=-1).t()
    dense = F.cross_entropy(logits / temperature, index)
    torch.testing.assert_close(got, dense)
    for a, b in zip(grads, torch.autograd.grad(dense, (anchor, positive))):
        torch.testing.assert_close(a, b)


def test_factored_cross_entropy_weight_counts_a_row_as_often_as_its_weight(monkeypatch) -> None:
    import pyg_dhmrec.nn.losses as losses

    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)  # 20 logits over 9 keys: 2-row blocks
    g = torch.Generator().manual_seed(5)
    query = torch.randn(5, 3, dtype=torch.double, generator=g, requires_grad=True)
    key = torch.randn(9, 3, dtype=torch.double, generator=g, requires_grad=True)
    target = torch.tensor([0, 8, 3, 3, 1])
    counts = torch.tensor([1, 3, 2, 1, 4])
    got = factored_cross_entropy(query, key, target, 2.0, block_elements=20, weight=counts)
    grads = torch.autograd.grad(got, (query, key))
    repeated = query.repeat_interleave(counts, 0)  # each row as often as its count
    want = factored_cross_entropy(repeated, key, target.repeat_interleave(counts))
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, torch.autograd.grad(want, (query, key))):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="weight must have shape"):
        factored_cross_entropy(query, key, target, weight=counts[:2])
    with pytest.raises(ValueError, match="block_elements"):
        factored_cross_entropy(query, key, target, block_elements=0)


def test_factored_cross_entropy_is_the_summed_cross_entropy_with_its_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    query = torch.randn(7, 3, dtype=torch.double, generator=g, requires_grad=True)
    key = torch.randn(11, 3, dtype=torch.double, generator=g, requires_grad=True)
    target = torch.tensor([0, 4, 4, 10, 2, 0, 7])  # duplicates count once each
    loss = factored_cross_entropy(query, key, target)
    reference = F.cross_entropy(query @ key.t(), target, reduction="sum")
    torch.testing.assert_close(loss, reference)
    got = torch.autograd.grad(3.0 * loss, (query, key))
    expected = torch.autograd.grad(3.0 * reference, (query, key))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # a bound of |logits| skips the row-maximum shift (same values); a loose one does not
    bound = float((query @ key.t()).detach().abs().max())
    for max_logit in (bound, 1e4):
        value = factored_cross_entropy(query, key, target, max_logit)
        torch.testing.assert_close(value, reference)
        got = torch.autograd.grad(3.0 * value, (query, key))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    # logits of 1000 would overflow unshifted: their true bound keeps the shift
    huge = factored_cross_entropy(
        torch.tensor([[1000.0]]), torch.tensor([[1.0], [0.5]]), target[:1], 1000.0
    )
    torch.testing.assert_close(huge, torch.tensor(0.0))
    # without inputs that require a gradient, only the value (no gradient is formed)
    torch.testing.assert_close(
        factored_cross_entropy(query.detach(), key.detach(), target), reference.detach()
    )
    # one row, two candidates: log(e^{q.k0} + e^{q.k1}) - q.k0 by hand
    q, k = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    value = factored_cross_entropy(q, k, torch.tensor([0]))
    torch.testing.assert_close(value, torch.tensor(math.log(math.e + math.e**2) - 1.0))


def test_factored_cross_entropy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, r\] query and \[N, r\] key"):
        factored_cross_entropy(torch.ones(2, 3), torch.ones(4, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"target must be \[B=2\]"):
        factored_cross_entropy(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0]))


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def test_info_nce_over_distinct_ids_equals_the_repeated_rows() -> None:
    """With ``ids`` the loss is computed over the distinct rows, weighted by their counts;
    the previous computation, the ``B x B`` matrix of the repeated rows, is the reference."""
    torch.manual_seed(2)
    anchors = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    positives = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([3, 1, 3, 3, 5, 1, 0, 2, 2, 4, 3])
    rows = (anchors[ids], positives[ids])
    grouped, plain = info_nce(*rows, 0.3, ids=ids), info_nce(*rows, 0.3)
    torch.testing.assert_close(grouped, plain)
    for got, want in zip(
        _grads(grouped, [anchors, positives]), _grads(plain, [anchors, positives])
    ):
        torch.testing.assert_close(got, want)
    distinct = torch.arange(6)  # no repeats: the plain loss
    torch.testing.assert_close(
        info_nce(anchors, positives, 0.3, ids=distinct), info_nce(anchors, positives, 0.3)
    )
    with pytest.raises(ValueError, match=r"ids must have shape \[11\]"):
        info_nce(*rows, 0.3, ids=ids[:5])


def test_symmetric_info_nce_equals_both_directions() -> None:
    torch.manual_seed(3)
    a, b = (torch.randn(7, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    got = symmetric_info_nce(a, b, 0.2)
    want = 0.5 * (info_nce(a, b, 0.2) + info_nce(b, a, 0.2))  # two similarity matrices
    torch.testing.assert_close(got, want)
    for x, y in zip(_grads(got, [a, b]), _grads(want, [a, b])):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="one shape"):
        symmetric_info_nce(a, b[:3], 0.2)
    with pytest.raises(ValueError, match="temperature"):
        symmetric_info_nce(a, b, -1.0)


def test_anchor_info_nce_equals_the_logsumexp_form() -> None:
    torch.manual_seed(4)
    anchor = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    views = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    # The previous computation: logsumexp over the candidates minus each positive's logit.
    candidates = F.normalize(torch.cat(views), dim=-1)
    logits = F.normalize(anchor, dim=-1) @ candidates.t() / 0.4
    rows = torch.arange(5)
    positives = torch.stack([logits[rows, m * 5 + rows] for m in range(3)])
    want = (torch.logsumexp(logits, dim=-1) - positives).mean()
    got = anchor_info_nce(anchor, views, 0.4)
    torch.testing.assert_close(got, want)
    for x, y in zip(_grads(got, [anchor, *views]), _grads(want, [anchor, *views])):
        torch.testing.assert_close(x, y)


# --- issue 17: the fused InfoNCE forms against the previous autograd formulas ---


def _cosine_logits(first: torch.Tensor, second: torch.Tensor, tau: float) -> torch.Tensor:
    """The previous computation's logits: the cosine matrix divided by the temperature."""
    return F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).t() / tau


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_info_nce_forms_equal_the_previous_formulas(dtype: torch.dtype) -> None:
    """info_nce, symmetric_info_nce and anchor_info_nce (fused: factored_cross_entropy and one
    exponentiated matrix) give the previous formulas' values and gradients, on a batch large
    enough to span several of factored_cross_entropy's row blocks."""
    g = torch.Generator().manual_seed(17)
    n, d, tau = 300, 16, 0.2
    a, b, c = (torch.randn(n, d, dtype=dtype, generator=g, requires_grad=True) for _ in range(3))
    target = torch.arange(n)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    cases = [
        (info_nce(a, b, tau, fused=True), F.cross_entropy(_cosine_logits(a, b, tau), target)),
        (
            symmetric_info_nce(a, b, tau),
            0.5
            * (
                F.cross_entropy(_cosine_logits(a, b, tau), target)
                + F.cross_entropy(_cosine_logits(b, a, tau), target)
            ),
        ),
    ]
    candidates = F.normalize(torch.cat([b, c]), dim=-1)
    logits = F.normalize(a, dim=-1) @ candidates.t() / tau
    positives = torch.stack([logits[target, target], logits[target, target + n]])
    cases.append(
        (anchor_info_nce(a, [b, c], tau), (torch.logsumexp(logits, dim=-1) - positives).mean())
    )
    for (got, want), inputs in zip(cases, ([a, b], [a, b], [a, b, c])):
        torch.testing.assert_close(got, want, **tol)
        for x, y in zip(_grads(got, inputs), _grads(want, inputs)):
            torch.testing.assert_close(x, y, **tol)


def test_symmetric_info_nce_falls_back_to_shifted_logits_at_tiny_temperatures() -> None:
    """At tau = 1e-3 the logits (up to 1000) would overflow unshifted exponentials: the
    shifted formula is used, finite and equal to both directions' cross-entropies."""
    torch.manual_seed(5)
    a, b = (torch.randn(6, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    got = symmetric_info_nce(a.float(), b.float(), 1e-3)
    assert torch.isfinite(got)
    target = torch.arange(6)
    want = 0.5 * (
        F.cross_entropy(_cosine_logits(a, b, 1e-3), target)
        + F.cross_entropy(_cosine_logits(b, a, 1e-3), target)
    )
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_fused_info_nce_forms_without_gradients() -> None:
    """Inputs that need no gradient (evaluation) give the same values."""
    torch.manual_seed(6)
    a, b, c = (torch.randn(9, 5) for _ in range(3))
    target = torch.arange(9)
    torch.testing.assert_close(
        info_nce(a, b, 0.5, fused=True), F.cross_entropy(_cosine_logits(a, b, 0.5), target)
    )
    want = 0.5 * (
        F.cross_entropy(_cosine_logits(a, b, 0.5), target)
        + F.cross_entropy(_cosine_logits(b, a, 0.5), target)
    )
    torch.testing.assert_close(symmetric_info_nce(a, b, 0.5), want)
    logits = _cosine_logits(a, torch.cat([b, c]), 0.5)
    positives = torch.stack([logits[target, target], logits[target, target + 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            anchor_info_nce(a, [b, c], 0.5), (torch.logsumexp(logits, dim=-1) - positives).mean()
        )


def test_factored_cross_entropy_forms_only_the_gradients_asked_for() -> None:
    """A detached query (SIGER's anchor) or key: the other input's gradient is the full
    formula's, and the detached one gets none."""
    g = torch.Generator().manual_seed(1)
    query = torch.randn(40, 4, dtype=torch.double, generator=g, requires_grad=True)
    key = torch.randn(90, 4, dtype=torch.double, generator=g, requires_grad=True)
    target = torch.randint(0, 90, (40,), generator=g)
    reference = F.cross_entropy(query @ key.t(), target, reduction="sum")
    want_query, want_key = torch.autograd.grad(reference, (query, key))
    loss = factored_cross_entropy(query.detach(), key, target, 20.0)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(torch.autograd.grad(2.0 * loss, key)[0], 2.0 * want_key)
    loss = factored_cross_entropy(query, key.detach(), target)
    torch.testing.assert_close(torch.autograd.grad(loss, query)[0], want_query)
