"""Tests of benchmarks/grid_points.py: finished grid points kept in the repository and put back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from pyg_dhmrec.config import load_config
from pyg_dhmrec.experiment import run_or_resume


@pytest.fixture()
def points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    module = load_benchmark("grid_points")
    monkeypatch.setattr(module, "ARCHIVE", tmp_path / "archive")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def _point(folder: Path, name: str, finished: bool, valid: float = 0.1) -> Path:
    point = folder / name
    point.mkdir(parents=True)
    config = dict(load_config("damrs", "tiktok"), output=str(point))
    (point / "config.json").write_text(json.dumps(config))
    (point / "train.log").write_text("epoch 1\n")
    (point / "checkpoint.pt").write_bytes(b"weights")
    if finished:
        (point / "results.json").write_text(json.dumps({"valid": {"recall@20": valid}}))
    return point


def test_save_keeps_finished_points_only_and_restore_puts_them_back(points, tmp_path) -> None:
    grid = tmp_path / "grid"
    _point(grid, "a=1", finished=True)
    _point(grid, "a=2", finished=False)
    points.main(["save", str(grid)])
    kept = tmp_path / "archive" / "tiktok" / "damrs"
    assert sorted(p.name for p in kept.iterdir()) == ["a=1"]
    assert sorted(p.name for p in (kept / "a=1").iterdir()) == [
        "config.json",
        "results.json",
        "train.log",
    ]
    points.main(["save", str(grid)])  # saving again changes nothing

    fresh = tmp_path / "fresh"
    points.main(["restore", "tiktok", "damrs", str(fresh)])
    assert sorted(p.name for p in fresh.iterdir()) == ["a=1"]
    config = json.loads((fresh / "a=1" / "config.json").read_text())

    def never(cfg: dict, resume: bool) -> dict:
        raise AssertionError("a restored finished point must not train")

    assert run_or_resume(dict(config, output=str(fresh / "a=1")), never) == {
        "valid": {"recall@20": 0.1}
    }


def test_a_different_result_or_an_unfinished_run_is_not_overwritten(points, tmp_path) -> None:
    grid = tmp_path / "grid"
    _point(grid, "a=1", finished=True, valid=0.1)
    points.main(["save", str(grid)])
    other = tmp_path / "other"
    _point(other, "a=1", finished=True, valid=0.2)
    with pytest.raises(SystemExit, match=r"a=1: already holds another results.json"):
        points.main(["save", str(other)])
    target = tmp_path / "target"
    _point(target, "a=1", finished=False)
    with pytest.raises(SystemExit, match=r"a=1: holds an unfinished run"):
        points.main(["restore", "tiktok", "damrs", str(target)])
    assert not (target / "a=1" / "results.json").exists()


def test_nothing_to_save_or_restore_is_an_error(points, tmp_path) -> None:
    with pytest.raises(SystemExit, match="not a folder"):
        points.main(["save", str(tmp_path / "missing")])
    _point(tmp_path / "grid", "a=1", finished=False)
    with pytest.raises(SystemExit, match="no finished point"):
        points.main(["save", str(tmp_path / "grid")])
    with pytest.raises(SystemExit, match="no saved point of damrs on tiktok"):
        points.main(["restore", "tiktok", "damrs", str(tmp_path / "x")])
