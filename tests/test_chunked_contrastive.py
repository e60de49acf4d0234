"""chunked_info_nce: the dense all-node InfoNCE's value and gradient, in chunks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyg_dhmrec.nn import chunked_info_nce, info_nce


def _dense(anchor: torch.Tensor, positive: torch.Tensor, tau: float, intra: bool) -> torch.Tensor:
    """The formula as written: N x N exponent matrices, no logsumexp."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    between = torch.exp(a @ p.t() / tau)
    denominator = between.sum(1)
    if intra:
        within = torch.exp(a @ a.t() / tau)
        denominator = denominator + within.sum(1) - within.diag()
    return -torch.log(between.diag() / denominator).mean()


@pytest.mark.parametrize("intra", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("tau", [0.5, 0.02])  # exp unshifted (1/tau <= 40), and row-max shifted
def test_value_and_gradient_equal_the_dense_formula(
    intra: bool, chunk_size: int, tau: float
) -> None:
    g = torch.Generator().manual_seed(0)
    base_a = torch.randn(17, 5, generator=g, dtype=torch.float64)
    base_p = torch.randn(17, 5, generator=g, dtype=torch.float64)
    a1, p1 = base_a.clone().requires_grad_(), base_p.clone().requires_grad_()
    a2, p2 = base_a.clone().requires_grad_(), base_p.clone().requires_grad_()
    expected = _dense(a1, p1, tau, intra)
    got = chunked_info_nce(a2, p2, tau, intra_view_negatives=intra, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(p2.grad, p1.grad)


def test_float32_at_micro_size_and_without_gradient() -> None:
    # One [chunk, 2N] block reused across chunks, float32 as in training; no_grad: value only.
    g = torch.Generator().manual_seed(5)
    base_a, base_p = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    a1, p1 = base_a.double().requires_grad_(), base_p.double().requires_grad_()
    a2, p2 = base_a.clone().requires_grad_(), base_p.clone().requires_grad_()
    expected = _dense(a1, p1, 0.5, True)
    got = chunked_info_nce(a2, p2, 0.5, chunk_size=64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    expected.backward()
    got.backward()
    torch.testing.assert_close(a2.grad.double(), a1.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(p2.grad.double(), p1.grad, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(chunked_info_nce(a2, p2, 0.5, chunk_size=64), got.detach())


def test_one_shared_input_gets_both_gradients() -> None:
    # MICRO contrasts a modality view with the fused view computed from it: both paths count.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    _dense(x, x @ w, 0.2, True).backward()
    expected, x.grad = x.grad, None
    chunked_info_nce(x, x @ w, 0.2, chunk_size=4).backward()
    torch.testing.assert_close(x.grad, expected)


def test_hand_computed_value() -> None:
    # Two orthogonal anchors, each equal to its positive: theta = 1 with itself, 0 across.
    a = torch.eye(2)
    tau = 1.0
    per_anchor = -math.log(math.e / (math.e + 1.0 + 1.0))  # between: e, 1; within j != i: 1
    torch.testing.assert_close(chunked_info_nce(a, a, tau), torch.tensor(per_anchor))
    without = -math.log(math.e / (math.e + 1.0))
    torch.testing.assert_close(
        chunked_info_nce(a, a, tau, intra_view_negatives=False), torch.tensor(without)
    )


def test_without_intra_view_negatives_it_is_info_nce_over_all_rows() -> None:
    g = torch.Generator().manual_seed(2)
    a, p = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    torch.testing.assert_close(
        chunked_info_nce(a, p, 0.3, intra_view_negatives=False, chunk_size=5), info_nce(a, p, 0.3)
    )


def test_large_logits_do_not_overflow() -> None:
    a = torch.randn(6, 3)
    assert torch.isfinite(chunked_info_nce(a, a, 1e-3, chunk_size=2))


def test_logits_too_large_to_exponentiate_unshifted_keep_their_value_and_gradient() -> None:
    # float32 at tau = 0.01: e^(1/tau) overflows, so every row is shifted by its maximum;
    # the reference is the dense formula through log_softmax in float64
    g = torch.Generator().manual_seed(3)
    a = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    an, pn = F.normalize(a, dim=-1), F.normalize(p, dim=-1)
    within = (an @ an.t() / 0.01).masked_fill(torch.eye(11, dtype=torch.bool), float("-inf"))
    logits = torch.cat([an @ pn.t() / 0.01, within], dim=1)
    expected = -logits.log_softmax(dim=1).diagonal().mean()
    a32, p32 = a.detach().float().requires_grad_(), p.detach().float().requires_grad_()
    got = chunked_info_nce(a32, p32, 0.01, chunk_size=4)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    got.backward()
    grads = torch.autograd.grad(expected, (a, p))
    torch.testing.assert_close(a32.grad.double(), grads[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(p32.grad.double(), grads[1], rtol=1e-3, atol=1e-3)


def test_bad_inputs() -> None:
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one shape"):
        chunked_info_nce(a, torch.randn(5, 3), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        chunked_info_nce(a, a, 0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_info_nce(a, a, 0.5, chunk_size=0)


@pytest.mark.parametrize("block_rows, chunk_size", [(128, 100), (5, 300), (64, 64), (300, 7)])
def test_symmetric_in_view_blocks_equal_the_row_by_row_computation(
    block_rows: int, chunk_size: int
) -> None:
    # Triangle blocks and anchor chunks of unrelated sizes, neither dividing N.
    from pyg_dhmrec.nn.chunked_contrastive import _ChunkedInfoNCE, _SymmetricInfoNCE

    g = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(257, 8, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(torch.randn(257, 8, generator=g, dtype=torch.float64), dim=-1)
    grads = []
    for fn, args in [
        (_ChunkedInfoNCE, (0.3, True, chunk_size, True)),
        (_SymmetricInfoNCE, (0.3, block_rows, chunk_size, True)),
    ]:
        a1, p1 = a.clone().requires_grad_(), p.clone().requires_grad_()
        value = fn.apply(a1, p1, *args)
        value.backward()
        grads.append((value.detach(), a1.grad, p1.grad))
    for expected, got in zip(*grads):
        torch.testing.assert_close(got, expected)
