"""Model options refused by name: the message names the config key (the constructor argument)
and what it expects, on both paths a value takes: the dataset loader's ``graph_transforms``
(which runs before the constructor) and the constructor (``pyg_dhmrec.build_model``)."""

from __future__ import annotations

import re

import pytest
import torch
from toy_graphs import toy_graph

import pyg_dhmrec
from pyg_dhmrec.cli import main
from pyg_dhmrec.models import model_class, model_settings
from pyg_dhmrec.models.validation import (
    MAX_DIFFUSION_STEPS,
    MAX_LAYERS,
    MAX_WIDTH,
    check_int,
    check_int_list,
)

NUM_USERS, NUM_ITEMS = 40, 30


@pytest.fixture(scope="module")
def data():
    return toy_graph(NUM_USERS, NUM_ITEMS, 400, modalities={"image": 6, "text": 4})


def _refused(name: str, data, message: str, **keys) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        pyg_dhmrec.build_model(name, data, **keys)


def _transforms_refuse(name: str, message: str, **keys) -> None:
    """The loader's call: ``graph_transforms`` of the model's settings, before any model."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        model_class(name).graph_transforms(model_settings(name, keys))


# ---------------------------------------------------------------- check_int's upper bound


def test_check_int_high_bound() -> None:
    assert check_int("num_routing", 64, 0, 64) == 64
    with pytest.raises(ValueError, match=r"^num_routing must be in \[0, 64\], got 65$"):
        check_int("num_routing", 65, 0, 64)
    # the low side (and a non-int) keep their message
    with pytest.raises(ValueError, match=r"^num_routing must be an int >= 0, got -1$"):
        check_int("num_routing", -1, 0, 64)
    with pytest.raises(ValueError, match=r"^num_routing must be an int >= 0, got 2\.5$"):
        check_int("num_routing", 2.5, 0, 64)


def test_check_int_list() -> None:
    assert check_int_list("dims", (3, 4), 1, 8) == [3, 4]
    for bad in ([], [2.5], [True], ["abc"], [0], [9], 5, "12", None):
        expected = rf"dims must be a non-empty list of ints in \[1, 8\], got {re.escape(repr(bad))}"
        with pytest.raises(ValueError, match=f"^{expected}$"):
            check_int_list("dims", bad, 1, 8)


# ---------------------------------------------------------------- 1. named by their key


@pytest.mark.parametrize(
    ("name", "keys", "message"),
    [
        ("damrs", {"behaviour_k": 0}, "behaviour_k must be an int >= 1, got 0"),
        ("damrs", {"behaviour_k": None}, "behaviour_k must be an int >= 1, got None"),
        ("damrs", {"behaviour_min_count": 0}, "behaviour_min_count must be an int >= 1, got 0"),
        ("dualgnn", {"user_graph_k": 0}, "user_graph_k must be an int >= 1, got 0"),
        ("tmlp", {"pruned_k": 0}, "pruned_k must be an int >= 1, got 0"),
        ("siger", {"infusion_k": None}, "infusion_k must be a positive int, got None"),
        (
            "tmlp",
            {"modality_weights": {"image": "abc", "text": 1}},
            "modality_weights must be finite numbers >= 0 with a positive sum, "
            "got {'image': 'abc', 'text': 1}",
        ),
    ],
)
def test_graph_transforms_name_the_key(name: str, keys: dict, message: str) -> None:
    _transforms_refuse(name, message, **keys)


@pytest.mark.parametrize(
    ("model", "key", "value", "message"),
    [
        ("damrs", "--behaviour_k", "0", "behaviour_k must be an int >= 1, got 0"),
        ("tmlp", "--pruned_k", "0", "pruned_k must be an int >= 1, got 0"),
    ],
)
def test_cli_names_the_key(model, key, value, message, tiny_cli_argv, capsys) -> None:
    assert main(tiny_cli_argv(model, key, value)) == 2
    assert f"error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("dims", [[], ["abc"], [2.5], [True], [0], [-1], [MAX_WIDTH + 1], [8, 2.5]])
def test_diffmm_denoiser_dims_refused(data, dims) -> None:
    _refused(
        "diffmm",
        data,
        f"denoiser_dims must be a non-empty list of ints in [1, {MAX_WIDTH}], got {dims!r}",
        denoiser_dims=dims,
    )


def test_denoising_mlp_refuses_fractional_sizes() -> None:
    from pyg_dhmrec.nn import DenoisingMLP

    for dims in ([2.5], [True], ["8"]):
        with pytest.raises(ValueError, match=r"^hidden_dims must be a non-empty list"):
            DenoisingMLP(10, dims)


# ---------------------------------------------------------------- 2. bounded by the data


def _largest_co_interaction(data) -> int:
    edges = data["user", "rates", "item"].edge_index
    r = torch.zeros(NUM_USERS, NUM_ITEMS)
    r[edges[0], edges[1]] = 1.0
    counts = r.t() @ r
    counts.fill_diagonal_(0)
    return int(counts.max())


def test_damrs_behaviour_min_count_leaving_no_edge(data) -> None:
    largest = _largest_co_interaction(data)
    for value in (largest + 1, 10**12):
        _refused(
            "damrs",
            data,
            f"behaviour_min_count must be <= {largest} (the most users any two items share in "
            f"the train interactions), got {value}: the behaviour graph would hold no "
            "co-interaction edge",
            behaviour_min_count=value,
            num_positives=3,
        )
    pyg_dhmrec.build_model("damrs", data, behaviour_min_count=largest, num_positives=3)


@pytest.mark.parametrize(
    ("name", "keys", "message"),
    [
        (
            "damrs",
            {"behaviour_k": NUM_ITEMS, "num_positives": 3},
            f"behaviour_k must be <= the number of other items {NUM_ITEMS - 1}, got {NUM_ITEMS}",
        ),
        (
            "damrs",
            {"behaviour_k": 10**12, "num_positives": 3},
            f"behaviour_k must be <= the number of other items {NUM_ITEMS - 1}, got {10**12}",
        ),
        (
            "tmlp",
            {"pruned_k": 10**12},
            f"pruned_k must be <= the number of other items {NUM_ITEMS - 1}, got {10**12}",
        ),
        (
            "dualgnn",
            {"user_graph_k": 1000},
            "user_graph_k must be <= 40 (the larger of the number of other users, "
            f"{NUM_USERS - 1}, and the published 40), got 1000",
        ),
        (
            "dualgnn",
            {"user_graph_k": 10**12},
            "user_graph_k must be <= 40 (the larger of the number of other users, "
            f"{NUM_USERS - 1}, and the published 40), got {10**12}",
        ),
        (
            "siger",
            {"infusion_k": NUM_ITEMS},
            f"infusion_k must be <= the number of other items {NUM_ITEMS - 1}, got {NUM_ITEMS}",
        ),
    ],
)
def test_neighbour_counts_bounded_by_the_data(data, name: str, keys: dict, message: str) -> None:
    _refused(name, data, message, **keys)


def test_neighbour_counts_at_the_bound_are_accepted(data) -> None:
    pyg_dhmrec.build_model("damrs", data, behaviour_k=NUM_ITEMS - 1, num_positives=3)
    pyg_dhmrec.build_model("tmlp", data, pruned_k=NUM_ITEMS - 1)
    pyg_dhmrec.build_model("dualgnn", data, user_graph_k=40)  # the published k, 39 others
    # SIGER's infusion_k is not read without the infusion
    pyg_dhmrec.build_model("siger", data, use_infusion=False, infusion_k=NUM_ITEMS)


def test_dualgnn_user_graph_k_above_40_bounded_by_the_users() -> None:
    data = toy_graph(60, NUM_ITEMS, 500, modalities={"image": 6, "text": 4})
    pyg_dhmrec.build_model("dualgnn", data, user_graph_k=59)
    _refused(
        "dualgnn",
        data,
        "user_graph_k must be <= 59 (the larger of the number of other users, 59, and the "
        "published 40), got 60",
        user_graph_k=60,
    )


# ---------------------------------------------------------------- 3. sizes with an upper bound


@pytest.mark.parametrize(
    ("name", "key", "low", "high"),
    [
        ("grcn", "num_routing", 0, MAX_LAYERS),
        ("grcn", "feature_dim", 1, MAX_WIDTH),
        ("lgmrec", "num_hyper_layers", 1, MAX_LAYERS),
        ("lgmrec", "num_hyperedges", 1, MAX_WIDTH),
        ("diffmm", "num_layers", 0, MAX_LAYERS),
        ("diffmm", "diffusion_steps", 1, MAX_DIFFUSION_STEPS),
        ("diffmm", "time_embedding_dim", 1, MAX_WIDTH),
        ("tmlp", "num_mlp_layers", 1, MAX_LAYERS),
        ("tmlp", "hidden_dim", 1, MAX_WIDTH),
        ("tmlp", "feat_embed_dim", 1, MAX_WIDTH),
        ("mmgcn", "feature_dim", 1, MAX_WIDTH),
        ("lattice", "feat_embed_dim", 1, MAX_WIDTH),
        ("micro", "feat_embed_dim", 1, MAX_WIDTH),
        ("cmdl", "critic_hidden", 1, MAX_WIDTH),
    ],
)
@pytest.mark.parametrize("over", [1, 10**12])
def test_sizes_have_an_upper_bound(data, name, key, low, high, over) -> None:
    value = high + over  # just above the bound, and huge (terabytes, or a run that never ends)
    _refused(name, data, f"{key} must be in [{low}, {high}], got {value}", **{key: value})


# ---------------------------------------------------------------- 4. DHMRec's list and mapping


def test_dhmrec_refuses_empty_modality_weights(data) -> None:
    _refused(
        "dhmrec",
        data,
        "modality_weights must give one weight per modality ['image', 'text'], got {}; set "
        "them for this dataset, e.g. --modality_weights '{image: 0.5, text: 0.5}' (or in the "
        "model's per_dataset entry)",
        modality_weights={},
    )


def test_dhmrec_refuses_repeated_ablations(data) -> None:
    _refused(
        "dhmrec",
        data,
        "ablations must name each ablation once, got ['no_dis', 'no_dis'] (no_dis repeated)",
        ablations=["no_dis", "no_dis"],
    )
    _refused(
        "dhmrec",
        data,
        "ablations must name each ablation once, got ['no_kl', 'no_af', 'no_kl', 'no_af'] "
        "(no_af, no_kl repeated)",
        ablations=["no_kl", "no_af", "no_kl", "no_af"],
    )
