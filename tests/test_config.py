"""Tests of the layered YAML configuration and of the real config files."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pyg_dhmrec.config import (
    CONFIG_DIR,
    MODEL_FILE_TRAINER_KEYS,
    ConfigError,
    available,
    coerce,
    load_config,
    load_yaml,
    parse_cli_overrides,
)
from pyg_dhmrec.models import MODELS, model_class, model_keys


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "overall.yaml").write_text(
        "a: 1          # set only here\n"
        "b: 1          # dataset overrides\n"
        "c: 1          # dataset and model override\n"
        "d: 1          # dataset, model and per_dataset override\n"
        "e: 1          # everything overrides\n"
        "lr: 0.5       # a float\n"
        "name: base    # a string\n"
        "ks: [1, 2]    # a list\n"
        "flag: false   # a bool\n"
        "opt: null     # anything goes\n"
    )
    (tmp_path / "datasets" / "ds.yaml").write_text("b: 2\nc: 2\nd: 2\ne: 2\nname: ds\n")
    (tmp_path / "datasets" / "other.yaml").write_text("")
    (tmp_path / "models" / "mod.yaml").write_text(
        "c: 3\nd: 3\ne: 3\nown: 7\n"
        "per_dataset:\n  ds:\n    d: 4\n    e: 4\n    own: 8\n  other:\n    a: 99\n"
    )
    (tmp_path / "models" / "zeta.yaml").write_text("own: 1\n")
    return tmp_path


def test_precedence_overall_dataset_model_per_dataset_overrides(config_dir: Path) -> None:
    config = load_config("mod", "ds", {"e": 5}, config_dir=config_dir)
    assert (config["a"], config["b"], config["c"], config["d"], config["e"]) == (1, 2, 3, 4, 5)
    assert config["own"] == 8  # model key, then its per_dataset entry
    assert config["name"] == "ds"
    assert (config["model"], config["dataset"]) == ("mod", "ds")
    assert "per_dataset" not in config


def test_per_dataset_applies_only_to_its_dataset(config_dir: Path) -> None:
    config = load_config("mod", "other", config_dir=config_dir)
    assert (config["a"], config["b"], config["c"], config["d"], config["e"]) == (99, 1, 3, 3, 3)
    assert config["own"] == 7
    assert config["name"] == "base"


def test_overrides_types(config_dir: Path) -> None:
    config = load_config(
        "mod", "ds", {"lr": 2, "ks": [5], "flag": True, "opt": "x"}, config_dir=config_dir
    )
    assert config["lr"] == 2.0 and isinstance(config["lr"], float)  # int accepted for float
    assert config["ks"] == [5]
    assert config["flag"] is True
    assert config["opt"] == "x"


def test_dataset_file_may_not_add_keys(config_dir: Path) -> None:
    (config_dir / "datasets" / "bad.yaml").write_text("epohcs: 3\n")
    with pytest.raises(ConfigError, match=r"datasets/bad\.yaml: unknown key 'epohcs'"):
        load_config("mod", "bad", config_dir=config_dir)


def test_per_dataset_wrong_type_names_source(config_dir: Path) -> None:
    (config_dir / "models" / "bad.yaml").write_text("per_dataset:\n  ds:\n    a: text\n")
    with pytest.raises(
        ConfigError, match=r"models/bad\.yaml \(per_dataset\.ds\): key 'a' expects int"
    ):
        load_config("bad", "ds", config_dir=config_dir)


def test_invalid_yaml_and_non_mapping(config_dir: Path) -> None:
    (config_dir / "datasets" / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config("mod", "broken", config_dir=config_dir)
    (config_dir / "datasets" / "listy.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"listy\.yaml: expected a mapping of key: value, got"):
        load_config("mod", "listy", config_dir=config_dir)


def test_unknown_model_and_dataset_list_available(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'nope'; available: mod, zeta$"):
        load_config("nope", "ds", config_dir=config_dir)
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'nope'; available: ds, other\. A dataset of"
    ):
        load_config("mod", "nope", config_dir=config_dir)
    assert available("models", config_dir) == ["mod", "zeta"]


def test_real_unknown_model_and_dataset() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'lightgnc'; available: .*lightgcn"):
        load_config("lightgnc", "synthetic")
    with pytest.raises(ConfigError, match=r"unknown dataset 'babby'; available: .*baby.*synthetic"):
        load_config("bpr", "babby")


def test_unknown_cli_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("lightgcn", "synthetic", parse_cli_overrides(["--epoch", "3"]))
    message = str(info.value)
    assert message.startswith("command line: unknown key 'epoch'.")
    assert "Did you mean: epochs?" in message
    assert "Known keys" not in message  # the suggestion replaces the list of every key


def test_unknown_cli_key_without_close_match() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'zzzqqq'\. Known keys") as info:
        load_config("bpr", "synthetic", {"zzzqqq": 1})
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--epochs", "abc"], r"key 'epochs' expects int \(like its default 1000\), got str 'abc'"),
        (["--learning_rate", "true"], r"key 'learning_rate' expects float .*got bool True"),
        (["--epochs", "2.5"], r"key 'epochs' expects int .*got float 2\.5"),
        (["--epochs", "true"], r"key 'epochs' expects int .*got bool True"),
        (["--topk", "10"], r"key 'topk' expects list .*got int 10"),
        (["--progress", "1"], r"key 'progress' expects bool .*got int 1"),
        (["--num_ui_layers", "two"], r"key 'num_ui_layers' expects int .*got str 'two'"),
    ],
)
def test_wrong_cli_type(args: list, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^command line: " + pattern):
        load_config("lightgcn", "synthetic", parse_cli_overrides(args))


def test_cli_values_reach_the_config() -> None:
    config = load_config(
        "lightgcn",
        "synthetic",
        parse_cli_overrides(["--learning_rate", "1", "--topk=[5,10]", "--num-ui-layers", "3"]),
    )
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert config["topk"] == [5, 10]
    assert config["num_ui_layers"] == 3
    assert config["epochs"] == 1000  # untouched default of overall.yaml


def test_coerce() -> None:
    assert coerce("k", 3, 0.5, "src") == 3.0
    with pytest.raises(ConfigError, match=r"^src: key 'k' expects int .*got null"):
        coerce("k", None, 3, "src")
    assert coerce("baseline", None, "lightgcn", "src") is None  # null in overall.yaml
    assert coerce("modality_weights", None, {"image": 0.5}, "src") is None
    assert coerce("k", "x", None, "src") == "x"
    with pytest.raises(ConfigError, match=r"^src: key 'k' expects float"):
        coerce("k", False, 0.5, "src")


def test_parse_cli_overrides_forms() -> None:
    out = parse_cli_overrides(
        [
            "--epochs",
            "5",
            "--learning-rate=0.01",
            "--topk",
            "[10,20]",
            "--flag",
            "true",
            "--name",
            "baby",
            "--weight_decay",
            "-0.5",
            "--modalities",
            "{image: a.npy}",
            "--cache_dir",
            "null",
        ]
    )
    assert out == {
        "epochs": 5,
        "learning_rate": 0.01,
        "topk": [10, 20],
        "flag": True,
        "name": "baby",
        "weight_decay": -0.5,
        "modalities": {"image": "a.npy"},
        "cache_dir": None,
    }
    assert isinstance(out["epochs"], int)


def test_parse_cli_overrides_equals_keeps_value_dashes() -> None:
    assert parse_cli_overrides(["--output=runs/my-run"]) == {"output": "runs/my-run"}


def test_cli_scientific_notation_floats() -> None:
    # PyYAML (YAML 1.1) reads 1e-4 without a dot as a string; float keys still accept it.
    config = load_config(
        "lightgcn",
        "synthetic",
        parse_cli_overrides(
            ["--reg_weight", "1e-5", "--weight_decay=2E-3", "--learning_rate=1e-2"]
        ),
    )
    assert config["reg_weight"] == 1e-5 and isinstance(config["reg_weight"], float)
    assert config["weight_decay"] == 2e-3
    with pytest.raises(ConfigError, match=r"key 'weight_decay' must be a finite number >= 0"):
        load_config("bpr", "synthetic", parse_cli_overrides(["--weight_decay=-2E-3"]))
    assert config["learning_rate"] == 0.01
    with pytest.raises(ConfigError, match=r"key 'epochs' expects int .*got float 1000.0"):
        load_config("bpr", "synthetic", parse_cli_overrides(["--epochs", "1e3"]))


def test_parse_cli_overrides_unparsable_yaml_kept_as_string() -> None:
    assert parse_cli_overrides(["--name", "[1, 2"]) == {"name": "[1, 2"}


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--epochs"], r"option --epochs needs a value"),
        (["--epochs", "--seed", "1"], r"option --epochs needs a value"),
        (["epochs", "3"], r"expected an option '--key value', got 'epochs'"),
        (["--"], r"expected an option '--key value', got '--'"),
    ],
)
def test_parse_cli_overrides_errors(args: list, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"^command line: " + pattern):
        parse_cli_overrides(args)


# ---------------------------------------------------------------- the real config files


def _top_level_key_lines(text: str) -> dict:
    """Top-level ``key: value`` lines of a YAML file, key -> whole line."""
    lines = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        if match:
            lines[match.group(1)] = line
    return lines


def test_every_overall_key_is_documented() -> None:
    path = CONFIG_DIR / "overall.yaml"
    keys = load_yaml(path)
    lines = _top_level_key_lines(path.read_text(encoding="utf-8"))
    assert set(lines) == set(keys)
    undocumented = [k for k, line in lines.items() if not re.search(r"\s#\s*\S", line)]
    assert undocumented == []
    # The general keys the trainer and the command line read are all defined.
    for key in (
        "seed",
        "device",
        "data_root",
        "cache_dir",
        "output",
        "progress",
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "embedding_dim",
        "eval_step",
        "early_stop_metric",
        "patience",
        "topk",
        "metrics",
        "eval_batch_size",
        "inter_file",
        "modalities",
        "url",
        "synthetic",
    ):
        assert key in keys


def test_real_configs_load_for_every_model_and_dataset() -> None:
    models, datasets = available("models"), available("datasets")
    assert set(models) == set(MODELS)
    assert "synthetic" in datasets
    for model in models:
        for dataset in datasets:
            config = load_config(model, dataset)
            assert model_keys(model) <= set(config), (model, dataset)
            assert (config["model"], config["dataset"]) == (model, dataset)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_yaml_keys_are_constructor_arguments(model: str) -> None:
    path = CONFIG_DIR / "models" / f"{model}.yaml"
    overall = set(load_yaml(CONFIG_DIR / "overall.yaml"))
    # A model file may set the optimiser's published settings, no other general key.
    assert set(load_yaml(path)) & overall <= MODEL_FILE_TRAINER_KEYS
    declared = set(load_yaml(path)) - {"per_dataset"} - MODEL_FILE_TRAINER_KEYS
    keys = model_keys(model)
    # Every other key of the model file is a constructor argument ...
    assert declared <= keys, declared - keys
    # ... and together with the shared keys of overall.yaml they are exactly the arguments.
    assert declared | (keys & overall) == keys
    # Model keys are documented in the model's file.
    lines = _top_level_key_lines(path.read_text(encoding="utf-8"))
    assert all(re.search(r"\s#\s*\S", lines[k]) for k in declared)
    # Every constructor argument has a default, so the config can always be partial.
    params = inspect.signature(model_class(model).__init__).parameters
    assert all(params[k].default is not inspect.Parameter.empty for k in keys)


def test_model_keys_values() -> None:
    assert model_keys("bpr") == {"embedding_dim", "reg_weight"}
    assert model_keys("lightgcn") == {"embedding_dim", "num_ui_layers", "reg_weight"}


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ("bm3", "cl_weight", 2.0),
        ("lattice", "frozen_graph_weight", 0.9),
        ("layergcn", "num_ui_layers", 4),
        ("layergcn", "pruning", "alternate"),
        ("mgcn", "temperature", 0.2),
        ("vbpr", "reg_weight", 5.0),
    ],
)
def test_model_file_settings_reach_the_config(model: str, key: str, value: object) -> None:
    # The settings a run of each model starts from (the model files' published values); the
    # run itself, end to end, is test_model_contract's test_cli_trains_and_writes_results.
    config = load_config(model, "synthetic")
    assert config[key] == value and type(config[key]) is type(value)


def test_model_keys_from_the_command_line() -> None:
    overrides = parse_cli_overrides(["--num_hyperedges", "3", "--keep-rate", "0.4"])
    config = load_config("lgmrec", "synthetic", overrides)
    assert config["num_hyperedges"] == 3 and config["keep_rate"] == 0.4
    with pytest.raises(ConfigError, match="unknown key 'num_hyperedges'"):
        load_config("freedom", "synthetic", parse_cli_overrides(["--num_hyperedges", "3"]))


def test_exponent_floats_inside_lists_and_mappings_are_numbers() -> None:
    # YAML 1.1 reads 5e1 (no dot) as a string, at any depth; the command line reads a number
    out = parse_cli_overrides(
        ["--learning_rate_scheduler", "[0.5, 5e1]", "--modality_weights", "{image: 1e-1}"]
    )
    assert out == {"learning_rate_scheduler": [0.5, 50.0], "modality_weights": {"image": 0.1}}
    assert parse_cli_overrides(["--inter_file", "x1e5"]) == {"inter_file": "x1e5"}


def test_python_values_are_read_as_their_yaml_counterparts() -> None:
    import numpy as np

    assert coerce("epochs", np.int64(3), 1000, "test") == 3
    assert type(coerce("epochs", np.int64(3), 1000, "test")) is int
    assert coerce("learning_rate", np.int32(1), 0.001, "test") == 1.0
    assert coerce("data_root", Path("a/b"), "datasets", "test") == "a/b"
    assert coerce("output", Path("runs/x"), None, "test") == "runs/x"
    assert coerce("topk", (10, 20), [10, 20, 50], "test") == [10, 20]
    with pytest.raises(ConfigError, match="key 'epochs' expects int"):
        coerce("epochs", 1.0, 1000, "test")


def test_knn_on_a_one_item_dataset_says_why() -> None:
    from pyg_dhmrec.config import check_config_for_data

    with pytest.raises(
        ConfigError, match=r"it has 1: a model with item-item graphs needs at least 2"
    ):
        check_config_for_data({"knn_k": 10}, 1)
    with pytest.raises(ConfigError, match=r"key 'knn_k' must be in \[1, 4\]"):
        check_config_for_data({"knn_k": 10}, 5)
    check_config_for_data({"knn_k": 4}, 5)
