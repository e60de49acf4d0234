"""Data-loading faults found by probing with files of other shapes and encodings: each stops
with a message naming the file (and line) and what was expected, and data that is unusual but
valid (leading blank lines, spaced header names, cold items, users without test items) trains
and is evaluated as the protocol says."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pyg_dhmrec.data.dataset as dataset_module
import pyg_dhmrec.data.mmrec_format as format_module
from pyg_dhmrec.cli import main
from pyg_dhmrec.config import ConfigError, discover_dataset
from pyg_dhmrec.data.dataset import RATES, MMRecDataset, SyntheticDataset, load_dataset
from pyg_dhmrec.data.mmrec_format import DataFormatError, read_feature_file, read_inter_file
from pyg_dhmrec.metrics import FullRankEvaluator

NAME = "toy"
HEADER = "userID\titemID\tx_label\n"
# 3 users, 4 items, every user with a train row.
ROWS = ["0\t0\t0", "0\t1\t0", "0\t2\t1", "1\t1\t0", "1\t3\t2", "2\t3\t0", "2\t0\t2"]
INTER = HEADER + "\n".join(ROWS) + "\n"
IMAGE = np.arange(12, dtype=np.float32).reshape(4, 3)


def _inter(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "toy.inter"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _same(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("user", "item", "split")
    ) and (a.num_users, a.num_items) == (b.num_users, b.num_items)


# ---------------------------------------------------------------- 1. .inter that is not text


def _zip(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("toy.inter", text)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, kind",
    [
        (gzip.compress(INTER.encode()), "a gzip-compressed file, not an interaction file"),
        (bz2.compress(INTER.encode()), "a bzip2-compressed file, not an interaction file"),
        (_zip(INTER), r"a zip archive, not an interaction file \(unpack it\)"),
        (INTER.encode("utf-16"), r"UTF-16 or UTF-32 text \(byte-order mark FF FE\)"),
        (INTER.encode("utf-16-be"), r"a NUL byte; expected tab-separated UTF-8 text"),
    ],
    ids=["gzip", "bzip2", "zip", "utf16_bom", "utf16_no_bom"],
)
def test_inter_file_that_is_not_utf8_text_is_named(
    tmp_path: Path, content: bytes, kind: str
) -> None:
    # Before: a zip or BOM-less UTF-16 file was read as text and refused for a header that
    # "lacks column(s)", quoting binary; gzip only as "not UTF-8 (byte 1)".
    path = _inter(tmp_path, content)
    with pytest.raises(DataFormatError, match="^" + re.escape(str(path)) + r"(: |:1: )" + kind):
        read_inter_file(path)


def test_nul_byte_names_its_line(tmp_path: Path) -> None:
    path = _inter(tmp_path, INTER.replace("1\t3\t2", "1\t3\t2\t\x00x"))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:6: a NUL byte")):
        read_inter_file(path)


def test_npy_given_as_the_inter_file(tmp_path: Path) -> None:
    path = tmp_path / "toy.inter"
    with open(path, "wb") as f:
        np.save(f, IMAGE)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: a .npy array, not an inter")):
        read_inter_file(path)


# ---------------------------------------------------------------- 2. header rows


def test_spaces_around_header_names_accepted_like_around_ids(tmp_path: Path) -> None:
    plain = read_inter_file(_inter(tmp_path, INTER))
    spaced = read_inter_file(
        _inter(tmp_path, INTER.replace(HEADER, " userID\titemID \tx_label \n"))
    )
    assert _same(plain, spaced)


def test_header_named_twice_after_stripping_spaces(tmp_path: Path) -> None:
    path = _inter(tmp_path, INTER.replace(HEADER, "userID\titemID\tx_label\tuserID \n"))
    with pytest.raises(DataFormatError, match=r":1: header names column\(s\) userID more"):
        read_inter_file(path)


@pytest.mark.parametrize(
    "header, hint",
    [
        ("userid\titemid\tx_label\n", "rename 'userid' to userID, 'itemid' to itemID"),
        ("user_id\titemID\tX_Label\n", "rename 'user_id' to userID, 'X_Label' to x_label"),
        ('"userID"\titemID\tx_label\n', "rename '\"userID\"' to userID"),
    ],
)
def test_header_with_other_spelling_gets_the_exact_name(
    tmp_path: Path, header: str, hint: str
) -> None:
    path = _inter(tmp_path, INTER.replace(HEADER, header))
    with pytest.raises(DataFormatError, match=r":1: header lacks column\(s\)") as info:
        read_inter_file(path)
    assert f"column names are exact and case-sensitive: {hint};" in str(info.value)


def test_file_without_header_row_is_named_as_such(tmp_path: Path) -> None:
    path = _inter(tmp_path, "\n".join(ROWS) + "\n")
    with pytest.raises(DataFormatError) as info:
        read_inter_file(path)
    assert str(info.value).startswith(f"{path}:1: header lacks column(s) userID, itemID, x_label")
    assert "the line holds numbers, not column names" in str(info.value)


def test_leading_blank_lines_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    # Before: any blank first line was "empty file", even with a header and rows after it.
    plain = read_inter_file(_inter(tmp_path, INTER))
    assert _same(plain, read_inter_file(_inter(tmp_path, "\n \t\n" + INTER)))
    path = _inter(tmp_path, "\n\n" + INTER.replace("1\t3\t2", "1\tx\t2"))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:8: field 'itemID'")):
        read_inter_file(path)


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_second_header_row_of_joined_files_is_named(tmp_path: Path, bom: str) -> None:
    path = _inter(tmp_path, INTER + bom + INTER)  # two exports joined with cat
    with pytest.raises(DataFormatError) as info:
        read_inter_file(path)
    assert str(info.value) == (
        f"{path}:9: field 'userID' must be an integer, got {bom + 'userID'!r} (plain ASCII "
        "digits 0-9; a second header row?)"
    )


def test_only_blank_lines_is_still_an_empty_file(tmp_path: Path) -> None:
    path = _inter(tmp_path, "\n \n\t\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: empty file; expected")):
        read_inter_file(path)


# ---------------------------------------------------------------- 3. feature files


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(IMAGE))


@pytest.mark.parametrize(
    "write, what",
    [
        (lambda p: p.write_bytes(b""), r": not a readable \.npy array: empty file \(0 bytes\)"),
        (lambda p: p.write_text("0 1 2\n3 4 5\n"), r".*: it starts with b'0 1 2\\n3 '"),
        (_pickle, r".*: a Python pickle \(unpickling can run code, so it is not loaded\)"),
        (lambda p: p.write_bytes(gzip.compress(b"x" * 10)), r".*: a gzip-compressed file;"),
    ],
    ids=["empty", "text", "pickle", "gzip"],
)
def test_feature_file_that_is_not_npy_is_named(tmp_path: Path, write, what: str) -> None:
    # Before: numpy called each of these "pickled (object) data" and advised allow_pickle.
    path = tmp_path / "image_feat.npy"
    write(path)
    with pytest.raises(DataFormatError, match="^" + re.escape(str(path)) + what) as info:
        read_feature_file(path, 4, "image")
    message = str(info.value)
    assert "If you trust the file" not in message
    if "empty" not in message:
        assert "(no b'\\x93NUMPY' signature)" in message
    assert message.endswith("save the matrix of modality 'image' with numpy.save")


def test_object_npy_refused_without_advice_to_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "image_feat.npy"
    np.save(path, IMAGE.astype(object), allow_pickle=True)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: not a readable .npy array (it")):
        read_feature_file(path, 4, "image")


def test_npy_header_with_negative_dimension(tmp_path: Path) -> None:
    path = tmp_path / "image_feat.npy"
    np.save(path, IMAGE)
    # one padding space less keeps the header's declared length
    path.write_bytes(path.read_bytes().replace(b"(4, 3), } ", b"(-4, 3), }", 1))
    with pytest.raises(DataFormatError, match=r"declares shape \(-4, 3\), with a negative dim"):
        read_feature_file(path, 4, "image")


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(IMAGE.astype(np.float64)),
        IMAGE.astype(">f4"),
        IMAGE.astype(np.float16),
    ],
    ids=["fortran_float64", "big_endian", "float16"],
)
def test_unusual_float_layouts_load_as_the_same_float32(tmp_path: Path, array) -> None:
    path = tmp_path / "image_feat.npy"
    np.save(path, array)
    features = read_feature_file(path, 4, "image")
    assert features.dtype == np.float32 and features.flags.c_contiguous
    np.testing.assert_array_equal(features, IMAGE)


def test_all_zero_feature_rows_load_with_a_warning_counting_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "image_feat.npy"
    array = IMAGE.copy()
    array[[1, 3]] = 0.0
    np.save(path, array)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        features = read_feature_file(path, 4, "image")
    np.testing.assert_array_equal(features, array)
    assert "modality 'image' has 2 all-zero row(s) of 4, first at item (row) 1" in caplog.text
    caplog.clear()
    np.save(path, IMAGE)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        read_feature_file(path, 4, "image")
    assert caplog.text == ""


# ---------------------------------------------------------------- 4. links and rights


def _folder(root: Path, inter: str = INTER) -> Path:
    folder = root / NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NAME}.inter").write_text(inter, encoding="utf-8")
    return folder


def test_dangling_feature_link_is_named_with_its_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path)
    os.symlink(tmp_path / "gone.npy", folder / "image_feat.npy")
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        ds = MMRecDataset(str(tmp_path), NAME, modalities={"image": "image_feat.npy"})
    note = f"(a symbolic link to {tmp_path / 'gone.npy'}, which does not exist)"
    # ID-only models still load it, with a line saying why the modality is left out
    assert ds.modalities == []
    assert f"{folder / 'image_feat.npy'} {note}: modality 'image' left out" in caplog.text
    with pytest.raises(DataFormatError, match=re.escape(f"image_feat.npy {note}")):
        ds.require_modalities()
    with pytest.raises(DataFormatError, match=re.escape(note)):
        read_feature_file(folder / "image_feat.npy", 4, "image")


def test_dangling_inter_link_is_named_with_its_target(tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    os.symlink(tmp_path / "gone.inter", folder / "toy.inter")
    note = f"(a symbolic link to {tmp_path / 'gone.inter'}, which does not exist)"
    with pytest.raises(FileNotFoundError, match=re.escape(f"toy.inter not found {note}")):
        MMRecDataset(str(tmp_path), NAME)
    with pytest.raises(DataFormatError, match=re.escape(note)):
        read_inter_file(folder / "toy.inter")


def test_dataset_folder_with_a_dangling_inter_link_names_the_link(tmp_path: Path) -> None:
    folder = tmp_path / NAME
    folder.mkdir()
    os.symlink(tmp_path / "gone.inter", folder / "toy.inter")
    with pytest.raises(ConfigError) as error:
        discover_dataset(folder)
    assert f"toy.inter is a symbolic link to {tmp_path / 'gone.inter'}, which does" in str(
        error.value
    )
    assert "it holds" not in str(error.value)  # not "no toy.inter (it holds: toy.inter)"


def test_feature_files_named_almost_right_are_named_as_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path)
    for file in ("image_feat.npy", "text_feat.NPY", "audio_feat.npy.bak"):
        np.save(folder / "x.npy", IMAGE)
        (folder / "x.npy").rename(folder / file)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        settings = discover_dataset(folder)
    assert settings == {"modalities": {"image": "image_feat.npy"}}
    assert "audio_feat.npy.bak, text_feat.NPY not read as modalities" in caplog.text
    caplog.clear()
    (folder / "text_feat.NPY").unlink()
    (folder / "audio_feat.npy.bak").unlink()
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        discover_dataset(folder)
    assert caplog.text == ""


def test_synthetic_setting_misspelt_gets_the_right_name(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError) as error:
        SyntheticDataset(str(tmp_path), "synthetic", {"num_userz": 5})
    message = str(error.value)
    assert "bad 'synthetic' settings: unknown setting 'num_userz'" in message
    assert "Did you mean: num_users?" in message
    assert not (tmp_path / "synthetic").exists()  # refused before anything is generated


def test_synthetic_and_amazon_together_are_refused(tmp_path: Path) -> None:
    config = {"data_root": str(tmp_path), "dataset": "synthetic", "synthetic": {"seed": 1}}
    with pytest.raises(DataFormatError, match="'synthetic' .* and 'amazon' .* are both set"):
        load_dataset({**config, "amazon": {"foo": 1}})
    assert not (tmp_path / "synthetic").exists()


def _deny(module, monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Reading ``denied`` through ``module``'s ``open`` fails as a file without read rights
    does (chmod cannot show it to root, who runs these tests on some machines)."""

    def guarded(file, *args, **kwargs):
        if Path(file) == denied:
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(module, "open", guarded, raising=False)


@pytest.mark.parametrize(
    "file, what", [("toy.inter", "interaction file"), ("image_feat.npy", "feature matrix")]
)
def test_unreadable_data_file_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, file: str, what: str
) -> None:
    # Before: "error: [Errno 13] Permission denied: '<path>'", saying nothing of the file's role.
    folder = _folder(tmp_path)
    np.save(folder / "image_feat.npy", IMAGE)
    _deny(dataset_module, monkeypatch, folder / file)
    argv = ["--model", "lightgcn", "--dataset", str(folder), "--device", "cpu", "--quiet"]
    assert main([*argv, "--output", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {folder / file}: cannot read the {what} of dataset 'toy' (Permission "
        "denied); make it readable"
    )


def test_unreadable_files_in_the_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inter = _inter(tmp_path, INTER)
    features = tmp_path / "image_feat.npy"
    np.save(features, IMAGE)
    _deny(format_module, monkeypatch, inter)
    with pytest.raises(DataFormatError, match=re.escape(f"{inter}: cannot read the interaction")):
        read_inter_file(inter)
    _deny(format_module, monkeypatch, features)
    with pytest.raises(DataFormatError, match=re.escape(f"{features}: cannot read the feature")):
        read_feature_file(features, 4, "image")


# ---------------------------------------------------------------- 5. counts on a cached reload


def test_cached_reload_still_reports_what_was_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: only the run that built the cache said that rows were dropped; later runs were
    # silent about the cold-start users and duplicates left out of the splits.
    _folder(tmp_path, INTER + "3\t1\t2\n4\t2\t1\n0\t0\t0\n")  # 2 cold-start users, 1 duplicate
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        MMRecDataset(str(tmp_path), NAME)
    built = caplog.text
    assert "dropped 2 valid/test interaction(s) of 2 user(s)" in built
    assert "1 duplicate (userID, itemID) row(s)" in built
    caplog.clear()

    def no_processing(self) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(MMRecDataset, "process", no_processing)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        ds = MMRecDataset(str(tmp_path), NAME)
    assert ds.stats["cold_start_interactions_dropped"] == 2
    assert "dropped 2 valid/test interaction(s) of 2 user(s) without train" in caplog.text
    assert "counted when the processed cache was built" in caplog.text
    assert "1 duplicate (userID, itemID) row(s) kept once" in caplog.text


def test_cached_reload_of_clean_data_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _folder(tmp_path)
    MMRecDataset(str(tmp_path), NAME)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec"):
        MMRecDataset(str(tmp_path), NAME)
    assert caplog.text == ""


# ---------------------------------------------------------------- 6. unusual but valid data


def _unusual_rows() -> list[tuple[int, int, int]]:
    """12 users x 20 items; users 3, 6 and 9 have no test item; users 12 and 13 no train item
    (their rows are dropped); items 20 and 21 appear only in test (user 0's only test item) and
    valid (cold items)."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(12):
        labels = [0, 0, 0, 0, 1, 2, 2] if u % 3 else [0, 0, 0, 0, 0, 1, 1]
        rows += [(u, int(i), s) for i, s in zip(rng.choice(20, 7, replace=False), labels)]
    return rows + [(12, 3, 2), (13, 4, 1), (0, 20, 2), (1, 21, 1)]


def _write_unusual(folder: Path, rows: list[tuple[int, int, int]]) -> None:
    """Other column order, extra columns, spaced header names, CRLF, leading and inner blank
    lines, trailing tabs."""
    folder.mkdir(parents=True)
    lines = [f"{s}\t{i}\t5\t{u}\t1700000000\t" for u, i, s in rows]
    lines.insert(len(lines) // 2, "")
    text = "\r\n" + "x_label\titemID\trating\t userID \ttimestamp\r\n" + "\r\n".join(lines)
    (folder / f"{folder.name}.inter").write_bytes(text.encode() + b"\r\n")


def test_unusual_but_valid_file_evaluates_as_the_protocol_says(tmp_path: Path) -> None:
    rows = _unusual_rows()
    _write_unusual(tmp_path / "shop", rows)
    data = MMRecDataset(str(tmp_path), "shop")[0]
    store = data[RATES]
    assert (data["user"].num_nodes, data["item"].num_nodes) == (14, 22)
    scores = torch.rand(14, 22, generator=torch.Generator().manual_seed(0))
    evaluator = FullRankEvaluator(store.edge_index, store.test_edge_index, 14, 22, ks=(1, 3, 5))
    got = evaluator.evaluate(lambda users: scores[users].clone())

    # Brute force from the rows: users with train items only; average over users with test.
    train, test = {}, {}
    for u, i, s in rows:
        if u < 12 and s != 1:
            (train if s == 0 else test).setdefault(u, set()).add(i)
    assert evaluator.num_users_evaluated == len(test) == 9
    for k in (1, 3, 5):
        recall, ndcg = [], []
        for u, truth in test.items():
            s = scores[u].clone()
            s[sorted(train[u])] = -math.inf
            hits = [int(i) in truth for i in torch.topk(s, k).indices]
            recall.append(sum(hits) / len(truth))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(len(truth), k))))
        assert got[f"recall@{k}"] == pytest.approx(np.mean(recall), abs=1e-6)
        assert got[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg), abs=1e-6)


@pytest.mark.parametrize("model", ["lightgcn", "vbpr"])
def test_unusual_but_valid_folder_trains_through_the_cli(tmp_path: Path, model: str) -> None:
    folder = tmp_path / "my shop"  # a space in the folder name
    _write_unusual(folder, _unusual_rows())
    rng = np.random.default_rng(0)
    np.save(folder / "image_feat.npy", np.asfortranarray(rng.random((22, 5))))  # float64
    np.save(folder / "text_feat.npy", rng.random((22, 3)).astype(np.float16))
    np.save(folder / "audio_feat.npy", np.zeros((22, 2), dtype=">f4"))  # all-zero rows
    out = tmp_path / "run"
    argv = ["--model", model, "--dataset", str(folder), "--device", "cpu", "--epochs", "1"]
    assert main([*argv, "--quiet", "--baseline", "null", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test"] and all(math.isfinite(v) for v in results["test"].values())
    assert 0.0 <= results["test"]["recall@20"] <= 1.0
