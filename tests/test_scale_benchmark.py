"""Tests of benchmarks/scale.py's slope fit, report and peak-memory reset (no dataset needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def scale():
    return load_benchmark("scale")


def test_slope_of_log_cost_on_log_interactions(scale) -> None:
    xs = [296337 * s for s in (1, 2, 4, 8)]
    assert scale._fit(xs, [3e-6 * x for x in xs]) == pytest.approx(1.0)
    assert scale._fit(xs, [2e-12 * x**2 for x in xs]) == pytest.approx(2.0)
    assert scale._fit(xs[:1], [1.0]) is None  # one point has no slope
    assert scale._fit(xs[:2], [1.0, None]) is None  # a missing value is not a point


def _row(model: str, s: int, per_step: float) -> dict:
    n = 296337 * s
    return {
        "model": model,
        "scale": s,
        "users": 35598 * s,
        "items": 18357 * s,
        "interactions": n,
        "train_interactions": int(0.74 * n),
        "steps_per_epoch": 107 * s,
        "steps_timed": 5,
        "s_per_step": 4 * per_step * s,
        "cpu_s_per_step": per_step * s,
        "s_epoch_overhead": 0.1,
        "s_per_epoch": 400 * per_step * s * s,
        "cpu_s_per_epoch": 107 * per_step * s * s,
        "eval_s": 4.0 * s * s,
        "eval_cpu_s": 1.0 * s * s,
        "valid_users": 35598 * s,
        "eval_chunks_timed": 4,
        "eval_chunks": 9 * s,
        "peak_rss_mb": 1000.0 * s,
        "peak_rss_train_eval_mb": 800.0 * s,
        "loadavg_start": "1.0 1.0 1.0",
        "loadavg_end": "1.1 1.0 1.0",
    }


def test_report_writes_the_tables_the_fits_and_the_plot(scale, tmp_path: Path) -> None:
    rows = [_row("lightgcn", s, 0.25) for s in (1, 2, 4)]
    rows.append({"model": "dhmrec", "scale": 8, "error": "killed: over 10 s"})
    prepared = [
        {
            "scale": 1,
            "generated": False,
            "dataset_s": 4,
            "graphs_s": 300,
            "peak_rss_mb": 1100,
            "disk_mb": 650,
        }
    ]
    args = argparse.Namespace(models=["lightgcn", "dhmrec"], out=str(tmp_path))
    record = scale.report(rows, prepared, args)
    slopes = record["slopes"]["lightgcn"]
    assert slopes["cpu_s_per_step"] == pytest.approx(1.0)  # per step: linear
    assert slopes["cpu_s_per_epoch"] == pytest.approx(2.0)  # steps per epoch grow too
    assert slopes["peak_rss_train_eval_mb"] == pytest.approx(1.0)
    assert all(v is None for v in record["slopes"]["dhmrec"].values())
    table = (tmp_path / "scale.md").read_text()
    assert "| dhmrec | 8x | killed: over 10 s |" in table
    assert "| lightgcn | 1.00 | 2.00 | 2.00 | 1.00 |" in table
    assert "| lightgcn | 4x | 142392 | 73428 | 1185348 | 428 | 4.000 (1.000) |" in table
    assert json.loads((tmp_path / "scale.json").read_text())["rows"][0]["scale"] == 1
    pytest.importorskip("matplotlib")
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_a_gpu_run_fits_wall_seconds_and_gpu_memory(scale, tmp_path: Path) -> None:
    rows = [
        {**_row("dhmrec", s, 0.25), "device": "cuda:0", "gpu_peak_mb": 300.0 * s**2}
        for s in (1, 2, 4)
    ]
    args = argparse.Namespace(models=["dhmrec"], out=str(tmp_path))
    slopes = scale.report(rows, [], args)["slopes"]["dhmrec"]
    assert set(slopes) == {"s_per_step", "s_per_epoch", "eval_s", "gpu_peak_mb"}
    assert slopes["gpu_peak_mb"] == pytest.approx(2.0)
    assert slopes["s_per_step"] == pytest.approx(1.0)
    table = (tmp_path / "scale.md").read_text()
    assert "| GPU peak MB |" in table.splitlines()[0]
    assert table.splitlines()[4].endswith(" 4800 |")  # 4x: 300 * 16 MB


def test_peak_memory_can_be_reset_after_loading(scale) -> None:
    if not scale.reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = scale.peak_mb()
    assert before <= scale.rss_mb() + 1  # reset: the peak is the current resident size
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert scale.peak_mb() >= before + 48
    del block
