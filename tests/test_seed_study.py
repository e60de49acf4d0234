"""Tests of benchmarks/seed_study.py (issue 16's protocol: select on valid, seeds, summary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from conftest import TINY_SYNTHETIC

from pyg_dhmrec.config import load_config, parse_cli_overrides


@pytest.fixture(scope="module")
def study():
    return load_benchmark("seed_study")


def test_selected_point_becomes_command_line_options(study) -> None:
    point = {"alpha_mm": 1.5, "modality_weights": {"image": 0.25, "audio": 0.75}, "topk": [10, 20]}
    argv = study._point_args(point)
    assert argv[:2] == ["--alpha_mm", "1.5"]
    config = load_config("dhmrec", "tiktok", parse_cli_overrides(argv))
    assert config["alpha_mm"] == 1.5
    assert config["modality_weights"] == {"image": 0.25, "audio": 0.75}
    assert config["topk"] == [10, 20]


def test_bad_arguments_are_refused(study, tmp_path: Path, capsys) -> None:
    base = ["summary", "--dataset", "synthetic", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        study.main([*base, "--models", "lightgcn", "freedom"])
    assert "must include dhmrec" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([*base, "--grid", "dhmrec"])
    assert "MODEL=FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([*base, "--grid", f"dhmrec={tmp_path / 'missing.yaml'}"])
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="run the select stage for dhmrec first"):
        study.main(["seeds", "--dataset", "synthetic", "--out", str(tmp_path)])


def test_select_seeds_and_summary_on_a_tiny_dataset(study, tmp_path: Path, capsys) -> None:
    grids = {"dhmrec": "alpha_mm: [0.5, 1.0]\n", "lightgcn": "reg_weight: [0.01]\n"}
    for model, text in grids.items():
        (tmp_path / f"{model}.yaml").write_text(text)
    common = ["--dataset", "synthetic", "--data-root", str(tmp_path / "data")]
    common += ["--models", "dhmrec", "lightgcn", "--seeds", "2", "--out", str(tmp_path / "out")]
    common += [f"--grid={m}={tmp_path / m}.yaml" for m in grids]
    run_args = ["--", "--synthetic", TINY_SYNTHETIC, "--epochs", "1", "--topk", "[10,20]"]
    study.main(["select", *common, *run_args])
    folder = tmp_path / "out" / "synthetic"
    selected = json.loads((folder / "dhmrec-grid" / "grid.json").read_text())
    assert selected["select_metric"] == "valid recall@20"
    assert selected["selected_point"]["alpha_mm"] in (0.5, 1.0)
    study.main(["seeds", *common, *run_args])
    for model in grids:
        record = json.loads((folder / f"{model}-seeds" / "seeds.json").read_text())
        assert record["seeds"] == [2024, 2025]
    text = study.main(["summary", *common]) or (folder / "summary.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "reg_weight=0.01" in rows["lightgcn"]
    assert "(2 seeds)" in rows["lightgcn"]  # the per-seed paired t-tests ran
    assert "not run" in rows["no_kl"]  # ablations were not asked for
