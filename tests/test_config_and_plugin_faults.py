"""Faults of the configuration layers and of the MRdIB plug-in, as an outside checker's suite of
malformed inputs probes them: ``per_dataset`` entries, grid files against the command line,
command-line values YAML reads surprisingly, plug-in options out of range and a plug-in dropped
from a run folder. Each is refused with a message naming the file, key or option, and nothing
trains."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from pyg_dhmrec.cli import main
from pyg_dhmrec.config import ConfigError, load_config, parse_cli_overrides
from pyg_dhmrec.experiment import config_differences
from pyg_dhmrec.plugins import MRdIB

TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """overall < datasets ds, other and the template amazon < model mod (with per_dataset) <
    plug-in pp (with per_dataset)."""
    for folder in ("datasets", "models", "plugins"):
        (tmp_path / folder).mkdir()
    (tmp_path / "overall.yaml").write_text(
        "a: 1  # a\nlr: 0.5  # a float\nplugin: null  # p\nmodalities: {}  # m\ndata_root: d  # r\n"
    )
    (tmp_path / "datasets" / "ds.yaml").write_text("a: 2\n")
    (tmp_path / "datasets" / "other.yaml").write_text("")
    (tmp_path / "datasets" / "amazon.yaml").write_text("a: 3\n")
    (tmp_path / "models" / "mod.yaml").write_text("own: 7\n")
    (tmp_path / "plugins" / "pp.yaml").write_text("pp_w: 0.1\n")
    return tmp_path


def _model_file(config_dir: Path, per_dataset: str) -> None:
    (config_dir / "models" / "mod.yaml").write_text(f"own: 7\nper_dataset:\n{per_dataset}")


# ---------------------------------------------------------------- per_dataset entries


def test_per_dataset_entry_naming_no_dataset_is_refused(config_dir: Path) -> None:
    _model_file(config_dir, "  ds: {own: 8}\n  dss: {own: 9}\n")  # dss: a slip for ds
    path = config_dir / "models" / "mod.yaml"
    with pytest.raises(ConfigError) as error:
        load_config("mod", "ds", config_dir=config_dir)  # before: dss was skipped silently
    message = str(error.value)
    assert message.startswith(f"{path}: per_dataset entry 'dss' names no dataset; expected the ")
    assert "Did you mean: ds?" in message and "amazon_<category>" in message
    _model_file(config_dir, "  1: {own: 9}\n")  # not even a name
    with pytest.raises(ConfigError, match=r"mod\.yaml: per_dataset entry 1 names no dataset"):
        load_config("mod", "other", config_dir=config_dir)
    # The names of configured datasets: a dataset file's and a template's (amazon:Toys is
    # named amazon_toys); a folder of one's own once it has a (here empty) file.
    _model_file(config_dir, "  amazon_toys: {own: 2}\n  myshop: {own: 3}\n")
    (config_dir / "myshop").mkdir()
    (config_dir / "myshop" / "myshop.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(ConfigError, match=r"once it has a configs/datasets/myshop\.yaml \(it may"):
        load_config("mod", str(config_dir / "myshop"), config_dir=config_dir)
    (config_dir / "datasets" / "myshop.yaml").write_text("")
    assert load_config("mod", "amazon:Toys", config_dir=config_dir)["own"] == 2
    assert load_config("mod", str(config_dir / "myshop"), config_dir=config_dir)["own"] == 3


@pytest.mark.parametrize(
    "kind, name, key, value, type_name",
    [("models", "mod", "own", "7", "int"), ("plugins", "pp", "pp_w", "0.1", "float")],
    ids=["model_file", "plugin_file"],
)
@pytest.mark.parametrize(
    "entry, message",
    [("{nokey: 1}", "unknown key 'nokey'"), ("{KEY: text}", "key 'KEY' expects TYPE .*'text'")],
    ids=["unknown_key", "wrong_type"],
)
def test_every_per_dataset_entry_is_checked_whichever_dataset_runs(
    config_dir: Path, kind, name, key, value, type_name, entry: str, message: str
) -> None:
    # before: an entry was read only when its dataset ran, so a slip in the TikTok entry
    # surfaced on TikTok alone (after the other datasets' runs)
    path = config_dir / kind / f"{name}.yaml"
    path.write_text(f"{key}: {value}\nper_dataset:\n  other: {entry.replace('KEY', key)}\n")
    message = message.replace("KEY", key).replace("TYPE", type_name)
    overrides = {"plugin": "pp"} if kind == "plugins" else {}
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))} \(per_dataset\.other\): {message}"
    ):
        load_config("mod", "ds", overrides, config_dir=config_dir)


def test_plugin_and_model_are_names_not_paths_into_configs() -> None:
    # before: '../models/lightgcn' read LightGCN's file as a plug-in ("keys ... already defined
    # by another layer; plug-in keys must be new (named ../models/lightgcn_<argument>)")
    with pytest.raises(ConfigError, match=r"^unknown plugin '\.\./models/lightgcn'; available: "):
        load_config("freedom", "synthetic", {"plugin": "../models/lightgcn"})
    # before: the plug-in's file was merged as the model's and a configuration came back
    with pytest.raises(ConfigError, match=r"^unknown model '\.\./plugins/mrdib'; available: "):
        load_config("../plugins/mrdib", "synthetic")


# ---------------------------------------------------------------- values YAML reads surprisingly


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ablations", "no_kl"], "got str 'no_kl'; a list is written in brackets, e.g. [no_kl]"),
        (["--topk", "10,20"], "got str '10,20'; a list is written in brackets, e.g. [10, 20]"),
        (["--topk", "20"], "got int 20; a list is written in brackets, e.g. [20]"),
    ],
    ids=["ablations_bare_word", "topk_commas", "topk_number"],
)
def test_a_list_option_given_without_brackets_says_how_to_write_it(
    args: list, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config("dhmrec", "synthetic", parse_cli_overrides(args))
    message = str(error.value)
    assert message.startswith(f"command line: key '{args[0][2:]}' expects list"), message
    assert message.endswith(expected), message


@pytest.mark.parametrize(
    "raw, key",
    [("{image:0.5,text:0.5}", "image:0.5"), ("{image: 1, text:1}", "text:1")],
    ids=["no_space", "one_missing"],
)
def test_a_mapping_without_a_space_after_the_colon_is_named(raw: str, key: str) -> None:
    # before: YAML read {image:0.5} as the key 'image:0.5' with no value, and the model later
    # said "modality_weights must give one weight per modality ..., got {'image:0.5': None}"
    with pytest.raises(ConfigError) as error:
        parse_cli_overrides(["--modality_weights", raw])
    left, _, right = key.partition(":")
    assert str(error.value) == (
        f"command line: --modality_weights {raw!r}: the key {key!r} has no value; YAML needs a "
        f"space after ':' ({{{left}: {right}}})"
    )


# ---------------------------------------------------------------- grids


@pytest.fixture
def grid(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "grid.yaml"
        path.write_text(text)
        return path

    return write


def _without_knn_k(argv: list) -> list:
    """``tiny_cli_argv``'s arguments without ``--knn_k`` (not a LightGCN key)."""
    knn = argv.index("--knn_k")
    return argv[:knn] + argv[knn + 2 :]


def _refused(argv: list, tmp_path: Path, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "the run folder was written (a run or point started)"
    return err


@pytest.mark.parametrize("option", [["--reg_weight", "0.5"], ["--reg-weight=0.5"]])
def test_grid_over_a_key_the_command_line_sets_is_refused(
    tiny_cli_argv, grid, tmp_path: Path, capsys, option: list
) -> None:
    # before: every point silently replaced --reg_weight 0.5 with its own value
    path = grid("reg_weight: [0.1, 0.01]\n")
    argv = _without_knn_k(tiny_cli_argv("lightgcn", *option, "--grid", str(path)))
    err = _refused(argv, tmp_path, capsys)
    given = option[0].split("=")[0]
    assert err == (
        f"error: --grid {path}: varies reg_weight, which the command line also sets ({given}); "
        f"each point would override it: drop {given} or take reg_weight out of the grid\n"
    )


def test_grid_point_with_an_infinite_value_is_refused_before_any_trains(
    tiny_cli_argv, grid, tmp_path: Path, capsys
) -> None:
    # before: the point reg_weight=0.1 trained, then reg_weight=inf stopped in the model
    path = grid("reg_weight: [0.1, .inf]\n")
    argv = _without_knn_k(tiny_cli_argv("lightgcn", "--grid", str(path)))
    err = _refused(argv, tmp_path, capsys)
    assert err == (
        f"error: {path}, point reg_weight=inf: key 'reg_weight' must be a finite number, got inf\n"
    )


def test_grid_over_another_models_key_names_the_models(
    tiny_cli_argv, grid, tmp_path: Path, capsys
) -> None:
    # before: "unknown key 'knn_k'. Known keys: <every key>", unlike the command line's message
    path = grid("knn_k: [5, 10]\n")
    argv = _without_knn_k(tiny_cli_argv("lightgcn", "--grid", str(path)))  # only the grid sets it
    err = _refused(argv, tmp_path, capsys)
    assert err.startswith(
        f"error: {path}: unknown key 'knn_k' for lightgcn: it is an option of cmdl, damrs, "
    )
    assert err.endswith("(lightgcn's keys: configs/models/lightgcn.yaml)\n")


# ---------------------------------------------------------------- MRdIB options


@pytest.mark.parametrize(
    "option, message",
    [
        (["--mrdib_kl_weight", "-1"], "kl_weight (mrdib_kl_weight) must be a finite number >= 0"),
        (["--mrdib_synergy_weight", ".nan"], "synergy_weight (mrdib_synergy_weight) must be"),
        (["--mrdib_unique_weight", "inf"], "unique_weight (mrdib_unique_weight) must be a finite"),
        (["--mrdib_club_hidden", "0"], "club_hidden (mrdib_club_hidden) must be an integer in"),
        (
            [*("--mrdib_kl", "false", "--mrdib_unique", "false")]
            + [*("--mrdib_redundant", "false", "--mrdib_synergy", "false")],
            "are all false, so the plug-in adds nothing",
        ),
    ],
    ids=["negative_weight", "nan_weight", "inf_weight", "hidden_0", "all_off"],
)
def test_mrdib_options_are_checked_before_the_data_is_read(
    tiny_cli_argv, tmp_path: Path, capsys, option: list, message: str
) -> None:
    # before: the dataset was generated, the run folder and its config.json written, and the
    # model built before the plug-in refused its option (with --seeds or a grid, after the
    # first seed or point had trained)
    err = _refused(tiny_cli_argv("freedom", "--plugin", "mrdib", *option), tmp_path, capsys)
    assert err.startswith("error: MRdIB: ") and message in err, err
    assert not (tmp_path / "synthetic").exists(), "the dataset was generated"


def test_mrdib_check_config_reads_the_keys_and_the_constructors_defaults() -> None:
    MRdIB.check_config({})  # every default is in range
    MRdIB.check_config(load_config("freedom", "synthetic", {"plugin": "mrdib"}))
    with pytest.raises(ValueError, match=r"^MRdIB: kl_weight \(mrdib_kl_weight\) .*got -0\.5$"):
        MRdIB.check_config({"mrdib_kl_weight": -0.5})
    with pytest.raises(ValueError, match=r"^MRdIB: unique \(mrdib_unique\) must be true or false"):
        MRdIB.check_config({"mrdib_unique": "yes"})


@pytest.mark.parametrize(
    "model, text, point, message",
    [
        # a model's own check (in its constructor), not the configuration's types
        ("lightgcn", "reg_weight: [0.1, -1.0]\n", "reg_weight=-1.0", "reg_weight"),
        # a check against the data: more neighbours than the tiny dataset has items
        ("freedom", "knn_k: [2, 100000]\n", "knn_k=100000", "knn_k"),
    ],
)
def test_a_models_refusal_of_a_later_point_stops_the_grid_before_any_trains(
    tiny_cli_argv, grid, tmp_path: Path, capsys, model: str, text: str, point: str, message: str
) -> None:
    # before: the first point trained to its end, then the model refused the second point's
    # value when that point's run built it
    path = grid(text)
    argv = _without_knn_k(tiny_cli_argv(model, "--grid", str(path)))
    err = _refused(argv, tmp_path, capsys)
    assert err.startswith(f"error: {path}, point {point}: "), err
    assert message in err.split(f"point {point}: ", 1)[1]


def test_mrdib_grid_point_out_of_range_is_refused_before_any_trains(
    tiny_cli_argv, grid, tmp_path: Path, capsys
) -> None:
    # before: the point mrdib_kl_weight=0.1 trained, then -1.0 stopped when its model was built
    path = grid("mrdib_kl_weight: [0.1, -1.0]\n")
    argv = tiny_cli_argv("freedom", "--plugin", "mrdib", "--grid", str(path))
    err = _refused(argv, tmp_path, capsys)
    assert err == (
        f"error: {path}, point mrdib_kl_weight=-1.0: MRdIB: kl_weight (mrdib_kl_weight) must be a "
        "finite number >= 0, got -1.0\n"
    )


# ---------------------------------------------------------------- a plug-in dropped from a run


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A finished one-epoch FREEDOM + MRdIB run and the arguments that trained it."""
    root = tmp_path_factory.mktemp("plugin_run")
    argv = [
        *("--model", "freedom", "--dataset", "synthetic", "--data-root", str(root)),
        *("--synthetic", TINY, "--epochs", "1", "--quiet", "--topk", "[10,20]", "--knn_k", "3"),
        *("--device", "cpu", "--baseline", "null", "--output", str(root / "run")),
    ]
    assert main([*argv, "--plugin", "mrdib"]) == 0
    return root / "run", argv


def test_rerun_without_the_plugin_names_the_plugin_first(plugin_run, capsys) -> None:
    # before: the differences were listed alphabetically, six shown: mrdib_club_hidden ...
    # mrdib_synergy, "and 4 more key(s)" hid 'plugin' itself
    run, argv = plugin_run
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {run}: holds a run of another configuration (plugin: "mrdib" ')
    assert '(plugin: "mrdib" -> null; mrdib_club_hidden: 64 -> "<absent>"' in err
    assert json.loads((run / "results.json").read_text())["plugin"] == "mrdib"  # kept


def test_resume_of_a_plugin_run_whose_config_dropped_the_plugin(
    plugin_run, tmp_path: Path, capsys
) -> None:
    # before: "config.json: unknown key 'mrdib_club_hidden'. Known keys: <every key>"
    run, _ = plugin_run
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    config = json.loads((run / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "plugin": None}))
    assert main(["--resume", str(folder), "--quiet"]) == 2
    keys = sorted(k for k in config if k.startswith("mrdib_"))
    assert capsys.readouterr().err == (
        f"error: {folder / 'config.json'}: holds the key(s) {', '.join(keys)} of the plug-in "
        "mrdib but 'plugin' is null (the run was configured with plugin mrdib); set 'plugin' "
        "back to 'mrdib', or start a new run\n"
    )


def test_a_stored_nan_is_not_a_changed_value() -> None:
    # before: "holds a run of another configuration (reg_weight: NaN -> NaN ...)" for the same
    # command run twice (NaN != NaN)
    nan = math.nan
    stored = {"reg_weight": nan, "weights": [1.0, nan], "mapping": {"image": nan}}
    assert config_differences(stored, json.loads(json.dumps(stored))) == []
    assert config_differences({"reg_weight": nan}, {"reg_weight": 0.1}) == [
        "reg_weight: NaN -> 0.1"
    ]
