"""pyg_dhmrec.atomic_files: all-or-nothing writes, mode 0644, checksummed torch files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from pyg_dhmrec.atomic_files import (
    DamagedFile,
    atomic_write,
    read_torch_checked,
    torch_bytes,
    write_json,
    write_torch_checked,
)
from pyg_dhmrec.train import EarlyStopping


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"v": 1})
    before = path.read_bytes()

    def half_then_killed(f) -> None:
        f.write(b'{"v": 2')
        raise KeyboardInterrupt  # the writer dies mid-file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_killed)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_files_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o077)  # even under a strict umask: mkstemp's 0600 is not kept
    try:
        path = write_json(tmp_path / "sub" / "b.json", [1])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_checked_torch_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = write_torch_checked(tmp_path / "c.pt", {"x": torch.arange(5)}, "thing")
    assert torch.equal(read_torch_checked(path, "thing")["x"], torch.arange(5))
    with pytest.raises(DamagedFile, match="not a other file written by this version"):
        read_torch_checked(path, "other")
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(DamagedFile, match=r"checksum mismatch: its \d+ bytes after the header"):
        read_torch_checked(path, "thing")


def test_early_stopping_strict_improvement_patience_and_state() -> None:
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping("recall@20", patience=2)
    assert stopper.step(1, {"recall@20": 0.5}, model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not stopper.step(2, {"recall@20": 0.5}, model)  # equal is no improvement
    assert not stopper.should_stop
    state = stopper.state_dict()
    assert not stopper.step(3, {"recall@20": 0.4}, model)
    assert stopper.should_stop and stopper.best_epoch == 1
    assert not torch.equal(stopper.best_state["weight"], model.weight)  # the epoch-1 copy
    restored = EarlyStopping("recall@20", patience=2)
    restored.load_state_dict(state)
    assert (restored.best_epoch, restored.bad_evals, restored.best_value) == (1, 1, 0.5)
    with pytest.raises(ValueError, match="monitored 'recall@20', this run monitors 'ndcg@20'"):
        EarlyStopping("ndcg@20", 2).load_state_dict(state)


def test_checked_torch_file_is_streamed_in_the_in_memory_format(tmp_path: Path) -> None:
    # Written without holding the serialised bytes: the file is still header, sha256 of the
    # body and the body torch.save would give in memory, so older files read the same.
    obj = {"x": torch.randn(300, 7), "name": "graph", "list": [torch.arange(3)]}
    path = write_torch_checked(tmp_path / "d.pt", obj, "thing")
    body = torch_bytes(obj)
    expected = b"pyg_dhmrec thing sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    assert path.read_bytes() == expected + body
    loaded = read_torch_checked(path, "thing")  # loaded from the file after the header
    assert torch.equal(loaded["x"], obj["x"]) and loaded["name"] == "graph"
    assert torch.equal(loaded["list"][0], torch.arange(3))
    raw = bytearray(path.read_bytes())
    raw[len(expected) + len(body) // 2] ^= 0xFF  # one flipped byte mid-body
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedFile, match=f"checksum mismatch: its {len(body)} bytes"):
        read_torch_checked(path, "thing")


def test_atomic_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch) -> None:
    # a rename is durable only once the folder entry is on disk: the folder is fsynced last
    import stat

    import pyg_dhmrec.atomic_files as atomic_files

    synced = []
    real_fsync = atomic_files.os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic_files.os, "fsync", recording_fsync)
    atomic_files.write_text(tmp_path / "a.txt", "x")
    assert synced == ["file", "folder"]
    assert (tmp_path / "a.txt").read_text() == "x"
