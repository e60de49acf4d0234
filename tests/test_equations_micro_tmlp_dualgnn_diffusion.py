"""Equations of MICRO, TMLP, DualGNN and the diffusion layer checked against independent
dense re-implementations or hand-computed values on tiny inputs (gaps a mutation audit found:
each test fails on one single-point change of the equation code)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import MICRO, TMLP, DualGNN
from pyg_dhmrec.nn import GaussianDiffusion
from pyg_dhmrec.nn.diffusion import timestep_embedding


def _sym_adjacency(data, num_users: int, num_items: int) -> torch.Tensor:
    r"""Dense :math:`D^{-1/2} A D^{-1/2}` of the two-way user-item train graph, float64."""
    edges = data[RATES].edge_index
    n = num_users + num_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[edges[0], edges[1] + num_users] = 1.0
    a[edges[1] + num_users, edges[0]] = 1.0
    inv = a.sum(1).pow(-0.5)
    inv[torch.isinf(inv)] = 0.0
    return inv[:, None] * a * inv[None, :]


def test_micro_item_adds_the_unit_fused_view_to_the_lightgcn_mean() -> None:
    """Eq. 12: :math:`\\hat{x}_i = x_i + h_i / \\lVert h_i \\rVert`, with :math:`x` the mean of
    LightGCN layers 0..L over the symmetric-normalised train graph."""
    data = toy_graph(8, 6, 20, {"image": 5, "text": 3}, seed=3)
    torch.manual_seed(0)
    model = MICRO(data, embedding_dim=4, knn_k=2, num_ui_layers=2).double().eval()
    with torch.no_grad():
        out = model()
        adj = _sym_adjacency(data, 8, 6)
        x = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        layers = [x, adj @ x, adj @ (adj @ x)]
        ui = torch.stack(layers).mean(0)
        fused = out.fused_view
        expected_item = ui[8:] + fused / fused.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out.user, ui[:8], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out.item, expected_item, rtol=2e-6, atol=1e-7)


def test_dualgnn_layer_zero_nodes_are_unit_rows_before_propagation() -> None:
    """:math:`\\hat{h}^m = \\sum_{l=0}^{L} \\hat{A}^l\\, \\mathrm{normalize}([p^m; f^m])`,
    :math:`f^m` the two-layer projection of the features."""
    data = toy_graph(8, 6, 20, {"image": 5, "text": 3}, seed=4)
    torch.manual_seed(0)
    model = DualGNN(data, embedding_dim=4, num_ui_layers=2, user_graph_k=1).double().eval()
    with torch.no_grad():
        # preferences far from unit norm: a missing normalisation would show
        for p in model.preferences.values():
            p.mul_(7.0)
        reps = model.modality_representations()
        adj = _sym_adjacency(data, 8, 6)
        for m in ("image", "text"):
            w1, b1 = model.projections[m][0].weight, model.projections[m][0].bias
            w2, b2 = model.projections[m][2].weight, model.projections[m][2].bias
            feat = data["item"][m].double()
            f = F.leaky_relu(feat @ w1.t() + b1) @ w2.t() + b2
            h0 = torch.cat([model.preferences[m], f])
            h0 = h0 / h0.norm(dim=1, keepdim=True)
            expected = h0 + adj @ h0 + adj @ (adj @ h0)
            torch.testing.assert_close(reps[m], expected, rtol=2e-6, atol=1e-7)


def test_tmlp_items_concatenate_modality_blocks_then_id_and_propagate_unit_rows() -> None:
    """:math:`e_i = [h^1_i; \\dots; h^M_i; e^{id}_i]`, :math:`E^{(0)} = \\mathrm{norm}([E_U;
    E_I])` row-wise, :math:`E = \\sum_{l=0}^{L} \\hat{A}^l E^{(0)}`; modality ``m``'s
    representation is block ``m`` of the final items, zeros elsewhere."""
    data = toy_graph(8, 6, 24, {"image": 5, "text": 3}, seed=5)
    torch.manual_seed(0)
    model = TMLP(
        data, embedding_dim=3, feat_embed_dim=4, hidden_dim=5, knn_k=3, pruned_k=2
    ).double()
    model.eval()
    with torch.no_grad():
        model.user_embedding.weight.mul_(5.0)  # far from unit rows
        out = model()
        blocks = [model.encoders[m](data["item"][m].double()) for m in ("image", "text")]
        items = torch.cat([*blocks, model.item_embedding.weight], dim=1)
        ego = torch.cat([model.user_embedding.weight, items])
        ego = ego / ego.norm(dim=1, keepdim=True)
        adj = _sym_adjacency(data, 8, 6)
        expected = ego + adj @ ego + adj @ (adj @ ego)
    torch.testing.assert_close(out.user, expected[:8], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out.item, expected[8:], rtol=2e-6, atol=1e-7)
    for b, m in enumerate(("image", "text")):
        block = torch.zeros_like(out.item)
        block[:, 3 * b : 3 * b + 3] = expected[8:, 3 * b : 3 * b + 3]
        torch.testing.assert_close(out.modalities[m], block, rtol=2e-6, atol=1e-7)


def test_reverse_step_adds_posterior_noise_except_at_the_first_step() -> None:
    """:math:`x_{t-1} = \\tilde\\mu_t + \\sqrt{\\tilde\\beta_t}\\,\\epsilon` for :math:`t > 1`
    and :math:`\\tilde\\mu_1 = \\hat{x}_0` alone at :math:`t = 1`, from the schedule of Eq. 3
    computed by hand (T = 3, s = 0.5, gamma in [0.1, 0.3])."""
    diffusion = GaussianDiffusion(3, 0.5, 0.1, 0.3).double()
    variance = [0.5 * 0.1, 0.5 * 0.2, 0.5 * 0.3]  # 1 - gamma_bar_t, t = 1..3
    gamma_bar = [1.0] + [1.0 - v for v in variance]
    x0_hat = torch.tensor([[0.3, -0.2], [0.7, 0.1], [-0.4, 0.5]], dtype=torch.float64)
    xt = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.25, -0.75]], dtype=torch.float64)
    noise = torch.tensor([[0.5, -1.5], [2.0, 1.0], [-0.5, 0.25]], dtype=torch.float64)
    t = torch.tensor([1, 2, 3])
    out = diffusion.p_step(lambda x, s: x0_hat, xt, t, noise)
    expected = torch.empty_like(xt)
    expected[0] = x0_hat[0]  # t = 1: the prediction itself, no noise
    for row, step in ((1, 2), (2, 3)):
        beta = 1.0 - gamma_bar[step] / gamma_bar[step - 1]
        one_minus, one_minus_prev = 1.0 - gamma_bar[step], 1.0 - gamma_bar[step - 1]
        mean = (beta * math.sqrt(gamma_bar[step - 1]) / one_minus) * x0_hat[row] + (
            one_minus_prev * math.sqrt(1.0 - beta) / one_minus
        ) * xt[row]
        expected[row] = mean + math.sqrt(one_minus_prev / one_minus * beta) * noise[row]
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-7)


def test_timestep_embedding_is_cosines_then_sines_zero_padded() -> None:
    """``[cos(t f_k), sin(t f_k)]``, :math:`f_k = P^{-k / \\lfloor d/2 \\rfloor}`, a zero column
    for an odd width; hand values for d = 5, P = 100."""
    t = torch.tensor([0, 1, 3])
    out = timestep_embedding(t, 5, max_period=100.0)
    freqs = [1.0, 0.1]  # 100^(-0/2), 100^(-1/2)
    expected = torch.tensor(
        [
            [math.cos(s * freqs[0]), math.cos(s * freqs[1])]
            + [math.sin(s * freqs[0]), math.sin(s * freqs[1])]
            + [0.0]
            for s in (0, 1, 3)
        ]
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
