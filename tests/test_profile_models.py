"""Tests of benchmarks/profile_models.py's operator table on a hand-made profile."""

from __future__ import annotations

import pytest
import torch
from benchmark_scripts import load_benchmark
from torch.profiler import ProfilerActivity, profile


@pytest.fixture(scope="module")
def script():
    return load_benchmark("profile_models")


def test_op_table_lists_operators_by_self_time_per_step(script) -> None:
    a = torch.randn(300, 300)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):  # two "steps": three mm and one exp each
            for _ in range(3):
                a @ a
            torch.exp(a)
    text, rows = script.op_table(prof, per=2, wall_ms=1000.0, top=50, shapes=False)
    ops = {row["op"]: row for row in rows}
    assert ops["aten::mm"]["calls"] == 3 and ops["aten::exp"]["calls"] == 1  # per step
    times = [row["self_ms"] for row in rows]
    assert times == sorted(times, reverse=True)
    for row in rows:  # per step, as a share of the given wall time per step
        assert row["pct_wall"] == pytest.approx(100 * row["self_ms"] / 1000.0)
    assert text.splitlines()[-1].endswith("all operators (self)")
    assert "aten::mm" in text
