"""DiffMM: the Gaussian diffusion against its closed forms, the denoiser's objective, the
chunked graph generation, the generated graphs' normalisation and dropout, the aggregation of
Eqs. 20-23 and the contrastive views against dense formulas, and the phase's parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from toy_graphs import first_batch, toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import DiffMM
from pyg_dhmrec.nn import DenoisingMLP, GaussianDiffusion, info_nce_all_negatives
from pyg_dhmrec.nn.diffusion import timestep_embedding

U, I = 12, 9
SMALL = {
    "embedding_dim": 4,
    "denoiser_dims": [6],
    "time_embedding_dim": 4,
    "diffusion_batch_size": 5,
    "generated_k": 2,
}


@pytest.fixture(scope="module")
def data():
    return toy_graph(U, I, 40, {"image": 5, "text": 3})


def _model(data, seed: int = 0, **keys) -> DiffMM:
    torch.manual_seed(seed)
    return DiffMM(data, **{**SMALL, **keys})


def _dense_rows(data) -> torch.Tensor:
    edges = data[RATES].edge_index
    x = torch.zeros(U, I)
    x[edges[0], edges[1]] = 1.0
    return x


# ----- the diffusion against its closed forms -----
def test_schedule_is_eq_3() -> None:
    diffusion = GaussianDiffusion(3, noise_scale=0.1, noise_min=1e-4, noise_max=0.02)
    # 1 - gamma_bar_t = s (gamma_min + (t - 1) / (T - 1) (gamma_max - gamma_min))
    variance = [0.1 * 1e-4, 0.1 * (1e-4 + 0.5 * (0.02 - 1e-4)), 0.1 * 0.02]
    gamma_bar = torch.tensor([1.0] + [1 - v for v in variance])
    torch.testing.assert_close(diffusion.gamma_bar, gamma_bar)
    beta = [1 - gamma_bar[t] / gamma_bar[t - 1] for t in (1, 2, 3)]
    torch.testing.assert_close(diffusion.beta[1:], torch.stack(beta))
    assert diffusion.beta[1].item() == pytest.approx(1e-5)  # Eq. 3, not the reference's 1e-4
    single = GaussianDiffusion(1, noise_scale=0.5, noise_min=0.1, noise_max=0.3)
    assert single.gamma_bar[1].item() == pytest.approx(1 - 0.05)


def test_forward_noising_is_the_closed_form_gaussian() -> None:
    diffusion = GaussianDiffusion(4, noise_scale=0.5, noise_min=0.1, noise_max=0.9)
    x0 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    noise = torch.tensor([[0.3, -1.2, 0.5], [2.0, 0.1, -0.7]])
    t = torch.tensor([2, 4])
    # gamma_bar_2 = 1 - 0.5 (0.1 + 1/3 * 0.8), gamma_bar_4 = 1 - 0.5 * 0.9
    g2, g4 = 1 - 0.5 * (0.1 + 0.8 / 3), 1 - 0.45
    expected = torch.stack(
        [
            math.sqrt(g2) * x0[0] + math.sqrt(1 - g2) * noise[0],
            math.sqrt(g4) * x0[1] + math.sqrt(1 - g4) * noise[1],
        ]
    )
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected)
    torch.testing.assert_close(diffusion.q_sample(x0, torch.tensor([0, 0]), noise), x0)
    # q(x_t | x_0) = N(sqrt(gamma_bar) x_0, (1 - gamma_bar) I): moments of many draws
    torch.manual_seed(0)
    many = diffusion.q_sample(x0[:1].expand(200_000, 3), torch.full((200_000,), 2))
    torch.testing.assert_close(many.mean(0), math.sqrt(g2) * x0[0], atol=5e-3, rtol=0)
    torch.testing.assert_close(many.var(0), torch.full((3,), 1 - g2), atol=5e-3, rtol=0)


def _posterior(diffusion: GaussianDiffusion, x0, xt, t: int) -> tuple[torch.Tensor, float]:
    """q(x_{t-1} | x_t, x_0) by Bayes' rule: the product of q(x_t | x_{t-1}) =
    N(sqrt(1 - beta_t) x_{t-1}, beta_t) and q(x_{t-1} | x_0) = N(sqrt(gb_{t-1}) x_0, 1 - gb_{t-1})
    in x_{t-1}, in float64."""
    beta = float(diffusion.beta[t].double())
    prev = float(diffusion.gamma_bar[t - 1].double())
    precision = (1 - beta) / beta + 1 / (1 - prev)
    var = 1 / precision
    mean = var * (
        math.sqrt(1 - beta) * xt.double() / beta + math.sqrt(prev) * x0.double() / (1 - prev)
    )
    return mean.float(), var


def test_one_denoising_step_is_the_gaussian_posterior() -> None:
    diffusion = GaussianDiffusion(4, noise_scale=0.5, noise_min=0.1, noise_max=0.9)
    x0_hat = torch.tensor([[0.9, 0.1, -0.2], [0.4, 0.7, 0.0]])
    xt = torch.tensor([[1.5, -0.3, 0.2], [0.1, 0.8, -1.1]])
    calls = []

    def denoiser(x, t):
        calls.append((x, t))
        return x0_hat

    for step in (2, 3, 4):
        t = torch.full((2,), step)
        mean, var = _posterior(diffusion, x0_hat, xt, step)
        torch.testing.assert_close(diffusion.p_step(denoiser, xt, t), mean, rtol=1e-5, atol=1e-6)
        noise = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.3, 1.0]])
        with_noise = diffusion.p_step(denoiser, xt, t, noise)
        torch.testing.assert_close(with_noise, mean + math.sqrt(var) * noise, rtol=1e-5, atol=1e-6)
        assert torch.equal(calls[-1][0], xt) and calls[-1][1].tolist() == [step, step]
    # t = 1: the mean is the prediction itself, and no noise is added
    one = torch.ones(2, dtype=torch.long)
    torch.testing.assert_close(diffusion.p_step(denoiser, xt, one, torch.ones(2, 3)), x0_hat)


def test_elbo_weights_are_the_gaussian_kl() -> None:
    """For t >= 2, KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) = w_t / 2 * ||x0_hat - x0||^2 with
    w_t = SNR(t-1) - SNR(t); the loss uses w_t (w_1 = 1) times the mean squared error."""
    diffusion = GaussianDiffusion(4, noise_scale=0.5, noise_min=0.1, noise_max=0.9)
    x0 = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    x0_hat = torch.tensor([[0.7, 0.2, 0.9, -0.1]])
    xt = torch.tensor([[0.4, -0.5, 1.2, 0.3]])
    for step in (2, 3, 4):
        true_mean, var = _posterior(diffusion, x0, xt, step)
        model_mean, _ = _posterior(diffusion, x0_hat, xt, step)
        kl = (true_mean - model_mean).pow(2).sum() / (2 * var)
        w = float(diffusion.snr_weight[step])
        assert kl.item() == pytest.approx(w / 2 * (x0_hat - x0).pow(2).sum().item(), rel=1e-4)
        snr = diffusion.gamma_bar / (1 - diffusion.gamma_bar)
        assert w == pytest.approx((snr[step - 1] - snr[step]).item(), rel=1e-5)
    t = torch.tensor([1])
    mse = (x0_hat - x0).pow(2).mean()
    torch.testing.assert_close(diffusion.elbo(x0, x0_hat, t), mse.reshape(1))
    t3 = torch.tensor([3])
    torch.testing.assert_close(
        diffusion.elbo(x0, x0_hat, t3), diffusion.snr_weight[3] * mse.reshape(1)
    )
    uniform = GaussianDiffusion(4, 0.5, 0.1, 0.9, snr_weighting=False)
    torch.testing.assert_close(uniform.elbo(x0, x0_hat, t3), mse.reshape(1))


def test_inference_noises_to_t_prime_then_takes_the_t_reverse_steps() -> None:
    diffusion = GaussianDiffusion(3, noise_scale=0.5, noise_min=0.1, noise_max=0.9)
    x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    seen = []

    def denoiser(x, t):
        seen.append((x.clone(), int(t[0])))
        return 0.5 * x + 0.1

    out = diffusion.sample(denoiser, x0, start_step=0)
    assert [t for _, t in seen] == [3, 2, 1] and torch.equal(seen[0][0], x0)
    x = x0
    for step in (3, 2, 1):
        x = diffusion.p_step(lambda v, t: 0.5 * v + 0.1, x, torch.full((2,), step))
    torch.testing.assert_close(out, x)
    seen.clear()
    torch.manual_seed(3)
    diffusion.sample(denoiser, x0, start_step=2)
    torch.manual_seed(3)
    torch.testing.assert_close(seen[0][0], diffusion.q_sample(x0, torch.full((2,), 2)))
    assert [t for _, t in seen] == [3, 2, 1]


@pytest.mark.parametrize("start_step", [0, 2])
def test_folded_reverse_chain_equals_the_step_by_step_chain(start_step: int) -> None:
    """A one-hidden-layer denoiser in eval mode runs the reverse chain in its hidden space;
    the result is the step-by-step chain's."""
    diffusion = GaussianDiffusion(5, noise_scale=0.5, noise_min=0.1, noise_max=0.9)
    torch.manual_seed(0)
    mlp = DenoisingMLP(7, [6], time_dim=4).eval()
    assert mlp.foldable and not DenoisingMLP(7, [6, 5]).eval().foldable
    assert not mlp.train().foldable
    mlp.eval()
    x0 = (torch.rand(4, 7) < 0.4).float()
    torch.manual_seed(1)
    folded = diffusion.sample(mlp, x0, start_step)
    torch.manual_seed(1)
    stepwise = diffusion.sample(lambda x, t: mlp(x, t), x0, start_step)  # not an MLP: no fold
    torch.testing.assert_close(folded, stepwise, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden", [[8], [8, 6]])
def test_denoiser_is_the_mlp_of_the_concatenated_row_and_step(hidden: list[int]) -> None:
    torch.manual_seed(0)
    mlp = DenoisingMLP(12, hidden, time_dim=3, dropout=0.5)
    xt = torch.randn(5, 12)
    t = torch.tensor([1, 3, 2, 5, 1])
    torch.manual_seed(7)  # the same dropout mask in both
    got = mlp(xt, t)
    grads = torch.autograd.grad(got.square().sum(), list(mlp.parameters()))
    # the former form: one first layer over [dropout(x) || W_e emb(t) + b_e]
    torch.manual_seed(7)
    emb = mlp.time_layer(timestep_embedding(t, 3))
    h = torch.cat([mlp.dropout(xt), emb], dim=-1)
    for layer in mlp.in_layers:
        h = torch.tanh(layer(h))
    for k, layer in enumerate(mlp.out_layers):
        h = layer(h)
        h = torch.tanh(h) if k < len(mlp.out_layers) - 1 else h
    torch.testing.assert_close(got, h)
    want = torch.autograd.grad(h.square().sum(), list(mlp.parameters()))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b)


def test_bad_schedules_refused() -> None:
    with pytest.raises(ValueError, match="noise_scale \\* noise_max must be < 1"):
        GaussianDiffusion(5, noise_scale=10, noise_min=1e-4, noise_max=0.2)
    with pytest.raises(ValueError, match="noise_min must be < noise_max"):
        GaussianDiffusion(5, noise_scale=0.1, noise_min=0.02, noise_max=0.02)
    with pytest.raises(ValueError, match="integer >= 1"):
        GaussianDiffusion(0, noise_scale=0.1, noise_min=1e-4, noise_max=0.02)
    diffusion = GaussianDiffusion(3, 0.1, 1e-4, 0.02)
    with pytest.raises(ValueError, match=r"steps t must lie in \[1, 3\]"):
        diffusion.p_step(lambda x, t: x, torch.zeros(1, 2), torch.tensor([0]))


# ----- the denoisers' objective (the phase) -----
def test_interaction_rows_are_the_train_rows(data) -> None:
    model = _model(data)
    dense = _dense_rows(data)
    users = torch.tensor([5, 0, 11, 5, 3])
    torch.testing.assert_close(model.interaction_rows(users), dense[users])


def test_diffusion_losses_are_eqs_13_and_14(data) -> None:
    model = _model(data, denoiser_dropout=0.0, msi_weight=0.3)
    x0 = model.interaction_rows(torch.arange(U))
    features = {m: torch.randn(I, 4) for m in model.modalities}
    torch.manual_seed(5)
    got = model.diffusion_losses(x0, features)
    torch.manual_seed(5)
    for m in model.modalities:  # steps, then noise, per modality in turn
        t = torch.randint(1, 6, (U,))
        noise = torch.randn(U, I)
        g = model.diffusion.gamma_bar[t].unsqueeze(1)
        x0_hat = model.denoisers[m](g.sqrt() * x0 + (1 - g).sqrt() * noise, t)
        elbo = (model.diffusion.snr_weight[t] * (x0_hat - x0).pow(2).mean(1)).mean()
        msi = (x0_hat @ features[m] - x0 @ model.item_embedding.weight).pow(2).mean(1).mean()
        torch.testing.assert_close(got[m], torch.stack([elbo, 0.3 * msi]))


def test_phase_trains_the_denoisers_only(data) -> None:
    model = _model(data)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {id(p) for p in model.phase_parameters()} == {
        id(p) for p in model.denoisers.parameters()
    }
    optimizer = model.phase_optimizer()
    first = model.train_phase(1, optimizer)
    assert set(first) == set(DiffMM.phase_loss_parts) and first["elbo"] > 0
    for n, p in model.named_parameters():  # every denoiser weight moved, nothing else did
        assert torch.equal(before[n], p) is (not n.startswith("denoisers.")), n
    for _ in range(30):
        last = model.train_phase(2, optimizer)
    assert last["elbo"] < first["elbo"]


# ----- generated graphs -----
def test_chunked_generation_equals_the_unchunked_computation(data) -> None:
    model = _model(data, sampling_steps=0)
    for _ in range(3):  # denoisers away from their initialisation
        model.train_phase(1, model.phase_optimizer())
    chunked = model.generate_graphs(chunk_size=5)
    assert chunked.shape == (2, U, 2) and chunked.dtype == torch.long
    assert torch.equal(model.generate_graphs(chunk_size=U), chunked)
    # All users' rows at once, by the reverse steps written out.
    model.eval()
    x0 = _dense_rows(data)
    for k, m in enumerate(model.modalities):
        x = x0
        for step in range(5, 0, -1):
            t = torch.full((U,), step)
            x0_hat = model.denoisers[m](x, t)
            coef1, coef2 = (
                model.diffusion.posterior_mean_x0[step],
                model.diffusion.posterior_mean_xt[step],
            )
            x = coef1 * x0_hat + coef2 * x
        expected = x.topk(2, dim=-1).indices
        assert torch.equal(chunked[k].sort(-1).values, expected.sort(-1).values), m


def test_generated_graph_normalisation_and_epoch_dropout(data) -> None:
    model = _model(data, generated_keep_rate=0.5)
    model.train()
    torch.manual_seed(1)
    model.on_train_epoch_start()
    for k, m in enumerate(model.modalities):
        items = model.generated_items[k]
        adj = torch.zeros(U, I)
        adj[torch.arange(U).repeat_interleave(2), items.reshape(-1)] = 1.0
        deg_u, deg_i = adj.sum(1, keepdim=True), adj.sum(0, keepdim=True)
        norm = adj / (deg_u * deg_i).clamp_min(1).sqrt()  # Eq. 16
        model.eval()
        full = model.generated_graph(m).to_dense()
        torch.testing.assert_close(full[:U, U:], norm)
        torch.testing.assert_close(full, full.t())
        assert not full[:U, :U].any() and not full[U:, U:].any()
        model.train()
        kept = model.generated_graph(m).to_dense()
        torch.testing.assert_close(kept, kept.t())  # an edge goes with both directions
        on = kept[:U, U:] != 0
        assert 0 < on.sum() < (norm != 0).sum()
        torch.testing.assert_close(kept[:U, U:][on], 2 * norm[on])  # scaled by 1 / 0.5
        assert not kept[:U, U:][~on].any()


def test_generated_graphs_travel_with_the_state(data) -> None:
    trained = _model(data)
    trained.train()
    for _ in range(3):
        trained.train_phase(1, trained.phase_optimizer())
    trained.on_train_epoch_start()
    fresh = _model(data, seed=1)
    fresh.eval()
    fresh.full_scores(torch.arange(U))  # generates (and caches) its own graphs
    assert not torch.equal(fresh.generated_items, trained.generated_items)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.generated_items, trained.generated_items)
    trained.eval(), fresh.eval()
    users = torch.arange(U)
    torch.testing.assert_close(fresh.full_scores(users), trained.full_scores(users))


# ----- aggregation and contrast against dense formulas -----
def test_forward_is_eqs_16_to_23(data) -> None:
    model = _model(data, num_layers=2, generated_graph_weight=0.3, residual_weight=0.7)
    model.eval()
    out = model()
    e_u, e_i = model.user_embedding.weight, model.item_embedding.weight
    r = _dense_rows(data)
    a = torch.zeros(U + I, U + I)
    a[:U, U:] = r / (r.sum(1, keepdim=True) * r.sum(0, keepdim=True)).sqrt()
    a[U:, :U] = a[:U, U:].t()
    kappa = torch.softmax(model.modality_logits, 0)
    h = 0
    for k, m in enumerate(model.modalities):
        x = model.feature(m) @ model.transforms[m].weight.t()
        e_m = F.normalize(F.leaky_relu(x, 0.2), dim=-1)  # Eq. 15
        g = model.generated_graph(m).to_dense()
        first = a @ torch.cat([e_u, e_m])
        second = a @ torch.cat([first[:U], e_i])
        z = first + second + 0.3 * g @ torch.cat([e_u, e_i])  # Eq. 20
        torch.testing.assert_close(out.modalities[m], z[U:], rtol=1e-4, atol=1e-6)
        view = g @ torch.cat([e_u, e_m])  # Eq. 16
        view = view + a @ view + a @ a @ view  # Eq. 17
        torch.testing.assert_close(out.user_views[m], view[:U], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out.item_views[m], view[U:], rtol=1e-4, atol=1e-6)
        h = h + kappa[k] * z  # Eq. 21
    final = h + a @ h + a @ a @ h + 0.7 * F.normalize(h, dim=-1)  # Eqs. 22-23
    torch.testing.assert_close(out.user, final[:U], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.item, final[U:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("anchor", ["modality", "main"])
def test_contrastive_loss_is_eq_18_or_19(data, anchor: str) -> None:
    model = _model(data, contrast_anchor=anchor, temperature=0.3, cl_weight=0.5)
    model.train()
    model.on_train_epoch_start()
    batch = first_batch(data, batch_size=16)
    out = model()
    image, text = "image", "text"

    def nce(a, b, index):
        return info_nce_all_negatives(a, b, index, 0.3)

    if anchor == "modality":  # ordered pairs m1 != m2
        pairs = [
            (out.user_views[image], out.item_views[image], text),
            (out.user_views[text], out.item_views[text], image),
        ]
    else:
        pairs = [(out.user, out.item, image), (out.user, out.item, text)]
    expected = sum(
        nce(au, out.user_views[m], batch.user) + nce(ai, out.item_views[m], batch.pos_item)
        for au, ai, m in pairs
    )
    parts = model.loss(batch, out)
    torch.testing.assert_close(parts["cl"], 0.5 * expected)
    penalty = model.user_embedding.weight.pow(2).sum() + model.item_embedding.weight.pow(2).sum()
    torch.testing.assert_close(parts["reg"], model.reg_weight * penalty)


def test_one_modality(data) -> None:
    single = toy_graph(U, I, 40, {"audio": 4})
    model = _model(single, contrast_anchor="modality")
    assert model.modality_logits is None and model.modalities == ["audio"]
    model.train()
    model.on_train_epoch_start()
    batch = first_batch(single, batch_size=16)
    assert model.loss(batch)["cl"].item() == 0.0  # Eq. 18 has no pair
    main = _model(single, contrast_anchor="main")
    main.train()
    main.on_train_epoch_start()
    assert main.loss(batch)["cl"].item() > 0
    assert main.train_phase(1, main.phase_optimizer())["elbo"] > 0


def test_bad_settings_refused(data) -> None:
    with pytest.raises(ValueError, match="contrast_anchor must be one of modality, main"):
        _model(data, contrast_anchor="both")
    with pytest.raises(ValueError, match="feature_transform must be one of linear, leaky_relu"):
        _model(data, feature_transform="mlp")
    with pytest.raises(ValueError, match=r"generated_k must be in \[1, 9\]"):
        _model(data, generated_k=10)
    with pytest.raises(ValueError, match=r"sampling_steps must be in \[0, diffusion_steps = 5\]"):
        _model(data, sampling_steps=6)
    with pytest.raises(ValueError, match=r"generated_keep_rate must be in \(0, 1\]"):
        _model(data, generated_keep_rate=0.0)
    with pytest.raises(ValueError, match="DiffMM needs at least one item modality"):
        DiffMM(toy_graph(U, I, 40))
