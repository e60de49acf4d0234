import inspect
import logging
import math

import numpy as np
import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.models import MODELS
from pyg_dhmrec.models.validation import (
    check_at_most,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_nonnegative,
    check_positive,
)


def test_check_int_returns_the_int() -> None:
    assert check_int("k", 3, 1) == 3
    assert check_int("layers", 0, 0) == 0
    value = check_int("k", np.int64(5), 1)  # a numpy integer is an integer
    assert value == 5 and type(value) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, r"k must be an int >= 1, got True"),
        (False, r"k must be an int >= 1, got False"),
        (2.0, r"k must be an int >= 1, got 2\.0"),
        (2.5, r"k must be an int >= 1, got 2\.5"),
        ("3", r"k must be an int >= 1, got '3'"),
        (0, r"k must be an int >= 1, got 0"),
        (-4, r"k must be an int >= 1, got -4"),
        (math.nan, r"k must be an int >= 1, got nan"),
        (math.inf, r"k must be an int >= 1, got inf"),
    ],
)
def test_check_int_refuses(value, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int("k", value, 1)


def test_check_at_most() -> None:
    assert check_at_most("knn_k", 30, 30, "the number of items") == 30
    with pytest.raises(ValueError, match=r"^knn_k must be <= the number of items 30, got 31$"):
        check_at_most("knn_k", 31, 30, "the number of items")


def test_number_checks_return_floats() -> None:
    assert check_nonnegative("w", 0) == 0.0 and type(check_nonnegative("w", 0)) is float
    assert check_nonnegative("w", 1e-4) == 1e-4
    assert check_positive("tau", 0.2) == 0.2
    assert check_positive("tau", np.float32(0.5)) == 0.5
    assert check_fraction("p", 0.0, include_1=False) == 0.0
    assert check_fraction("keep", 1, include_0=False) == 1.0
    assert check_fraction("mix", 0.0) == 0.0 and check_fraction("mix", 1.0) == 1.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-0.1, r"w must be >= 0, got -0\.1"),
        (-1, r"w must be >= 0, got -1"),
        (math.nan, r"w must be >= 0 and finite, got nan"),
        (math.inf, r"w must be >= 0 and finite, got inf"),
        (True, r"w must be a number >= 0, got True"),
        ("0.1", r"w must be a number >= 0, got '0\.1'"),
        (None, r"w must be a number >= 0, got None"),
    ],
)
def test_check_nonnegative_refuses(value, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_nonnegative("w", value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, r"tau must be > 0, got 0\.0"),
        (-2, r"tau must be > 0, got -2"),
        (math.nan, r"tau must be > 0 and finite, got nan"),
        (math.inf, r"tau must be > 0 and finite, got inf"),
        (False, r"tau must be a number > 0, got False"),
    ],
)
def test_check_positive_refuses(value, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_positive("tau", value)


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"include_1": False}, 1.0, r"p must be in \[0, 1\), got 1\.0"),
        ({"include_1": False}, -0.5, r"p must be in \[0, 1\), got -0\.5"),
        ({"include_0": False}, 0.0, r"p must be in \(0, 1\], got 0\.0"),
        ({}, 1.5, r"p must be in \[0, 1\], got 1\.5"),
        ({}, math.nan, r"p must be in \[0, 1\] and finite, got nan"),
        ({}, math.inf, r"p must be in \[0, 1\] and finite, got inf"),
        ({}, True, r"p must be a number in \[0, 1\], got True"),
    ],
)
def test_check_fraction_refuses(kwargs: dict, value, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_fraction("p", value, **kwargs)


def test_check_choice() -> None:
    assert check_choice("mode", "mean", ("mean", "sum")) == "mean"
    with pytest.raises(ValueError, match=r"^mode must be one of mean, sum, got 'max'$"):
        check_choice("mode", "max", ("mean", "sum"))


def test_check_bool() -> None:
    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    for value in (1, 0, "false", None):
        with pytest.raises(ValueError, match=rf"^flag must be true or false, got {value!r}$"):
            check_bool("flag", value)


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("bpr", {"embedding_dim": True}, "embedding_dim must be an int >= 1, got True"),
        ("lightgcn", {"reg_weight": float("nan")}, "reg_weight must be >= 0 and finite, got nan"),
        ("freedom", {"l2_weight": -1.0}, "l2_weight must be >= 0, got -1.0"),
        ("grcn", {"num_routing": 2.0}, r"num_routing must be an int >= 0, got 2\.0"),
        ("mmgcn", {"num_ui_layers": 0}, "num_ui_layers must be an int >= 1, got 0"),
        ("lgmrec", {"keep_rate": 0.0}, r"keep_rate must be in \(0, 1\], got 0\.0"),
        ("tmlp", {"mlp_dropout": 1.0}, r"mlp_dropout must be in \[0, 1\), got 1\.0"),
        ("tmlp", {"temperature": float("inf")}, "temperature must be > 0 and finite, got inf"),
        ("dualgnn", {"fusion": "sum"}, "fusion must be one of weighted_sum, mean, max, concat"),
        ("mgcn", {"finetune_features": 1}, "finetune_features must be true or false, got 1"),
        ("damrs", {"embedding_dim": 0}, "embedding_dim must be an int >= 1, got 0"),
        ("diffmm", {"snr_weighting": "yes"}, "snr_weighting must be true or false, got 'yes'"),
        ("dhmrec", {"alpha_mm": float("inf")}, "alpha_mm must be >= 0 and finite, got inf"),
        ("dhmrec", {"edge_dropout": 1.0}, r"edge_dropout must be in \[0, 1\), got 1\.0"),
        ("dhmrec", {"center_features": "no"}, "center_features must be true or false, got 'no'"),
        ("siger", {"perturbation_eps": float("nan")}, "perturbation_eps must be >= 0 and finite"),
        ("siger", {"use_infusion": 1}, "use_infusion must be true or false, got 1"),
        ("bm3", {"finetune_features": "no"}, "finetune_features must be true or false, got 'no'"),
        ("bm3", {"embedding_dim": 0}, "embedding_dim must be an int >= 1, got 0"),
        ("freedom", {"edge_dropout": -0.1}, r"edge_dropout must be in \[0, 1\), got -0\.1"),
        ("layergcn", {"num_ui_layers": 0}, "num_ui_layers must be an int >= 1, got 0"),
        (
            "diffmm",
            {"time_embedding_dim": 2.5},
            r"time_embedding_dim must be an int >= 1, got 2\.5",
        ),
        ("damrs", {"behaviour_k": 0}, "behaviour_k must be an int >= 1, got 0"),
        ("lightgcn", {"num_ui_layers": 2.5}, r"num_ui_layers must be an int >= 0, got 2\.5"),
        ("mgcn", {"num_ii_layers": True}, "num_ii_layers must be an int >= 0, got True"),
    ],
)
def test_models_refuse_bad_settings(model: str, kwargs: dict, message: str) -> None:
    data = toy_graph(modalities={"image": 6, "text": 4})
    with pytest.raises(ValueError, match=f"^{message}"):
        MODELS[model](data, **kwargs)


def _numeric_settings() -> list[tuple[str, str, object]]:
    """(model, argument, default) for every float or int constructor default of every model."""
    out = []
    for name, cls in sorted(MODELS.items()):
        for arg, parameter in inspect.signature(cls.__init__).parameters.items():
            default = parameter.default
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                out.append((name, arg, default))
    return out


@pytest.mark.parametrize(("model", "arg", "default"), _numeric_settings())
def test_every_numeric_setting_refuses_nan_naming_itself(model: str, arg: str, default) -> None:
    """NaN for any numeric setting (and 2.5 for an integer one) stops the constructor with an
    error that names the argument, never a NaN loss or a TypeError later."""
    data = toy_graph(modalities={"image": 6, "text": 4})
    bad = float("nan") if isinstance(default, float) else 2.5
    with pytest.raises(ValueError, match=rf"^{arg} must be .*got {bad!r}"):
        MODELS[model](data, **{arg: bad})


# ---------------------------------------------------------------- graphs built by hand


def _held_out(data):
    """``toy_graph`` with its last 40 edges as valid and test (20 each)."""
    store = data["user", "rates", "item"]
    edges = store.edge_index
    store.edge_index, store.valid_edge_index, store.test_edge_index = (
        edges[:, :-40],
        edges[:, -40:-20],
        edges[:, -20:],
    )
    return data


def _set(path: str, value):
    def mutate(data):
        *store, attr = path.split(".")
        target = data[tuple(store)] if len(store) > 1 else data[store[0]]
        setattr(target, attr, value(getattr(target, attr, None)))

    return mutate


def _drop(data):
    del data["user", "rates", "item"].valid_edge_index


def _nan_row(data):
    data["item"].image[7, 3] = float("nan")
    data["item"].image[9, 0] = float("inf")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _set("user.rates.item.edge_index", lambda e: e.float()),
            r"data\['user', 'rates', 'item'\]\.edge_index: edge_index must be an integer tensor",
        ),
        (
            _set("user.rates.item.edge_index", lambda e: e.t().contiguous()),
            r"data\['user', 'rates', 'item'\]\.edge_index: edge_index must have shape \[2, E\]",
        ),
        (
            _set("user.rates.item.edge_index", lambda e: e.index_fill(1, torch.tensor([0]), 40)),
            r"data\['user', 'rates', 'item'\]\.edge_index: user id 40 out of range \[0, 40\)",
        ),
        (
            _set("user.rates.item.test_edge_index", lambda e: e - 50),
            r"data\['user', 'rates', 'item'\]\.test_edge_index: user id -\d+ out of range",
        ),
        (
            _set("user.rates.item.edge_index", lambda e: e[:, :0]),
            r"data\['user', 'rates', 'item'\]\.edge_index holds no train interaction",
        ),
        (_drop, r"data\['user', 'rates', 'item'\]\.valid_edge_index is missing"),
        (_set("item.num_nodes", lambda n: None), r"data\['item'\]\.num_nodes must be .*got None"),
        (
            _nan_row,
            r"data\['item'\]\.image: features contain NaN or inf in 2 of 30 item rows, first at "
            r"item 7$",
        ),
        (
            _set("item.text", lambda x: x[:-1]),
            r"data\['item'\]\.text: features of shape \[29, 8\], expected \[30, f\]",
        ),
        (
            _set("item.text", lambda x: x[:, 0]),
            r"data\['item'\]\.text: features of shape \[30\], expected \[30, f\]",
        ),
        (
            _set("item.image", lambda x: x > 0),
            r"data\['item'\]\.image: expected floating-point features, got dtype torch\.bool",
        ),
        (
            _set("item.image", lambda x: x.long()),
            r"data\['item'\]\.image: expected floating-point features, got dtype torch\.int64 "
            r"\(\.float\(\) converts numbers\)",
        ),
        (
            _set("item.image", lambda x: x.to_sparse()),
            r"data\['item'\]\.image: expected a dense tensor, got torch\.sparse_coo",
        ),
        (
            _set("user.rates.item.edge_index", lambda e: torch.cat([e, e[:, 4:6]], dim=1)),
            r"data\['user', 'rates', 'item'\]\.edge_index: 2 \(user, item\) pair\(s\) given more "
            r"than once, first \(\d+, \d+\); give each interaction once",
        ),
    ],
    ids=[
        "float_ids",
        "transposed",
        "user_id_too_large",
        "negative_test_ids",
        "no_train_edge",
        "no_valid_split",
        "no_item_count",
        "nan_and_inf_features",
        "missing_feature_row",
        "one_dimensional_features",
        "boolean_features",
        "integer_features",
        "sparse_features",
        "duplicate_train_pairs",
    ],
)
def test_hand_built_graph_faults_name_the_attribute(mutate, message: str) -> None:
    from pyg_dhmrec import build_model, train

    data = _held_out(toy_graph(modalities={"image": 16, "text": 8}))
    mutate(data)
    with pytest.raises(ValueError, match=message):  # checked before any graph is built
        train(build_model("freedom", data, knn_k=5), data, epochs=1, device="cpu")


def test_id_only_graph_needs_no_declared_modalities() -> None:
    from pyg_dhmrec import build_model

    data = _held_out(toy_graph())
    del data["item"].modalities
    assert build_model("lightgcn", data).num_items == 30


def test_api_misuse_is_named(tmp_path) -> None:
    from pyg_dhmrec import build_model, fit, train
    from pyg_dhmrec.config import ConfigError

    data = _held_out(toy_graph(modalities={"image": 16, "text": 8}))
    with pytest.raises(ConfigError, match=r"^build_model\(\): unknown key 'knn'\. Did you mean"):
        build_model("freedom", data, knn=3)
    with pytest.raises(ConfigError, match=r"^keyword arguments: unknown key 'epoch'\. Did"):
        fit("lightgcn", "synthetic", epoch=1)
    with pytest.raises(TypeError, match=r"HeteroData .*, got dict$"):
        build_model("lightgcn", {"user": 3})
    model = build_model("lightgcn", data)
    larger = _held_out(toy_graph(num_users=50, num_items=35))
    with pytest.raises(
        ValueError, match=r"built for 40 users and 30 items, the data has 50 and 35"
    ):
        train(model, larger, epochs=1, device="cpu")
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match=r"output .*taken: exists and is not a folder"):
        train(model, data, epochs=1, device="cpu", output=tmp_path / "taken")


def test_a_pair_in_two_splits_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    from pyg_dhmrec.data.dataset import check_interaction_graph

    data = _held_out(toy_graph(modalities={"image": 16, "text": 8}))
    store = data["user", "rates", "item"]
    store.test_edge_index = torch.cat([store.test_edge_index, store.edge_index[:, :3]], dim=1)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.dataset"):
        check_interaction_graph(data)
    assert any(
        "3 (user, item) pair(s) in both the train and the test split" in r.getMessage()
        for r in caplog.records
    ), caplog.text
