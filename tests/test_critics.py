"""Tests of the pair critic and its contrastive mutual-information bounds (ConcatCritic, NCECLUB):
chunked sums equal the dense (tiled) formula, hand-computed values, gradient routing."""

from __future__ import annotations

import math

import pytest
import torch

from pyg_dhmrec.nn import NCECLUB, ConcatCritic, information


def _dense(critic: ConcatCritic, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The estimates from the tiled ``[N, N, dx + dy]`` input, as the reference critics build it:
    ``scores[i, j] = f([x_j ; y_i])``."""
    n = x.size(0)
    tiled = torch.cat([x.unsqueeze(0).expand(n, n, -1), y.unsqueeze(1).expand(n, n, -1)], -1)
    scores = critic.mlp(tiled).squeeze(-1)
    paired = scores.diagonal()
    info_nce = paired.mean() - (scores.logsumexp(dim=1).mean() - math.log(n))
    return {
        "info_nce": info_nce,
        "info_nce_loss": math.log(n) - info_nce,
        "nce_club": paired.mean() - scores.mean(),
    }


def _inputs(n: int = 7, dx: int = 3, dy: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.double, requires_grad=True)
    y = torch.randn(n, dy, generator=g, dtype=torch.double, requires_grad=True)
    return x, y


@pytest.mark.parametrize(("hidden", "num_layers"), [(5, 1), (5, 2), (1, 1), (1, 2)])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100, None])
@pytest.mark.parametrize("estimate", ["info_nce", "info_nce_loss", "nce_club"])
def test_chunked_equals_dense_in_value_and_gradient(hidden, num_layers, chunk_size, estimate):
    # (1, 1): one hidden unit, the sorted O(N log N) sums; the others: pair blocks.
    torch.manual_seed(1)
    critic = ConcatCritic(3, 2, hidden, num_layers=num_layers).double()
    x, y = _inputs()
    inputs = [x, y, *critic.parameters()]
    chunked = getattr(critic, estimate)(x, y, chunk_size=chunk_size)
    dense = _dense(critic, x, y)[estimate]
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(chunked, inputs), torch.autograd.grad(dense, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_detached_parameters_keep_the_value_and_the_input_gradient() -> None:
    torch.manual_seed(2)
    critic = ConcatCritic(3, 2, 4).double()
    x, y = _inputs()
    for estimate in ("info_nce", "nce_club"):
        free = getattr(critic, estimate)(x, y)
        frozen = getattr(critic, estimate)(x, y, detach_parameters=True)
        torch.testing.assert_close(frozen, free)
        for got, want in zip(
            torch.autograd.grad(frozen, [x, y]), torch.autograd.grad(free, [x, y])
        ):
            torch.testing.assert_close(got, want)
        frozen = getattr(critic, estimate)(x, y, detach_parameters=True)
        frozen.backward()
        assert all(p.grad is None for p in critic.parameters())


def test_hand_computed_bounds() -> None:
    # f(x, y) = relu(x + y): weights [1, 1], bias 0, output weight 1.
    critic = ConcatCritic(1, 1, 1)
    with torch.no_grad():
        critic.mlp[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        critic.mlp[0].bias.zero_()
        critic.mlp[2].weight.fill_(1.0)
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0], [-1.0]])
    # scores[i, j] = relu(x_j + y_i): row 0 (y = 1): [1, 3]; row 1 (y = -1): [0, 1]
    torch.testing.assert_close(critic(x, y), torch.tensor([1.0, 1.0]))
    # NCE-CLUB: mean paired score 1 minus mean of all four, 5/4
    torch.testing.assert_close(critic.nce_club(x, y), torch.tensor(-0.25))
    lse = (math.log(math.e + math.e**3) + math.log(1 + math.e)) / 2
    torch.testing.assert_close(critic.info_nce(x, y), torch.tensor(1 - lse + math.log(2)))
    torch.testing.assert_close(critic.info_nce_loss(x, y), torch.tensor(lse - 1))
    # Independent pairs (every y sees the same x's): NCE-CLUB of identical rows is 0.
    same = torch.tensor([[0.5], [0.5]])
    torch.testing.assert_close(critic.nce_club(x, same), torch.tensor(0.0))


@pytest.mark.parametrize("hidden", [1, 3])
def test_a_dead_or_affine_critic_measures_nothing(hidden) -> None:
    # Every unit inactive on every pair: f = 0, the InfoNCE loss is log N, no gradient (the
    # release's width-1 critics can start so); every unit active: f is affine in [x; y] and
    # NCE-CLUB is 0 whatever the pairing.
    x, y = _inputs()
    critic = ConcatCritic(3, 2, hidden).double()
    with torch.no_grad():
        critic.mlp[0].bias.fill_(-100.0)
    loss = critic.info_nce_loss(x, y)
    torch.testing.assert_close(loss, torch.tensor(math.log(7), dtype=torch.double))
    grads = torch.autograd.grad(loss, [x, y, *critic.parameters()], allow_unused=True)
    assert all(g is None or (torch.isfinite(g).all() and g.abs().sum() == 0) for g in grads)
    with torch.no_grad():
        critic.mlp[0].bias.fill_(100.0)
    torch.testing.assert_close(critic.nce_club(x, y), torch.tensor(0.0, dtype=torch.double))


def test_hidden_biases_start_at_zero() -> None:
    critic = ConcatCritic(3, 2, 4, num_layers=2)
    with torch.no_grad():
        for p in critic.parameters():
            p.fill_(1.0)
    critic.reset_parameters()
    assert critic.mlp[0].bias.abs().sum() == 0 and critic.mlp[2].bias.abs().sum() == 0
    assert critic.mlp[0].weight.std() > 0 and critic.mlp[4].bias is None


def test_info_nce_is_at_most_log_n() -> None:
    torch.manual_seed(3)
    critic = ConcatCritic(3, 2, 8)
    x, y = _inputs(n=9)
    assert critic.info_nce(x.float(), y.float()).item() <= math.log(9) + 1e-6
    assert critic.info_nce_loss(x.float(), y.float()).item() >= 0


@pytest.mark.parametrize("num_layers", [1, 2])
def test_no_pair_block_exceeds_the_budget(monkeypatch, num_layers) -> None:
    # A budget of 21 values, 7 rows x 3 hidden units: one y row (21 values) per block.
    monkeypatch.setattr(information, "PAIR_CHUNK_ELEMENTS", 21)
    shapes = []
    output = information._output

    def record(hidden, weight):
        shapes.append(tuple(hidden.shape))
        return output(hidden, weight)

    monkeypatch.setattr(information, "_output", record)
    torch.manual_seed(4)
    critic = ConcatCritic(3, 2, 3, num_layers=num_layers).double()
    x, y = _inputs()
    for estimate in (critic.nce_club, critic.info_nce):
        shapes.clear()
        estimate(x, y).backward()
        blocks = [shape for shape in shapes if len(shape) == 3]
        assert blocks and all(shape == (1, 7, 3) for shape in blocks), shapes
        assert len(blocks) >= 7  # 7 blocks in forward (and recomputed ones in backward)
    shapes.clear()
    NCECLUB(3, 2, 3, num_layers=num_layers).double()(x, y)
    assert all(shape[0] == 1 for shape in shapes if len(shape) == 3)


def test_nce_club_routes_each_gradient_to_its_own_objective() -> None:
    torch.manual_seed(5)
    club = NCECLUB(3, 2, 4).double()
    x, y = _inputs()
    bound, fit = club(x, y)
    # The bound trains the inputs only ...
    grads = torch.autograd.grad(bound, [x, y, *club.parameters()], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert all(g is None for g in grads[2:])
    # ... the fit loss the critic only.
    grads = torch.autograd.grad(fit, [x, y, *club.parameters()], allow_unused=True)
    assert grads[0] is None and grads[1] is None
    assert all(g is not None and g.abs().sum() > 0 for g in grads[2:])
    # The fit loss is the InfoNCE loss of the critic; the bound its NCE-CLUB estimate.
    torch.testing.assert_close(fit, club.critic.info_nce_loss(x, y))
    torch.testing.assert_close(bound, club.critic.nce_club(x, y))


def test_bad_inputs() -> None:
    critic = ConcatCritic(3, 2, 4)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    with pytest.raises(
        ValueError, match=r"paired \[N, 3\] and \[N, 2\] rows, got \[5, 3\] and \[4, 2\]"
    ):
        critic.nce_club(x, y[:4])
    with pytest.raises(ValueError, match=r"paired \[N, 3\] and \[N, 2\] rows, got \[5, 2\] and"):
        critic.info_nce(y, y)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        critic.info_nce(x, y, chunk_size=0)
    with pytest.raises(ValueError, match="hidden_channels must be an int >= 1, got 0"):
        ConcatCritic(3, 2, 0)
    with pytest.raises(ValueError, match="num_layers must be an int >= 1, got 0"):
        ConcatCritic(3, 2, 4, num_layers=0)
