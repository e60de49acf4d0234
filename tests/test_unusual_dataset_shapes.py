"""Every registered model on MMRec-format folders of unusual but legal shape: one modality,
three of very different widths, items outside the train split or in no split at all, a user
holding every item but one, a user with one train interaction, constant columns, all-zero and
duplicate rows, float16 / float64 files, rows of tiny norm, knn_k at 1 and at items - 1, batch
sizes 1 and above the train set, embedding sizes 1 and 3.

Each model trains one epoch with evaluation (finite losses, scores and parameters, metrics in
[0, 1]) or refuses with an error naming the model or key and what it needs; no other outcome.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData
from toy_graphs import train_one_epoch

from pyg_dhmrec.cli import main
from pyg_dhmrec.data.dataset import RATES, MMRecDataset
from pyg_dhmrec.data.graph import cosine_knn_edges, item_knn_graph, unit_rows
from pyg_dhmrec.data.transforms import add_derived_graphs
from pyg_dhmrec.models import MODELS, model_keys, model_settings
from pyg_dhmrec.nn import LearnedKNNGraph

NAMES = sorted(MODELS)  # every registered model; none is skipped
#: Small settings, passed to the models whose constructor takes them.
SMALL = {
    "embedding_dim": 8,
    "knn_k": 3,
    "infusion_k": 3,
    "pruned_k": 2,
    "num_hyperedges": 4,
    "user_graph_k": 3,
    "num_positives": 3,
    "denoiser_dims": [16],
    "diffusion_batch_size": 10,
    "feature_dim": 8,
    "feat_embed_dim": 8,
    "hidden_dim": 8,
}
#: Models whose modality_weights (YAML default: image 0.1, text 0.9) must name every modality.
WEIGHTED = {name for name in NAMES if "modality_weights" in model_keys(name)}
NUM_USERS, NUM_ITEMS = 20, 15


def _base_pairs(num_users: int = NUM_USERS, num_items: int = NUM_ITEMS) -> list[tuple]:
    """Five items per user (three train, one valid, one test); user ``u`` rates item ``u``."""
    rng = np.random.default_rng(0)
    pairs = []
    for u in range(num_users):
        items = [int(i) for i in rng.choice(num_items, 5, replace=False)]
        if u < num_items and u not in items:
            items[0] = u
        pairs += [(u, i, 0 if j < 3 else j - 2) for j, i in enumerate(items)]
    return pairs


def _features(num_items: int, widths: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((num_items, w)).astype(np.float32) for m, w in widths.items()}


def _write(root: Path, name: str, pairs: list[tuple], features: dict[str, np.ndarray]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    lines = ["userID\titemID\tx_label", *(f"{u}\t{i}\t{s}" for u, i, s in pairs)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for m, x in features.items():
        np.save(folder / f"{m}_feat.npy", x)
    return folder


def _load(root: Path, name: str, modalities: list[str]) -> HeteroData:
    return MMRecDataset(str(root), name, {m: f"{m}_feat.npy" for m in modalities})[0]


def _sparse_pairs() -> list[tuple]:
    """The base pairs, then: user 0 trains on items 0-13 (every train item but one), user 1 on
    item 3 alone; items 15 and 16 only in valid/test, item 17 in no split, item 18 only in
    test; user 20 has no interaction at all, user 21 one of each split."""
    pairs = [p for p in _base_pairs() if p[0] not in (0, 1)]
    pairs += [(0, i, 0) for i in range(14)] + [(0, 14, 2)]
    pairs += [(1, 3, 0), (1, 5, 1), (1, 4, 2)]
    pairs += [(2, 15, 1), (3, 16, 2), (4, 18, 2)]
    pairs += [(21, 6, 0), (21, 7, 1), (21, 8, 2)]
    return pairs


def _degenerate(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A constant column, item 4 all zeros in every modality, items 7-9 identical rows, item 2
    scaled by 1e-14 (norm below F.normalize's eps) and item 11 by 1e-25 (float32's sum of
    squares underflows to 0): cosine is scale-free, so both keep their neighbours."""
    f = {m: x.copy() for m, x in features.items()}
    for x in f.values():
        x[:, 0] = 3.0
        x[4] = 0.0
        x[8] = x[9] = x[7]
        x[2] *= 1e-14
        x[11] *= 1e-25
    return f


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, tuple[HeteroData, dict, dict]]:
    """Shape name -> (graph read from its MMRec folder, model keys, train keys)."""
    root = tmp_path_factory.mktemp("shapes")
    out = {}
    base = _base_pairs()

    _write(root, "textonly", base, _features(NUM_ITEMS, {"text": 4}))
    out["text_only"] = (_load(root, "textonly", ["text"]), {}, {})

    _write(root, "imageonly", base, _features(NUM_ITEMS, {"image": 1}))
    out["image_only_1_column_knn_1_dim_3"] = (
        _load(root, "imageonly", ["image"]),
        {"modality_weights": {"image": 1.0}, "knn_k": 1, "infusion_k": 1, "pruned_k": 1}
        | {key: 3 for key in ("embedding_dim", "feature_dim", "feat_embed_dim", "hidden_dim")},
        {},
    )

    wide = _features(NUM_ITEMS, {"image": 4096, "text": 7, "audio": 1})
    wide["image"] = wide["image"].astype(np.float16)
    _write(root, "three", base, wide)
    out["three_modalities_4096_7_1_batch_above_train"] = (
        _load(root, "three", ["image", "text", "audio"]),
        {"modality_weights": {"image": 0.2, "text": 0.5, "audio": 0.3}, "embedding_dim": 3},
        {"batch_size": 100_000},
    )

    _write(root, "sparse", _sparse_pairs(), _features(19, {"image": 6, "text": 4}))
    out["sparse_interactions_knn_items_minus_1"] = (
        _load(root, "sparse", ["image", "text"]),
        {"knn_k": 18, "infusion_k": 18, "pruned_k": 18},
        {},
    )

    f = _degenerate(_features(NUM_ITEMS, {"image": 6, "text": 4}))
    f["image"] = f["image"].astype(np.float64)  # read as float32 (float16: the 4096-d shape)
    _write(root, "degenerate", base[:40], f)  # users 0-7: 24 train interactions
    out["degenerate_features_knn_1_dim_1_batch_1"] = (
        _load(root, "degenerate", ["image", "text"]),
        {"knn_k": 1, "infusion_k": 1, "pruned_k": 1, "behaviour_min_count": 1}
        | {key: 1 for key in ("embedding_dim", "feature_dim", "feat_embed_dim", "hidden_dim")},
        {"batch_size": 1, "max_steps_per_epoch": 6},  # six batches of one triple
    )
    return out


#: (shape, model) -> the message the model refuses with (a full match).
REFUSALS = {
    ("text_only", "dhmrec"): re.escape(
        "DHMRec needs at least 2 modalities, the dataset has ['text']"
    ),
    ("image_only_1_column_knn_1_dim_3", "dhmrec"): re.escape(
        "DHMRec needs at least 2 modalities, the dataset has ['image']"
    ),
    **{
        ("text_only", name): re.escape(
            "modality_weights must give one weight per modality ['text'], got "
            "{'image': 0.1, 'text': 0.9}; set them for this dataset, e.g. --modality_weights "
            "'{text: 1}' (or in the model's per_dataset entry)"
        )
        for name in WEIGHTED - {"dhmrec"}
    },
}
SHAPES = [
    "text_only",
    "image_only_1_column_knn_1_dim_3",
    "three_modalities_4096_7_1_batch_above_train",
    "sparse_interactions_knn_items_minus_1",
    "degenerate_features_knn_1_dim_1_batch_1",
]


def _train(name: str, data: HeteroData, keys: dict, train_keys: dict) -> dict:
    settings = {k: v for k, v in {**SMALL, **keys}.items() if k in model_keys(name)}
    results = train_one_epoch(name, data, train_keys, **settings)
    model = results.pop("model")
    for split in ("valid", "test"):
        metrics = results[split]
        assert set(metrics) == {"recall@5", "ndcg@5", "precision@5", "map@5"}, metrics
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values()), metrics
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite parameters {bad}"
    model.eval()
    num_users, num_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
    scores = model.full_scores(torch.arange(num_users))
    assert scores.shape == (num_users, num_items)  # every item ranked, cold ones included
    assert torch.isfinite(scores).all()
    return results


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_trains_or_refuses_by_name(shape: str, name: str, shapes) -> None:
    data, keys, train_keys = shapes[shape]
    refusal = REFUSALS.get((shape, name))
    if refusal is not None:
        with pytest.raises(ValueError, match=f"^{refusal}$"):
            _train(name, data, keys, train_keys)
    else:
        _train(name, data, keys, train_keys)


@pytest.mark.parametrize("name", sorted(WEIGHTED - {"dhmrec"}))
def test_one_modality_trains_with_its_own_weight(name: str, shapes) -> None:
    # the refusal above names the fix: one weight for the one modality
    data, _, _ = shapes["text_only"]
    _train(name, data, {"modality_weights": {"text": 1.0}}, {})


def test_the_sparse_folder_is_read_without_dropping_anything(shapes) -> None:
    data, _, _ = shapes["sparse_interactions_knn_items_minus_1"]
    assert data["user"].num_nodes == 22  # user 20 has no interaction: still a user
    assert data["item"].num_nodes == 19  # item 17 is in no split: still an item
    pairs = _sparse_pairs()
    for split, attr in enumerate(("edge_index", "valid_edge_index", "test_edge_index")):
        edges = data[RATES][attr]
        assert sorted(map(tuple, edges.t().tolist())) == sorted(
            (u, i) for u, i, s in pairs if s == split
        )
    train_items = set(data[RATES].edge_index[1].tolist())
    assert {15, 16, 17, 18}.isdisjoint(train_items) and len(train_items) == 15
    assert data["item"].image.shape == (19, 6) and data["item"].text.shape == (19, 4)


# ---------------------------------------------------------------- cosine kNN of extreme rows


def _scaled_copies(x: torch.Tensor) -> torch.Tensor:
    """``x``'s rows, each also scaled by 1e-14, 1e-25 and 1e25 (finite float32 rows)."""
    return torch.cat([x, x * 1e-14, x * 1e-25, x * 1e25])


def test_unit_rows_of_tiny_and_huge_rows_have_unit_norm() -> None:
    # float32's norm of a 1e-25 row underflows to 0 and of a 1e25 row overflows to inf:
    # both read as zero rows before
    base = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    base[0] = 0.0
    x = _scaled_copies(base)
    unit = unit_rows(x)
    norms = torch.linalg.vector_norm(unit, dim=1)
    assert norms[0] == 0 and norms[3] == 0 and norms[6] == 0 and norms[9] == 0  # zero rows
    keep = torch.tensor([i % 3 != 0 for i in range(12)])
    torch.testing.assert_close(norms[keep], torch.ones(8))
    torch.testing.assert_close(unit[4:6], unit[1:3])
    torch.testing.assert_close(unit[7:9], unit[1:3])
    torch.testing.assert_close(unit[10:12], unit[1:3])


@pytest.mark.parametrize("normalize", [False, True])
def test_cosine_knn_of_a_rescaled_row_is_the_cosine_of_the_row(normalize: bool) -> None:
    # F.normalize's eps (1e-12) shrank a 1e-14 row: its cosine to itself read about 1e-2
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 4, generator=g)
    x = _scaled_copies(base).requires_grad_(True)
    n = base.size(0)
    edge_index, weight = cosine_knn_edges(x, 4, normalize=normalize)
    assert torch.equal(edge_index, item_knn_graph(x.detach(), 4))
    # every row's top-4: itself and its three scaled copies, all at cosine 1
    for i in range(4 * n):
        neighbours = set(edge_index[1, edge_index[0] == i].tolist())
        assert neighbours == {i % n + c * n for c in range(4)}, (i, neighbours)
    expected = torch.full_like(weight, 1.0 if not normalize else 0.25)
    torch.testing.assert_close(weight, expected)
    weight.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_learned_knn_graph_of_tiny_rows_matches_the_unscaled_one() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, generator=g)
    graph = LearnedKNNGraph(3)
    edges, weight = graph(x)
    tiny_edges, tiny_weight = graph(x * 1e-14)
    assert torch.equal(tiny_edges, edges)
    torch.testing.assert_close(tiny_weight, weight)


#: The derived graphs built from item features (DualGNN's user graph reads none).
FEATURE_GRAPHS = {"AddItemKNNGraphs", "AddConsistentItemKNNGraphs", "AddTopologicallyPrunedGraph"}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in NAMES
        if FEATURE_GRAPHS
        & {type(t).__name__ for t in MODELS[n].graph_transforms(model_settings(n, SMALL))}
    ],
)
def test_item_graphs_ignore_the_scale_of_feature_rows(name: str, tmp_path: Path) -> None:
    # rows at 1e-14, 1e-25 and 1e25 of their scale: every derived graph of the model is the
    # one of the unscaled features (before, the cosine graphs shrank the 1e-14 row's weights
    # and every kNN graph read the 1e-25 and 1e25 rows as zero rows)
    features = _features(NUM_ITEMS, {"image": 6, "text": 4}, seed=3)
    scaled = {m: x.copy() for m, x in features.items()}
    for x in scaled.values():
        x[2] *= np.float32(1e-14)
        x[5] *= np.float32(1e-25)
        x[9] *= np.float32(1e25)
    _write(tmp_path, "plain", _base_pairs(), features)
    _write(tmp_path, "scaled", _base_pairs(), scaled)
    transforms = MODELS[name].graph_transforms(model_settings(name, SMALL))
    graphs = [
        add_derived_graphs(_load(tmp_path, folder, ["image", "text"]), transforms)
        for folder in ("plain", "scaled")
    ]
    derived = [t for t in graphs[0].edge_types if t[1] not in ("rates", "rev_rates")]
    assert derived
    for edge_type in derived:
        plain, rescaled = graphs[0][edge_type], graphs[1][edge_type]
        assert torch.equal(plain.edge_index, rescaled.edge_index), edge_type
        if "edge_weight" in plain:
            torch.testing.assert_close(plain.edge_weight, rescaled.edge_weight, msg=str(edge_type))


# ---------------------------------------------------------------- the command line


def _cli(tmp_path: Path, name: str, dataset: str, *extra: str) -> list[str]:
    return [
        *("--model", name, "--dataset", dataset, "--data-root", str(tmp_path)),
        *("--epochs", "1", "--quiet", "--topk", "[5]", "--early_stop_metric", "recall@5"),
        *("--device", "cpu", "--output", str(tmp_path / "run"), "--embedding_dim", "4", *extra),
    ]


def test_cli_refuses_a_one_modality_folder_for_dhmrec(tmp_path: Path, capsys) -> None:
    _write(tmp_path, "onlytext", _base_pairs(), _features(NUM_ITEMS, {"text": 4}))
    assert main(_cli(tmp_path, "dhmrec", "onlytext", "--modalities", "{text: text_feat.npy}")) == 2
    err = capsys.readouterr().err
    assert "error: DHMRec needs at least 2 modalities, the dataset has ['text']" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_cli_trains_on_the_sparse_degenerate_folder(tmp_path: Path, capsys) -> None:
    # every odd shape at once, through the loader's cached derived graphs
    features = _degenerate(_features(19, {"image": 6, "text": 4, "audio": 1}))
    _write(tmp_path, "odd", _sparse_pairs(), features)
    modalities = "{image: image_feat.npy, text: text_feat.npy, audio: audio_feat.npy}"
    argv = _cli(tmp_path, "freedom", "odd", "--modalities", modalities, "--knn_k", "18")
    argv += ["--modality_weights", "{image: 0.2, text: 0.5, audio: 0.3}", "--batch_size", "7"]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert all(math.isfinite(v) for record in results["history"] for v in record["loss"].values())
    assert all(0.0 <= v <= 1.0 for v in results["test"].values()), results["test"]
