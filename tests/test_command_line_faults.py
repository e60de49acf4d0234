"""Faults of the command line, grid files, subcommands and the Python API: each is refused with
a message naming the option, file or key (exit code 2 from ``main``), never a traceback, and
nothing trains."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_points import wait_for_marker

import pyg_dhmrec
from pyg_dhmrec.cli import build_parser, main
from pyg_dhmrec.config import MAX_YAML_BYTES, ConfigError, load_yaml, parse_cli_overrides
from pyg_dhmrec.experiment import MAX_GRID_POINTS, compare_runs
from pyg_dhmrec.loader import load_data_and_model

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return [
        *("--model", "lightgcn", "--dataset", "synthetic", "--data-root", str(data_root)),
        *("--synthetic", TINY, "--topk", "[10,20]", "--device", "cpu", "--quiet"),
        *("--baseline", "null", "--output", str(output), *extra),
    ]


@pytest.fixture(scope="module")
def finished(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_args(data_root, run, "--epochs", "1")) == 0
    return run


# ---------------------------------------------------------------- grid files


def _refused_grid(data_root: Path, tmp_path: Path, capsys, grid: Path) -> str:
    assert main([*_args(data_root, tmp_path / "out", "--epochs", "1"), "--grid", str(grid)]) == 2
    assert not (tmp_path / "out").exists()  # refused before any point trains
    err = capsys.readouterr().err
    assert err.startswith(f"error: {grid}") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "num_ui_layers: [1, 2]\nnum_ui_layers: [3]\n",
            "found the key 'num_ui_layers' a second time (first on line 1); give each key once",
        ),
        ("x: &a [*a]\n", "found the alias *a; anchors and aliases are not supported"),
        ("a: &a [1, 2]\nnum_ui_layers: *a\n", "found the alias *a"),
        (b"num_ui_layers: [1, \xff]\n", "not a UTF-8 text file (byte 0xff at offset 19)"),
        ("- num_ui_layers\n", "expected a mapping of key: value, got list"),
    ],
    ids=["duplicate_key", "recursive_alias", "alias", "latin1", "list"],
)
def test_malformed_grid_file(
    data_root: Path, tmp_path: Path, capsys, text: str | bytes, message: str
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert message in _refused_grid(data_root, tmp_path, capsys, grid)


def test_grid_of_too_many_points_is_counted_not_expanded(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    grid = tmp_path / "grid.yaml"
    keys = ("num_ui_layers", "reg_weight", "learning_rate", "weight_decay", "batch_size", "seed")
    grid.write_text("".join(f"{k}: [{', '.join(str(i + 1) for i in range(10))}]\n" for k in keys))
    err = _refused_grid(data_root, tmp_path, capsys, grid)
    assert f"1000000 points, more than the {MAX_GRID_POINTS} a grid may have" in err


def test_yaml_file_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"big\.yaml: \d+ bytes, larger than the 1048576 bytes"):
        load_yaml(path)


def test_nan_model_option_in_a_later_grid_point_refused_before_the_first_trains(
    data_root: Path, tmp_path: Path, capsys
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("reg_weight: [0.1, .nan]\n")
    err = _refused_grid(data_root, tmp_path, capsys, grid)
    assert (
        err == f"error: {grid}, point reg_weight=nan: key 'reg_weight' must be a number, got nan\n"
    )


@pytest.mark.parametrize("option", [["--grid", ""], ["--resume="]], ids=["grid", "resume"])
def test_empty_grid_or_resume_is_not_a_plain_run(
    data_root: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, option: list
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [*option] if option[0] == "--resume=" else [*_args(data_root, tmp_path / "out"), *option]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "must name a" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_grid_with_zero_seeds_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("num_ui_layers: [1, 2]\n")
    argv = [*_args(data_root, tmp_path / "out", "--epochs", "1"), "--grid", str(grid)]
    assert main([*argv, "--seeds", "0"]) == 2
    assert "--grid and --seeds cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- options given twice


def test_key_option_given_twice_warns(caplog: pytest.LogCaptureFixture) -> None:
    # Later wins, as between the YAML layers (tests override a helper's defaults that way),
    # but a warning names both values.
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.config"):
        assert parse_cli_overrides(["--epochs", "1", "--epochs=2"]) == {"epochs": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "command line: option --epochs given twice ('1', then '2'); the last one is used"
    ]


def test_named_option_given_twice_warns(caplog: pytest.LogCaptureFixture) -> None:
    argv = ["--model", "bpr", "--output", "a", "--model", "lightgcn", "--seeds", "1", "--seeds=2"]
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        args, extra = build_parser().parse_known_args(argv)
    assert (args.model, args.output, args.seeds, extra) == ("lightgcn", "a", 2, [])
    assert [r.getMessage() for r in caplog.records] == [
        "--model given twice ('bpr', then 'lightgcn'); the last one is used",
        "--seeds given twice (1, then 2); the last one is used",
    ]


def test_data_root_as_key_and_as_option(data_root: Path, tmp_path: Path, capsys) -> None:
    argv = _args(data_root, tmp_path / "out", "--data_root", str(tmp_path / "other"))
    assert main(argv) == 2
    assert "command line: data_root given twice" in capsys.readouterr().err


def test_users_given_twice_are_all_recommended(finished: Path, capsys) -> None:
    assert main(["recommend", "--run", str(finished), "--users", "1", "--users", "2", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["user"] for row in rows] == [1, 2, 3]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--modalities", "{image: a.npy, image: b.npy}"],
            "command line: --modalities '{image: a.npy, image: b.npy}': found the key 'image' a "
            "second time",
        ),
        (["--topk", "&a [*a]"], "command line: --topk '&a [*a]': found the alias *a"),
    ],
    ids=["duplicate_mapping_key", "alias"],
)
def test_command_line_values_read_strictly(args: list, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_cli_overrides(args)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--cache_dir", "a\x00b"],
            "key 'cache_dir' must be a path without NUL characters, got 'a\\x00b'",
        ),
        (
            ["--learning_rate_scheduler", "[0.5, .inf]"],
            "key 'learning_rate_scheduler' must be null or [factor, step] with 0 < factor <= 1 "
            "and a finite step > 0, e.g. [0.96, 50], got [0.5, inf]",
        ),
        (
            ["--knn_k", "3"],
            "command line: unknown key 'knn_k' for lightgcn: it is an option of cmdl, damrs, "
            "dhmrec, freedom, lattice, mgcn, micro, siger, tmlp (lightgcn's keys: "
            "configs/models/lightgcn.yaml)",
        ),
    ],
    ids=["nul_in_path", "scheduler_step_inf", "other_models_key"],
)
def test_values_refused(data_root: Path, tmp_path: Path, capsys, argv: list, message: str) -> None:
    assert main(_args(data_root, tmp_path / "out", "--epochs", "1", *argv)) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_resume_with_a_changed_option_names_the_option_only(finished: Path, capsys) -> None:
    assert main(["--resume", str(finished), "--epochs", "5", "--learning_rate=0.1"]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume {finished} continues with the folder's config.json; drop --epochs, "
        "--learning_rate (only --device and --quiet may be given)\n"
    )


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_cleanly_and_the_run_resumes(data_root: Path, tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "at_point"
    point = "pyg_dhmrec.train:Trainer.save_checkpoint@2"  # waits once epoch 2 is saved
    argv = _args(data_root, run, "--epochs", "4", "--patience", "50")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(KILL_POINTS), point, str(marker), *argv],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_marker(marker, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.rstrip().endswith("error: interrupted (Ctrl-C)")
    assert f"--resume {run}" in err and not (run / "results.json").exists()
    assert "interrupted (Ctrl-C)" in (run / "train.log").read_text()
    assert main(["--resume", str(run), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 4


# ---------------------------------------------------------------- finished runs


def _copy_run(finished: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(finished, target)
    return target


def test_compare_foreign_results_json(finished: Path, tmp_path: Path, capsys) -> None:
    other = _copy_run(finished, tmp_path / "other")
    (other / "results.json").write_text('{"a": 1}')
    assert main(["compare", str(other), str(finished)]) == 2
    assert capsys.readouterr().err == (
        f"error: {other / 'results.json'}: key 'dataset' must be the dataset's name, it is "
        "missing; not a results.json of run.py\n"
    )


@pytest.mark.parametrize(
    "payload, message",
    [
        (
            [1, 2, 3],
            "expected a mapping of 'users' and each metric to one value per evaluated "
            "user, got list",
        ),
        (
            {"users": torch.arange(3), "recall@20": torch.zeros(5)},
            "entry 'recall@20' is not one value per user (3 users)",
        ),
    ],
    ids=["list", "lengths_differ"],
)
def test_compare_foreign_per_user_file(
    finished: Path, tmp_path: Path, payload: object, message: str
) -> None:
    other = _copy_run(finished, tmp_path / "other")
    torch.save(payload, other / "per_user_test.pt")
    with pytest.raises(ValueError) as error:
        compare_runs(other, finished)
    assert str(error.value).startswith(f"{other / 'per_user_test.pt'}: {message}")


def test_compare_metric_users_is_not_a_metric(finished: Path, tmp_path: Path, capsys) -> None:
    other = _copy_run(finished, tmp_path / "other")
    assert main(["compare", str(other), str(finished), "--metric", "users"]) == 2
    assert "no metric 'users'; it has recall@10" in capsys.readouterr().err


def test_compare_given_results_json_itself(finished: Path, capsys) -> None:
    assert main(["compare", str(finished / "results.json"), str(finished)]) == 2
    assert capsys.readouterr().err == (
        f"error: {finished / 'results.json'}: a file; give the run folder that holds results.json\n"
    )


@pytest.mark.parametrize(
    "content, message", [(b"", "EOFError; a cut or foreign file"), (b"hello", "a cut or foreign")]
)
def test_unreadable_best_pt_says_why(
    finished: Path, tmp_path: Path, capsys, content: bytes, message: str
) -> None:
    other = _copy_run(finished, tmp_path / "other")
    (other / "best.pt").write_bytes(content)
    assert main(["recommend", "--run", str(other), "--users", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other / 'best.pt'}: not a readable state_dict (")
    assert message in err and "()" not in err


# ---------------------------------------------------------------- Python API


def test_fit_resume_must_be_a_bool_and_name_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^fit\(\): resume must be True or False, got 'no'$"):
        pyg_dhmrec.fit(model="lightgcn", resume="no", output="x")
    with pytest.raises(ConfigError, match=r"needs output=<the run folder to continue>"):
        pyg_dhmrec.fit(model="lightgcn", resume=True)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["quiet", "resume"])
def test_command_line_option_as_a_key(key: str) -> None:
    with pytest.raises(ConfigError) as error:
        pyg_dhmrec.make_config(model="lightgcn", **{key: True})
    assert str(error.value).startswith(
        f"keyword arguments: '{key}' is an option of the command line, not a configuration key"
    )


def test_numpy_scalars_are_read_as_numbers() -> None:
    config = pyg_dhmrec.make_config(
        model="lightgcn", learning_rate=np.float32(0.5), progress=np.bool_(False)
    )
    assert config["learning_rate"] == 0.5 and type(config["learning_rate"]) is float
    assert config["progress"] is False


@pytest.fixture(scope="module")
def graph(data_root: Path):
    synthetic = parse_cli_overrides(["--synthetic", TINY])["synthetic"]
    config = pyg_dhmrec.make_config(
        model="vbpr", data_root=str(data_root), synthetic=synthetic, device="cpu"
    )
    return load_data_and_model(config)[1]


def test_train_refuses_what_is_not_a_model(graph) -> None:
    with pytest.raises(TypeError, match=r"^pyg_dhmrec\.train\(\): model must be a Recommender"):
        pyg_dhmrec.train("lightgcn", graph, epochs=1, device="cpu")
    model = pyg_dhmrec.build_model("lightgcn", graph)
    with pytest.raises(ConfigError, match=r"output must be None or a folder path, got 5$"):
        pyg_dhmrec.train(model, graph, epochs=1, device="cpu", output=5)


def test_train_takes_a_torch_device(graph) -> None:
    model = pyg_dhmrec.build_model("lightgcn", graph)
    results = pyg_dhmrec.train(
        model, graph, epochs=1, device=torch.device("cpu"), topk=[10, 20], progress=False
    )
    assert results["environment"]["device"] == "cpu"


@pytest.mark.parametrize(
    "change, error, message",
    [
        (
            lambda d: setattr(d["item"], "image", d["item"].image.numpy()),
            TypeError,
            r"data\['item'\]\.image must be a torch\.Tensor \[items, f\], got ndarray",
        ),
        (
            lambda d: setattr(d["item"], "modalities", "image"),
            TypeError,
            r"data\['item'\]\.modalities must be a list of modality names, got 'image'",
        ),
        (
            lambda d: setattr(d["item"], "image", d["item"].image.to("meta")),
            ValueError,
            r"data\['item'\]\.image is on device 'meta'; expected cpu or cuda",
        ),
    ],
    ids=["numpy_features", "modalities_string", "meta_device"],
)
def test_build_model_names_the_wrong_object(graph, change, error, message: str) -> None:
    data = graph.clone()
    change(data)
    with pytest.raises(error, match=r"^build_model\(\): " + message):
        pyg_dhmrec.build_model("vbpr", data)


def test_plot_out_that_is_a_file(finished: Path, capsys) -> None:
    out = finished / "results.json"
    assert main(["plot", "curves", str(finished), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: plot --out {out}: exists and is not a folder; give a folder\n"


@pytest.mark.parametrize("text, read_as", [("010", 8), ("-07", -7), ("0_20", 16), ("1:30", 90)])
def test_octal_and_base_60_integers_refused(tmp_path: Path, text: str, read_as: int) -> None:
    # YAML 1.1 would read them as the number named in the message, silently
    with pytest.raises(ConfigError, match=rf"--seed '{text}': found the integer .* as {read_as}"):
        parse_cli_overrides(["--seed", text])
    path = tmp_path / "grid.yaml"
    path.write_text(f"seed: [1, {text}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"grid.yaml: not valid YAML: .*reads as {read_as}"):
        load_yaml(path)
    plain = {"seed": 10, "a": 0, "b": -0, "c": 1000, "d": 16, "e": 0.5}
    args = ["--seed", "10", "--a", "0", "--b", "-0", "--c", "1_000", "--d", "0x10", "--e", "00.5"]
    assert parse_cli_overrides(args) == plain


def test_train_log_refused_by_a_full_disk_is_said_once(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # the stream under train.log refuses every write; the run still finishes
    from pyg_dhmrec import cli

    real_open = cli._RunLogHandler._open

    def full_disk_stream(self):  # noqa: ANN001, ANN202
        stream = real_open(self)

        def refuse(text: str) -> int:
            raise OSError(28, "No space left on device")

        stream.write = refuse
        return stream

    monkeypatch.setattr(cli._RunLogHandler, "_open", full_disk_stream)
    assert main(_args(data_root, tmp_path / "run", "--epochs", "2")) == 0
    err = capsys.readouterr().err
    assert err.count("train.log: cannot be written (No space left on device)") == 1
    assert "Logging error" not in err and "Traceback" not in err


def test_resume_of_a_run_stopped_in_its_first_epoch(data_root: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(_args(data_root, run, "--epochs", "1")) == 0
    (run / "checkpoint.pt").unlink()  # as a kill before the first checkpoint leaves it
    assert main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "stopped before its first epoch ended; start it again" in err
    assert f"--output {run}" in err
    assert main(["--resume", str(tmp_path)]) == 2  # no run at all: the general message
    assert "expected a run folder written by run.py" in capsys.readouterr().err
