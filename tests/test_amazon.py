"""Tests of the raw Amazon 2014 pipeline: download, readers, k-core, build, config and training.

Tiny fixture files in the real formats are served by a local HTTP server (no internet).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from pyg_dhmrec.cli import main
from pyg_dhmrec.config import ConfigError, load_config, parse_cli_overrides
from pyg_dhmrec.data import amazon as amazon_module
from pyg_dhmrec.data.amazon import (
    IMAGE_DIM,
    _parse_meta_line,
    encode_texts,
    item_texts,
    k_core,
    read_image_features,
    read_review_table,
    read_reviews,
)
from pyg_dhmrec.data.dataset import AmazonDataset, load_dataset
from pyg_dhmrec.data.download import DownloadError, download_file, file_md5
from pyg_dhmrec.data.mmrec_format import DataFormatError, read_inter_file
from pyg_dhmrec.data.split import split_sizes

CATEGORY = "Tiny"
NUM_USERS, NUM_ITEMS = 14, 12
ASINS = [f"B{i:09d}" for i in range(NUM_ITEMS)]
NOISE_ASINS = ["BZZZZZZZZZ", "AAAAAAAAA0", "CCCCCCCCC1"]  # in the image file only
RECORD = 10 + 4 * IMAGE_DIM


# ----- fixture files in the real formats -----
def _reviews() -> list[dict]:
    rows = []
    for j in range(NUM_USERS):  # user j: 6 items, user 0: all 12 (a long history)
        for t in range(NUM_ITEMS if j == 0 else 6):
            item = (j + t) % NUM_ITEMS
            rows.append(
                {
                    "reviewerID": f"U{j:02d}",
                    "asin": ASINS[item],
                    "overall": float(1 + (j + item) % 5),
                    "unixReviewTime": 1_300_000_000 + 1000 * j + t,
                    "reviewText": "fine",
                }
            )
    rows.append(dict(rows[0]))  # a duplicate (reviewer, asin) pair
    rows.append({**rows[1], "reviewerID": "UX"})  # users and items below 5 reviews: filtered
    rows.append({**rows[2], "reviewerID": "UX"})
    rows.append({**rows[3], "asin": "BZZZZZZZZZ"})
    return rows


def _gz_lines(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)


def _meta_lines() -> list[str]:
    lines = []
    for i, asin in enumerate(ASINS[:-1]):  # the last item has no metadata
        row = {
            "asin": asin,
            "title": f"Soft blanket {i}",
            "brand": "Acme" if i % 2 else "",
            "categories": [["Baby", "Nursery"], ["Baby", f"Bedding{i % 3}"]],
            "description": f"A warm\nblanket number {i} for cold nights.",
            "price": 9.99,
        }
        lines.append(repr(row))  # Python dict literal, as in the 2014 release
    lines[3] = json.dumps({"asin": ASINS[3], "title": "Json line", "brand": None})  # not literal
    lines.insert(0, repr({"asin": "XXXXXXXXXX", "title": "not in the dataset"}))
    return lines


def _image_vector(i: int) -> np.ndarray:
    return (np.arange(IMAGE_DIM, dtype=np.float32) / IMAGE_DIM + i).astype("<f4")


def _image_file() -> bytes:
    records = []
    for i in range(NUM_ITEMS - 2):  # the last two items have no image
        records.append(ASINS[i].encode("ascii") + _image_vector(i).tobytes())
        if i % 4 == 0:  # asins outside the dataset in between
            noise = NOISE_ASINS[i // 4 % len(NOISE_ASINS)]
            records.append(noise.encode("ascii") + _image_vector(100 + i).tobytes())
    return b"".join(records)


# ----- local HTTP server -----
@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    truncate_once: set[str] = field(default_factory=set)
    ranges: bool = True
    no_length: bool = False  # answer without Content-Length (the end is the closed connection)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/status/"):
            self.send_error(int(self.path.split("/")[2]))
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, range_header = 0, self.headers.get("Range")
        if range_header and state.ranges:
            start = int(range_header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if not state.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in state.truncate_once:  # announce everything, send half, hang up
            state.truncate_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # port 0: a free port
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.files.update(
        {
            f"/reviews_{CATEGORY}_5.json.gz": _gz_lines([json.dumps(r) for r in _reviews()]),
            f"/meta_{CATEGORY}.json.gz": _gz_lines(_meta_lines()),
            f"/image_features_{CATEGORY}.b": _image_file(),
        }
    )
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def state(server: tuple[str, ServerState]) -> Iterator[ServerState]:
    """The server state, its request log emptied first and its settings reset afterwards."""
    server[1].requests.clear()
    yield server[1]
    server[1].truncate_once.clear()
    server[1].ranges = True
    server[1].no_length = False
    server[1].requests.clear()


def _amazon(base: str, **extra: object) -> dict:
    return {
        "category": CATEGORY,
        "reviews_url": f"{base}/reviews_{CATEGORY}_5.json.gz",
        "meta_url": f"{base}/meta_{CATEGORY}.json.gz",
        "image_url": f"{base}/image_features_{CATEGORY}.b",
        "text_encoder": "tfidf",
        **extra,
    }


def _flow(mapping: dict) -> str:
    return yaml.safe_dump(mapping, default_flow_style=True, width=10_000).strip()


@pytest.fixture(scope="module")
def built(server: tuple[str, ServerState], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Download, build and train LightGCN for 1 epoch through the command line."""
    root = tmp_path_factory.mktemp("data")
    args = ["--dataset", "baby", "--data-root", str(root), "--amazon", _flow(_amazon(server[0]))]
    args += ["--epochs", "1", "--quiet", "--topk", "[5,10]", "--device", "cpu"]
    args += ["--early_stop_metric", "recall@10"]
    out = tmp_path_factory.mktemp("run")
    assert main(["--model", "lightgcn", *args, "--output", str(out / "lgn")]) == 0
    assert (out / "lgn" / "results.json").is_file()
    return root / "baby"


# ----- end to end -----
def test_build_files_and_training(built: Path, server: tuple[str, ServerState], tmp_path) -> None:
    for name in ("baby.inter", "image_feat.npy", "text_feat.npy", "meta.json"):
        assert (built / name).is_file(), name
    assert sorted(p.name for p in (built / "raw").iterdir()) == [
        f"image_features_{CATEGORY}.b",
        "manifest.json",
        f"meta_{CATEGORY}.json.gz",
        f"reviews_{CATEGORY}_5.json.gz",
    ]
    # The multimodal model trains on the same folder too (same settings: no rebuild).
    args = ["--model", "dhmrec", "--dataset", "baby", "--data-root", str(built.parent)]
    args += ["--epochs", "1", "--quiet", "--topk", "[5,10]", "--device", "cpu", "--knn_k", "2"]
    args += ["--early_stop_metric", "recall@10"]
    args += ["--output", str(tmp_path / "dhm"), "--amazon", _flow(_amazon(server[0]))]
    mtime = (built / "meta.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (built / "meta.json").stat().st_mtime_ns == mtime


def test_loads_through_load_dataset(built: Path, server: tuple[str, ServerState]) -> None:
    config = load_config("lightgcn", "baby", {"data_root": str(built.parent)})
    config["amazon"] = _amazon(server[0])
    server[1].requests.clear()
    dataset = load_dataset(config)
    assert isinstance(dataset, AmazonDataset)
    data = dataset[0]
    assert data["user"].num_nodes == NUM_USERS and data["item"].num_nodes == NUM_ITEMS
    assert tuple(data["item"].image.shape) == (NUM_ITEMS, IMAGE_DIM)
    assert tuple(data["item"].text.shape) == (NUM_ITEMS, 384)
    assert server[1].requests == []  # built once: nothing downloaded again


def test_inter_file_and_id_maps(built: Path) -> None:
    header = (built / "baby.inter").read_text().splitlines()[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    inter = read_inter_file(built / "baby.inter")
    assert (inter.num_users, inter.num_items) == (NUM_USERS, NUM_ITEMS)
    assert len(inter.user) == NUM_ITEMS + 6 * (NUM_USERS - 1)  # duplicates and noise removed
    users = (built / "u_id_mapping.csv").read_text().splitlines()
    items = (built / "i_id_mapping.csv").read_text().splitlines()
    assert users[0] == "user_id\tuserID" and users[1:3] == ["U00\t0", "U01\t1"]
    assert items[0] == "asin\titemID" and items[1:] == [f"{a}\t{i}" for i, a in enumerate(ASINS)]
    # MMRec's split sizes: 12 interactions -> 10/1/1 (ratio rule), 6 -> 4/1/1 (short history).
    counts = np.stack(
        [np.bincount(inter.user[inter.split == s], minlength=NUM_USERS) for s in (0, 1, 2)], 1
    )
    assert counts[0].tolist() == [10, 1, 1]
    assert (counts[1:] == [4, 1, 1]).all()
    assert (counts == split_sizes(counts.sum(1))).all()


def test_meta_json(built: Path, server: tuple[str, ServerState]) -> None:
    meta = json.loads((built / "meta.json").read_text())
    assert meta["category"] == CATEGORY
    for key, name in (
        ("reviews", f"reviews_{CATEGORY}_5.json.gz"),
        ("meta", f"meta_{CATEGORY}.json.gz"),
        ("image", f"image_features_{CATEGORY}.b"),
    ):
        assert meta["files"][key]["url"] == f"{server[0]}/{name}"
        assert meta["files"][key]["md5"] == file_md5(built / "raw" / name)
    assert meta["settings"]["k_core"] == 5 and meta["settings"]["seed"] == 2024
    assert meta["settings"]["text_encoder"] == "tfidf"
    assert meta["text_encoder"].startswith("tfidf+svd") and meta["text_dim"] == 384
    assert (meta["reviews"], meta["duplicates_removed"]) == (len(_reviews()), 1)
    assert (meta["users"], meta["items"], meta["interactions"]) == (14, 12, 90)
    assert meta["split"] == {"train": 62, "valid": 14, "test": 14}
    assert meta["items_without_image"] == 2 and meta["items_without_text"] == 1


def test_missing_images_get_the_mean(built: Path) -> None:
    image = np.load(built / "image_feat.npy")
    assert image.dtype == np.float32 and image.shape == (NUM_ITEMS, IMAGE_DIM)
    found = np.stack([_image_vector(i) for i in range(NUM_ITEMS - 2)])
    np.testing.assert_array_equal(image[: NUM_ITEMS - 2], found)
    np.testing.assert_allclose(image[-2:], np.tile(found.mean(0), (2, 1)), rtol=1e-6)


def test_split_reproducible_by_seed(server: tuple[str, ServerState], tmp_path: Path) -> None:
    from pyg_dhmrec.data.amazon import build_amazon_dataset

    base = server[0]
    urls = {k: _amazon(base)[f"{k}_url"] for k in ("reviews", "meta", "image")}
    for folder, seed in (("a", 1), ("b", 1), ("c", 2)):
        build_amazon_dataset(
            tmp_path / folder, "x", CATEGORY, urls, seed=seed, text_encoder="tfidf",
            log=lambda _: None, progress=False,
        )  # fmt: skip
    a, b, c = ((tmp_path / f / "x.inter").read_text() for f in "abc")
    assert a == b and a != c
    np.testing.assert_array_equal(
        np.load(tmp_path / "a" / "text_feat.npy"), np.load(tmp_path / "b" / "text_feat.npy")
    )


def test_interrupted_build_is_redone(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    amazon = _amazon(server[0])
    write_json = amazon_module.write_json

    def killed_before_meta_json(path: Path, data: object) -> Path:
        if Path(path).name == "meta.json":
            raise KeyboardInterrupt  # the process dies before the last step
        return write_json(path, data)

    monkeypatch.setattr(amazon_module, "write_json", killed_before_meta_json)
    with pytest.raises(KeyboardInterrupt):
        AmazonDataset(str(tmp_path), "toy", amazon)
    monkeypatch.undo()
    assert not (tmp_path / "toy" / "meta.json").exists()
    assert (tmp_path / "toy" / ".build.json").is_file()
    inter_mtime = (tmp_path / "toy" / "toy.inter").stat().st_mtime_ns
    dataset = AmazonDataset(str(tmp_path), "toy", amazon)
    assert (tmp_path / "toy" / "meta.json").is_file()
    assert (tmp_path / "toy" / "toy.inter").stat().st_mtime_ns != inter_mtime
    assert dataset.stats["items"] == NUM_ITEMS
    # Other settings (k_core) rebuild the folder too.
    dataset = AmazonDataset(str(tmp_path), "toy", {**amazon, "k_core": 6})
    assert json.loads((tmp_path / "toy" / "meta.json").read_text())["settings"]["k_core"] == 6
    assert dataset.stats["users"] == NUM_USERS


def test_mmrec_folder_without_raw_is_used_as_is(tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t2\n1\t1\t0\n")
    amazon = _amazon("http://127.0.0.1:9")  # nothing listens there: no download may happen
    dataset = AmazonDataset(str(tmp_path), "toy", amazon)
    assert dataset.stats["users"] == 2


def test_bad_amazon_mapping(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"unknown key\(s\) kcore; missing image_url"):
        AmazonDataset(str(tmp_path), "toy", {**_amazon("http://x"), "kcore": 5, "image_url": ""})


# ----- k-core -----
def test_k_core_needs_several_passes() -> None:
    # A chain a-1, a-2, b-2, b-3, c-3 unravels one pass at a time; the 2x2 block d,e x 8,9 stays.
    user = np.array(["a", "a", "b", "b", "c", "d", "d", "e", "e"])
    item = np.array([1, 2, 2, 3, 3, 8, 9, 8, 9])
    assert k_core(user, item, k=2).tolist() == [False] * 5 + [True] * 4


def test_k_core_matches_naive_fixed_point() -> None:
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 40, 400), rng.integers(0, 30, 400)
    mask = k_core(user, item, k=5)
    alive = set(range(400))
    while True:  # naive reference: drop one violating interaction set at a time
        uc = np.bincount(user[list(alive)], minlength=40)
        ic = np.bincount(item[list(alive)], minlength=30)
        drop = {e for e in alive if uc[user[e]] < 5 or ic[item[e]] < 5}
        if not drop:
            break
        alive -= drop
    assert set(np.flatnonzero(mask)) == alive
    assert 0 < mask.sum() < 400


# ----- readers -----
def test_read_reviews_and_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "r.json.gz"
    path.write_bytes(_gz_lines([json.dumps(r) for r in _reviews()]))
    users, asins = read_reviews(path)
    assert len(users) == len(asins) == len(_reviews()) and users[0] == "U00"
    assert read_review_table(path).ratings is not None
    rows = [json.dumps(r) for r in _reviews()[:3]]
    path.write_bytes(_gz_lines([rows[0], rows[1], "{'reviewerID': 'x'", rows[2]]))
    with pytest.raises(DataFormatError, match=r"r\.json\.gz:3: not a JSON object"):
        read_reviews(path)
    path.write_bytes(_gz_lines([rows[0], json.dumps({"asin": "B1"})]))
    with pytest.raises(DataFormatError, match=r":2: review lacks field 'reviewerID'"):
        read_reviews(path)


@pytest.mark.parametrize("buffer_bytes", [1000, RECORD + 3, 2 * RECORD - 1, 1 << 24])
def test_image_reader_buffers(tmp_path: Path, buffer_bytes: int) -> None:
    path = tmp_path / "img.b"
    path.write_bytes(_image_file())
    messages: list[str] = []
    asin_to_item = {a: i for i, a in enumerate(ASINS)}
    out = read_image_features(path, asin_to_item, buffer_bytes=buffer_bytes, log=messages.append)
    for i in range(NUM_ITEMS - 2):  # records straddling reads arrive whole
        np.testing.assert_array_equal(out[i], _image_vector(i))
    np.testing.assert_allclose(out[-1], np.mean([_image_vector(i) for i in range(10)], 0))
    assert messages == ["img.b: 10 items with an image, 2 filled with the mean"]


def test_image_reader_errors(tmp_path: Path) -> None:
    path = tmp_path / "img.b"
    path.write_bytes(_image_file()[:-7])
    with pytest.raises(DataFormatError, match=r"img\.b: 16387 trailing byte\(s\)"):
        read_image_features(path, {ASINS[0]: 0}, log=None)
    path.write_bytes(_image_file())
    with pytest.raises(DataFormatError, match="none of the 1 items has an image"):
        read_image_features(path, {"NOTTHERE00": 0}, log=None)


def test_item_texts(tmp_path: Path) -> None:
    path = tmp_path / "meta.json.gz"
    path.write_bytes(_gz_lines(_meta_lines()))
    texts = item_texts(path, {a: i for i, a in enumerate(ASINS)})
    assert texts[1] == (
        "Title: Soft blanket 1. Brand: Acme. Categories: Baby, Nursery, Bedding1. "
        "Description: A warm blanket number 1 for cold nights."
    )
    assert texts[0].startswith("Title: Soft blanket 0. Categories:")  # empty brand left out
    assert texts[3] == "Title: Json line."  # JSON fallback, null brand left out
    assert texts[-1] == ""  # no metadata
    path.write_bytes(_gz_lines(["{'asin': 'B000000001', 'title': "]))
    with pytest.raises(DataFormatError, match=r"meta\.json\.gz:1: not a metadata dict"):
        item_texts(path, {ASINS[1]: 0})


def test_tfidf_encoder() -> None:
    texts = [f"soft blanket {i} warm cotton baby {'red' if i % 2 else 'blue'}" for i in range(20)]
    texts[5] = ""
    a, name = encode_texts(texts, "tfidf", dim=384, seed=3)
    b, _ = encode_texts(texts, "tfidf", dim=384, seed=3)
    assert a.shape == (20, 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert name.startswith("tfidf+svd") and "zero-pad" in name  # fewer words than 384
    assert not a[:, -1].any() and np.abs(a[:, 0]).sum() > 0
    assert not a[5].any()  # an empty text has no words
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        encode_texts(texts, "bert")


def test_auto_encoder_falls_back_without_sentence_transformers() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentence-transformers installed")
    texts = ["red ball", "blue ball", "green cube"]
    _, name = encode_texts(texts, "auto", dim=8)
    assert name.startswith("tfidf+svd")
    with pytest.raises(
        RuntimeError, match="sentence-transformers unavailable.*text_encoder: tfidf"
    ):
        encode_texts(texts, "sentence-transformers")


# ----- download -----
def test_download_truncated_transfer_is_resumed(state: ServerState, server, tmp_path: Path) -> None:
    name = f"/image_features_{CATEGORY}.b"
    state.truncate_once.add(name)
    path = download_file(server[0] + name, tmp_path / "img.b", progress=False)
    assert path.read_bytes() == state.files[name]
    half = len(state.files[name]) // 2
    assert state.requests == [(name, None), (name, f"bytes={half}-")]
    assert not (tmp_path / "img.b.part").exists()


def test_download_resumes_a_part_left_behind(state: ServerState, server, tmp_path: Path) -> None:
    name = f"/reviews_{CATEGORY}_5.json.gz"
    (tmp_path / "r.json.gz.part").write_bytes(state.files[name][:100])
    path = download_file(server[0] + name, tmp_path / "r.json.gz", progress=False)
    assert path.read_bytes() == state.files[name]
    assert state.requests == [(name, "bytes=100-")]
    # An existing final file is complete by construction: no request.
    download_file(server[0] + name, path, progress=False)
    assert len(state.requests) == 1


def test_download_restarts_when_range_ignored(state: ServerState, server, tmp_path: Path) -> None:
    name = f"/meta_{CATEGORY}.json.gz"
    state.ranges = False
    (tmp_path / "m.json.gz.part").write_bytes(b"garbage that is not the file's start")
    path = download_file(server[0] + name, tmp_path / "m.json.gz", progress=False)
    assert path.read_bytes() == state.files[name]


def test_download_corrupt_gzip_refetched_once(state: ServerState, server, tmp_path: Path) -> None:
    state.files["/bad.json.gz"] = state.files[f"/meta_{CATEGORY}.json.gz"][:-20]
    url = server[0] + "/bad.json.gz"
    with pytest.raises(DownloadError, match="gzip data is truncated or corrupt"):
        download_file(url, tmp_path / "bad.json.gz", progress=False)
    assert [r[0] for r in state.requests] == ["/bad.json.gz"] * 2
    assert not (tmp_path / "bad.json.gz").exists() and not (tmp_path / "bad.json.gz.part").exists()


def test_download_md5(state: ServerState, server, tmp_path: Path) -> None:
    name = f"/meta_{CATEGORY}.json.gz"
    good = hashlib.md5(state.files[name]).hexdigest()
    assert download_file(server[0] + name, tmp_path / "m.gz", md5=good, progress=False).is_file()
    with pytest.raises(DownloadError, match="md5 .* differs from the expected 0+"):
        download_file(server[0] + name, tmp_path / "n.gz", md5="0" * 32, progress=False)


@pytest.mark.parametrize("code", [404, 500])
def test_download_http_error_message(server, tmp_path: Path, code: int) -> None:
    url = f"{server[0]}/status/{code}"
    target = tmp_path / "raw" / "reviews_Tiny_5.json.gz"
    with pytest.raises(DownloadError) as info:
        download_file(url, target, progress=False)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert f"download of {url} failed (HTTP {code} " in message
    assert f"download that file by hand and save it as {target.resolve()}" in message


def test_cli_download_failure_exits_2(server, tmp_path: Path, capsys) -> None:
    amazon = {**_amazon(server[0]), "meta_url": f"{server[0]}/status/404"}
    args = ["--model", "lightgcn", "--dataset", "baby", "--data-root", str(tmp_path)]
    args += ["--amazon", _flow(amazon), "--epochs", "1", "--quiet", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"download of {server[0]}/status/404 failed" in err
    assert str((tmp_path / "baby" / "raw" / "404").resolve()) in err
    assert not (tmp_path / "baby" / "meta.json").exists()


# ----- configuration -----
def test_amazon_category_config() -> None:
    config = load_config("lightgcn", "amazon:Toys_and_Games")
    assert config["dataset"] == "amazon_toys_and_games"
    amazon = config["amazon"]
    assert amazon["category"] == "Toys_and_Games"
    assert amazon["reviews_url"] == (
        "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
        "reviews_Toys_and_Games_5.json.gz"
    )
    assert amazon["image_url"].endswith(
        "image_features/categoryFiles/image_features_Toys_and_Games.b"
    )
    assert config["modalities"] == {"image": "image_feat.npy", "text": "text_feat.npy"}
    for bad in ("amazon", "amazon:", "amazon:Toys and Games", "amazon:../x"):
        with pytest.raises(ConfigError, match="use --dataset amazon:<Category>"):
            load_config("lightgcn", bad)
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'nope:X'; available: .*amazon:<Category>"
    ):
        load_config("lightgcn", "nope:X")


@pytest.mark.parametrize(
    "dataset, category",
    [
        ("baby", "Baby"),
        ("sports", "Sports_and_Outdoors"),
        ("clothing", "Clothing_Shoes_and_Jewelry"),
    ],
)
def test_mmrec_amazon_configs_have_real_urls(dataset: str, category: str) -> None:
    amazon = load_config("bpr", dataset)["amazon"]
    base = "http://snap.stanford.edu/data/amazon/productGraph"
    assert amazon == {
        "category": category,
        "reviews_url": f"{base}/categoryFiles/reviews_{category}_5.json.gz",
        "meta_url": f"{base}/categoryFiles/meta_{category}.json.gz",
        "image_url": f"{base}/image_features/categoryFiles/image_features_{category}.b",
        "k_core": 5,
        "text_encoder": "auto",
    }


# ----- nothing lost: user files, verified raw files -----
NOWHERE = "http://127.0.0.1:9"  # nothing listens there: every download fails at once


def _cli(root: Path, amazon: dict, out: Path, dataset: str = "baby") -> list[str]:
    return [
        *("--model", "lightgcn", "--dataset", dataset, "--data-root", str(root)),
        *("--amazon", _flow(amazon), "--epochs", "1", "--quiet", "--topk", "[5,10]"),
        *("--early_stop_metric", "recall@10", "--device", "cpu", "--output", str(out)),
    ]


def _raw_names(base: str = CATEGORY) -> list[str]:
    return [f"reviews_{base}_5.json.gz", f"meta_{base}.json.gz", f"image_features_{base}.b"]


def test_offline_names_every_missing_file_and_mmrec_files_then_used_as_is(
    built: Path, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "data"
    assert main(_cli(root, _amazon(NOWHERE), tmp_path / "r1")) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: dataset 'baby': 3 of the 3 raw Amazon files of {CATEGORY} cannot be used:\n"
    ), err
    for name in _raw_names():
        assert f"download of {NOWHERE}/{name} failed" in err
        assert f"save it as {(root / 'baby' / 'raw' / name).resolve()}" in err
    assert err.rstrip().endswith(
        "Alternatively place MMRec's preprocessed files (baby.inter, image_feat.npy, "
        f"text_feat.npy) in {(root / 'baby').resolve()}/: such a folder is used as it is."
    )
    assert (root / "baby" / "raw").is_dir()  # the failed attempt left an empty raw/
    # The user now places MMRec's preprocessed files: used as they are, nothing deleted.
    for name in ("baby.inter", "image_feat.npy", "text_feat.npy"):
        shutil.copy(built / name, root / "baby" / name)
    before = {p.name: p.read_bytes() for p in (root / "baby").iterdir() if p.is_file()}
    assert main(_cli(root, _amazon(NOWHERE), tmp_path / "r2")) == 0
    after = {p.name: p.read_bytes() for p in (root / "baby").iterdir() if p.is_file()}
    assert after == before


def test_build_never_replaces_a_file_it_did_not_write(
    server: tuple[str, ServerState], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "data" / "baby"
    folder.mkdir(parents=True)
    np.save(folder / "image_feat.npy", np.ones((3, 2), dtype=np.float32))  # the user's file
    mine = (folder / "image_feat.npy").read_bytes()
    assert main(_cli(tmp_path / "data", _amazon(server[0]), tmp_path / "run")) == 2
    assert capsys.readouterr().err == (
        f"error: dataset 'baby': the build would replace {folder / 'image_feat.npy'}, which the "
        "Amazon build did not write (their content is not the one recorded in meta.json or "
        ".build.json); move them away, or place baby.inter beside them to use the folder as it "
        "is\n"
    )
    assert (folder / "image_feat.npy").read_bytes() == mine
    assert not (folder / "baby.inter").exists()


def test_built_files_readable_by_others(built: Path) -> None:
    for path in [*built.iterdir(), *(built / "raw").iterdir()]:
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644, path


def test_truncated_gzip_in_raw_moved_aside_and_refetched(
    server: tuple[str, ServerState], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "toy" / "raw"
    raw.mkdir(parents=True)
    good = server[1].files[f"/reviews_{CATEGORY}_5.json.gz"]
    (raw / f"reviews_{CATEGORY}_5.json.gz").write_bytes(good[: len(good) // 2])  # a cut copy
    with caplog.at_level(logging.INFO, logger="pyg_dhmrec.data.dataset"):
        dataset = AmazonDataset(str(tmp_path), "toy", _amazon(server[0]))
    assert dataset.stats["items"] == NUM_ITEMS
    assert (raw / f"reviews_{CATEGORY}_5.json.gz").read_bytes() == good
    assert (raw / f"reviews_{CATEGORY}_5.json.gz.corrupt").read_bytes() == good[: len(good) // 2]
    assert any(
        r.getMessage()
        == f"{raw / f'reviews_{CATEGORY}_5.json.gz'}: its gzip data is truncated or corrupt; moved "
        f"to reviews_{CATEGORY}_5.json.gz.corrupt, fetching it again"
        for r in caplog.records
    )


def test_truncated_gzip_offline_is_a_clear_error(
    server: tuple[str, ServerState], tmp_path: Path, capsys
) -> None:
    raw = tmp_path / "data" / "baby" / "raw"
    raw.mkdir(parents=True)
    for name in _raw_names():
        (raw / name).write_bytes(server[1].files["/" + name])
    good = (raw / _raw_names()[0]).read_bytes()
    (raw / _raw_names()[0]).write_bytes(good[:-30])
    image_size = len(server[1].files["/" + _raw_names()[2]])  # the hand-placed image file is known
    amazon = _amazon(NOWHERE, image_size=image_size)
    assert main(_cli(tmp_path / "data", amazon, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: dataset 'baby': 1 of the 3 raw Amazon files of {CATEGORY} cannot be used:\n  - "
        f"download of {NOWHERE}/{_raw_names()[0]} failed"
    ), err
    assert "Traceback" not in err and "EOFError" not in err


def test_image_file_cut_on_a_record_boundary_detected(
    server: tuple[str, ServerState], tmp_path: Path, capsys
) -> None:
    image = server[1].files[f"/image_features_{CATEGORY}.b"]
    cut = image[: 4 * RECORD]  # whole records, most items missing
    raw = tmp_path / "data" / "baby" / "raw"
    raw.mkdir(parents=True)
    (raw / f"image_features_{CATEGORY}.b").write_bytes(cut)
    # Without an expected size, a hand-placed copy cannot be trusted: an error, not mean-filling.
    assert main(_cli(tmp_path / "data", _amazon(NOWHERE), tmp_path / "r1")) == 2
    err = capsys.readouterr().err
    assert (
        f"{raw / f'image_features_{CATEGORY}.b'} was not downloaded by pyg_dhmrec and no "
        "image_size / image_md5 is configured, so a copy cut between two records cannot be told "
        "from a complete one: set amazon.image_size (and image_md5) to the source's values, or "
        "delete the file to download it"
    ) in err, err
    assert (raw / f"image_features_{CATEGORY}.b").read_bytes() == cut  # left as it was
    # With the size configured, the cut copy is found out, kept aside and fetched again.
    amazon = _amazon(server[0], image_size=len(image), image_md5=hashlib.md5(image).hexdigest())
    assert main(_cli(tmp_path / "data", amazon, tmp_path / "r2")) == 0
    meta = json.loads((raw.parent / "meta.json").read_text())
    assert meta["items_without_image"] == 2  # not the cut copy's NUM_ITEMS - 3
    assert (raw / f"image_features_{CATEGORY}.b.corrupt").read_bytes() == cut


def test_image_download_without_content_length_refused(
    state: ServerState, server: tuple[str, ServerState], tmp_path: Path
) -> None:
    state.no_length = True
    with pytest.raises(DownloadError) as info:
        AmazonDataset(str(tmp_path), "toy", _amazon(server[0]))
    message = str(info.value)
    assert (
        f"download of {server[0]}/image_features_{CATEGORY}.b failed (the server sent no "
        "Content-Length and no expected size or md5 is configured, so a cut transfer cannot be "
        "told from a complete one)"
    ) in message
    state.no_length = False
    image = state.files[f"/image_features_{CATEGORY}.b"]
    state.no_length = True  # with the size configured, the same server is fine
    dataset = AmazonDataset(str(tmp_path), "toy", _amazon(server[0], image_size=len(image)))
    assert dataset.stats["items"] == NUM_ITEMS


def test_wrong_md5_names_the_file(
    state: ServerState, server: tuple[str, ServerState], tmp_path: Path
) -> None:
    with pytest.raises(DownloadError) as info:
        AmazonDataset(str(tmp_path), "toy", _amazon(server[0], meta_md5="0" * 32))
    message = str(info.value)
    assert (
        f"download of {server[0]}/meta_{CATEGORY}.json.gz failed (incomplete after a second "
        in (message)
    )
    assert f"md5 {hashlib.md5(state.files[f'/meta_{CATEGORY}.json.gz']).hexdigest()} differs" in (
        message
    )
    assert str((tmp_path / "toy" / "raw" / f"meta_{CATEGORY}.json.gz").resolve()) in message
    with pytest.raises(DataFormatError, match=r"'image_md5' must be 32 hex digits, got 'abc'"):
        AmazonDataset(str(tmp_path), "toy", _amazon(server[0], image_md5="abc"))


@pytest.mark.parametrize("how", ["key", "environment"])
def test_mirror_serves_the_raw_files(
    state: ServerState,
    server: tuple[str, ServerState],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    amazon = _amazon(NOWHERE)  # the configured source is unreachable
    if how == "key":
        amazon["mirror"] = server[0] + "/"
    else:
        monkeypatch.setenv("PYG_DHMREC_AMAZON_MIRROR", server[0])
    dataset = AmazonDataset(str(tmp_path), "toy", amazon)
    assert dataset.stats["items"] == NUM_ITEMS
    assert sorted(r[0] for r in state.requests) == sorted("/" + n for n in _raw_names())
    meta = json.loads((tmp_path / "toy" / "meta.json").read_text())
    assert meta["settings"]["urls"]["meta"] == f"{NOWHERE}/meta_{CATEGORY}.json.gz"


def test_partial_amazon_override_merges() -> None:
    config = load_config(
        "lightgcn", "sports", parse_cli_overrides(["--amazon", "{text_encoder: tfidf}"])
    )
    amazon = config["amazon"]
    assert amazon["text_encoder"] == "tfidf"
    assert amazon["category"] == "Sports_and_Outdoors"
    assert amazon["reviews_url"].endswith("reviews_Sports_and_Outdoors_5.json.gz")


def test_review_fields_out_of_range_or_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.json.gz"
    rows = _reviews()[:3]
    huge = {**rows[1], "unixReviewTime": 10**26}
    path.write_bytes(_gz_lines([json.dumps(r) for r in (rows[0], huge, rows[2])]))
    with pytest.raises(DataFormatError, match=r"r\.json\.gz:2: 'unixReviewTime' must be a number "):
        read_review_table(path)
    # one review without 'overall': the column is left out, and the first such line is named
    partial = {k: v for k, v in rows[2].items() if k != "overall"}
    path.write_bytes(_gz_lines([json.dumps(r) for r in (rows[0], rows[1], partial)]))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.amazon"):
        table = read_review_table(path)
    assert table.ratings is None and table.timestamps is not None
    assert "r.json.gz:3: review lacks 'overall' (the first line without it)" in caplog.text


def test_metadata_line_with_an_unhashable_key_is_not_a_dict() -> None:
    with pytest.raises(ValueError):  # the reader names the line (ValueError family)
        _parse_meta_line("{[1]: 2}")


@pytest.mark.parametrize("reader", ["reviews", "meta"])
def test_cut_gzip_read_is_an_error_naming_the_file(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "cut.json.gz"
    data = _gz_lines([json.dumps(r) for r in _reviews()] if reader == "reviews" else _meta_lines())
    path.write_bytes(data[: len(data) - 12])  # the gzip trailer and some data missing
    with pytest.raises(
        DataFormatError, match=rf"^{re.escape(str(path))}: truncated or corrupt gzip"
    ):
        if reader == "reviews":
            read_review_table(path)
        else:
            item_texts(path, {ASINS[0]: 0})
