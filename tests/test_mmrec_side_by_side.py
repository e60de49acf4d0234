"""The input files that benchmarks/mmrec_side_by_side.py writes for MMRec's DualGNN and DA-MRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

side = load_benchmark("mmrec_side_by_side")

# users 0-3; user 2's item 2 is a valid interaction (x_label 1): not in the graphs
ROWS = ["0\t0\t0", "0\t1\t0", "1\t1\t0", "1\t2\t0", "2\t0\t0", "2\t1\t0", "2\t2\t1", "3\t3\t0"]
INTER = "userID\titemID\tx_label\n" + "\n".join(ROWS) + "\n"


def _dense_lists(counts: np.ndarray, most: int, min_count: int) -> dict:
    """Per row: the other rows with at least ``min_count`` shared columns, most first, ties by
    index, at most ``most`` (MMRec's preprocessing, on a dense matrix)."""
    out = {}
    for row in range(counts.shape[0]):
        pairs = [(-counts[row, o], o) for o in range(counts.shape[0]) if o != row]
        pairs = sorted(p for p in pairs if -p[0] >= min_count)[:most]
        out[row] = [[o for _, o in pairs], [float(-c) for c, _ in pairs]]
    return out


def test_user_and_item_graphs_equal_the_dense_counts(tmp_path: Path) -> None:
    inter = tmp_path / "toy.inter"
    inter.write_text(INTER)
    rated = np.zeros((4, 4))
    for user, item in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 1), (3, 3)]:
        rated[user, item] = 1.0
    side.write_user_graph(inter, tmp_path / "users.npy", most=200)
    users = np.load(tmp_path / "users.npy", allow_pickle=True).item()
    assert users == _dense_lists(rated @ rated.T, 200, 1)
    assert users[0] == [[2, 1], [2.0, 1.0]]  # user 2 shares items 0 and 1, user 1 item 1
    side.write_item_graph(inter, tmp_path / "items.npy", most=1, min_count=1)
    items = np.load(tmp_path / "items.npy", allow_pickle=True).item()
    expected = _dense_lists(rated.T @ rated, 1, 1)
    assert items == {i: pair for i, pair in expected.items() if pair[0]}
    assert 3 not in items  # no co-interacted item: no entry, as MMRec's DA-MRS expects


def test_a_file_without_the_mmrec_columns_is_named(tmp_path: Path) -> None:
    inter = tmp_path / "bad.inter"
    inter.write_text("user\titem\n0\t0\n")
    with pytest.raises(SystemExit, match="bad.inter.*lacks userID"):
        side.write_user_graph(inter, tmp_path / "users.npy")
