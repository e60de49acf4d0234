"""DualGNN's own mechanism: the user co-occurrence aggregation, the modality fusions, errors."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import DualGNN


def _graph(modalities: dict[str, int] | None = None):
    return toy_graph(20, 15, 90, modalities or {"image": 6, "text": 4}, seed=5)


def test_user_graph_adds_the_top_co_occurring_user() -> None:
    """With k = 1 every user with a co-occurring user adds exactly that user's fused
    representation (weight softmax of one count = 1); the top one from a dense R R^T."""
    data = _graph()
    torch.manual_seed(0)
    model = DualGNN(data, embedding_dim=8, user_graph_k=1, fusion="mean").eval()
    r = torch.zeros(20, 15)
    r[data[RATES].edge_index[0], data[RATES].edge_index[1]] = 1.0
    c = r @ r.t()
    c.fill_diagonal_(0.0)
    with torch.no_grad():
        reps = model.modality_representations()
        fused = torch.stack([x[:20] for x in reps.values()]).mean(0)
        expected = fused.clone()
        for u in range(20):
            if c[u].max() > 0:
                top = int(torch.sort(c[u], descending=True, stable=True).indices[0])
                expected[u] += fused[top]
        out = model()
    torch.testing.assert_close(out.user, expected)
    torch.testing.assert_close(out.item, sum(x[20:] for x in reps.values()))


def test_neighbour_weights_are_a_softmax_over_counts() -> None:
    data = _graph()
    model = DualGNN(data, embedding_dim=8, user_graph_k=3)
    matrix = model._user_aggregation[0].to_dense()
    has = torch.bincount(model.user_graph_edge_index[0], minlength=20) > 0
    torch.testing.assert_close(matrix.sum(1), has.float())  # rows of users with neighbours sum to 1
    assert torch.equal(matrix.diagonal(), torch.zeros(20))


def test_resampling_each_epoch_changes_only_padded_users() -> None:
    data = _graph()
    model = DualGNN(data, embedding_dim=8, user_graph_k=6)
    degree = torch.bincount(model.user_graph_edge_index[0], minlength=20)
    before = model._user_aggregation[0].to_dense()
    changed = torch.zeros(20, dtype=torch.bool)
    for seed in range(5):
        torch.manual_seed(seed)
        model.on_train_epoch_start()
        changed |= (model._user_aggregation[0].to_dense() - before).abs().sum(1) > 1e-6
    assert not bool(changed[degree >= 6].any())  # a full top-k list is never resampled
    assert bool(changed[(degree > 1) & (degree < 6)].any())


@pytest.mark.parametrize("fusion", ["weighted_sum", "max", "concat"])
def test_user_fusions(fusion: str) -> None:
    model = DualGNN(_graph(), embedding_dim=4, fusion=fusion)
    a, b = torch.randn(20, 4), torch.randn(20, 4)
    w = model.fusion_weights.detach()
    got = model.fuse_users([a, b])
    if fusion == "weighted_sum":
        torch.testing.assert_close(got, w[:, :1] * a + w[:, 1:] * b)
    elif fusion == "max":
        torch.testing.assert_close(got, torch.maximum(w[:, :1] * a, w[:, 1:] * b))
    else:
        torch.testing.assert_close(
            got, model.fusion_layer(torch.cat([w[:, :1] * a, w[:, 1:] * b], 1))
        )
    # Initial weights: softmax of small noise, about 1/M for each modality.
    torch.testing.assert_close(w.sum(1), torch.ones(20))


def test_one_modality_works() -> None:
    model = DualGNN(_graph({"audio": 5}), embedding_dim=4)
    out = model()
    assert out.user.shape == (20, 4) and out.item.shape == (15, 4)
    assert list(out.modalities) == ["audio"]


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="fusion"):
        DualGNN(_graph(), fusion="sum")
    with pytest.raises(ValueError, match="user_graph_weighting"):
        DualGNN(_graph(), user_graph_weighting="max")
    with pytest.raises(ValueError, match="user_graph_k"):
        DualGNN(_graph(), user_graph_k=0)
