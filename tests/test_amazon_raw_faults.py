"""Malformed and unusual raw Amazon files: a clear error naming file, line and field, or a
correct dataset; never a traceback, a silent drop or a guess.

The raw files are tiny and served from a local folder (file:// URLs or a plain-path mirror).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyg_dhmrec.cli import main
from pyg_dhmrec.data import amazon as amazon_module
from pyg_dhmrec.data.amazon import IMAGE_DIM, item_texts, read_image_features, read_review_table
from pyg_dhmrec.data.dataset import AmazonDataset
from pyg_dhmrec.data.download import gzip_complete
from pyg_dhmrec.data.mmrec_format import DataFormatError, read_inter_file

CATEGORY = "Tiny"
ASINS = [f"B{i:09d}" for i in range(8)]
NAMES = {
    "reviews": f"reviews_{CATEGORY}_5.json.gz",
    "meta": f"meta_{CATEGORY}.json.gz",
    "image": f"image_features_{CATEGORY}.b",
}
RECORD = 10 + 4 * IMAGE_DIM


def _reviews() -> list[dict]:
    """8 users x 6 items on a ring of 8 items: a 5-core as it is."""
    return [
        {
            "reviewerID": f"U{j}",
            "asin": ASINS[(j + t) % len(ASINS)],
            "overall": 4.0,
            "unixReviewTime": 1_300_000_000 + t,
        }
        for j in range(8)
        for t in range(6)
    ]


def _meta() -> list[str]:
    return [
        repr({"asin": a, "title": f"toy {i}", "categories": [["Toys"]]})
        for i, a in enumerate(ASINS)
    ]


def _image(asins: list[str] = ASINS) -> bytes:
    return b"".join(
        a.encode() + np.full(IMAGE_DIM, i, "<f4").tobytes() for i, a in enumerate(asins)
    )


def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)


def _source(tmp_path: Path, reviews=None, meta=None, image=None) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    rows = _reviews() if reviews is None else reviews
    data = {
        "reviews": rows if isinstance(rows, bytes) else _gz([json.dumps(r) for r in rows]),
        "meta": meta if isinstance(meta, bytes) else _gz(_meta() if meta is None else meta),
        "image": _image() if image is None else image,
    }
    for key, name in NAMES.items():
        (src / name).write_bytes(data[key])
    return src


def _amazon(src: Path, **extra: object) -> dict:
    urls = {f"{key}_url": (src / name).as_uri() for key, name in NAMES.items()}
    return {"category": CATEGORY, "text_encoder": "tfidf", **urls, **extra}


def _cli(tmp_path: Path, amazon: dict) -> list[str]:
    flow = yaml.safe_dump(amazon, default_flow_style=True, width=10_000).strip()
    return [
        *("--model", "lightgcn", "--dataset", "baby", "--data-root", str(tmp_path / "data")),
        *("--amazon", flow, "--epochs", "1", "--quiet", "--device", "cpu"),
        *("--output", str(tmp_path / "run")),
    ]


def _cli_error(tmp_path: Path, amazon: dict, capsys: pytest.CaptureFixture) -> str:
    assert main(_cli(tmp_path, amazon)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


# ----- review lines -----
@pytest.mark.parametrize(
    "change, message",
    [
        ({"asin": 123}, "review field 'asin' must be a non-empty string .*got 123 \\(int\\)"),
        ({"asin": ["B000000001"]}, "review field 'asin' must be a non-empty string"),
        ({"reviewerID": None}, "review field 'reviewerID' must be a non-empty string"),
        ({"reviewerID": ""}, "review field 'reviewerID' must be a non-empty string"),
        (
            {"reviewerID": "U1\tB"},
            "review field 'reviewerID' must be a non-empty string without tabs",
        ),
        ({"overall": "5.0"}, "'overall' must be a number \\(a finite rating\\), got '5.0'"),
        ({"overall": True}, "'overall' must be a number"),
        ({"unixReviewTime": 1.5}, "'unixReviewTime' must be a number of seconds since 1970"),
        ({"unixReviewTime": "1300000000"}, "'unixReviewTime' must be a number of seconds"),
        ({"unixReviewTime": -5}, "'unixReviewTime' must be a number of seconds .*got -5"),
    ],
)
def test_review_field_of_the_wrong_type_names_line_and_field(
    tmp_path: Path, change: dict, message: str
) -> None:
    rows = _reviews()
    rows[2] = {**rows[2], **change}
    path = tmp_path / "r.json.gz"
    path.write_bytes(_gz([json.dumps(r) for r in rows]))
    with pytest.raises(DataFormatError, match=rf"r\.json\.gz:3: {message}"):
        read_review_table(path)


def test_ratings_off_the_star_scale_and_future_times_are_warned_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _reviews()
    rows[4] = {**rows[4], "overall": 0.0}  # line 5
    rows[9] = {**rows[9], "overall": 7.5}
    rows[6] = {**rows[6], "unixReviewTime": 4_102_444_800}  # 2100-01-01, line 7
    path = tmp_path / "r.json.gz"
    path.write_bytes(_gz([json.dumps(r) for r in rows]))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        table = read_review_table(path)
    assert "r.json.gz:5: 2 review(s) with 'overall' outside 1-5 (this one: 0.0)" in caplog.text
    assert "r.json.gz:7: 1 review(s) with 'unixReviewTime' after today" in caplog.text
    assert table.ratings[4] == 0.0 and table.ratings[9] == 7.5  # kept as read
    assert table.timestamps[6] == 4_102_444_800


def test_ratings_on_the_star_scale_warn_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _reviews()
    rows[0]["overall"], rows[1]["overall"] = 1.0, 5.0  # the scale's ends
    path = tmp_path / "r.json.gz"
    path.write_bytes(_gz([json.dumps(r) for r in rows]))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        read_review_table(path)
    assert caplog.text == ""


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", "got an array '\\[1, 2\\]'"),
        ("null", "got null 'null'"),
        ('"text"', "got a string"),
        ('{"reviewerID": "U1", "asin": "B1", "overall": NaN}', "'overall' must be a number"),
        pytest.param("[" * 100_000 + "]" * 100_000, "not a JSON object", id="nested-deep"),
    ],
)
def test_review_line_that_is_not_a_review_object(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "r.json.gz"
    rows = [json.dumps(r) for r in _reviews()[:3]]
    path.write_bytes(_gz([rows[0], rows[1], line, rows[2]]))
    with pytest.raises(DataFormatError, match=rf"r\.json\.gz:3: .*{message}"):
        read_review_table(path)


def test_non_utf8_byte_is_reported_on_its_own_line(tmp_path: Path) -> None:
    # The decoder reads ahead in blocks: the line must be the byte's, not the block's first.
    lines = [json.dumps(r).encode() for r in _reviews()]
    lines[40] = lines[40].replace(b'"U', b'"\xff', 1)
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    with pytest.raises(DataFormatError, match=r"r\.json\.gz:41: not UTF-8 text"):
        read_review_table(path)


def test_byte_order_mark_and_gzip_without_gz_name_are_read(tmp_path: Path) -> None:
    text = "\ufeff" + "\r\n".join(json.dumps(r) for r in _reviews()) + "\r\n"
    path = tmp_path / "reviews.json"  # gzip content under a plain name
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    table = read_review_table(path)
    assert table.reviewer_ids.tolist() == [r["reviewerID"] for r in _reviews()]
    assert table.lines is not None and table.lines[0] == 1


# ----- metadata lines -----
@pytest.mark.parametrize(
    "line, message",
    [
        (repr({"title": "no asin"}), "metadata field 'asin' must be a non-empty string, got "
         "nothing \\(the field is missing\\)"),
        (repr({"asin": 12, "title": "x"}), "metadata field 'asin' must be a non-empty string"),
        (repr({"asin": ASINS[2], "categories": "Toys"}), "metadata field 'categories' must be a "
         "list of category paths"),
        (repr({"asin": ASINS[2], "title": {"a": 1}}), "metadata field 'title' must be a string"),
        (repr({"asin": ASINS[2], "description": 3.5}), "metadata field 'description' must be "
         "a string"),
        pytest.param('{"asin": "' + ASINS[2] + '", "title": ' + "[" * 100_000,
                     "not a metadata dict", id="nested-deep"),
    ],
)  # fmt: skip
def test_metadata_field_of_the_wrong_type_names_line_and_field(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "m.json.gz"
    meta = _meta()
    meta[2] = line
    path.write_bytes(_gz(meta))
    with pytest.raises(DataFormatError, match=rf"m\.json\.gz:3: {message}"):
        item_texts(path, {a: i for i, a in enumerate(ASINS)})


def test_metadata_escaped_asin_and_repeated_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meta = _meta()
    # valid JSON whose asin is written with an escape: the same asin, not an unknown one
    meta[2] = json.dumps({"asin": ASINS[2], "title": "escaped"}).replace('"B', '"\\u0042', 1)
    meta[5] = repr({"asin": ASINS[5]})  # first record of B5: no text fields
    meta.append(repr({"asin": ASINS[5], "title": "second record"}))  # line 9: skipped
    meta.append(repr({"asin": ASINS[6], "title": "second record"}))  # line 10
    path = tmp_path / "m.json.gz"
    path.write_bytes(_gz(meta))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        texts = item_texts(path, {a: i for i, a in enumerate(ASINS)})
    assert texts[2] == "Title: escaped."
    assert texts[5] == "" and texts[6] == "Title: toy 6. Categories: Toys."  # the first wins
    assert "m.json.gz:9: 2 metadata record(s) repeat an asin already read" in caplog.text


# ----- image file -----
def test_image_record_with_nan_or_a_repeated_asin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "img.b"
    data = bytearray(_image())
    data[2 * RECORD + 10 + 4 * 7 : 2 * RECORD + 10 + 4 * 8] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    asin_to_item = {a: i for i, a in enumerate(ASINS)}
    with pytest.raises(
        DataFormatError, match=rf"img\.b: byte {2 * RECORD}: the record of asin {ASINS[2]} has "
        "nan at feature 7 \\(expected 4096 finite float32\\)"
    ):  # fmt: skip
        read_image_features(path, asin_to_item, log=None)
    path.write_bytes(_image() + _image([ASINS[3], "NOTINDATA0", ASINS[1]]))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        out = read_image_features(path, asin_to_item, log=None)
    assert out[3, 0] == 3 and out[1, 0] == 1  # the first record of an asin is kept
    assert (
        f"img.b: 2 record(s) repeat an asin already read and were skipped (the first record of "
        f"an asin is kept); the first such record is at byte {8 * RECORD} (asin {ASINS[3]})"
    ) in caplog.text


# ----- whole builds -----
def test_duplicate_reviews_are_counted_in_a_warning_naming_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _reviews()
    rows.insert(10, {**rows[3], "overall": 1.0})  # line 11 repeats line 4's pair
    rows.append(dict(rows[0]))
    src = _source(tmp_path, reviews=rows)
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        AmazonDataset(str(tmp_path / "data"), "toy", _amazon(src), progress=False)
    assert (
        f"{NAMES['reviews']}:11: 2 review(s) repeat a (reviewerID, asin) pair already read"
    ) in caplog.text
    inter = (tmp_path / "data" / "toy" / "toy.inter").read_text().splitlines()
    assert len(inter) == 1 + 48 and not any("\t1.0\t" in line for line in inter)  # first kept


def test_metadata_without_any_text_is_an_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = _source(tmp_path, meta=[repr({"asin": a}) for a in ASINS])
    err = _cli_error(tmp_path, _amazon(src), capsys)
    assert f"{NAMES['meta']}: none of the 8 items of the dataset has a metadata record" in err
    assert not (tmp_path / "data" / "baby" / "meta.json").exists()


def test_nan_image_feature_stops_the_build_naming_the_raw_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = bytearray(_image())
    data[10:14] = np.float32(np.inf).tobytes()
    src = _source(tmp_path, image=bytes(data))
    err = _cli_error(tmp_path, _amazon(src), capsys)
    assert f"{NAMES['image']}: byte 0: the record of asin {ASINS[0]} has inf" in err
    assert not (tmp_path / "data" / "baby" / "image_feat.npy").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"k_core": "5"}, "'k_core' must be a whole number >= 1, got '5'"),
        ({"k_core": 0}, "'k_core' must be a whole number >= 1, got 0"),
        ({"seed": "abc"}, "'seed' must be a whole number >= 0, got 'abc'"),
        ({"meta_url": "http://127.0.0.1:9/"}, "'meta_url' 'http://127.0.0.1:9/' must end with"),
    ],
)
def test_bad_settings_stop_before_any_download(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: dict, message: str
) -> None:
    src = _source(tmp_path)
    err = _cli_error(tmp_path, _amazon(src, **extra), capsys)
    assert message in err
    assert not (tmp_path / "data" / "baby" / "raw").exists()


def test_two_urls_naming_the_same_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _source(tmp_path)
    amazon = _amazon(src)
    err = _cli_error(tmp_path, {**amazon, "meta_url": amazon["reviews_url"]}, capsys)
    assert f"'reviews_url' and 'meta_url' name the same file '{NAMES['reviews']}'" in err


def test_k_core_that_empties_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _source(tmp_path)
    err = _cli_error(tmp_path, _amazon(src, k_core=7), capsys)  # every user has 6 reviews
    assert f"{NAMES['reviews']}: nothing is left after the 7-core filter (of 8 reviewers" in err


def test_mirror_may_be_a_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    amazon = {**_amazon(src), **{f"{k}_url": f"http://127.0.0.1:9/{n}" for k, n in NAMES.items()}}
    monkeypatch.setenv("PYG_DHMREC_AMAZON_MIRROR", str(src))  # a path, not a URL
    dataset = AmazonDataset(str(tmp_path / "data"), "toy", amazon, progress=False)
    assert (dataset.stats["users"], dataset.stats["items"]) == (8, 8)
    for name in NAMES.values():
        assert (tmp_path / "data" / "toy" / "raw" / name).read_bytes() == (src / name).read_bytes()


def test_empty_raw_file_is_not_taken_for_an_empty_gzip(tmp_path: Path) -> None:
    empty = tmp_path / "e.json.gz"
    empty.write_bytes(b"")
    assert not gzip_complete(empty)
    src = _source(tmp_path)
    raw = tmp_path / "data" / "toy" / "raw"
    raw.mkdir(parents=True)
    (raw / NAMES["meta"]).write_bytes(b"")  # a hand-placed empty copy
    AmazonDataset(str(tmp_path / "data"), "toy", _amazon(src), progress=False)
    assert (raw / NAMES["meta"]).read_bytes() == (src / NAMES["meta"]).read_bytes()
    assert (raw / f"{NAMES['meta']}.corrupt").read_bytes() == b""


def _rebuild_interrupted_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, stops: Callable[[Path], bool]
) -> tuple[Path, str, str, Path]:
    """A build with seed 2024, then a rebuild with seed 7 interrupted where the module's
    ``writer`` is first called for a path ``stops`` accepts: ``(source, data root, the first
    build's toy.inter, the dataset folder)``."""
    src = _source(tmp_path)
    root, folder = str(tmp_path / "data"), tmp_path / "data" / "toy"
    AmazonDataset(root, "toy", _amazon(src), progress=False)
    built = (folder / "toy.inter").read_text()
    write = getattr(amazon_module, writer)

    def interrupted(path: Path, data: object) -> Path:
        if stops(Path(path)):
            raise KeyboardInterrupt
        return write(path, data)

    monkeypatch.setattr(amazon_module, writer, interrupted)
    with pytest.raises(KeyboardInterrupt):
        AmazonDataset(root, "toy", _amazon(src, seed=7), progress=False)
    monkeypatch.undo()
    return src, root, built, folder


def test_rebuild_with_other_settings_interrupted_then_old_settings_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, root, built, folder = _rebuild_interrupted_at(
        tmp_path, monkeypatch, "write_json", lambda path: path.name == "meta.json"
    )
    assert (folder / "toy.inter").read_text() != built  # seed 7's split, unfinished
    # The first settings again: the folder must not pass for their finished build.
    AmazonDataset(root, "toy", _amazon(src), progress=False)
    assert (folder / "toy.inter").read_text() == built
    assert json.loads((folder / "meta.json").read_text())["settings"]["seed"] == 2024
    assert not (folder / ".build.json").exists()


def test_interrupted_before_the_inter_file_was_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, root, built, folder = _rebuild_interrupted_at(
        tmp_path, monkeypatch, "write_bytes", lambda path: path.suffix == ".inter"
    )
    # toy.inter is still the old build's, the features already seed 7's: a rebuild, not a mix
    dataset = AmazonDataset(root, "toy", _amazon(src, seed=7), progress=False)
    assert json.loads((folder / "meta.json").read_text())["settings"]["seed"] == 7
    assert (folder / "toy.inter").read_text() != built
    assert dataset.stats["users"] == 8
    assert read_inter_file(folder / "toy.inter").num_items == 8


@pytest.mark.parametrize("outputs", [[1, 2], {"toy.inter": 5}, "abc"])
def test_hand_edited_build_journal_is_named(tmp_path: Path, outputs: object) -> None:
    journal = tmp_path / amazon_module.JOURNAL_FILE
    journal.write_text(json.dumps({"outputs": outputs, "replaced": {}}), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"\.build\.json: key 'outputs' must map file names"):
        amazon_module._written_digests(tmp_path)
