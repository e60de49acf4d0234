"""Models at unusual but legal settings and data shapes: a tiny temperature, a width-1 step
embedding, a tiny noise floor, a kNN graph over (nearly) every item. Each trained NaN or
crashed before; each must now train with finite losses and scores, or refuse by name."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from toy_graphs import toy_graph, train_one_epoch

import pyg_dhmrec
from pyg_dhmrec.cli import main
from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.graph import cosine_knn_edges, symmetric_normalize
from pyg_dhmrec.models.damrs import graded_neighbour_discrimination
from pyg_dhmrec.nn import LearnedKNNGraph
from pyg_dhmrec.nn.diffusion import (
    MIN_FIRST_VARIANCE,
    DenoisingMLP,
    GaussianDiffusion,
    timestep_embedding,
)

NUM_USERS, NUM_ITEMS = 20, 15
#: Settings that keep DiffMM small on the toy graph.
SMALL = {"embedding_dim": 8, "denoiser_dims": [16], "diffusion_batch_size": 10}


def _with_splits(data):
    """``data`` with one held-out valid and test edge taken from users that keep another."""
    edges = data[RATES].edge_index
    degree = torch.bincount(edges[0], minlength=NUM_USERS)
    held, seen = [], set()
    for j in range(edges.size(1)):
        user = int(edges[0, j])
        if degree[user] > 2 and user not in seen and len(held) < 8:
            held.append(j)
            seen.add(user)
    keep = torch.ones(edges.size(1), dtype=torch.bool)
    keep[held] = False
    data[RATES].edge_index = edges[:, keep]
    data[REV_RATES].edge_index = edges[:, keep].flip(0)
    data[RATES].valid_edge_index = edges[:, held[:4]]
    data[RATES].test_edge_index = edges[:, held[4:]]
    return data


@pytest.fixture(scope="module")
def data():
    return _with_splits(toy_graph(NUM_USERS, NUM_ITEMS, 90, {"image": 6, "text": 4}))


def _train(name: str, data, **keys) -> dict:
    results = train_one_epoch(name, data, **keys)
    assert all(math.isfinite(v) for v in results["test"].values()), results["test"]
    return results


# ---------------------------------------------------------------- DA-MRS at a tiny temperature


def _dense_graded_losses(views, anchors, mm_single, temperature: float) -> torch.Tensor:
    """The graded loss per view in float64, every sum a logsumexp (the exact reference)."""
    out = []
    for h, (mm, single) in zip(views, mm_single):
        unit = F.normalize(h.double(), dim=1)
        logits = unit[anchors] @ unit.t() / temperature
        lse_mm = logits.gather(1, mm).logsumexp(1)
        lse_single = logits.gather(1, single).logsumexp(1)
        lse_rest = logits.scatter(1, mm, float("-inf")).logsumexp(1)
        lse_all = logits.logsumexp(1)
        out.append((lse_all - lse_mm + lse_rest - lse_single).mean())
    return torch.stack(out)


@pytest.mark.parametrize("temperature", [1e-3, 1e-8])
def test_damrs_graded_loss_is_finite_at_a_tiny_temperature(temperature: float) -> None:
    # exp of a shifted cosine logit (-2 / tau at worst) underflows to 0 in float32 well
    # before these: the positives' sums were 0, the loss inf and the gradient NaN
    g = torch.Generator().manual_seed(4)
    views = [torch.randn(12, 5, generator=g, requires_grad=True) for _ in range(3)]
    anchors = torch.tensor([1, 2, 5, 11, 6])
    losses, positives = graded_neighbour_discrimination(views, anchors, 2, temperature, 3)
    grads = torch.autograd.grad(losses.sum(), views)
    assert torch.isfinite(losses).all() and all(torch.isfinite(x).all() for x in grads)
    expected = _dense_graded_losses(views, anchors, positives, temperature)
    torch.testing.assert_close(losses.double(), expected, rtol=1e-4, atol=1e-6)
    # the gradient of the float64 reference, at 1e-3 (at 1e-8 both are ~1e8-scaled)
    if temperature == 1e-3:
        dense = [h.detach().double().requires_grad_(True) for h in views]
        reference = _dense_graded_losses(dense, anchors, positives, temperature)
        for got, want in zip(grads, torch.autograd.grad(reference.sum(), dense)):
            torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


def test_damrs_trains_at_temperature_1e_8(data) -> None:
    _train("damrs", data, knn_k=3, temperature=1e-8, num_positives=3, embedding_dim=8)


# ---------------------------------------------------------------- DiffMM's step embedding width


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_timestep_embedding_has_the_asked_width(dim: int) -> None:
    t = torch.tensor([1, 3, 5])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (3, dim)
    if dim == 1:  # no frequency fits: the zero padding column alone
        assert torch.equal(emb, torch.zeros(3, 1))
    mlp = DenoisingMLP(7, [4], time_dim=dim)
    assert mlp(torch.rand(3, 7), t).shape == (3, 7)


def test_diffmm_trains_with_time_embedding_dim_1(data) -> None:
    _train("diffmm", data, time_embedding_dim=1, **SMALL)


# ---------------------------------------------------------------- DiffMM's noise floor


def test_tiny_noise_min_keeps_the_snr_weights_finite() -> None:
    # 1 - (1 - 1e-29) is 0 in float64: the SNR weight of step 2 was inf
    diffusion = GaussianDiffusion(5, noise_scale=0.1, noise_min=1e-28, noise_max=0.02)
    for name, buffer in diffusion.named_buffers():
        assert torch.isfinite(buffer).all(), name
    assert diffusion.snr_weight[2].item() == pytest.approx(1e29, rel=1e-3)


def test_noise_floor_below_the_float32_range_is_refused_by_name(data) -> None:
    message = (
        f"noise_scale * noise_min must be >= {MIN_FIRST_VARIANCE:g} with snr_weighting (step "
        "2's SNR weight is about 1 / (noise_scale * noise_min) and must stay finite in "
        "float32), got 0.1 * 1e-300"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pyg_dhmrec.build_model("diffmm", data, noise_min=1e-300, **SMALL)
    # no SNR weight, or no step 2: nothing to overflow
    GaussianDiffusion(5, noise_scale=0.1, noise_min=1e-300, noise_max=0.02, snr_weighting=False)
    GaussianDiffusion(1, noise_scale=0.1, noise_min=1e-300, noise_max=0.02)


def test_diffmm_trains_at_noise_min_1e_28(data) -> None:
    _train("diffmm", data, noise_min=1e-28, **SMALL)


def test_diffmm_refuses_noise_min_1e_300_on_the_command_line(tiny_cli_argv, capsys) -> None:
    argv = tiny_cli_argv("diffmm", "--noise_min", "1e-300", "--denoiser_dims", "[16]")
    del argv[argv.index("--knn_k") : argv.index("--knn_k") + 2]  # not a DiffMM key
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: noise_scale * noise_min must be >= 1e-30" in err and "Traceback" not in err


# ---------------------------------------------------------------- cosine kNN over every item


def test_symmetric_normalize_is_gcn_norm_where_degrees_are_positive() -> None:
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(6, (2, 20), generator=g)
    values = torch.rand(20, generator=g) + 0.1
    for degree, flow in (("row", "target_to_source"), ("col", "source_to_target")):
        _, expected = gcn_norm(edge_index, values, 6, add_self_loops=False, flow=flow)
        assert torch.equal(symmetric_normalize(edge_index, 6, values, degree=degree)[1], expected)


def test_symmetric_normalize_zeroes_non_positive_degrees() -> None:
    # node 0's row sums to -0.5 (gcn_norm's pow(-0.5) is NaN), node 1's to 0, node 2's to 1
    edge_index = torch.tensor([[0, 0, 1, 1, 2], [1, 2, 0, 2, 2]])
    values = torch.tensor([-1.0, 0.5, 0.5, -0.5, 1.0], requires_grad=True)
    assert torch.isnan(
        gcn_norm(edge_index, values.detach(), 3, add_self_loops=False, flow="target_to_source")[1]
    ).any()
    _, weight = symmetric_normalize(edge_index, 3, values, degree="row")
    assert weight.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    weight.sum().backward()
    assert torch.isfinite(values.grad).all()


def _negative_degree_graph(k: int):
    """A toy graph whose cosine top-``k`` graph of ``image`` has a row of negative degree."""
    data = _with_splits(toy_graph(NUM_USERS, NUM_ITEMS, 90, {"image": 6, "text": 4}))
    edge_index, raw = cosine_knn_edges(data["item"].image, k, normalize=False)
    degree = torch.zeros(NUM_ITEMS).index_add_(0, edge_index[0], raw)
    assert (degree < 0).any()  # the precondition: gcn_norm would give NaN rows
    _, weight = cosine_knn_edges(data["item"].image, k)
    assert torch.isfinite(weight).all()
    assert weight[(degree < 0)[edge_index[0]]].abs().sum() == 0
    return data


@pytest.mark.parametrize("name", ["lattice", "micro", "mgcn", "cmdl"])
@pytest.mark.parametrize("knn_k", [NUM_ITEMS - 1, NUM_ITEMS])
def test_cosine_knn_models_train_over_every_item(name: str, knn_k: int) -> None:
    data = _negative_degree_graph(knn_k)
    _train(name, data, knn_k=knn_k, embedding_dim=8)
    model = pyg_dhmrec.build_model(name, data, knn_k=knn_k, embedding_dim=8).eval()
    assert torch.isfinite(model.full_scores(torch.arange(NUM_USERS))).all()


def test_learned_knn_graph_is_finite_at_a_row_of_negative_degree() -> None:
    # item 0 points against the other four: its row (itself 1, four cosines near -1) sums < 0
    features = torch.tensor(
        [[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1], [-1.0, 0.2], [-1.0, -0.2]], requires_grad=True
    )
    edge_index, raw = cosine_knn_edges(features.detach(), 5, normalize=False)
    assert raw[edge_index[0] == 0].sum() < 0
    edge_index, weight = LearnedKNNGraph(5)(features)
    assert torch.isfinite(weight).all()
    assert weight[(edge_index[0] == 0) | (edge_index[1] == 0)].abs().sum() == 0
    weight.sum().backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_cli_lattice_knn_k_of_every_other_item(tiny_cli_argv, tmp_path) -> None:
    # 39 of the tiny synthetic set's 40 items: its cosine graphs have rows of negative degree
    argv = tiny_cli_argv("lattice", "--embedding_dim", "8")
    argv[argv.index("--knn_k") + 1] = "39"
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert all(math.isfinite(v) for v in results["test"].values())


# ---------------------------------------------------------------- a modality declared twice


@pytest.mark.parametrize(
    ("name", "keys"),
    [("freedom", {"knn_k": 3}), ("damrs", {"knn_k": 3, "num_positives": 3}), ("vbpr", {})],
)
def test_a_modality_declared_twice_is_refused(name: str, keys: dict) -> None:
    # the feature tables are keyed by name: ['image', 'image'] trained on image alone
    data = _with_splits(toy_graph(NUM_USERS, NUM_ITEMS, 90, {"image": 6, "text": 4}))
    data["item"].modalities = ["image", "image"]
    message = (
        "data['item'].modalities must name each modality once, got ['image', 'image'] "
        "(image repeated)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pyg_dhmrec.build_model(name, data, **keys)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # a malformed graph
        pyg_dhmrec.build_model("lightgcn", data)
