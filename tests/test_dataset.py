"""Tests of MMRecDataset (HeteroData layout, processed cache, download) and SyntheticDataset."""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_points import stopped_at
from torch_geometric.data import HeteroData

from pyg_dhmrec.cli import main
from pyg_dhmrec.data import dataset as dataset_module
from pyg_dhmrec.data.dataset import (
    RATES,
    REV_RATES,
    MMRecDataset,
    SyntheticDataset,
    load_dataset,
)
from pyg_dhmrec.data.mmrec_format import DataFormatError

REPO = Path(__file__).resolve().parent.parent
KILL_POINTS = REPO / "tests" / "kill_points.py"
NAME = "toy"
MODALITIES = {"image": "image_feat.npy", "text": "text_feat.npy"}
# 3 users, 4 items; every user has a train row, so nothing is dropped as cold start.
INTER = (
    "userID\titemID\trating\tx_label\n"
    "0\t0\t5\t0\n"
    "0\t1\t4\t0\n"
    "0\t2\t3\t1\n"
    "1\t1\t5\t0\n"
    "1\t3\t2\t2\n"
    "2\t3\t1\t0\n"
    "2\t0\t1\t2\n"
)
IMAGE = np.arange(12, dtype=np.float64).reshape(4, 3)
TEXT = -np.arange(8, dtype=np.float32).reshape(4, 2)


def _make_folder(root: Path, features: bool = True, name: str = NAME) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(INTER, encoding="utf-8")
    if features:
        np.save(folder / "image_feat.npy", IMAGE)
        np.save(folder / "text_feat.npy", TEXT)
    return folder


def _data_files(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("data_*.pt"))


def test_hetero_data_layout(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert len(ds) == 1
    data = ds[0]
    assert isinstance(data, HeteroData)
    assert set(data.node_types) == {"user", "item"}
    assert data["user"].num_nodes == 3
    assert data["item"].num_nodes == 4
    assert set(data.edge_types) == {RATES, REV_RATES}
    train = data[RATES].edge_index
    assert train.dtype == torch.long
    assert train.tolist() == [[0, 0, 1, 2], [0, 1, 1, 3]]
    assert torch.equal(data[REV_RATES].edge_index, train.flip(0))
    assert data[REV_RATES].edge_index.tolist() == [[0, 1, 1, 3], [0, 0, 1, 2]]
    assert data[RATES].valid_edge_index.tolist() == [[0], [2]]
    assert data[RATES].test_edge_index.tolist() == [[1, 2], [3, 0]]
    # Valid/test edges are not message-passing edges of the reverse relation.
    assert "valid_edge_index" not in data[REV_RATES]
    assert data["item"].image.dtype == torch.float32
    assert torch.equal(data["item"].image, torch.from_numpy(IMAGE).float())
    assert torch.equal(data["item"].text, torch.from_numpy(TEXT))
    assert ds.modalities == ["image", "text"]
    ds.require_modalities()  # all present: no error
    assert ds.stats == {
        "users": 3,
        "items": 4,
        "train": 4,
        "valid": 1,
        "test": 2,
        "duplicates_removed": 0,
        "cold_start_interactions_dropped": 0,
        "cold_start_users": 0,
        "modalities": {"image": [4, 3], "text": [4, 2]},
    }
    assert "3 users, 4 items, train/valid/test 4/1/2" in repr(ds)


def test_id_only_folder_loads_without_features(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path, features=False)
    ds = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    data = ds[0]
    assert "image" not in data["item"] and "text" not in data["item"]
    assert ds.modalities == []
    assert ds.stats["modalities"] == {}
    assert data[RATES].edge_index.size(1) == 4
    with pytest.raises(DataFormatError) as info:
        ds.require_modalities()
    message = str(info.value)
    assert str(folder / "image_feat.npy") in message
    assert str(folder / "text_feat.npy") in message


def test_require_modalities_names_only_the_missing_file(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path, features=False)
    np.save(folder / "text_feat.npy", TEXT)
    ds = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert ds.modalities == ["text"]
    with pytest.raises(DataFormatError, match=re.escape(str(folder / "image_feat.npy"))) as info:
        ds.require_modalities()
    assert "text_feat.npy" not in str(info.value)


def test_require_modalities_without_any_configured(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = MMRecDataset(str(tmp_path), NAME)
    assert "image" not in ds[0]["item"]
    with pytest.raises(DataFormatError, match="has no modalities: this model needs features"):
        ds.require_modalities()


def test_bad_feature_file_fails_at_load(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path)
    np.save(folder / "image_feat.npy", np.ones((3, 3), dtype=np.float32))  # 3 rows, 4 items
    with pytest.raises(DataFormatError, match="has 3 rows, expected one per item: 4"):
        MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)


def test_processed_cache_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_folder(tmp_path)
    first = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    processed = Path(first.processed_dir)
    assert processed == tmp_path / NAME / "processed"
    files = _data_files(processed)
    assert len(files) == 1
    mtime = (processed / files[0]).stat().st_mtime_ns

    def fail(self) -> None:
        raise AssertionError("process() called although the cache is valid")

    monkeypatch.setattr(MMRecDataset, "process", fail)
    second = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert (processed / files[0]).stat().st_mtime_ns == mtime
    assert torch.equal(second[0][RATES].edge_index, first[0][RATES].edge_index)
    assert second.stats == first.stats

    # force_reload does re-process.
    with pytest.raises(AssertionError, match="cache is valid"):
        MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES, force_reload=True)


def test_cache_rebuilt_when_inter_file_changes(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path)
    first = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    processed = Path(first.processed_dir)
    old_files = _data_files(processed)

    # New content of another size: user 1 trains item 2 as well.
    (folder / f"{NAME}.inter").write_text(INTER + "1\t2\t1\t0\n", encoding="utf-8")
    second = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert second[0][RATES].edge_index.tolist() == [[0, 0, 1, 2, 1], [0, 1, 1, 3, 2]]  # file order
    assert second.stats["train"] == 5
    new_files = _data_files(processed)
    assert len(new_files) == 1 and new_files != old_files
    assert not list(processed.glob("data_*.json"))  # the stats live inside the cache file


def test_cache_rebuilt_when_only_mtime_and_content_change(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path)
    inter = folder / f"{NAME}.inter"
    first = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    old_mtime = inter.stat().st_mtime_ns
    # Same size, other content: the x_label of (0, 2) goes from 1 (valid) to 2 (test).
    inter.write_text(INTER.replace("0\t2\t3\t1", "0\t2\t3\t2"), encoding="utf-8")
    os.utime(inter, ns=(old_mtime + 10**9, old_mtime + 10**9))
    assert inter.stat().st_size == len(INTER)
    second = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert first[0][RATES].valid_edge_index.size(1) == 1
    assert second[0][RATES].valid_edge_index.size(1) == 0
    assert second[0][RATES].test_edge_index.tolist() == [[0, 1, 2], [2, 3, 0]]
    assert len(_data_files(Path(second.processed_dir))) == 1


def test_cache_rebuilt_when_feature_file_appears(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path, features=False)
    assert MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES).modalities == []
    np.save(folder / "image_feat.npy", IMAGE)
    assert MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES).modalities == ["image"]


def test_explicit_cache_dir(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "raw")
    cache = tmp_path / "cache"
    ds = MMRecDataset(str(tmp_path / "raw"), NAME, modalities=MODALITIES, cache_dir=str(cache))
    assert Path(ds.processed_dir) == cache / NAME
    assert len(_data_files(cache / NAME)) == 1
    assert not (folder / "processed").exists()
    assert ds[0][RATES].edge_index.size(1) == 4


def test_read_only_raw_folder_with_cache_dir(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "raw")
    cache = tmp_path / "cache"
    modes = {p: p.stat().st_mode for p in (folder, *folder.iterdir())}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        ds = MMRecDataset(str(tmp_path / "raw"), NAME, modalities=MODALITIES, cache_dir=str(cache))
        assert len(_data_files(cache / NAME)) == 1
        assert ds.stats["train"] == 4
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert not (folder / "processed").exists()


def test_unwritable_folder_falls_back_to_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _make_folder(tmp_path / "raw")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checked = []

    def not_writable(path: str) -> bool:
        checked.append(path)
        return False

    monkeypatch.setattr(dataset_module, "_writable", not_writable)
    ds = MMRecDataset(str(tmp_path / "raw"), NAME, modalities=MODALITIES)
    assert checked and checked[0] == str(folder / "processed")
    processed = Path(ds.processed_dir)
    assert processed.parent == tmp_path / "home" / ".cache" / "pyg_dhmrec"
    assert re.fullmatch(rf"{NAME}-[0-9a-f]{{10}}", processed.name)
    assert len(_data_files(processed)) == 1
    assert not (folder / "processed").exists()
    assert ds.stats["items"] == 4


def test_writable_probe_on_read_only_folder(tmp_path: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: a chmod'ed read-only folder stays writable")
    folder = _make_folder(tmp_path / "raw")
    assert dataset_module._writable(str(folder / "processed"))
    folder.chmod(0o555)
    try:
        # The probe walks up to the nearest existing folder, the read-only dataset folder.
        assert not dataset_module._writable(str(folder / "processed"))
    finally:
        folder.chmod(0o755)


def test_download_without_url(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    message = str(info.value)
    target = (tmp_path / NAME).resolve()
    assert f"dataset '{NAME}'" in message
    assert f"{tmp_path / NAME / 'toy.inter'} not found and no url is configured" in message
    assert f"configs/datasets/{NAME}.yaml" in message
    assert f"place toy.inter, image_feat.npy, text_feat.npy in {target}/" in message


def _zip_dataset(path: Path, top: str = "toy_v1", with_inter: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        if with_inter:
            z.writestr(f"{top}/{NAME}.inter", INTER)
        source = path.parent / "image_feat.npy"
        np.save(source, IMAGE)
        z.write(source, f"{top}/image_feat.npy")
    return path


def test_download_file_url_zip_with_top_folder(tmp_path: Path) -> None:
    archive = _zip_dataset(tmp_path / "toy.zip")
    root = tmp_path / "root"
    ds = MMRecDataset(str(root), NAME, modalities=MODALITIES, url=archive.as_uri())
    # The archive's top folder is flattened into <root>/<name>/.
    assert (root / NAME / f"{NAME}.inter").read_text(encoding="utf-8") == INTER
    assert (root / NAME / "image_feat.npy").is_file()
    assert not (root / NAME / "toy_v1").exists()
    assert ds[0][RATES].edge_index.size(1) == 4
    assert ds.modalities == ["image"]
    assert torch.equal(ds[0]["item"].image, torch.from_numpy(IMAGE).float())


def test_download_archive_without_inter_file(tmp_path: Path) -> None:
    archive = _zip_dataset(tmp_path / "toy.zip", with_inter=False)
    url = archive.as_uri()
    with pytest.raises(FileNotFoundError, match=f"the archive {re.escape(url)} has no toy.inter"):
        MMRecDataset(str(tmp_path / "root"), NAME, url=archive.as_uri())


def test_download_missing_url(tmp_path: Path) -> None:
    url = (tmp_path / "nowhere" / "toy.zip").as_uri()
    with pytest.raises(FileNotFoundError) as info:
        MMRecDataset(str(tmp_path / "root"), NAME, url=url)
    message = str(info.value)
    assert f"download of {url} failed" in message
    assert "place toy.inter in" in message


def test_download_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "toy.zip"
    bogus.write_text("not an archive")
    with pytest.raises(FileNotFoundError, match="neither a zip nor a tar archive"):
        MMRecDataset(str(tmp_path / "root"), NAME, url=bogus.as_uri())


TINY_SYNTHETIC = {
    "num_users": 30,
    "num_items": 20,
    "num_interactions": 200,
    "modalities": {"image": 6, "text": 3},
    "seed": 5,
}


def _synthetic_config(root: Path, **extra) -> dict:
    config = {
        "data_root": str(root),
        "dataset": "tiny",
        "modalities": {"image": "image_feat.npy", "text": "text_feat.npy"},
        "inter_file": None,
        "url": None,
        "cache_dir": None,
        "synthetic": dict(TINY_SYNTHETIC),
    }
    config.update(extra)
    return config


def test_synthetic_via_load_dataset(tmp_path: Path) -> None:
    ds = load_dataset(_synthetic_config(tmp_path))
    assert isinstance(ds, SyntheticDataset)
    assert (tmp_path / "tiny" / "tiny.inter").is_file()
    data = ds[0]
    assert data["user"].num_nodes == 30 and data["item"].num_nodes == 20
    assert data["item"].image.shape == (20, 6)
    assert data["item"].text.shape == (20, 3)
    ds.require_modalities()
    s = ds.stats
    assert (s["users"], s["items"]) == (30, 20)
    assert s["train"] == data[RATES].edge_index.size(1)
    assert s["valid"] == data[RATES].valid_edge_index.size(1)
    assert s["test"] == data[RATES].test_edge_index.size(1)
    assert s["train"] + s["valid"] + s["test"] >= 200 - 20  # about num_interactions
    assert s["modalities"] == {"image": [20, 6], "text": [20, 3]}
    # Every item occurs, and every user trains on something.
    all_items = torch.cat(
        [data[RATES].edge_index[1], data[RATES].valid_edge_index[1], data[RATES].test_edge_index[1]]
    )
    assert all_items.unique().numel() == 20
    assert data[RATES].edge_index[0].unique().numel() == 30


def test_synthetic_without_configured_modalities_loads_generated_features(
    tmp_path: Path,
) -> None:
    # overall.yaml's default is modalities: {} ; the generated files must still be used.
    ds = load_dataset(_synthetic_config(tmp_path, modalities={}))
    assert ds.modalities == ["image", "text"]
    ds.require_modalities()


def test_synthetic_modalities_changed_reads_the_new_files_and_drops_the_old(
    tmp_path: Path,
) -> None:
    load_dataset(_synthetic_config(tmp_path, modalities={}))
    folder = tmp_path / "tiny"
    assert (folder / "text_feat.npy").is_file()
    changed = _synthetic_config(tmp_path, modalities={})
    changed["synthetic"]["modalities"] = {"image": 6, "audio": 3}
    ds = load_dataset(changed)
    assert ds.modalities == ["image", "audio"] and ds[0]["item"].audio.shape == (20, 3)
    # the earlier generation's text features are gone, not left to be read by mistake
    assert sorted(p.name for p in folder.glob("*_feat.npy")) == ["audio_feat.npy", "image_feat.npy"]
    # a declared modality the generator does not write is refused (the YAML's, say)
    with pytest.raises(DataFormatError, match=r"modalities \{'text': 'text_feat.npy'\} are not"):
        load_dataset(
            {**changed, "modalities": {"image": "image_feat.npy", "text": "text_feat.npy"}}
        )
    subset = load_dataset({**changed, "modalities": {"audio": "audio_feat.npy"}})
    assert subset.modalities == ["audio"]


def test_synthetic_reloaded_from_cache_and_regenerated_on_change(tmp_path: Path) -> None:
    first = load_dataset(_synthetic_config(tmp_path))
    again = load_dataset(_synthetic_config(tmp_path))
    assert torch.equal(first[0][RATES].edge_index, again[0][RATES].edge_index)
    changed = _synthetic_config(tmp_path)
    changed["synthetic"]["num_users"] = 25
    ds = load_dataset(changed)
    assert ds.stats["users"] == 25
    assert len(_data_files(Path(ds.processed_dir))) == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"num_userz": 3},
            r"unknown setting 'num_userz' \(known: .*\)\. Did you mean: num_users\?",
        ),
        ({"num_users": 2.5}, "num_users must be an integer, got 2.5"),
        ({"seed": True}, "seed must be an integer, got True"),
        ({"temperature": float("nan")}, "temperature must be finite, got nan"),
        ({"modalities": ["image"]}, r"modalities must be a mapping name -> dim, got \['image'\]"),
        ({"num_users": 0}, "need num_users >= 1 and num_items >= 2"),
    ],
)
def test_synthetic_bad_settings(tmp_path: Path, settings: dict, message: str) -> None:
    """Every bad generator setting stops before generation, the message naming the field."""
    with pytest.raises(
        DataFormatError, match=f"^dataset 'tiny': bad 'synthetic' settings: .*{message}"
    ):
        load_dataset(_synthetic_config(tmp_path, synthetic=settings))


# ----- the processed cache survives kills and damage -----
def test_cache_rebuilt_when_content_changes_with_size_and_mtime_kept(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path)
    inter = folder / f"{NAME}.inter"
    first = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    old_fingerprint = first.fingerprint()
    stat = inter.stat()
    # Same size, other content, the modification time put back (as cp -p or rsync -a do).
    inter.write_text(INTER.replace("0\t2\t3\t1", "0\t2\t3\t2"), encoding="utf-8")
    os.utime(inter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (inter.stat().st_size, inter.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    assert second.fingerprint() != old_fingerprint
    assert first[0][RATES].valid_edge_index.size(1) == 1
    assert second[0][RATES].valid_edge_index.size(1) == 0


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "empty"])
def test_damaged_cache_rebuilt_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    _make_folder(tmp_path)
    first = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    path = Path(first.processed_paths[0])
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped_byte":
        raw[-100] ^= 0x10
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="pyg_dhmrec.data.dataset"):
        second = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: "), warnings
    assert warnings[0].endswith("; rebuilding the processed dataset cache")
    assert second.stats == first.stats
    assert torch.equal(second[0][RATES].edge_index, first[0][RATES].edge_index)
    third = MMRecDataset(str(tmp_path), NAME, modalities=MODALITIES)  # rebuilt file is good
    assert third.stats == first.stats


def test_kill_while_writing_cache_leaves_no_partial_file(tmp_path: Path) -> None:
    folder = _make_folder(tmp_path / "data", name="tiktok")
    out = tmp_path / "run"
    args = ["--model", "lightgcn", "--dataset", "tiktok", "--data-root", str(tmp_path / "data")]
    args += ["--topk", "[2]", "--metrics", "[recall]"]
    args += ["--early_stop_metric", "recall@2", "--epochs", "1", "--device", "cpu", "--quiet"]
    args += ["--modalities", "{image: image_feat.npy}", "--output", str(out)]
    # fsyncs 1 and 2 are config.json and its folder, 3 the cache's temporary file: stop before
    # its rename.
    with stopped_at("pyg_dhmrec.atomic_files:os.fsync@3", tmp_path / "at_kill_point", args):
        pass
    processed = folder / "processed"
    assert [p.name for p in processed.iterdir() if p.name.startswith(".data_")]  # the tmp file
    assert not _data_files(processed)  # nothing under a final name
    assert main(args) == 0
    assert len(_data_files(processed)) == 1
    assert json.loads((out / "results.json").read_text())["dataset_stats"]["items"] == 4
