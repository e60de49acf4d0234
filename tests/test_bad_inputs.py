"""Malformed inputs through ``pyg_dhmrec.cli.main``: each exits 2 with its exact message."""

from __future__ import annotations

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
    ("empty_file", "", None, r"toy\.inter: empty file; expected a tab-separated header row"),
    ("header_only", HEADER, None, r"toy\.inter: header only, no interactions$"),
    (
        "features_int64",
        GOOD,
        _features(dtype=np.int64),
        r"image_feat\.npy: modality 'image' must hold floating-point features, got dtype int64$",
    ),
]


def _dataset(root: Path, inter: str, image: np.ndarray | None) -> list[str]:
    folder = root / "tiktok"  # a known dataset name, its files replaced by the test's
    folder.mkdir(parents=True)
    (folder / "toy.inter").write_text(inter, encoding="utf-8")
    if image is not None:
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
    tmp_path: Path, capsys, inter: str, image: np.ndarray | None, pattern: str
) -> None:
    assert main(_dataset(tmp_path, inter, image)) == 2
    err = capsys.readouterr().err.strip()
    folder = re.escape(str(tmp_path / "tiktok") + "/")
    assert re.match("^error: " + folder + pattern, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


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
            r"unknown model 'nope'; available: bm3, bpr, dhmrec, dualgnn, freedom, lattice, "
            r"layergcn, lgmrec, lightgcn, mgcn, micro, siger, vbpr$",
        ),
        (["--dataset", "nope"], r"unknown dataset 'nope'; available: baby, .*synthetic"),
        (
            ["--resume", "{tmp}"],
            r"--resume {tmp}: no checkpoint\.pt in that folder; expected a run folder",
        ),
        (["--grid", "{tmp}/none.yaml"], r"{tmp}/none\.yaml: grid file not found$"),
    ],
    ids=[
        "wrong_type",
        "unknown_key",
        "unknown_model",
        "unknown_dataset",
        "resume_empty",
        "grid_missing",
    ],
)
def test_bad_options_exit_2(tmp_path: Path, capsys, argv: list, pattern: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.match("^error: " + pattern.replace("{tmp}", re.escape(str(tmp_path))), err), err
