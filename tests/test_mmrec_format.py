"""Tests of the MMRec file readers: every malformed input gets an error naming file, line, field."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from pyg_dhmrec.data.mmrec_format import DataFormatError, read_feature_file, read_inter_file

HEADER = "userID\titemID\tx_label\n"


def _write(folder: Path, text: str | None, name: str = "toy.inter") -> Path:
    path = folder / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    return path


# Each case: (id, file content or None for a missing file, regex after "<path>").
# The regexes pin the file (prefix), the line number (":<n>:") and the field where one applies.
MALFORMED_INTER = [
    ("missing_file", None, r": interaction file not found"),
    (
        "empty_file",
        "",
        r": empty file; expected a tab-separated header row with columns "
        r"userID, itemID, x_label",
    ),
    (  # a blank line holds no row, so the first data line is read as the (missing) header
        "blank_first_line",
        "\n0\t0\t0\n",
        r":2: header lacks column\(s\) userID, itemID, x_label; .*the line holds numbers",
    ),
    ("header_only", HEADER, r": header only, no interactions"),
    ("header_and_blank_lines", HEADER + "\n\n", r": header only, no interactions"),
    (
        "missing_column_x_label",
        "userID\titemID\trating\n0\t0\t5\n",
        r":1: header lacks column\(s\) x_label; found \['userID', 'itemID', 'rating'\]",
    ),
    (
        "space_separated",
        "userID itemID x_label\n0 0 0\n",
        r":1: header lacks column\(s\) userID, itemID, x_label; .*separated by tabs",
    ),
    (
        "space_separated_rows",
        HEADER + "0\t0\t0\n1 1 0\n",
        r":3: expected at least 3 tab-separated fields \(userID, itemID, x_label\), got 1",
    ),
    (
        "too_few_fields_line_4",
        HEADER + "0\t0\t0\n1\t1\t0\n2\t2\n",
        r":4: expected at least 3 tab-separated fields .*got 2: '2\\t2'",
    ),
    (
        "non_integer_user_line_3",
        HEADER + "0\t0\t0\nabc\t1\t0\n",
        r":3: field 'userID' must be an integer, got 'abc'",
    ),
    (
        "float_item_line_2",
        HEADER + "0\t1.5\t0\n",
        r":2: field 'itemID' must be an integer, got '1.5'",
    ),
    (
        "negative_item_line_3",
        HEADER + "0\t0\t0\n1\t-2\t0\n",
        r":3: field 'itemID' must be a non-negative id, got -2 \(1 negative value\(s\)",
    ),
    (
        "negative_user_line_2",
        HEADER + "-1\t0\t0\n",
        r":2: field 'userID' must be a non-negative id, got -1",
    ),
    (
        "x_label_3_line_3",
        HEADER + "0\t0\t0\n0\t1\t3\n",
        r":3: field 'x_label' must be 0 \(train\), 1 \(valid\) or 2 \(test\), got 3 \(1 such",
    ),
    (
        "x_label_not_integer",
        HEADER + "0\t0\ttrain\n",
        r":2: field 'x_label' must be an integer, got 'train'",
    ),
    ("no_train_rows", HEADER + "0\t0\t1\n0\t1\t2\n", r": no train interaction \(x_label 0\)"),
    (
        "user_id_2_to_the_70_line_3",
        HEADER + "0\t0\t0\n1180591620717411303424\t1\t0\n",
        r":3: field 'userID' holds '1180591620717411303424', out of the int64 range$",
    ),
]


@pytest.mark.parametrize(
    "text, pattern",
    [case[1:] for case in MALFORMED_INTER],
    ids=[case[0] for case in MALFORMED_INTER],
)
def test_malformed_inter_file(tmp_path: Path, text: str | None, pattern: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataFormatError, match="^" + re.escape(str(path)) + pattern):
        read_inter_file(path)


def test_data_format_error_is_a_value_error() -> None:
    assert issubclass(DataFormatError, ValueError)


def test_valid_file_parsed(tmp_path: Path) -> None:
    text = HEADER + "0\t0\t0\n0\t2\t1\n1\t1\t0\n1\t0\t2\n2\t4\t0\n"
    inter = read_inter_file(_write(tmp_path, text))
    assert inter.user.tolist() == [0, 0, 1, 1, 2]
    assert inter.item.tolist() == [0, 2, 1, 0, 4]
    assert inter.split.tolist() == [0, 1, 0, 2, 0]
    assert inter.user.dtype == np.int64 and inter.item.dtype == np.int64
    assert (inter.num_users, inter.num_items) == (3, 5)  # max id + 1
    assert inter.edges("train").tolist() == [[0, 1, 2], [0, 1, 4]]
    assert inter.edges("valid").tolist() == [[0], [2]]
    assert inter.edges("test").tolist() == [[1], [0]]
    assert (inter.num_duplicates, inter.num_dropped_cold_start, inter.num_cold_start_users) == (
        0,
        0,
        0,
    )


def test_counts_are_max_id_plus_one_with_gaps(tmp_path: Path) -> None:
    # Ids 0..6 for users and 0..9 for items even though most ids never occur.
    inter = read_inter_file(_write(tmp_path, HEADER + "6\t9\t0\n0\t3\t0\n"))
    assert (inter.num_users, inter.num_items) == (7, 10)


def test_duplicates_kept_once_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = HEADER + "0\t0\t0\n0\t1\t0\n0\t0\t0\n1\t1\t0\n0\t1\t2\n1\t2\t1\n"
    path = _write(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.mmrec_format"):
        inter = read_inter_file(path)
    assert inter.num_duplicates == 2
    pairs = list(zip(inter.user.tolist(), inter.item.tolist()))
    assert pairs == [(0, 0), (0, 1), (1, 1), (1, 2)]
    # The first occurrence wins: (0, 1) stays a train pair, its test duplicate goes.
    assert inter.split.tolist() == [0, 0, 0, 1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message
    assert "2 duplicate (userID, itemID) row(s)" in message
    assert "line(s) 4, 6" in message  # the file lines of the dropped rows


def test_no_warning_without_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.mmrec_format"):
        read_inter_file(_write(tmp_path, HEADER + "0\t0\t0\n0\t1\t1\n"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cold_start_valid_test_rows_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Users 1 and 3 have no train row: their 3 valid/test rows go, user 2 keeps its rows.
    text = HEADER + "0\t0\t0\n0\t1\t1\n" + "1\t0\t1\n1\t2\t2\n" + "2\t1\t0\n2\t2\t2\n" + "3\t3\t2\n"
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.mmrec_format"):
        inter = read_inter_file(_write(tmp_path, text))
    assert inter.num_dropped_cold_start == 3
    assert inter.num_cold_start_users == 2
    assert list(zip(inter.user.tolist(), inter.item.tolist(), inter.split.tolist())) == [
        (0, 0, 0),
        (0, 1, 1),
        (2, 1, 0),
        (2, 2, 2),
    ]
    # Counts still come from every id in the file.
    assert (inter.num_users, inter.num_items) == (4, 4)
    assert any(
        "dropped 3 valid/test interaction(s) of 2 user(s)" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    "header, rows",
    [
        (
            "userID\titemID\trating\ttimestamp\tx_label",
            ["0\t1\t5\t1000\t0", "1\t0\t3\t999\t2", "1\t2\t1\t5\t0"],
        ),
        (
            "timestamp\tx_label\titemID\trating\tuserID",
            ["1000\t0\t1\t5\t0", "999\t2\t0\t3\t1", "5\t0\t2\t1\t1"],
        ),
        ("x_label\trating\tuserID\titemID", ["0\t4.5\t0\t1", "2\tnan\t1\t0", "0\t1\t1\t2"]),
    ],
    ids=["rating_timestamp_after", "shuffled_columns", "float_rating_ignored"],
)
def test_extra_columns_in_any_order_ignored(tmp_path: Path, header: str, rows: list) -> None:
    inter = read_inter_file(_write(tmp_path, header + "\n" + "\n".join(rows) + "\n"))
    assert list(zip(inter.user.tolist(), inter.item.tolist(), inter.split.tolist())) == [
        (0, 1, 0),
        (1, 0, 2),
        (1, 2, 0),
    ]
    assert (inter.num_users, inter.num_items) == (2, 3)


def test_blank_and_trailing_lines_and_crlf_fine(tmp_path: Path) -> None:
    text = "userID\titemID\tx_label\r\n0\t0\t0\r\n\r\n1\t1\t0\r\n\n\n"
    inter = read_inter_file(_write(tmp_path, text))
    assert inter.user.tolist() == [0, 1] and inter.item.tolist() == [0, 1]
    assert (inter.num_users, inter.num_items) == (2, 2)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    # The bad row is on physical line 5 (after a blank line 3).
    path = _write(tmp_path, HEADER + "0\t0\t0\n\n1\t1\t0\nx\t1\t0\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:5: field 'userID'")):
        read_inter_file(path)


# ---------------------------------------------------------------- feature files


def _save(folder: Path, array: np.ndarray, name: str = "image_feat.npy", **kwargs) -> Path:
    path = folder / name
    np.save(path, array, **kwargs)
    return path


def test_feature_float64_converted_to_float32(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    out = read_feature_file(_save(tmp_path, array), num_items=4, modality="image")
    assert out.dtype == np.float32
    assert out.shape == (4, 3)
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, array.astype(np.float32))


def test_feature_float32_kept(tmp_path: Path) -> None:
    array = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    out = read_feature_file(_save(tmp_path, array), num_items=3, modality="text")
    np.testing.assert_array_equal(out, array)


def _bad_features(folder: Path, kind: str) -> Path:
    good = np.ones((4, 3), dtype=np.float32)
    if kind == "missing":
        return folder / "image_feat.npy"
    if kind == "wrong_rows":
        return _save(folder, np.ones((5, 3), dtype=np.float32))
    if kind == "nan_row_2":
        good[2, 1] = np.nan
        return _save(folder, good)
    if kind == "inf_row_3":
        good[3, 0] = -np.inf
        return _save(folder, good)
    if kind == "one_d":
        return _save(folder, np.ones(4, dtype=np.float32))
    if kind == "integer":
        return _save(folder, np.ones((4, 3), dtype=np.int64))
    if kind == "object":
        array = np.empty((4, 3), dtype=object)
        array[:] = 1.0
        return _save(folder, array, allow_pickle=True)
    if kind == "not_npy":
        path = folder / "image_feat.npy"
        path.write_bytes(b"this is not a numpy file")
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("missing", r": feature file of modality 'image' not found"),
        (
            "wrong_rows",
            r": modality 'image' has 5 rows, expected one per item: 4 \(max itemID \+ 1",
        ),
        ("nan_row_2", r": modality 'image' has NaN or inf in 1 row\(s\), first at item \(row\) 2$"),
        ("inf_row_3", r": modality 'image' has NaN or inf in 1 row\(s\), first at item \(row\) 3$"),
        ("one_d", r": modality 'image' must be a 2-D matrix \[num_items, dim\], got shape \(4,\)"),
        ("integer", r": modality 'image' must hold floating-point features, got dtype int64"),
        ("object", r": not a readable \.npy array \(.*allow_pickle"),
        ("not_npy", r": not a readable \.npy array"),
    ],
)
def test_malformed_feature_file(tmp_path: Path, kind: str, pattern: str) -> None:
    path = _bad_features(tmp_path, kind)
    with pytest.raises(DataFormatError, match="^" + re.escape(str(path)) + pattern):
        read_feature_file(path, num_items=4, modality="image")
