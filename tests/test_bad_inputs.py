"""Malformed inputs through ``pyg_dhmrec.cli.main``: each exits 2 with its exact message."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from pyg_dhmrec.cli import main

HEADER = "userID\titemID\tx_label\n"
# 4 users x 5 items, every user with train, valid and test rows.
GOOD = HEADER + "".join(
    f"{u}\t{i}\t{int(i == 3) + 2 * int(i == 4)}\n" for u in range(4) for i in range(5)
)


def _features(rows: int = 5, dtype: type = np.float32, nan_row: int | None = None) -> np.ndarray:
    x = np.ones((rows, 3), dtype=dtype)
    if nan_row is not None:
        x[nan_row, 1] = np.nan
    return x


# id, .inter text, image features (None: no file), regex after "error: <dataset folder>/".
CASES = [
    (
        "missing_column",
        "userID\titemID\trating\n0\t0\t5\n",
        None,
        r"toy\.inter:1: header lacks column\(s\) x_label; found \['userID', 'itemID', 'rating'\]",
    ),
    (
        "non_integer_id",
        HEADER + "0\t0\t0\nabc\t1\t0\n",
        None,
        r"toy\.inter:3: field 'userID' must be an integer, got 'abc'",
    ),
    (
        "negative_id",
        HEADER + "0\t0\t0\n1\t-2\t0\n",
        None,
        r"toy\.inter:3: field 'itemID' must be a non-negative id, got -2",
    ),
    (
        "x_label_3",
        HEADER + "0\t0\t0\n0\t1\t3\n",
        None,
        r"toy\.inter:3: field 'x_label' must be 0 \(train\), 1 \(valid\) or 2 \(test\), got 3",
    ),
    (
        "feature_rows_not_items",
        GOOD,
        _features(rows=7),
        r"image_feat\.npy: modality 'image' has 7 rows, expected one per item: 5",
    ),
    (
        "nan_features",
        GOOD,
        _features(nan_row=2),
        r"image_feat\.npy: modality 'image' has NaN or inf in 1 row\(s\), first at item \(row\) 2$",
    ),
    (
        "item_id_1e9",
        HEADER + "0\t0\t0\n0\t1000000000\t0\n",
        None,
        r"toy\.inter:3: field 'itemID' holds id 1000000000, but ids must be 0-based and "
        r"contiguous: there are 2 distinct ids, and the matrices would need 1000000001 rows "
        r"\(max id \+ 1\); renumber the ids 0\.\.1$",
    ),
    (
        "npz_saved_as_npy",
        GOOD,
        "npz",
        r"image_feat\.npy: a \.npz archive \(arrays image\), not a \.npy array; save the matrix "
        r"of modality 'image' with numpy\.save$",
    ),
    (
        "zero_feature_columns",
        GOOD,
        np.ones((5, 0), dtype=np.float32),
        r"image_feat\.npy: modality 'image' has 0 feature columns \(shape \(5, 0\)\); expected "
        r"at least one$",
    ),
    (
        "extra_field",
        HEADER + "0\t0\t0\t9\n" + GOOD[len(HEADER) :],
        None,
        r"toy\.inter:2: 4 tab-separated fields, but the header names 3 \(userID, itemID, "
        r"x_label\): '0\\t0\\t0\\t9'$",
    ),
    (
        "column_named_twice",
        "userID\titemID\tx_label\titemID\n0\t0\t0\t1\n",
        None,
        r"toy\.inter:1: header names column\(s\) itemID more than once",
    ),
    ("empty_file", "", None, r"toy\.inter: empty file; expected a tab-separated header row"),
    ("header_only", HEADER, None, r"toy\.inter: header only, no interactions$"),
    (
        "features_int64",
        GOOD,
        _features(dtype=np.int64),
        r"image_feat\.npy: modality 'image' must hold floating-point features, got dtype int64$",
    ),
]


def _dataset(root: Path, inter: str, image: np.ndarray | str | None) -> list[str]:
    folder = root / "tiktok"  # a known dataset name, its files replaced by the test's
    folder.mkdir(parents=True)
    (folder / "toy.inter").write_text(inter, encoding="utf-8")
    if isinstance(image, str):  # "npz": an archive under the .npy name
        with open(folder / "image_feat.npy", "wb") as f:
            np.savez(f, image=_features())
    elif image is not None:
        np.save(folder / "image_feat.npy", image)
    return [
        *("--model", "lightgcn", "--dataset", "tiktok", "--data-root", str(root)),
        *("--inter_file", "toy.inter", "--modalities", "{image: image_feat.npy}"),
        *("--cache_dir", str(root / "cache"), "--output", str(root / "run")),
        *("--topk", "[2]", "--metrics", "[recall]", "--early_stop_metric", "recall@2"),
        *("--device", "cpu", "--quiet", "--epochs", "1"),
    ]


@pytest.mark.parametrize("inter, image, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_dataset_exit_2(
    tmp_path: Path, capsys, inter: str, image: np.ndarray | str | None, pattern: str
) -> None:
    assert main(_dataset(tmp_path, inter, image)) == 2
    err = capsys.readouterr().err.strip()
    folder = re.escape(str(tmp_path / "tiktok") + "/")
    assert re.match("^error: " + folder + pattern, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("entry", ["toy.inter", "image_feat.npy"])
def test_folder_in_place_of_a_configured_file_exit_2(tmp_path: Path, capsys, entry: str) -> None:
    argv = _dataset(tmp_path, GOOD, _features())
    path = tmp_path / "tiktok" / entry
    path.unlink()
    path.mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    what = "interaction file" if entry.endswith(".inter") else "feature matrix"
    assert err == (
        f"error: {path.resolve()} is not a regular file (a folder?); expected the {what} of "
        "dataset 'tiktok' (MMRec format, see README)\n"
    ), err


def test_duplicates_warn_and_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inter = GOOD + "0\t0\t0\n"  # line 22 repeats line 2
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.mmrec_format"):
        assert main(_dataset(tmp_path, inter, _features())) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        re.search(r"1 duplicate \(userID, itemID\) row\(s\).*line\(s\) 22", w) for w in warnings
    )
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (
            ["--epochs", "abc"],
            r"command line: key 'epochs' expects int \(like its default 1000\), got str 'abc'$",
        ),
        (["--epoch", "3"], r"command line: unknown key 'epoch'\. Did you mean: epochs\?"),
        (
            ["--model", "nope"],
            r"unknown model 'nope'; available: bm3, bpr, cmdl, damrs, dhmrec, diffmm, dualgnn, "
            r"freedom, grcn, lattice, layergcn, lgmrec, lightgcn, mgcn, micro, mmgcn, siger, "
            r"tmlp, vbpr$",
        ),
        (["--dataset", "nope"], r"unknown dataset 'nope'; available: baby, .*synthetic"),
        (
            ["--resume", "{tmp}"],
            r"--resume {tmp}: no checkpoint\.pt in that folder; expected a run folder",
        ),
        (
            ["--resume", "{tmp}/missing"],
            r"--resume {tmp}/missing: no such folder; expected a run folder of run\.py$",
        ),
        (
            ["--resume", "{tmp}/a_file"],
            r"--resume {tmp}/a_file: a file; expected a run folder of run\.py$",
        ),
        (["--grid", "{tmp}/none.yaml"], r"{tmp}/none\.yaml: grid file not found$"),
        (  # --quiet sets progress, but the value given is checked first
            ["--progress", "2"],
            r"command line: key 'progress' expects bool \(like its default True\), got int 2$",
        ),
    ],
    ids=[
        "wrong_type",
        "unknown_key",
        "unknown_model",
        "unknown_dataset",
        "resume_empty",
        "resume_missing",
        "resume_file",
        "grid_missing",
        "progress_not_bool_beside_quiet",
    ],
)
def test_bad_options_exit_2(tmp_path: Path, capsys, argv: list, pattern: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    (tmp_path / "a_file").write_text("not a run folder\n")
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.match("^error: " + pattern.replace("{tmp}", re.escape(str(tmp_path))), err), err


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    # Spreadsheet exports start with a UTF-8 BOM; it is not part of the 'userID' column name.
    assert main(_dataset(tmp_path / "a", "\ufeff" + GOOD, _features())) == 0
    assert main(_dataset(tmp_path / "b", GOOD, _features())) == 0
    with_bom = json.loads((tmp_path / "a" / "run" / "results.json").read_text())
    without = json.loads((tmp_path / "b" / "run" / "results.json").read_text())
    assert with_bom["dataset_stats"] == without["dataset_stats"]
    assert with_bom["test"] == without["test"]


TINY = "{num_users: 60, num_items: 40, num_interactions: 900, modalities: {image: 8, text: 4}}"


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [
        *("--model", "lightgcn", "--dataset", "synthetic", "--data-root", str(tmp_path / "d")),
        *("--synthetic", TINY, "--topk", "[10,20]", "--device", "cpu", "--quiet"),
        *("--output", str(tmp_path / "run"), *extra),
    ]


def _tiny_with(tmp_path: Path, argv: list) -> list[str]:
    """:func:`_tiny`'s arguments with ``argv``'s options (replacing one already there)."""
    args = _tiny(tmp_path)
    for i in range(0, len(argv), 2):
        if argv[i] in args:
            args[args.index(argv[i]) + 1] = argv[i + 1]
        else:
            args += argv[i : i + 2]
    return args


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "key 'epochs' must be an integer >= 1, got 0"),
        (["--epochs", "-3"], "key 'epochs' must be an integer >= 1, got -3"),
        (["--patience", "0"], "key 'patience' must be an integer >= 1, got 0"),
        (["--eval_step", "0"], "key 'eval_step' must be an integer >= 1, got 0"),
        (["--embedding_dim", "0"], "key 'embedding_dim' must be in [1, 4096], got 0"),
        (["--embedding_dim", "-4"], "key 'embedding_dim' must be in [1, 4096], got -4"),
        (
            ["--embedding_dim", "1e8"],
            "command line: key 'embedding_dim' expects int (like its default 64), got float "
            "100000000.0",
        ),
        (
            ["--embedding_dim", "100000000"],
            "key 'embedding_dim' must be in [1, 4096], got 100000000",
        ),
        (
            ["--topk", "[0,10]"],
            "key 'topk' must be a non-empty list of distinct cut-offs, integers >= 1, e.g. "
            "[10, 20], got [0, 10]",
        ),
        (
            ["--topk", "[10,10]"],
            "key 'topk' must be a non-empty list of distinct cut-offs, integers >= 1, e.g. "
            "[10, 20], got [10, 10]",
        ),
        (["--num_ui_layers", "-1"], "key 'num_ui_layers' must be in [0, 64], got -1"),
        (
            ["--model", "freedom", "--num_ii_layers", "-2"],
            "key 'num_ii_layers' must be in [0, 64], got -2",
        ),
        (["--num_ui_layers", "1000000"], "key 'num_ui_layers' must be in [0, 64], got 1000000"),
        (
            ["--metrics", "[recall, recall]"],
            "key 'metrics' must be a non-empty list of distinct names among recall, ndcg, "
            "precision, map, got ['recall', 'recall']",
        ),
        (["--eval_batch_size", "0"], "key 'eval_batch_size' must be an integer >= 1, got 0"),
        (
            ["--learning_rate", "-1"],
            "key 'learning_rate' must be a finite number > 0, got -1.0",
        ),
        (
            ["--model", "dhmrec", "--knn_k", "40", "--epochs", "1"],
            "key 'knn_k' must be in [1, 39] (neighbours among the dataset's 40 items), got 40",
        ),
        (["--model", "dhmrec", "--kl_items", "0"], "key 'kl_items' must be an integer >= 1, got 0"),
        (["--model", "dhmrec", "--kl_items", "2.5"], "key 'kl_items' must be an integer, got 2.5"),
        # Non-finite model weights: refused when the model is built, not as a NaN loss later.
        (["--model", "dhmrec", "--alpha_mm", "inf"], "alpha_mm must be >= 0 and finite, got inf"),
        (["--model", "dhmrec", "--gamma_kl", "nan"], "gamma_kl must be >= 0 and finite, got nan"),
        (["--model", "dhmrec", "--gamma_dis", "-0.1"], "gamma_dis must be >= 0, got -0.1"),
        (["--model", "siger", "--cl_weight", "nan"], "cl_weight must be >= 0 and finite, got nan"),
        (
            ["--model", "siger", "--align_temperature", "inf"],
            "align_temperature must be > 0 and finite, got inf",
        ),
        (
            ["--model", "siger", "--perturbation_eps", "-1"],
            "perturbation_eps must be >= 0, got -1.0",
        ),
        (["--model", "bm3", "--reg_weight", "inf"], "reg_weight must be >= 0 and finite, got inf"),
    ],
    ids=[
        "epochs_0",
        "epochs_-3",
        "patience_0",
        "eval_step_0",
        "embedding_dim_0",
        "embedding_dim_-4",
        "embedding_dim_1e8",
        "embedding_dim_10^8",
        "topk_0",
        "topk_repeated",
        "num_ui_layers_negative",
        "num_ii_layers_negative",
        "num_ui_layers_huge",
        "metrics_repeated",
        "eval_batch_size_0",
        "learning_rate_negative",
        "knn_k_too_large",
        "kl_items_0",
        "kl_items_fraction",
        "dhmrec_alpha_mm_inf",
        "dhmrec_gamma_kl_nan",
        "dhmrec_gamma_dis_negative",
        "siger_cl_weight_nan",
        "siger_align_temperature_inf",
        "siger_perturbation_eps_negative",
        "bm3_reg_weight_inf",
    ],
)
def test_option_ranges_exit_2(tmp_path: Path, capsys, argv: list, message: str) -> None:
    assert main(_tiny_with(tmp_path, argv)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "mps"], "key 'device' must be auto, cpu, cuda or cuda:<index>, got 'mps'"),
        (["--device", "meta"], "key 'device' must be auto, cpu, cuda or cuda:<index>, got 'meta'"),
        (["--cache_dir", "5"], "key 'cache_dir' must be null or a non-empty path, got 5"),
        (
            ["--cache_dir", "2024-01-01"],  # YAML reads a date
            "key 'cache_dir' must be null or a non-empty path, got datetime.date(2024, 1, 1)",
        ),
        (["--inter_file", "[a]"], "key 'inter_file' must be null or a non-empty path, got ['a']"),
        (["--url", "5"], "key 'url' must be null or a non-empty path or URL, got 5"),
        (["--amazon", "5"], "key 'amazon' must be null or a mapping of its settings, got 5"),
        (
            ["--model", ""],
            "--model must be a non-empty name, got '' (leave it out for the default, dhmrec)",
        ),
        (
            ["--dataset", " "],
            "--dataset must be a non-empty name or folder path, got ' ' (leave "
            "it out for the default, synthetic)",
        ),
        (["--data-root", ""], "command line: --data-root must be a folder, got ''"),
    ],
    ids=[
        "device_mps",
        "device_meta",
        "cache_dir_int",
        "cache_dir_date",
        "inter_file_list",
        "url_int",
        "amazon_int",
        "model_empty",
        "dataset_blank",
        "data_root_empty",
    ],
)
def test_option_types_exit_2(tmp_path: Path, capsys, argv: list, message: str) -> None:
    assert main(_tiny_with(tmp_path, argv)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n", err
    assert not (tmp_path / "run").exists()


def test_a_size_beyond_memory_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import pyg_dhmrec.cli as cli

    def allocate(argv):  # what torch raises for a width of 10**12
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 160000000000000 bytes.\nmore lines"
        )

    monkeypatch.setattr(cli, "train_main", allocate)
    assert main(["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: out of memory ([enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 160000000000000 bytes.): a setting asks for "
        "more memory than this machine has; check the sizes of the run (embedding_dim, hidden "
        "and feature widths, batch_size, eval_batch_size, layer counts)\n"
    ), err

    def other(argv):  # any other failure is a bug to see in full
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli, "train_main", other)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["--epochs", "1"])


def test_a_learning_rate_that_breaks_the_weights_stops_the_run(tmp_path: Path, capsys) -> None:
    # the loss of epoch 1 is finite; its steps take the embeddings to inf, ranking would be NaN
    assert main(_tiny(tmp_path, "--epochs", "1", "--learning_rate", "1e308")) == 2
    assert capsys.readouterr().err == (
        "error: epoch 1: parameter(s) user_embedding.weight, item_embedding.weight became NaN or "
        "inf in the optimizer's steps (learning_rate 1e+308, weight_decay 0.0): lower them "
        "(settings far from 1: learning_rate 1e+308)\n"
    )
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_nan_loss_names_the_settings_far_from_one(tmp_path: Path, capsys) -> None:
    # a temperature of 1e-300 is a positive number, so accepted; it overflows the InfoNCE term
    args = _tiny_with(tmp_path, ["--model", "mgcn", "--epochs", "1", "--temperature", "1e-300"])
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: epoch 1: loss part(s) cl became NaN or inf (settings far from 1: temperature "
        "1e-300)\n"
    )


def test_an_empty_value_is_not_a_default(tmp_path: Path, capsys) -> None:
    assert main(_tiny(tmp_path, "--batch_size", "")) == 2
    assert capsys.readouterr().err == (
        "error: command line: key 'batch_size' expects int (like its default 2048), got null "
        "(an empty value)\n"
    )


def test_seeds_past_the_largest_seed_refused_before_training(tmp_path: Path, capsys) -> None:
    args = _tiny(tmp_path, "--epochs", "1", "--seed", str(2**32 - 1), "--seeds", "2")
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: --seeds 2 from seed 4294967295 reaches 4294967296, above the largest seed "
        "4294967295\n"
    )
    assert not list((tmp_path / "run").glob("seed=*"))


def test_folder_where_the_run_writes_a_file_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "run" / "run.lock").mkdir(parents=True)
    assert main(_tiny(tmp_path, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert err == f"error: [Errno 21] Is a directory: '{tmp_path / 'run' / 'run.lock'}'\n", err


def test_stray_word_after_resume(tmp_path: Path, capsys) -> None:
    assert main(_tiny(tmp_path, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "run"), "extra", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --resume {tmp_path / 'run'} continues with the folder's config.json; drop "
        "extra (only --device and --quiet may be given)\n"
    )


@pytest.mark.parametrize("key, values", [("model", "[bpr, lightgcn]"), ("output", "[a, b]")])
def test_grid_over_model_or_output_refused(tmp_path: Path, capsys, key: str, values: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"{key}: {values}\n")
    assert main([*_tiny(tmp_path), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {grid}: a grid cannot vary {key} (they select the YAML layers and the run "
        "folder); run one grid per model, dataset or plugin\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values", ["[0.1, 0.1]", "[0.1, 1.0e-1]"])
def test_grid_with_a_repeated_value_refused(tmp_path: Path, capsys, values: str) -> None:
    """Two equal values would name one run folder twice (and list it twice in grid.md)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"reg_weight: {values}\nnum_ui_layers: [1, 2]\n")
    assert main([*_tiny(tmp_path), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {grid}: the grid holds the point reg_weight=0.1_num_ui_layers=1 more than once "
        "(a key lists a value twice); list each value once\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "grid_text, message",
    [
        ("epochs: [0, 1]\n", "{grid}, point epochs=0: key 'epochs' must be an integer >= 1, got 0"),
        (
            "learning_rate: [.nan, 0.01]\n",
            "{grid}, point learning_rate=nan: key 'learning_rate' must be a finite number > 0, "
            "got nan",
        ),
        (
            "learning_rate: [1e-3, 0.001]\n",
            "{grid}: the points learning_rate=1e-3 and learning_rate=0.001 are the same "
            "configuration (equal values written differently); list each value once",
        ),
        (
            "inter_file: [a.inter, b.inter]\n",
            "{grid}: a grid cannot vary inter_file: they choose the data, and a grid's points are "
            "selected on one valid split; run one grid per dataset",
        ),
    ],
    ids=["epochs_0", "learning_rate_nan", "same_value_written_twice", "data_key"],
)
def test_grid_points_checked_before_any_trains(
    tmp_path: Path, capsys, grid_text: str, message: str
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_text)
    assert main([*_tiny(tmp_path), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err == "error: " + message.format(grid=grid) + "\n", err
    assert not (tmp_path / "run").exists()


def test_paths_of_the_wrong_kind_are_named(tmp_path: Path, capsys) -> None:
    assert main([*_tiny(tmp_path), "--grid", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}: a folder; --grid expects a grid YAML file (key: [values])\n"
    )
    inter = tmp_path / "shop" / "shop.inter"
    inter.parent.mkdir()
    inter.write_text(GOOD)
    assert main(["--model", "bpr", "--dataset", str(inter), "--device", "cpu", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"error: --dataset {inter}: a file; give the dataset folder that holds it, --dataset "
        f"{inter.parent}\n"
    )


def test_cache_dir_that_is_a_file_exit_2(tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(_tiny(tmp_path, "--cache_dir", str(afile))) == 2
    assert capsys.readouterr().err == (
        f"error: dataset 'synthetic': cannot write the processed cache in {afile}/synthetic (Not "
        f"a directory): --cache_dir {afile} must be a writable folder (or a path where one can "
        "be made)\n"
    )


def test_output_that_is_a_file_exit_2(tmp_path: Path, capsys) -> None:
    """An --output that names a file, or a folder under a file, is an error, not a traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = _tiny(tmp_path)
    out = args.index("--output") + 1
    args[out] = str(afile)
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: output {afile}: exists and is not a folder; give a folder\n"
    )
    args[out] = str(afile / "run")
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: output {afile / 'run'}: cannot create the folder (Not a directory)\n"
    )
    assert afile.read_text() == "x"
    # the same for the subcommands that write into a folder of one's choice
    args[out] = str(tmp_path / "run")
    assert main(args) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == (
        f"error: export --out {afile}: exists and is not a folder; give a folder\n"
    )
    assert main(["plot", "curves", str(tmp_path / "run"), "--out", str(afile)]) == 2
    assert capsys.readouterr().err.endswith(f"{afile}: exists and is not a folder; give a folder\n")
    assert afile.read_text() == "x"


def test_grid_without_its_selection_metric_refused(tmp_path: Path, capsys) -> None:
    """A grid selects on valid recall@20: a topk without 20 stops before any point trains."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("reg_weight: [0.1, 0.01]\n")
    args = [*_tiny(tmp_path), "--grid", str(grid), "--topk", "[5]"]
    args += ["--early_stop_metric", "recall@5"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {grid}: a grid selects its point on valid recall@20 (the protocol), which this "
        "configuration does not compute (metrics ['recall', 'ndcg', 'precision', 'map'], topk "
        "[5]); include recall in metrics and 20 in topk\n"
    )
    assert not (tmp_path / "run").exists()


def test_grid_table_marks_metrics_not_computed(tmp_path: Path) -> None:
    """With metrics [recall] the grid still selects and its table shows N@20 as '-'."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("reg_weight: [0.1, 0.01]\n")
    args = [*_tiny(tmp_path, "--epochs", "1"), "--grid", str(grid), "--metrics", "[recall]"]
    assert main(args) == 0
    rows = [r for r in (tmp_path / "run" / "grid.md").read_text().splitlines() if "reg_weight" in r]
    assert len(rows) == 3  # two points and the selection line
    assert all(re.search(r"\| 0\.\d{4} \| 0\.\d{4} \| - \| 1 / 1 \|", r) for r in rows[:2]), rows


def test_one_at_a_time_grid_runs_the_centre_then_one_key_each(tmp_path: Path) -> None:
    """design: one_at_a_time trains the centre (first values) and each other value of one key
    with the others at the centre: 1 + 1 + 1 points here, not the product's 4."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("design: one_at_a_time\nreg_weight: [0.1, 0.01]\nnum_ui_layers: [1, 2]\n")
    assert main([*_tiny(tmp_path, "--epochs", "1"), "--grid", str(grid)]) == 0
    summary = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert [p["point"] for p in summary["points"]] == [
        "reg_weight=0.1_num_ui_layers=1",
        "reg_weight=0.01_num_ui_layers=1",
        "reg_weight=0.1_num_ui_layers=2",
    ]
    assert summary["design"] == "one_at_a_time"
    assert summary["axes"] == {"reg_weight": [0.1, 0.01], "num_ui_layers": [1, 2]}
    folders = sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert folders == sorted(p["point"] for p in summary["points"])


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "design: latin\nreg_weight: [0.1]\n",
            "'design' must be one of product, one_at_a_time, got 'latin'",
        ),
        ("design: product\n", "the grid varies no key; expected key -> list of values"),
    ],
)
def test_grid_design_checked(tmp_path: Path, capsys, text: str, message: str) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    assert main([*_tiny(tmp_path), "--grid", str(grid)]) == 2
    assert capsys.readouterr().err == f"error: {grid}: {message}\n"
    assert not (tmp_path / "run").exists()


def _stored_run(tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "stored"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"x")
    (folder / "config.json").write_text(config_text, encoding="utf-8")
    return folder


def _valid_config() -> dict:
    from pyg_dhmrec.config import load_config

    return load_config("lightgcn", "synthetic")


@pytest.mark.parametrize(
    "config_text, message",
    [
        (
            '{"model": "lightgcn", "dat',
            "not valid JSON (line 1 column 23: Unterminated string starting at); the file is "
            "truncated",
        ),
        ("[1, 2]", "expected a JSON object of key: value, got list"),
        (
            json.dumps({**_valid_config(), "epochs": "ten"}),
            "key 'epochs' expects int (like its default 1000), got str 'ten'",
        ),
        (
            json.dumps({**_valid_config(), "epochs": 0}),
            "key 'epochs' must be an integer >= 1, got 0",
        ),
        (
            json.dumps({k: v for k, v in _valid_config().items() if k != "patience"}),
            "lacks key(s) patience",
        ),
    ],
    ids=["truncated", "not_an_object", "wrong_type", "out_of_range", "missing_key"],
)
def test_bad_config_json_names_the_file(
    tmp_path: Path, capsys, config_text: str, message: str
) -> None:
    folder = _stored_run(tmp_path, config_text)
    assert main(["--resume", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'config.json'}: {message}"), err
    assert "Traceback" not in err


def test_per_dataset_entry_not_a_mapping(tmp_path: Path) -> None:
    from pyg_dhmrec.config import ConfigError, _file_with_per_dataset

    path = tmp_path / "m.yaml"
    path.write_text("num_ui_layers: 2\nper_dataset:\n  baby: 3\n")
    with pytest.raises(ConfigError) as info:
        _file_with_per_dataset(path)
    assert str(info.value) == (
        f"{path}: 'per_dataset' must map dataset names to mappings of key: value; entry 'baby' "
        "is not a mapping"
    )


def test_read_only_data_folder_and_home(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyg_dhmrec.data import dataset as dataset_module

    args = _dataset(tmp_path, GOOD, _features())
    args[args.index("--cache_dir") : args.index("--cache_dir") + 2] = []  # default cache places
    monkeypatch.setattr(dataset_module, "_writable", lambda folder: False)  # read-only folder
    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker))  # nothing can be created below HOME
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.match(
        rf"^error: dataset 'tiktok': cannot write the processed cache in {re.escape(str(blocker))}"
        rf"/\.cache/pyg_dhmrec/tiktok-[0-9a-f]{{10}} \(.*\); the dataset folder "
        rf"{re.escape(str(tmp_path / 'tiktok'))} and the user cache "
        rf"{re.escape(str(blocker))}/\.cache/pyg_dhmrec are read-only here: set --cache_dir to "
        r"a writable folder$",
        err.strip(),
    ), err


def test_trailing_empty_fields_are_no_data(tmp_path: Path) -> None:
    """A trailing tab (a spreadsheet export) adds an empty field, not a value: accepted."""
    inter = GOOD.replace("\n", "\t\n")
    assert main(_dataset(tmp_path, inter, _features())) == 0


def test_log_lines_show_a_custom_topk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With ``topk: [2]`` the epoch and test lines show recall@2 (not an empty metric list)."""
    with caplog.at_level(logging.INFO, logger="pyg_dhmrec.train"):
        assert main(_dataset(tmp_path, GOOD, _features())) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"\| valid recall@2 \d\.\d{4}", m) for m in lines), lines
    assert any(re.search(r"best epoch 1 \| test recall@2 \d\.\d{4}$", m) for m in lines), lines


@pytest.mark.parametrize(
    "inter, split",
    [
        (
            HEADER + "".join(f"{u}\t{i}\t{2 * int(i == 4)}\n" for u in range(4) for i in range(5)),
            "valid",
        ),
        # the only test row belongs to a user without train rows, which the protocol drops
        (
            HEADER
            + "".join(f"{u}\t{i}\t{int(i == 4)}\n" for u in range(4) for i in range(5))
            + "4\t0\t2\n",
            "test",
        ),
    ],
    ids=["no_valid_rows", "test_rows_only_of_a_cold_user"],
)
def test_empty_split_exit_2(tmp_path: Path, capsys, inter: str, split: str) -> None:
    assert main(_dataset(tmp_path, inter, _features())) == 2
    err = capsys.readouterr().err.strip()
    code = {"valid": 1, "test": 2}[split]
    assert re.match(
        rf"^error: dataset 'tiktok' has no {split} interaction \(x_label {code}\) of a user "
        r"with train interactions; early stopping selects the epoch on valid",
        err,
    ), err
    assert not (tmp_path / "run" / "results.json").exists()
