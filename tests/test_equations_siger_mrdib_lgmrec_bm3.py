"""Equations of SIGER, MRdIB, LGMRec, BM3, VBPR, LayerGCN, MGCN, LATTICE and their shared
layers, checked against hand-computed values or an independent re-implementation of the
formula in the model's docstring, on tiny tensors (tight tolerances).

Each test here was written for a single-point change of the equation code that the model's own
tests did not notice (a mutation audit): the test fails on the changed code and passes on the
original."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from toy_graphs import toy_graph

from pyg_dhmrec.data.sampler import BPRBatch
from pyg_dhmrec.models import SIGER
from pyg_dhmrec.models.base import Embeddings, Recommender
from pyg_dhmrec.nn import cosine_alignment_loss, relaxed_dependencies
from pyg_dhmrec.plugins import MRdIB


def _info_nce(anchor: torch.Tensor, positive: torch.Tensor, tau: float) -> torch.Tensor:
    """-(1/B) sum_i log softmax_j(cos(a_i, p_j) / tau)_i, written out."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = a @ p.t() / tau
    return -(logits.diag() - torch.logsumexp(logits, dim=1)).mean()


# --- BM3's bootstrap loss (nn/bootstrap.py) ---


def test_cosine_alignment_loss_hand_value_and_no_gradient_to_the_target() -> None:
    """C(o, t) = 1 - mean_b cos(o_b, sg(t_b)): value by hand, and the target gets no gradient
    (only the online side is pulled)."""
    online = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, -3.0]], requires_grad=True)
    loss = cosine_alignment_loss(online, target)
    # cosines: 1/sqrt(2) and -1
    expected = 1.0 - (1.0 / math.sqrt(2.0) - 1.0) / 2.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert target.grad is None
    # d/do of -cos(o, t)/B for o = [1, 0], t = [1, 1]: -(t/|t| - cos * o/|o|) / (|o| B)
    c = 1.0 / math.sqrt(2.0)
    expected_grad = -torch.tensor([c - c * 1.0, c - c * 0.0]) / 2.0
    torch.testing.assert_close(online.grad[0], expected_grad, atol=1e-6, rtol=0)


# --- LGMRec's Gumbel relaxation (nn/hypergraph.py, Eq. 8) ---


def test_relaxed_dependencies_noise_is_the_logistic_sample_of_eq_8() -> None:
    """softmax((h + log d - log(1 - d)) / tau) with the d drawn from torch's global RNG."""
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]], dtype=torch.float64)
    tau = 0.7
    torch.manual_seed(3)
    out = relaxed_dependencies(logits, tau, noise=True)
    torch.manual_seed(3)
    eps = torch.finfo(logits.dtype).eps
    delta = torch.rand_like(logits).clamp(eps, 1.0 - eps)
    g = torch.log(delta) - torch.log(1.0 - delta)
    expected = torch.softmax((logits + g) / tau, dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


# --- SIGER's fused alignment (9): symmetric, both sides trained ---


def test_siger_fused_alignment_is_symmetric_and_trains_both_sides() -> None:
    """align_fused (9) = 1/2 [InfoNCE(b, h) + InfoNCE(h, b)] for users and for items, with a
    gradient on the behaviour side b as well as on the semantic side h (*choice*: both sides
    trained), equal to that of the written-out formula."""
    data = toy_graph(
        num_users=6, num_items=5, num_interactions=14, modalities={"image": 3, "text": 2}
    )
    torch.manual_seed(0)
    model = SIGER(data, embedding_dim=4, knn_k=2, infusion_k=2)
    tau = model.align_temperature
    g = torch.Generator().manual_seed(1)
    users, items = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])
    semantic = {m: torch.randn(5, 4, generator=g, dtype=torch.float64) for m in model.modalities}
    b_user = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b_item = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    fused = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    model.double()
    _, fused_part = model._alignment(b_user, b_item, semantic, fused, users, items)
    grads = torch.autograd.grad(fused_part, (b_user, b_item, fused))

    ref_user, ref_item, ref_fused = (
        t.detach().clone().requires_grad_() for t in (b_user, b_item, fused)
    )
    # users' semantics: LightGCN-normalised sums of their train items' h^m, fused with w_m
    edge_index = data["user", "rates", "item"].edge_index
    deg_u = torch.bincount(edge_index[0], minlength=6).double()
    deg_i = torch.bincount(edge_index[1], minlength=5).double()
    user_fused = torch.zeros(6, 4, dtype=torch.float64)
    for u, i in edge_index.t().tolist():
        h_i = sum(model.modality_weights[m] * semantic[m][i] for m in model.modalities)
        user_fused[u] += h_i / math.sqrt(deg_u[u] * deg_i[i])
    expected = 0.5 * (
        _info_nce(ref_user, user_fused[users], tau) + _info_nce(user_fused[users], ref_user, tau)
    ) + 0.5 * (_info_nce(ref_item, ref_fused, tau) + _info_nce(ref_fused, ref_item, tau))
    expected_grads = torch.autograd.grad(expected, (ref_user, ref_item, ref_fused))
    torch.testing.assert_close(fused_part, expected, atol=1e-6, rtol=0)
    for got, want in zip(grads, expected_grads):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# --- the MRdIB plug-in (plugins/mrdib.py) ---


class _ThreeModalities(Recommender):
    """Hand-set embeddings: 1 user, 2 items, modalities a, b and c (d = 2)."""

    exposes_modalities = True

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)
        self.num_users, self.num_items, self._eval_embeddings = 1, 2, None
        self.user = torch.nn.Parameter(torch.tensor([[1.0, 0.5]]))
        self.item = torch.nn.Parameter(torch.tensor([[2.0, 0.0], [1.0, 0.0]]))  # margin 1
        self.a = torch.nn.Parameter(torch.tensor([[0.5, 0.0], [0.0, 0.0]]))  # margin 0.5
        self.b = torch.nn.Parameter(torch.tensor([[3.0, 1.0], [1.0, -1.0]]))  # margin 3
        self.c = torch.nn.Parameter(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))  # margin -1

    def forward(self) -> Embeddings:
        return Embeddings(self.user, self.item, {"a": self.a, "b": self.b, "c": self.c})

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, torch.Tensor]:
        return {"bpr": self.user.sum() * 0}


def _mrdib(log_var: float, **options) -> MRdIB:
    """MRdIB on :class:`_ThreeModalities`, encoders with mean = input and a constant
    log-variance ``log_var``."""
    torch.manual_seed(0)
    model = MRdIB(_ThreeModalities(), **options)
    for encoder in model.encoders.values():
        torch.nn.init.eye_(encoder.mean.weight)
        torch.nn.init.zeros_(encoder.mean.bias)
        torch.nn.init.zeros_(encoder.log_var.weight)
        torch.nn.init.constant_(encoder.log_var.bias, log_var)
    return model


_BATCH = BPRBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))


def test_mrdib_synergy_reads_the_posterior_means_even_in_training() -> None:
    """(4): max_m sg(Delta^m) uses the means mu^m, not the noisy training codes z^m."""
    model = _mrdib(math.log(4.0), kl=False, unique=False, redundant=False, synergy_weight=1.0)
    model.train()
    torch.manual_seed(5)
    parts = model.loss(_BATCH)
    # fused margin u.(e_+ - e_-) = 1; the means' margins 0.5, 3, -1: max 3
    assert parts["mrdib_synergy"].item() == pytest.approx(math.log(1 + math.exp(2.0)), abs=1e-6)


def test_mrdib_unique_term_trains_the_base_users() -> None:
    """(2): L_uni = 1/M sum_m BPR(e_u.z^m_+, e_u.z^m_-); its gradient reaches e_u:
    -1/M sum_m sigmoid(-Delta^m) (z^m_+ - z^m_-)."""
    model = _mrdib(0.0, kl=False, unique_weight=1.0, redundant=False, synergy=False)
    model.eval()  # z = mu = h
    unique = model.loss(_BATCH)["mrdib_unique"]
    (grad,) = torch.autograd.grad(unique, model.base.user, allow_unused=True)
    assert grad is not None
    base = model.base
    diffs = [(h[0] - h[1]).detach() for h in (base.a, base.b, base.c)]
    margins = [float(base.user.detach()[0] @ d) for d in diffs]  # 0.5, 3, -1
    assert margins == pytest.approx([0.5, 3.0, -1.0])
    expected_value = sum(math.log1p(math.exp(-m)) for m in margins) / 3
    assert unique.item() == pytest.approx(expected_value, abs=1e-6)
    expected = -sum(torch.sigmoid(torch.tensor(-m)) * d for m, d in zip(margins, diffs)) / 3
    torch.testing.assert_close(grad[0], expected, atol=1e-6, rtol=0)


def test_mrdib_club_fit_and_bound_are_means_over_the_modality_pairs() -> None:
    """(3): with M = 3 there are 3 pairs; mrdib_club_fit is the mean of their Gaussian
    negative log-likelihoods 1/2 [(y - mu)^2 / sigma^2 + log sigma^2] (mean over rows and
    dimensions) and mrdib_redundant the weighted mean of their CLUB bounds."""
    model = _mrdib(0.0, kl=False, unique=False, redundant_weight=0.5, synergy=False)
    model.eval()  # z = mu = h
    parts = model.loss(_BATCH)
    base = model.base
    codes = {"a": base.a.detach(), "b": base.b.detach(), "c": base.c.detach()}
    fits, bounds = [], []
    for m, n in (("a", "b"), ("a", "c"), ("b", "c")):
        club = model.club[f"{m}__{n}"]
        x, y = codes[m], codes[n]
        mean, log_var = club.mean(x).detach(), club.log_var(x).detach()
        fits.append(0.5 * ((y - mean).pow(2) * (-log_var).exp() + log_var).mean())
        # CLUB: mean_i [log q(y_i|x_i) - mean_j log q(y_j|x_i)]
        pairwise = -0.5 * (y.unsqueeze(0) - mean.unsqueeze(1)).pow(2) / log_var.exp().unsqueeze(1)
        pairwise = pairwise.sum(-1)  # [i, j]
        bounds.append((pairwise.diag() - pairwise.mean(1)).mean())
    assert parts["mrdib_club_fit"].item() == pytest.approx(float(sum(fits) / 3), abs=1e-6)
    assert parts["mrdib_redundant"].item() == pytest.approx(0.5 * float(sum(bounds) / 3), abs=1e-6)
